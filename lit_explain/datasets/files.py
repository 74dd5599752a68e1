"""File utilities shared by dataset readers: streaming JSON arrays, content digests, atomic ``.npz`` caches and
RGB decoding. Nothing here knows a dataset's schema."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import ijson
import numpy as np
from PIL import Image

from lit_explain.atomic import atomic_write

log = logging.getLogger(__name__)

__all__ = ["atomic_save_npz", "file_digest", "iter_json_array", "load_npz_cache", "load_rgb"]

_WHITESPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"


def _first_byte(f) -> tuple[bytes, int]:
    """The first byte of a binary file that is not whitespace (b"" if none) and the offset where the JSON text
    starts (3 after a UTF-8 byte-order mark, which the yajl parser does not skip itself)."""
    start = 3 if f.read(3) == _BOM else 0
    f.seek(start)
    while True:
        block = f.read(4096)
        if not block:
            return b"", start
        stripped = block.lstrip(_WHITESPACE)
        if stripped:
            return stripped[:1], start


def iter_json_array(path: str | os.PathLike, chunk_size: int = 1 << 16) -> Iterator[dict]:
    """Yield the objects of a top-level JSON array one at a time, reading ``chunk_size`` bytes at a time.

    Visual Genome's ``objects.json`` is ~700 MB; ``json.load`` would hold the whole parsed tree (several GB of
    Python objects). ``ijson`` (its C yajl backend) parses the stream incrementally, so peak memory is one
    chunk plus one element. Numbers come back as Python ``int`` / ``float`` (``use_float``), as ``json.load``
    gives them.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a JSON array of objects, or is truncated or malformed (the message names
            the file and the element).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, "rb") as f:
        first, start = _first_byte(f)
        if first != b"[":
            raise ValueError(f"{path}: expected a JSON array ('[') at the start, found {first.decode(errors='replace')!r}; "
                             "is this the right file?")
        f.seek(start)
        i = 0
        try:
            for i, obj in enumerate(ijson.items(f, "item", use_float=True, buf_size=max(int(chunk_size), 1))):
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}: element {i} of the top-level array is a {type(obj).__name__}, "
                                     "expected an object; is this the right file?")
                yield obj
        except ijson.JSONError as exc:
            raise ValueError(f"{path}: truncated or malformed JSON after element {i} ({exc}); re-download the "
                             "file") from None


def file_digest(paths: Sequence[str | os.PathLike], extra: Any = None) -> str:
    """SHA-1 over the bytes of ``paths`` (in order) and the JSON of ``extra``: the key of a preprocessing cache.

    Keyed by *contents*, not by name or mtime, so a re-downloaded or edited file invalidates the cache.
    """
    h = hashlib.sha1()
    for p in paths:
        h.update(str(Path(p).name).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def atomic_save_npz(path: str | os.PathLike, meta: dict | None = None, **arrays: np.ndarray) -> None:
    """Write ``arrays`` (+ a JSON ``meta`` dict) to ``path`` via a temp file and ``os.replace``.

    A reader never sees a half-written cache: either the old file, no file, or the complete new one.
    """
    if meta is not None:
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_npz_cache(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict] | None:
    """Read a file written by :func:`atomic_save_npz`; ``None`` when absent or unreadable (then it is rebuilt)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # corrupt cache: rebuild rather than fail
        log.warning("ignoring unreadable cache %s (%s); rebuilding it", path, exc)
        return None
    meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8")) if "__meta__" in arrays else {}
    return arrays, meta


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB; a clear error names the file when it cannot be read."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except Exception as exc:
        raise OSError(f"cannot decode image {path}: {exc}. Re-download it or remove it from the annotations.") from exc
