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

Tables of other shapes (several concepts per unit in HINT, several components per class in NMF) are browsed in
``report.html`` through :class:`ReportView`: which table, which column groups its rows, which column names a row
within its group, and which columns are flags, pictures, per-group details or links to another view's groups.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from lit_explain.atomic import atomic_write_json, atomic_write_text

__all__ = ["LEADING_COLUMNS", "MethodResult", "Picture", "ReportView", "check_views", "columns_of", "write_csv",
           "write_json", "read_csv"]

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


@dataclass(frozen=True)
class ReportView:
    """A section of ``report.html`` browsing a table whose rows are items grouped by a key column.

    The (unit, range) browser of the dissection table needs no view (``MethodResult.report`` names that table).
    Other tables hold several rows per thing explained: ``hint_neurons`` one per (unit, concept), NMF's
    ``components`` one per (class, component). A view says how to browse such a table: the page lists its groups,
    each followed by its item rows, and shows the selected group in a detail pane (its ``details`` row, the
    pictures of its items, every column of its items). Groups are listed in ascending order of their key when
    every key is a number (units, classes), else in the order first seen (``details`` rows first), which keeps a
    method's own order (HINT's concepts in hierarchy order). ``#v=<name>&g=<group>&i=<item>`` in the URL selects a
    group and one of its items; the view's rows and every string in them are data, escaped on the page.

    Args:
        name: the view's name: its tab, its key in the URL (``v=``) and the plural noun counting its groups
            ("units", "classes"); letters, digits, ``_`` and ``-``, unique among a result's views.
        table: the table (a key of ``MethodResult.tables``) whose rows are the items.
        group: the column whose value groups the rows: one group per distinct value (HINT: ``unit``).
        item: the column naming a row within its group, distinct within a group (HINT: ``concept``).
        title: a column naming a group beside its key (NMF: ``class_name``), read from the group's ``details``
            row when it has one, else from its first row; not shown where it repeats the key.
        order: the column ordering the items of a group, ``-<column>`` for descending; None keeps table order.
        columns: the columns listed per item (default: every column but ``group``, ``title`` and ``picture``);
            the detail pane shows every column.
        flags: boolean columns, each offered as a filter "only rows where <flag>" and counted per group.
        only: the flags whose filter is on when the page opens (HINT: ``responsible``, so a unit lists the
            concepts it is responsible for and a concept its top units).
        picture: a column holding the path of a PNG under the output folder, relative and without ``..`` (NMF:
            ``prototype_picture``, the component's prototype strip): the item's card in the detail pane.
        details: a table with one row per group, keyed by the ``group`` column (NMF: ``classes``, with the
            prediction-from-components numbers); its groups without items (a skipped class) are listed too.
        summary: columns of the ``details`` row shown on the group's line of the list, where the row has them.
        links: the name of another view whose groups are this view's items; items link there (HINT: a unit's
            concepts link to the concept view, a concept's units back to the unit view).
        refs: other columns whose values are groups of a view, ``{column: view name}`` (NMF's contrasts:
            ``class_a`` and ``class_b`` name groups of the class view). Their cells, in the item rows and in the
            details row, link to that group; and that view's groups list, on their line and in their detail pane,
            the groups of this view that refer to them (a class lists the pairs it is part of), so both directions
            are one click. Neither the ``group`` nor the ``item`` column (``links`` is the item's).
    """

    name: str
    table: str
    group: str
    item: str
    title: str | None = None
    order: str | None = None
    columns: tuple[str, ...] | None = None
    flags: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    picture: str | None = None
    details: str | None = None
    summary: tuple[str, ...] = ()
    links: str | None = None
    refs: Mapping[str, str] | tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for f in ("columns", "flags", "only", "summary"):  # lists from configs or JSON: frozen tuples
            v = getattr(self, f)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, f, (v,) if isinstance(v, str) else tuple(v))
        refs = self.refs.items() if isinstance(self.refs, Mapping) else self.refs  # a frozen, hashable tuple
        object.__setattr__(self, "refs", tuple((str(c), str(t)) for c, t in refs))
        cols = [c for c, _ in self.refs]
        if len(set(cols)) != len(cols):
            raise ValueError(f"ReportView {self.name!r}: refs name a column twice: {cols}")
        if set(cols) & {self.group, self.item}:
            raise ValueError(f"ReportView {self.name!r}: refs may not name the group or item column "
                             f"({self.group!r}, {self.item!r}); an item links through links=")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(self.name)):
            raise ValueError(f"ReportView: name must be letters, digits, '_' or '-' (it goes into the URL), "
                             f"got {self.name!r}")
        if self.group == self.item:
            raise ValueError(f"ReportView {self.name!r}: group and item are the same column {self.group!r}")
        if not set(self.only) <= set(self.flags):
            raise ValueError(f"ReportView {self.name!r}: only={list(self.only)} must be among flags="
                             f"{list(self.flags)}")
        if self.summary and self.details is None:
            raise ValueError(f"ReportView {self.name!r}: summary columns {list(self.summary)} need a details table")

    def used_columns(self) -> list[str]:
        """The columns of :attr:`table` this view reads (each must exist when the table has rows)."""
        cols = [self.group, self.item, *(self.columns or ()), *self.flags]
        if self.order:
            cols.append(self.order.removeprefix("-"))
        if self.picture:
            cols.append(self.picture)
        if self.title and self.details is None:
            cols.append(self.title)
        return list(dict.fromkeys(cols))


def check_views(views: Sequence[ReportView], tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Raise ValueError unless ``views`` can browse ``tables``: one or more views with distinct names, tables and
    links and refs that exist (a refs column in some row of the table or the details table when they have
    rows), the group column in every row of a view's table and details table and the item column in
    every row of its table, each other column of the table the view reads in some row when there are rows (a row
    may lack one), items distinct within each group. A details table's other columns are optional (a class the
    NMF skipped has no prediction numbers; when it skipped them all, no row has them)."""
    names = [v.name for v in views]
    if not views or len(set(names)) != len(names):
        raise ValueError(f"report views must be one or more, with distinct names; got {names}")
    for v in views:
        for t in (v.table, v.details):
            if t is not None and t not in tables:
                raise ValueError(f"ReportView {v.name!r}: no table {t!r} in the result (tables: {list(tables)})")
        if v.links is not None and v.links not in names:
            raise ValueError(f"ReportView {v.name!r}: links={v.links!r} names no view (views: {names})")
        for col, target in v.refs:
            if target not in names:
                raise ValueError(f"ReportView {v.name!r}: refs {col!r} -> {target!r} names no view (views: {names})")
            rows = [r for t in (v.table, v.details) if t is not None for r in tables[t]]
            if rows and not any(col in r for r in rows):
                raise ValueError(f"ReportView {v.name!r}: refs column {col!r} is in no row of table {v.table!r}"
                                 + (f" or {v.details!r}" if v.details else ""))
        reads = [(v.table, (v.group, v.item), v.used_columns())]
        if v.details is not None:
            reads.append((v.details, (v.group,), []))
        for t, always, some in reads:
            rows = tables[t]
            for i, r in enumerate(rows):
                missing = [c for c in always if c not in r]
                if missing:
                    raise ValueError(f"ReportView {v.name!r}: row {i} of table {t!r} has no column {missing[0]!r}")
            absent = [c for c in some if rows and not any(c in r for r in rows)]
            if absent:
                raise ValueError(f"ReportView {v.name!r}: table {t!r} has no column {absent[0]!r}")
        seen: set[tuple[str, str]] = set()
        for r in tables[v.table]:
            k = (str(r[v.group]), str(r[v.item]))
            if k in seen:
                raise ValueError(f"ReportView {v.name!r}: {v.group} {k[0]} has two rows with {v.item} {k[1]!r} "
                                 f"(items must be distinct within a group)")
            seen.add(k)


@dataclass
class MethodResult:
    """Everything one run of a method found, handed forward to the writer callbacks.

    Args:
        tables: table name -> rows (dicts with the same keys in the same order); each is written as
            ``<name>.csv`` and ``<name>.json`` (rows plus ``meta``). The first table is the main one.
        meta: run metadata written into every JSON (method, arguments, vocabulary, caches, data size).
        pictures: pictures to save under the output folder and to log to TensorBoard.
        report: what ``report.html`` browses: the name of a table of one row per (unit, range) (the unit
            browser of dissection-like methods), or views (:class:`ReportView`) of tables grouped otherwise
            (checked against the tables here), or None for no report.
        summary: text printed at the end of the run (the project's own summary line), or None.
        scalars: TensorBoard scalars, ``tag -> value``.
        markdown: TensorBoard text entries, ``tag -> Markdown``.
        data: the method's structured result for metric callbacks (e.g. LaViSE's per-pair words), or None.
    """

    tables: dict[str, list[dict[str, Any]]]
    meta: dict[str, Any] = field(default_factory=dict)
    pictures: list[Picture] = field(default_factory=list)
    report: str | Sequence[ReportView] | None = None
    summary: str | None = None
    scalars: dict[str, float] = field(default_factory=dict)
    markdown: dict[str, str] = field(default_factory=dict)
    data: Any = None

    def __post_init__(self) -> None:
        if self.report is not None and not isinstance(self.report, str):
            self.report = (self.report,) if isinstance(self.report, ReportView) else tuple(self.report)
            check_views(self.report, self.tables)

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
