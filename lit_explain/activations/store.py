"""ActivationStore: a content-addressed, memory-mapped, atomically committed cache of layer activations.

Every dissection-style method needs the same thing first: the activations (N, U, h, w) of one layer over a
dataset. They are computed once and shared by every method and run whose inputs are identical. The key is a
hash of everything that changes the numbers: the model (architecture and a hash of its weights), the layer,
the dataset (rows and files), the input transform, the storage dtype and :data:`CODE_VERSION`.

Layout under ``root``::

    <key>/acts.bin     raw (N, U, h, w) array in the storage dtype (float16 by default), C order
    <key>/maxes.bin    raw (N, U) float32 per-image maximum of each unit (for top images)
    <key>/meta.json    shape, dtype, key parts; written last: its presence marks a complete entry

An entry is built in ``<key>.partial/`` and renamed into place only when every row has been written, so a run
that is killed leaves nothing that :meth:`ActivationStore.get` would return. Each process appends the indices
of the rows it has written and flushed to ``done_<pid>.idx``; a later run with ``resume=True`` keeps those rows
(:attr:`ActivationWriter.done`) and only computes the rest. Several processes of one DDP run
write disjoint rows of the same partial entry (global dataset indices), which needs a filesystem shared by the
ranks (true for single-machine DDP and for clusters with a shared work directory).

Concurrent runs (two jobs, two users) that need the same entry take turns: the process that builds an entry holds
an exclusive lock on ``<key>.lock`` (:meth:`ActivationStore.lock`, a POSIX record lock released by the kernel if
the process dies) from the moment it decides to build until it has committed; the other run waits,
then finds the committed entry and reads it. Locks work between processes of one machine and on filesystems whose
locks are coherent across machines (local disks, most cluster filesystems; not every NFS setup).

Values beyond float16's range (|x| > 65504) cannot be stored as float16: :meth:`ActivationWriter.write` refuses
them with the advice to store float32, as it refuses NaN and infinite activations (a broken checkpoint or input
normalisation), naming the layer when the caller gave it (``meta['layer']``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CODE_VERSION", "FLOAT16_MAX", "BuildLock", "ActivationStore", "ActivationEntry", "ActivationWriter", "cache_key"]

#: Bumped whenever the meaning of stored activations changes, which invalidates every cached entry.
CODE_VERSION = "1"

_DTYPES = {"float16": np.float16, "float32": np.float32}
#: Largest finite float16 value: anything beyond it would be stored as inf.
FLOAT16_MAX = 65504.0


def cache_key(**parts: Any) -> str:
    """A short stable hash of the key parts (JSON with sorted keys), plus CODE_VERSION."""
    payload = json.dumps({**parts, "code_version": CODE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass
class ActivationEntry:
    """A committed cache entry: read-only memory maps of the activations and per-image maxima."""

    path: Path
    acts: np.memmap  # (N, U, h, w)
    maxes: np.memmap  # (N, U) float32
    meta: dict

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.acts.shape)

    def rows(self, indices: np.ndarray | torch.Tensor | slice) -> torch.Tensor:
        """Activations of the given images as a float32 tensor (B, U, h, w)."""
        if isinstance(indices, torch.Tensor):
            indices = indices.numpy()
        return torch.from_numpy(np.asarray(self.acts[indices], dtype=np.float32))


class ActivationWriter:
    """Fills a partial entry row by row; :meth:`commit` publishes it atomically.

    Args:
        store: the owning store.
        key: the entry key.
        shape: (N, U, h, w).
        dtype: storage dtype name, ``float16`` or ``float32``.
        create: True on exactly one process (it allocates the files); the others attach with ``create=False``
            after a barrier.
        meta: key parts recorded in meta.json.
        resume: keep the rows an interrupted run already wrote (same shape and dtype); False starts afresh.
    """

    def __init__(self, store: "ActivationStore", key: str, shape: tuple[int, ...], dtype: str = "float16",
                 create: bool = True, meta: dict | None = None, resume: bool = True) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"activation dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.store, self.key, self.shape, self.dtype = store, key, tuple(int(s) for s in shape), dtype
        self.meta = dict(meta or {})
        self.partial = store.root / f"{key}.partial"
        layout = json.dumps({"shape": list(self.shape), "dtype": dtype})
        mode = "r+"
        if create:
            reuse = resume and (self.partial / "layout.json").is_file() and \
                (self.partial / "layout.json").read_text() == layout
            if not reuse:
                if self.partial.exists():
                    shutil.rmtree(self.partial)
                self.partial.mkdir(parents=True)
                mode = "w+"
        self.acts = np.memmap(self.partial / "acts.bin", dtype=_DTYPES[dtype], mode=mode, shape=self.shape)
        self.maxes = np.memmap(self.partial / "maxes.bin", dtype=np.float32, mode=mode, shape=self.shape[:2])
        if create and mode == "w+":
            (self.partial / "layout.json").write_text(layout)
        #: (N,) bool: rows already written and flushed by this or an interrupted earlier run
        self.done = np.zeros(self.shape[0], dtype=bool)
        for log in self.partial.glob("done_*.idx"):
            idx = np.fromfile(log, dtype=np.int64)
            self.done[idx[(idx >= 0) & (idx < self.shape[0])]] = True
        self._log = open(self.partial / f"done_{os.getpid()}.idx", "ab")

    def write(self, indices: torch.Tensor, acts: torch.Tensor) -> None:
        """Store activations (B, U, h, w) of the images with dataset indices (B,)."""
        idx = torch.as_tensor(indices).cpu().numpy()
        a = acts.detach().to("cpu", torch.float32)
        where = f"layer {self.meta['layer']!r}" if "layer" in self.meta else "the captured layer"
        finite = torch.isfinite(a)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"{where} produced {bad} non-finite activation values (NaN or inf) on images "
                             f"{idx[:5].tolist()}...: check the weights (a broken or mismatched checkpoint) and the "
                             "input normalisation; nothing was cached")
        if self.dtype == "float16" and a.numel() and float(a.abs().max()) > FLOAT16_MAX:
            raise ValueError(f"{where} has activations up to {float(a.abs().max()):.4g}, beyond float16's range "
                             f"(±{FLOAT16_MAX:g}), so the float16 activation cache would store inf: set "
                             "activation_dtype: float32")
        self.acts[idx] = a.numpy().astype(_DTYPES[self.dtype])
        # maxima of the stored (rounded) values, so thresholds and top images agree with what is read back
        stored = torch.from_numpy(np.asarray(self.acts[idx], dtype=np.float32))
        self.maxes[idx] = stored.flatten(2).amax(-1).numpy()
        self.flush()  # rows reach the file before their indices reach the log
        self._log.write(np.asarray(idx, dtype=np.int64).tobytes())
        self._log.flush()
        self.done[idx] = True

    def flush(self) -> None:
        self.acts.flush()
        self.maxes.flush()

    def close(self) -> None:
        if not self._log.closed:
            self._log.close()

    def commit(self) -> ActivationEntry:
        """Flush, write meta.json and rename the partial entry into place (call on one process only)."""
        self.flush()
        self.close()
        for log in self.partial.glob("done_*.idx"):
            self.done[np.fromfile(log, dtype=np.int64)] = True
        if not self.done.all():
            missing = np.flatnonzero(~self.done)
            raise RuntimeError(f"activation cache {self.partial}: {len(missing)} rows were never written "
                               f"(first: {missing[:5].tolist()}); the dataset and the loader disagree")
        for log in self.partial.glob("done_*.idx"):
            log.unlink()
        (self.partial / "layout.json").unlink(missing_ok=True)
        meta = {**self.meta, "key": self.key, "shape": list(self.shape), "dtype": self.dtype,
                "code_version": CODE_VERSION}
        tmp = self.partial / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        os.replace(tmp, self.partial / "meta.json")
        final = self.store.root / self.key
        if final.exists():  # another run committed the same content meanwhile: keep theirs
            shutil.rmtree(self.partial)
        else:
            os.replace(self.partial, final)
        entry = self.store.get(self.key)
        assert entry is not None
        return entry


class BuildLock:
    """An exclusive POSIX record lock (``fcntl.lockf``) on a lock file, held until :meth:`release`.

    POSIX locks belong to the process: another process waits for it, the kernel drops it if the holder dies, and
    the holding process itself can take it again (an in-process retry after an exception never deadlocks).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a+")
        fcntl.lockf(self._file.fileno(), fcntl.LOCK_EX)

    def release(self) -> None:
        if not self._file.closed:
            fcntl.lockf(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()


class ActivationStore:
    """Content-addressed activation cache; see the module docstring.

    Args:
        root: folder of the cache entries.
    """

    def __init__(self, root: str | os.PathLike = "cache/activations") -> None:
        self.root = Path(root)

    def get(self, key: str) -> ActivationEntry | None:
        """The committed entry for ``key``, or None when absent or incomplete."""
        path = self.root / key
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            shape = tuple(meta["shape"])
            dtype = _DTYPES[meta["dtype"]]
            expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if (path / "acts.bin").stat().st_size != expected:
                return None
            acts = np.memmap(path / "acts.bin", dtype=dtype, mode="r", shape=shape)
            maxes = np.memmap(path / "maxes.bin", dtype=np.float32, mode="r", shape=shape[:2])
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None
        return ActivationEntry(path, acts, maxes, meta)

    def lock(self, key: str) -> "BuildLock":
        """Take the exclusive build lock of entry ``key``, waiting while another process holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        return BuildLock(self.root / f"{key}.lock")

    def writer(self, key: str, shape: tuple[int, ...], dtype: str = "float16", create: bool = True,
               meta: dict | None = None, resume: bool = True) -> ActivationWriter:
        """Open a partial entry for writing (see :class:`ActivationWriter`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return ActivationWriter(self, key, shape, dtype, create=create, meta=meta, resume=resume)
