"""Resumable per-job results: one atomic JSON file per finished job, keyed on everything that determines it.

Methods that split their work into many independent jobs (one (unit, range) search, one unit's factorisation,
...) store each finished job's result in ``<folder>/<stem>_<digest>.json``; ``stem`` makes the file findable by
a person (``u00012_r3``), ``digest`` hashes the job's *spec*: a JSON-able dict of every input and setting the
result depends on (cache keys of the activations and the annotations, the unit, the range, the search
settings, the seed, ...) and the source code that computes it (:func:`code_digest`, so that a stored job
is not read back by a version of the library that would compute it differently). A rerun after an
interruption loads the files whose spec matches instead of recomputing, so it produces the same table; a changed setting changes the digest, so a stale file is never
reused. Files are written atomically (:func:`lit_explain.atomic.atomic_write_json`): a killed run leaves whole
files or none, and concurrent DDP ranks, which write disjoint jobs, never collide.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from lit_explain.atomic import atomic_write_json

__all__ = ["JobCache", "code_digest", "spec_digest"]


def _plain(o: Any) -> Any:
    """JSON form of values json does not know (tensors and arrays as lists, anything else as its string)."""
    return o.tolist() if hasattr(o, "tolist") else str(o)


def spec_digest(spec: dict[str, Any], length: int = 20) -> str:
    """Hex sha256 (first ``length`` characters) of the spec's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=_plain).encode()).hexdigest()[:length]


@lru_cache(maxsize=None)
def code_digest(*modules: str) -> str:
    """Hex sha256 (20 characters) of the source files of the named modules; a package stands for every ``.py``
    file under its folder. Job specs include it, so editing (or upgrading) the code that computes a job changes
    its key instead of silently reusing the old result. Read once per process (the source does not change
    under a running program)."""
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        mod = importlib.import_module(name)
        path = Path(mod.__file__)
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        for f in files:
            h.update(f"{name}:{f.relative_to(path.parent).as_posix()}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:20]


class JobCache:
    """A folder of finished jobs (see the module docstring).

    Args:
        folder: where the job files live (created on the first store).
        enabled: False makes :meth:`load` always miss (recompute everything) while :meth:`store` still writes,
            so a later run can resume.

    Attributes:
        hits: jobs loaded so far; misses: jobs looked up and not found (or stale).
    """

    def __init__(self, folder: str | Path, enabled: bool = True) -> None:
        self.folder = Path(folder)
        self.enabled = bool(enabled)
        self.hits = 0
        self.misses = 0

    def path(self, stem: str, spec: dict[str, Any]) -> Path:
        """The file of one job: ``<folder>/<stem>_<digest of spec>.json``."""
        if not stem or "/" in stem:
            raise ValueError(f"job stem must be a non-empty file name part without '/', got {stem!r}")
        return self.folder / f"{stem}_{spec_digest(spec)}.json"

    def load(self, stem: str, spec: dict[str, Any]) -> Any | None:
        """The stored result of the job, or None when caching is off, the file is absent or unreadable, or it
        was written for another spec (a digest collision, or a file renamed by hand)."""
        if not self.enabled:
            self.misses += 1
            return None
        try:
            data = json.loads(self.path(stem, spec).read_text())
        except (OSError, ValueError):
            self.misses += 1
            return None
        if not isinstance(data, dict) or "result" not in data or data.get("spec") != _canonical(spec):
            self.misses += 1
            return None
        self.hits += 1
        return data["result"]

    def store(self, stem: str, spec: dict[str, Any], result: Any) -> Path:
        """Write one job's JSON-able result atomically; returns its path."""
        return atomic_write_json(self.path(stem, spec), {"spec": spec, "result": result})


def _canonical(spec: dict[str, Any]) -> Any:
    """The spec as it reads back from JSON (tuples become lists), so a stored spec compares equal to its source."""
    return json.loads(json.dumps(spec, default=_plain))
