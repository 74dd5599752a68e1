"""The unified result table of every dissection-style method: one row per (unit, activation range).

Leading columns, in this order, are shared by all methods:

``unit, cluster, range_lo, range_hi, label, category, length, iou, threshold``

* ``cluster`` indexes the unit's activation ranges in ascending order (NetDissect and CoEx: a single range 0,
  ``range_lo = threshold``, ``range_hi = inf``);
* ``label`` is the explanation: a concept name, or the canonical string of a compositional formula;
* ``category`` is the category of the label (of its first concept for a formula); ``length`` the formula length.

Methods append their own columns (per-category labels, metrics, null baselines, visited states...), which
keep their insertion order. The CSV and the JSON (rows + vocabulary + run configuration) are written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from lit_explain.atomic import atomic_write_json, atomic_write_text

__all__ = ["LEADING_COLUMNS", "columns_of", "write_csv", "write_json", "read_csv"]

LEADING_COLUMNS = ("unit", "cluster", "range_lo", "range_hi", "label", "category", "length", "iou", "threshold")


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Leading columns first, then every other key in first-seen order."""
    cols = [c for c in LEADING_COLUMNS if any(c in r for r in rows)]
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(round(v, 8))
    return v


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    buf = io.StringIO()
    cols = columns_of(rows)
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k, "")) for k in cols})
    return atomic_write_text(path, buf.getvalue())


def write_json(rows: Sequence[dict[str, Any]], path: str | Path, **meta: Any) -> Path:
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    for r in clean:
        for k, v in r.items():
            if isinstance(v, float) and math.isinf(v):
                r[k] = "inf" if v > 0 else "-inf"
    return atomic_write_json(path, {**meta, "columns": columns_of(rows), "rows": clean})


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
