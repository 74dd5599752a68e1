"""The image/text encoder pair WWW matches neuron examples and concept words with, and its vocabularies.

WWW needs two embeddings in one space: images (a neuron's example images, or crops of them) and concept
prompts ("a photo of a red"). :class:`OpenClipPair` is that pair for any open_clip model stored locally (the
synthetic world's trained CLIP folder, or a real open_clip checkpoint file with its architecture name); tests pass
any object with the same three methods (:class:`ImageTextEncoder`), for instance one whose geometry is known.

Vocabularies come from local files only (:func:`load_vocabulary`): a word-list file, the synthetic world's
concepts (a folder holding ``world.json``) or Broden labels (a folder holding ``label.csv``).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from lit_explain.concepts.vocabulary import read_word_list

__all__ = ["ImageTextEncoder", "OpenClipPair", "load_vocabulary", "read_vocabulary_file"]


@runtime_checkable
class ImageTextEncoder(Protocol):
    """What WWW asks of an encoder pair.

    * ``encode_images(images)``: (B, 3, H, W) RGB in [0, 1] (any size) -> (B, D) embeddings;
    * ``encode_texts(texts)``: V strings -> (V, D) embeddings in the same space;
    * ``token_counts(texts)``: V strings -> the number of word tokens of each (0 = nothing to encode).
    """

    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...

    def token_counts(self, texts: Sequence[str]) -> list[int]: ...


class OpenClipPair:
    """An open_clip model from a local file as WWW's image/text encoder pair (loaded on first use).

    Images are resized (shortest side, bilinear) and centre-cropped to the model's input size and normalised with
    the model's own mean/std (its stored preprocessing); texts are tokenised with the model's tokenizer.
    Nothing is downloaded: a missing file or a file of another architecture is one clear error from
    :func:`lit_explain.models.clip_files.load_clip`.

    Args:
        path: a CLIP folder written by ``save_clip`` (``outputs/clip_synthetic/model``), or an open_clip checkpoint
            file (then ``model_name`` names its architecture, e.g. ``ViT-B-32``).
        model_name: open_clip architecture of a checkpoint file; None for a folder.
        batch_size: images or texts per forward, >= 1.
    """

    def __init__(self, path: str, model_name: str | None = None, batch_size: int = 256) -> None:
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise ValueError(f"OpenClipPair: path must be a CLIP folder or checkpoint file, got {path!r}")
        if int(batch_size) < 1:
            raise ValueError(f"OpenClipPair: batch_size must be >= 1, got {batch_size}")
        self.path, self.model_name, self.batch_size = str(path), model_name, int(batch_size)
        self._model = self._tokenizer = None
        self._pre: dict = {}
        self.device = torch.device("cpu")

    def _load(self) -> None:
        if self._model is None:
            from lit_explain.models.clip_files import load_clip

            self._model, self._tokenizer, self._pre = load_clip(self.path, self.model_name, device=self.device)

    def to(self, device: torch.device | str) -> "OpenClipPair":
        self.device = torch.device(device)
        if self._model is not None:
            self._model.to(self.device)
        return self

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        size = int(self._pre.get("size", 224) if not isinstance(self._pre.get("size"), (list, tuple))
                   else self._pre["size"][0])
        h, w = images.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = images if (nh, nw) == (h, w) else F.interpolate(images, size=(nh, nw), mode="bilinear",
                                                             align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top:top + size, left:left + size]
        mean = torch.tensor(self._pre.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=x.device)
        std = torch.tensor(self._pre.get("std", (0.26862954, 0.26130258, 0.27577711)), device=x.device)
        return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self._load()
        out = [self._model.encode_image(self._prepare(images[s:s + self.batch_size].to(self.device).float()))
               for s in range(0, len(images), self.batch_size)]
        return torch.cat(out).float() if out else torch.zeros(0, 0)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        self._load()
        out = [self._model.encode_text(self._tokenizer(list(texts[s:s + self.batch_size])).to(self.device))
               for s in range(0, len(texts), self.batch_size)]
        return torch.cat(out).float() if out else torch.zeros(0, 0)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Word tokens of each text (start/end markers and padding excluded; open_clip cleans the text first)."""
        self._load()
        tokens = self._tokenizer(list(texts))
        return [max(int((row != 0).sum()) - 2, 0) for row in tokens]


def read_vocabulary_file(path: str | os.PathLike, synonyms: bool = False) -> list[str]:
    """Concepts of a word-list file, one word or phrase per line.

    Stricter than a plain word list, because a vocabulary defines what can be found: an empty line between
    entries (a pasted list with a gap, often a lost word) and a word listed twice are errors naming the file and
    line. Lines starting with ``#`` are comments; a file may end with blank lines.

    With ``synonyms`` each line is a comma-separated synonym set (ImageNet's ``tench, Tinca tinca``) and every
    synonym is a concept, first occurrence order; a synonym shared by two lines (ImageNet's two "crane" classes)
    is kept once, as classes may legitimately share a name; an empty synonym (``a,,b``) is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path} (one concept word or phrase per line)")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            raise ValueError(f"{path}:{n}: empty line in the vocabulary; remove it (each line must hold one concept "
                             "word or phrase; lines starting with '#' are comments)")
    if synonyms:
        words: list[str] = []
        for n, raw in enumerate(lines, start=1):
            if raw.strip().startswith("#"):
                continue
            parts = [" ".join(p.split()) for p in raw.split(",")]
            if not all(parts):
                raise ValueError(f"{path}:{n}: empty synonym in {raw.strip()!r}; separate synonyms by one comma")
            words.extend(parts)
        return list(dict.fromkeys(words))
    words = read_word_list(path)  # repeats are errors with both lines
    if not words:
        raise ValueError(f"{path}: the vocabulary is empty; list one concept word or phrase per line")
    return words


def load_vocabulary(source: str | os.PathLike, synonyms: bool = False) -> list[str]:
    """The concept vocabulary named by ``source`` (a local file or folder):

    * a folder with ``world.json``: the synthetic world's concept names, in the world's order;
    * a folder with ``label.csv``: Broden label names (``_`` as spaces; a category suffix such as ``-s`` is dropped
      unless the bare name is a label too);
    * a file: one concept per line, or with ``synonyms`` one comma-separated synonym set per line
      (:func:`read_vocabulary_file`).
    """
    path = Path(source)
    if path.is_dir():
        if (path / "world.json").is_file():
            return [c["name"] for c in json.loads((path / "world.json").read_text())["concepts"]]
        if (path / "label.csv").is_file():
            with open(path / "label.csv", newline="", encoding="utf-8") as f:
                names = [r["name"].strip() for r in csv.DictReader(f) if r.get("name", "").strip() not in ("", "-")]
            raw = set(names)
            out: list[str] = []
            for n in names:
                base, _, suffix = n.rpartition("-")
                w = base if base and len(suffix) == 1 and base not in raw else n
                w = w.replace("_", " ")
                if w not in out:
                    out.append(w)
            return out
        raise FileNotFoundError(f"vocabulary folder {path} holds neither world.json (a synthetic world) nor label.csv "
                                "(Broden); give one of those, or a word-list file")
    return read_vocabulary_file(path, synonyms=synonyms)
