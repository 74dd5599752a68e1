"""What a method hands to the writers: :class:`MethodResult`, and the one CSV/JSON format of every table.

The dissection table (NetDissect, CoEx, CCE) has one row per (unit, activation range).

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
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from lit_explain.atomic import atomic_write_json, atomic_write_text

__all__ = ["LEADING_COLUMNS", "MethodResult", "Picture", "columns_of", "write_csv", "write_json", "read_csv"]

LEADING_COLUMNS = ("unit", "cluster", "range_lo", "range_hi", "label", "category", "length", "iou", "threshold")


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Columns in first-seen order; a unit table (rows with a ``unit`` key, the dissection format) starts with the
    :data:`LEADING_COLUMNS` it has, in their order."""
    unit_table = any("unit" in r for r in rows)
    cols = [c for c in LEADING_COLUMNS if any(c in r for r in rows)] if unit_table else []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


@dataclass
class Picture:
    """A picture a method asks the writer to save (PNG, relative path without extension) and to log.

    Args:
        name: path under the output folder without ``.png``, e.g. ``units/unit_0007`` or ``filters/filter_0003``.
        draw: returns the picture (a PIL image); called only on the process that writes, and only once.
        tag: TensorBoard image tag (default: ``name``).
    """

    name: str
    draw: Callable[[], Any]
    tag: str | None = None


@dataclass
class MethodResult:
    """Everything one run of a method found, handed forward to the writer callbacks.

    Args:
        tables: table name -> rows (dicts with the same keys in the same order); each is written as
            ``<name>.csv`` and ``<name>.json`` (rows plus ``meta``). The first table is the main one.
        meta: run metadata written into every JSON (method, arguments, vocabulary, caches, data size).
        pictures: pictures to save under the output folder and to log to TensorBoard.
        report: the name of the table to render as ``report.html`` (the unit browser), or None.
        summary: text printed at the end of the run (the project's own summary line), or None.
        scalars: TensorBoard scalars, ``tag -> value``.
        markdown: TensorBoard text entries, ``tag -> Markdown``.
        data: the method's structured result for metric callbacks (e.g. LaViSE's per-pair words), or None.
    """

    tables: dict[str, list[dict[str, Any]]]
    meta: dict[str, Any] = field(default_factory=dict)
    pictures: list[Picture] = field(default_factory=list)
    report: str | None = None
    summary: str | None = None
    scalars: dict[str, float] = field(default_factory=dict)
    markdown: dict[str, str] = field(default_factory=dict)
    data: Any = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The main table."""
        return next(iter(self.tables.values())) if self.tables else []


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(round(v, 8))
    return v


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The rows as CSV (leading columns first, floats as the shortest repr of their 8-decimal rounding), atomic."""
    buf = io.StringIO()
    cols = columns_of(rows)
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k, "")) for k in cols})
    return atomic_write_text(path, buf.getvalue())


def write_json(rows: Sequence[dict[str, Any]], path: str | Path, **meta: Any) -> Path:
    """``{**meta, columns, rows}`` as JSON (NaN as null, infinities as strings), atomic."""
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    for r in clean:
        for k, v in r.items():
            if isinstance(v, float) and math.isinf(v):
                r[k] = "inf" if v > 0 else "-inf"
    return atomic_write_json(path, {**meta, "columns": columns_of(rows), "rows": clean})


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
