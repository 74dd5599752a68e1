"""A self-contained static HTML report browsing every explained unit of a dissection run (``report.html``).

One file, openable from ``file://`` with no server and no network: inline CSS and JavaScript, the result rows
embedded as JSON in a ``<script type="application/json">`` element (browsers refuse ``fetch`` of local files),
unit cards referenced relatively (``units/unit_0005.png``) or, with ``embed_images``, inlined as data URIs.

The page shows a summary header (method, model, layer, dataset and vocabulary sizes, units above the IoU
threshold, explanations per category), a sortable and filterable table with one row per (unit, range) and
the ranges of a unit grouped together (CCE), a detail pane with the selected unit's cards and every column of
its ranges, and, for compositional labels, the groups of units whose formulas are logically equivalent
(:func:`lit_explain.concepts.formulas.group_equivalent`). Every string is data (concept names come from
datasets), so it is escaped: ``html.escape`` in the header, a JSON encoding with ``<``, ``>`` and ``&`` as
``\\u`` escapes inside the script element, and an ``esc`` helper for everything the script inserts.

The view state lives in the URL fragment, so links are shareable and the page is testable headless:
``#u=5&r=1`` selects unit 5 range 1, ``q=`` filters, ``cat=`` picks a category, ``sort=-iou`` sorts
(``-``: descending), ``above=1`` keeps explanations above the threshold, ``flat=1`` ungroups ranges.
Once rendered, the script sets ``data-ready="1"`` on ``<body>``; uncaught errors go to ``data-errors``.

Tables with several rows per thing explained (HINT's concepts per unit, NMF's components per class) are browsed
by :func:`write_view_report` through :class:`~lit_explain.results.ReportView` sections instead: groups of rows,
each with its item rows, flags, per-group details and pictures, on the same header, styles and escaping, with
``#v=<view>&g=<group>&i=<item>`` in the fragment.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from lit_explain.atomic import atomic_write_text
from lit_explain.concepts.formulas import group_equivalent, parse
from lit_explain.results import LEADING_COLUMNS, ReportView, check_views, columns_of

__all__ = ["write_report", "write_view_report", "equivalence_groups", "CARD_NAME"]

#: Card file stems written by :class:`~callbacks.explanation_writer.ExplanationWriter`: ``unit_<u>[_r<k>]``.
CARD_NAME = re.compile(r"^unit_(\d+)(?:_r(\d+))?$")


def _plain(v: Any) -> Any:
    """A JSON-safe value: numpy/torch scalars unwrapped, NaN -> None, +-inf -> "inf"/"-inf" (as results.py)."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    if isinstance(v, Path):
        return str(v)
    return v


def _num(v: Any) -> float:
    """A cell as a float for the summary: "inf" strings as infinities, anything else non-numeric as NaN."""
    try:
        return float(_plain(v))
    except (TypeError, ValueError):
        return math.nan


def equivalence_groups(labels: Sequence[str], names: Sequence[str]) -> list[list[int]] | None:
    """Groups of positions into ``labels`` whose formulas are logically equivalent (pyeda-exact truth tables).

    Args:
        labels: one printed formula per (unit, range), as :meth:`Formula.to_str` writes them.
        names: the concept vocabulary's names (dense ids), to parse the labels.

    Returns:
        Groups of two or more positions, at least one of length > 1, largest first; None when the analysis does
        not apply (every label is a plain concept name). Labels that do
        not parse as formulas over ``names`` are left out of every group.
    """
    parsed: dict[str, Any] = {}  # label -> Formula (None: not a formula over names)
    classes: dict[tuple, int] = {}  # canonical key -> class; same canonical form implies equivalence
    reps, members = [], []
    for i, label in enumerate(map(str, labels)):
        if label not in parsed:
            try:
                parsed[label] = parse(label, names)
            except (ValueError, IndexError):  # FormulaParseError is a ValueError
                parsed[label] = None
        f = parsed[label]
        if f is None:
            continue
        j = classes.setdefault(f.key, len(reps))
        if j == len(reps):
            reps.append(f)
            members.append([])
        members[j].append(i)
    if not any(f.length > 1 for f in reps):
        return None
    groups = [sorted(i for j in g for i in members[j]) for g in group_equivalent(reps)
              if any(reps[j].length > 1 for j in g)]
    return sorted((g for g in groups if len(g) > 1), key=lambda g: (-len(g), g[0]))


def _card_sources(out: Path, cards: Mapping[str, Path] | None, embed: bool) -> dict[str, str]:
    """``"<unit>/<cluster>"`` -> image src (a relative URL, or a data URI when ``embed``)."""
    if cards is None:
        cards = {p.stem: p for p in sorted((out / "units").glob("unit_*.png"))}
    sources = {}
    for name, path in cards.items():
        m = CARD_NAME.match(Path(str(name)).stem)
        if m is None:
            raise ValueError(f"unit card name {name!r} is not of the form unit_<unit>[_r<range>] "
                             f"(the names ExplanationWriter gives its cards)")
        path = Path(path) if Path(path).is_absolute() else out / path
        if not path.is_file():
            raise FileNotFoundError(f"unit card {path} (card {name!r}) does not exist: write the cards before the "
                                    f"report, or pass cards=None to use the PNGs found in {out / 'units'}")
        key = f"{int(m[1])}/{int(m[2] or 0)}"
        if embed:
            sources[key] = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        else:
            sources[key] = "/".join(quote(p) for p in Path(os.path.relpath(path, out)).parts)
    return sources


def _header(meta: Mapping[str, Any], rows: list[dict[str, Any]], names: Sequence[str] | None, thr: float) -> str:
    """The static summary header (escaped HTML)."""
    e = lambda v: html.escape(str(v))  # noqa: E731
    best: dict[Any, float] = {}
    for r in rows:
        iou = _num(r.get("iou"))
        best[r.get("unit")] = max(best.get(r.get("unit"), -math.inf), iou if iou == iou else -math.inf)
    above = sum(v > thr for v in best.values())
    per_cat: dict[str, list[int]] = {}
    for r in rows:
        c = per_cat.setdefault(str(r.get("category", "")) or "(none)", [0, 0])
        c[0] += 1
        c[1] += _num(r.get("iou")) > thr
    most = max([n for n, _ in per_cat.values()] + [1])
    cats_html = "".join(
        f'<tr><td><span class="cat" data-cat="{e(c)}">{e(c)}</span></td><td>{n}</td><td>{a}</td>'
        f'<td class="catbar"><span style="width:{100 * n / most:.1f}%"><i style="width:{100 * a / max(1, n):.1f}%"></i>'
        f'</span></td></tr>'
        for c, (n, a) in sorted(per_cat.items(), key=lambda kv: (-kv[1][0], kv[0])))
    mean = sum(v for v in best.values() if v > -math.inf) / max(1, len(best))
    has_iou = any("iou" in r for r in rows)  # tables of other methods (WWW, HINT...) have no IoU column
    tiles = [(len(best), "units explained"), (f"{above} / {len(best)}", f"units with IoU > {thr:g}"),
             (f"{mean:.3f}", "mean best IoU"), (meta.get("num_images", "?"), "images"),
             (len(names) if names is not None else "?", "concepts")] if has_iou else \
        [(len(best), "units explained"), (len(rows), "rows"), (meta.get("num_images", "?"), "images")]
    cats_table = (f'<table class="cats"><thead><tr><th>category</th><th>explanations</th><th>IoU&gt;{thr:g}</th>'
                  f'<th></th></tr></thead><tbody>{cats_html}</tbody></table>' if has_iou else "")
    return _summary_html(meta, tiles, [("explanations", len(rows))], cats_table)


def _summary_html(meta: Mapping[str, Any], tiles: Sequence[tuple[Any, str]], counts: Sequence[tuple[str, Any]],
                  aside: str = "") -> str:
    """The header every report shares (escaped HTML): the run's title, number tiles (value, caption), a line of
    facts (weights, then ``counts``, then data shapes), the run configuration, and ``aside`` (HTML) beside them."""
    e = lambda v: html.escape(str(v))  # noqa: E731
    hp = meta.get("hparams") or {}
    facts = [("weights", hp.get("weights")), *counts]
    facts += [(k.replace("_", " "), " × ".join(str(s) for s in meta[k])) for k in ("activation_shape", "mask_shape")
              if meta.get(k)]
    config = json.dumps({k: _plain(v) for k, v in hp.items()}, indent=1, default=str)
    if meta.get("config"):
        config += "\n\n" + str(meta["config"])
    return (f'<h1>{e(meta.get("method", "Dissection"))} <small>{e(hp.get("model", ""))} · layer '
            f'{e(hp.get("layer", ""))}</small></h1><div class="summary"><div><div class="tiles">'
            + "".join(f"<div><b>{e(v)}</b><span>{e(k)}</span></div>" for v, k in tiles)
            + '</div><p class="facts">' + " · ".join(f"{e(k)} <b>{e(v)}</b>" for k, v in facts if v is not None)
            + f'</p><details><summary>run configuration</summary><pre>{e(config)}</pre></details></div>'
            + aside + '</div>')


def write_report(output_dir: str | Path, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any],
                 cards: Mapping[str, Path] | None = None, *, embed_images: bool = False,
                 iou_threshold: float | None = None, filename: str = "report.html") -> Path:
    """Write ``<output_dir>/report.html`` atomically and return its path.

    Args:
        output_dir: the run's output folder (the one holding ``explanations.csv`` and ``units/``).
        rows: the unified result table (:mod:`lit_explain.results`), one dict per (unit, range).
        meta: run metadata as in ``explanations.json``: ``method``, ``hparams`` (``model``, ``layer``,
            ``weights``, ``iou_threshold``), ``vocabulary`` (a ``ConceptVocabulary.to_dict()`` or the object),
            ``num_images``, ``activation_shape``, ``mask_shape``, ``config`` (YAML text); all optional.
        cards: card name (``unit_<u>[_r<k>]``) -> PNG path (absolute, or relative to ``output_dir``); None finds
            ``output_dir/units/unit_*.png``.
        embed_images: inline the cards as base64 data URIs (a file that can be moved alone, but larger).
        iou_threshold: the "interpretable" threshold; default ``meta["hparams"]["iou_threshold"]`` or 0.04.
        filename: name of the report inside ``output_dir``.

    Raises:
        ValueError / FileNotFoundError: a card name that is not ``unit_<u>[_r<k>]``, or a missing card file.
    """
    out = Path(output_dir)
    rows = [{k: _plain(v) for k, v in r.items()} for r in rows]
    hp = meta.get("hparams") or {}
    thr = float(iou_threshold if iou_threshold is not None else hp.get("iou_threshold", 0.04))
    vocab = meta.get("vocabulary")
    names = (vocab.get("names") if isinstance(vocab, Mapping) else getattr(vocab, "names", None)) if vocab else None
    groups = equivalence_groups([r.get("label", "") for r in rows], list(names)) if names else None
    columns = columns_of(rows)
    numeric = [c for c in columns if c not in LEADING_COLUMNS and all(
        isinstance(r.get(c), (int, float)) or r.get(c) in (None, "inf", "-inf") for r in rows)]
    if any(r.get("threshold") not in (None, r.get("range_lo")) for r in rows):
        numeric.insert(0, "threshold")  # shown only when it is not the lower range bound (NetDissect/CoEx)
    data = {"columns": columns, "numeric": numeric, "threshold": thr, "rows": rows, "groups": groups,
            "cards": _card_sources(out, cards, embed_images)}
    return atomic_write_text(out / filename, _page(_TEMPLATE, meta, _header(meta, rows, names, thr), data))


def write_view_report(output_dir: str | Path, tables: Mapping[str, Sequence[Mapping[str, Any]]],
                      views: ReportView | Sequence[ReportView], meta: Mapping[str, Any],
                      pictures: Iterable[str | Path] | None = None, *, embed_images: bool = False,
                      filename: str = "report.html") -> Path:
    """Write ``<output_dir>/report.html`` browsing grouped tables through ``views``, atomically; return its path.

    The page has one tab per view (the first open), a list of the view's groups each followed by its item rows
    (sortable by any column, filtered by words and by the view's flags), and a detail pane with the selected
    group's details row, its items' pictures and every column of its items. A view's ``refs`` columns link to
    groups of another view, and those groups list, on their line and in their detail pane, the groups referring to
    them (NMF: a pair's classes, a class's pairs). ``#v=<view>&g=<group>&i=<item>`` selects; ``q=`` filters,
    ``only=a,b`` sets the flag filters, ``sort=-<column>`` sorts (``-``: descending).

    Args:
        output_dir: the run's output folder (the tables' and pictures' folder).
        tables: table name -> rows (``MethodResult.tables``); only the tables the views read are embedded.
        views: the sections of the page (:class:`~lit_explain.results.ReportView`), checked against ``tables``.
        meta: run metadata, as for :func:`write_report` (``method``, ``hparams``, ``num_images``, ``config``...).
        pictures: the PNG files written for this result (paths relative to ``output_dir``): a row whose picture is
            not among them shows "no picture"; None takes every referenced file that exists.
        embed_images: inline the pictures as base64 data URIs.
        filename: name of the report inside ``output_dir``.

    Raises:
        ValueError: views that do not fit the tables (:func:`~lit_explain.results.check_views`), or a picture path
            that is absolute or leaves ``output_dir``. FileNotFoundError: a file of ``pictures`` is missing.
    """
    out = Path(output_dir)
    views = (views,) if isinstance(views, ReportView) else tuple(views)
    check_views(views, tables)
    used = list(dict.fromkeys(t for v in views for t in (v.table, v.details) if t is not None))
    data_tables = {t: [{k: _plain(x) for k, x in r.items()} for r in tables[t]] for t in used}
    specs = []
    for v in views:
        rows = data_tables[v.table]
        cols = columns_of(rows)
        shown = list(v.columns) if v.columns is not None else [c for c in cols if c not in (v.group, v.title,
                                                                                               v.picture)]
        specs.append({**{f.name: getattr(v, f.name) for f in fields(v)},
                      "shown": [v.item] + [c for c in shown if c != v.item],
                      "all": [c for c in cols if c != v.group],
                      "numeric": [c for c in cols if rows and all(
                          isinstance(r.get(c), (int, float)) or r.get(c) in (None, "inf", "-inf") for r in rows)]})
    refs = {str(r[v.picture]) for v in views if v.picture for r in data_tables[v.table] if r.get(v.picture)}
    data = {"views": specs, "tables": data_tables, "pictures": _picture_sources(out, refs, pictures, embed_images)}
    return atomic_write_text(out / filename, _page(_VIEW_TEMPLATE, meta, _view_header(meta, views, tables), data))


def _picture_sources(out: Path, refs: Iterable[str], written: Iterable[str | Path] | None,
                     embed: bool) -> dict[str, str | None]:
    """Picture path as written in the rows -> image src (relative URL or data URI), None when not written."""
    allowed = None if written is None else {Path(p).as_posix() for p in written}
    sources: dict[str, str | None] = {}
    for ref in sorted(refs):
        rel = Path(ref)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"report picture {ref!r} must be a path inside the output folder, relative, without '..'")
        path = out / rel
        if (allowed is not None and rel.as_posix() not in allowed) or (allowed is None and not path.is_file()):
            sources[ref] = None
        elif not path.is_file():
            raise FileNotFoundError(f"report picture {path} does not exist: write the pictures before the report")
        elif embed:
            sources[ref] = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        else:
            sources[ref] = "/".join(quote(part) for part in rel.parts)
    return sources


def _view_header(meta: Mapping[str, Any], views: Sequence[ReportView],
                 tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """The header of the grouped page: groups per view, groups of the first view holding each of its flags."""
    def groups(v: ReportView, flag: str | None = None) -> int:
        keys = {str(_plain(r[v.group])) for r in tables[v.table] if flag is None or _plain(r.get(flag)) is True}
        if flag is None and v.details is not None:
            keys |= {str(_plain(r[v.group])) for r in tables[v.details]}
        return len(keys)

    tiles = [(groups(v), v.name) for v in views] + [(groups(views[0], f), f"{f} {views[0].name}")
                                                    for f in views[0].flags]
    tiles.append((meta.get("num_images", "?"), "images"))
    used = dict.fromkeys(t for v in views for t in (v.table, v.details) if t is not None)
    return _summary_html(meta, tiles, [(f"{t} rows", len(tables[t])) for t in used])


def _page(template: str, meta: Mapping[str, Any], header: str, data: Any) -> str:
    """``template`` with its title, header (HTML) and data filled in. The data is JSON inside a script element,
    with ``<``, ``>`` and ``&`` as ``\\u`` escapes (they occur only inside strings), so no string of the data can
    close the element or open a comment."""
    hp = meta.get("hparams") or {}
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, default=str)
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")  # only inside strings
    title = f"{meta.get('method', 'Dissection')} · {hp.get('model', '')} · {hp.get('layer', '')}"
    parts = {"TITLE": html.escape(title), "HEADER": header, "DATA": text}
    return re.sub(r"@@(TITLE|HEADER|DATA)@@", lambda m: parts[m[1]], template)  # one pass: no re-substitution


#: Page start up to the opening ``<style>`` (the title filled in by :func:`_page`).
_DOC_START = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>@@TITLE@@</title>
<style>
"""

#: CSS of every report page.
_STYLE = r"""body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2433;background:#f5f6f8}
header{padding:12px 20px;background:#fff;border-bottom:1px solid #dde1e7}
h1{font-size:19px;margin:0 0 8px}h1 small{color:#667;font-weight:400}a{color:#2357c6}button{font:inherit}
.summary{display:flex;gap:12px 40px;flex-wrap:wrap;align-items:flex-start}
.tiles{display:flex;gap:10px}.tiles div{background:#f5f6f8;border-radius:6px;padding:6px 12px;min-width:80px}
.tiles b{display:block;font-size:20px}.tiles span{color:#667;font-size:11px}
.facts{margin:8px 0 0;color:#667}.facts b{color:#1d2433;font-weight:500}
table{border-collapse:collapse}.cats td,.cats th{padding:1px 8px;text-align:left}
.cats td:nth-child(2),.cats td:nth-child(3){text-align:right}
.catbar{width:140px}.catbar span,.catbar i{display:block;height:9px;background:#c7d6f7;border-radius:2px}
.catbar i{background:#4a7de0}
details{margin-top:6px}pre{max-height:240px;overflow:auto;background:#f5f6f8;padding:6px;font-size:11px}
main{display:flex;gap:12px;padding:12px 20px;align-items:flex-start}#left{flex:1 1 62%;min-width:0}
#detail{flex:1 1 38%;position:sticky;top:8px;max-height:calc(100vh - 16px);overflow:auto;background:#fff;
 border:1px solid #dde1e7;border-radius:6px;padding:10px}
.controls{display:flex;gap:10px;align-items:center;margin-bottom:6px;flex-wrap:wrap}
.controls input[type=search]{width:260px;padding:4px}#count{color:#667}
.wrap{overflow:auto;max-height:calc(100vh - 60px);background:#fff;border:1px solid #dde1e7;border-radius:6px}
#units th{position:sticky;top:0;background:#eef1f5;cursor:pointer;padding:4px 6px;text-align:left;white-space:nowrap;
 user-select:none}
#units th.sorted{background:#dbe4f3}#units td{padding:3px 6px;border-top:1px solid #eef0f3;white-space:nowrap}
#units tr.first td{border-top:1px solid #c9cfd8}#units tr td.cont{color:transparent}
#units tbody tr{cursor:pointer}#units tbody tr:hover{background:#f3f7ff}#units tr.sel{background:#ffeeb8!important}
#units tr.low td{color:#8a92a0}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.iou{position:relative;min-width:70px}td.iou b{position:relative;font-weight:500}
td.iou span{position:absolute;left:0;bottom:2px;height:3px;background:#6f97e8;border-radius:2px}
td.label{font-weight:600;max-width:340px;overflow:hidden;text-overflow:ellipsis}
.cat{display:inline-block;padding:0 6px;border-radius:8px;font-size:11px;background:hsl(var(--h),70%,88%);
 color:hsl(var(--h),60%,25%)}
figure{margin:0 0 10px;border:2px solid transparent;border-radius:4px}figure.sel{border-color:#f2b600}
figure img{max-width:100%;display:block;image-rendering:pixelated}figcaption{font-size:12px;color:#445;padding:2px 4px}
.nocard{padding:3px 6px;background:#f5f6f8;color:#889;font-size:11px}#detail h2{margin:0 0 8px;font-size:16px}
#detail table td,#detail table th{padding:1px 8px 1px 0;text-align:left;vertical-align:top}
#detail table td:first-child{color:#667}
#groups{padding:0 20px 20px}#groups li{margin:3px 0}code{background:#eef1f5;padding:0 3px;border-radius:3px}
"""

#: Between the style and the header: uncaught script errors are recorded in ``<body data-errors>``.
_BODY_START = r"""</style></head>
<body data-ready="0">
<script>window.addEventListener("error", function (e) {
  var b = document.body, p = b.getAttribute("data-errors");
  b.setAttribute("data-errors", (p ? p + " | " : "") + e.message);
});</script>
"""

#: Script helpers of every report page: HTML escaping, numbers and their display, category badges.
_JS_HELPERS = r"""var ESC = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};
function $(id) { return document.getElementById(id); }
function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return ESC[c]; }); }
function num(v) {
  if (v === "inf") return Infinity;
  if (v === "-inf") return -Infinity;
  return typeof v === "number" ? v : typeof v === "boolean" ? +v : NaN;
}
function fmt(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "boolean") return v ? "\u2713" : "";
  if (v === "inf") return "\u221e";
  if (v === "-inf") return "\u2212\u221e";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(parseFloat(v.toPrecision(4)));
  return String(v);
}
function hue(s) {  // a stable colour per category name
  var h = 0; s = String(s);
  for (var i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) % 360;
  return h;
}
function cat(s) { return '<span class="cat" style="--h:' + hue(s) + '">' + esc(s) + "</span>"; }
"""

_TEMPLATE = _DOC_START + _STYLE + _BODY_START + r"""<header>@@HEADER@@</header>
<main><section id="left"><div class="controls">
<input type="search" id="q" placeholder="filter: concept, category or unit number">
<select id="cat"><option value="">all categories</option></select>
<label><input type="checkbox" id="above"> IoU &gt; <span id="thr"></span> only</label>
<label id="grouplab"><input type="checkbox" id="group" checked> group ranges by unit</label>
<span id="count"></span></div>
<div class="wrap"><table id="units"><thead></thead><tbody></tbody></table></div><div id="more"></div></section>
<aside id="detail"></aside></main>
<section id="groups"></section>
<script type="application/json" id="report-data">@@DATA@@</script>
<script>
(function () {
"use strict";
var D = JSON.parse(document.getElementById("report-data").textContent), R = D.rows, T = D.threshold;
var HAS_IOU = D.columns.indexOf("iou") >= 0, HAS_RANGE = D.columns.indexOf("range_lo") >= 0;
var SORT0 = HAS_IOU ? "iou" : "unit";  // the default order: best IoU first, else by unit
""" + _JS_HELPERS + r"""function cl(r) { return r.cluster || 0; }
function key(r) { return r.unit + "/" + cl(r); }
function byCluster(a, b) { return cl(a) - cl(b); }
function bounds(r) { return "[" + esc(fmt(r.range_lo)) + ", " + esc(fmt(r.range_hi)) + ")"; }

var byUnit = {}, multi = false, inGroup = {}, cats = {};
R.forEach(function (r, i) {
  r._i = i; (byUnit[r.unit] = byUnit[r.unit] || []).push(r);
  if (r.category) cats[r.category] = 1;
});
Object.keys(byUnit).forEach(function (u) { byUnit[u].sort(byCluster); if (byUnit[u].length > 1) multi = true; });
(D.groups || []).forEach(function (g, k) { g.forEach(function (i) { inGroup[i] = k; }); });
var maxIoU = Math.max.apply(null, R.map(function (r) { return num(r.iou) || 0; }).concat([1e-9]));
// [column, heading]; bounds stand for range_lo and range_hi, "_card" marks rows that have a card
var COLS = [["unit", "unit"], ["cluster", "range"], ["range_lo", "bounds"], ["label", "label"],
  ["category", "category"], ["length", "len"], ["iou", "IoU"]].filter(function (c) {
  return D.columns.indexOf(c[0]) >= 0 && (c[0] !== "cluster" || multi);
}).concat(D.numeric.map(function (c) { return [c, c.replace(/_/g, " ")]; }), [["_card", "card"]]);
var S = {q: "", cat: "", above: false, sort: SORT0, desc: HAS_IOU, flat: !multi, sel: null, limit: 1000};

function val(r, c) { return c === "_card" ? (D.cards[key(r)] ? 1 : 0) : r[c]; }
function cmp(a, b) {  // the current sort; numbers before missing values, then unit and range
  var x = val(a, S.sort), y = val(b, S.sort), nx = num(x), ny = num(y), d;
  if (!isNaN(nx) || !isNaN(ny)) {
    if (isNaN(nx)) return 1;
    if (isNaN(ny)) return -1;
    d = nx - ny;
  } else d = String(x == null ? "" : x).localeCompare(String(y == null ? "" : y));
  if (S.desc) d = -d;
  return d || (a.unit - b.unit) || (cl(a) - cl(b));
}
function keep(r) {  // digits match the unit number, other words the label or category
  if (S.cat && r.category !== S.cat) return false;
  if (S.above && !(num(r.iou) > T)) return false;
  var hay = (String(r.label) + " " + String(r.category)).toLowerCase();
  return S.q.toLowerCase().split(/\s+/).filter(Boolean).every(function (t) {
    return /^\d+$/.test(t) ? String(r.unit) === t : hay.indexOf(t) >= 0;
  });
}
function ordered() {  // grouped: units ordered by their best range, ranges in ascending order inside
  var rows = R.filter(keep);
  if (S.flat) return rows.sort(cmp);
  var groups = {}, list = [];
  rows.forEach(function (r) {
    if (!groups[r.unit]) list.push(groups[r.unit] = []);
    groups[r.unit].push(r);
  });
  list.forEach(function (g) { g.best = g.slice().sort(cmp)[0]; g.sort(byCluster); });
  list.sort(function (a, b) { return cmp(a.best, b.best); });
  return [].concat.apply([], list);
}
function cell(r, c, prev) {
  var v = r[c];
  var cont = prev && prev.unit === r.unit && !S.flat;  // later ranges of a grouped unit: unit number hidden
  if (c === "unit") return '<td class="n' + (cont ? " cont" : "") + '">' + esc(v) + "</td>";
  if (c === "range_lo") return '<td class="n">' + bounds(r) + "</td>";
  if (c === "label") return '<td class="label" title="' + esc(v) + '">' + esc(v) + "</td>";
  if (c === "category") return "<td>" + (v ? cat(v) : "") + "</td>";
  if (c === "iou") {
    var w = (100 * Math.max(0, num(v) || 0) / maxIoU).toFixed(1);
    return '<td class="n iou"><span style="width:' + w + '%"></span><b>' + esc(fmt(v)) + "</b></td>";
  }
  if (c === "_card") return '<td class="n">' + (D.cards[key(r)] ? "\u25a3" : "") + "</td>";
  return '<td class="n">' + esc(fmt(v)) + "</td>";
}
function renderTable() {
  $("units").tHead.innerHTML = "<tr>" + COLS.map(function (c) {
    var on = S.sort === c[0];
    return '<th data-c="' + esc(c[0]) + '"' + (on ? ' class="sorted"' : "") + ">" + esc(c[1]) +
      (on ? (S.desc ? " \u25be" : " \u25b4") : "") + "</th>";
  }).join("") + "</tr>";
  var rows = ordered(), shown = rows.slice(0, S.limit), h = [], prev = null, units = {};
  shown.forEach(function (r) {
    var cls = [];
    if (!prev || prev.unit !== r.unit || S.flat) cls.push("first");
    if (HAS_IOU && !(num(r.iou) > T)) cls.push("low");
    if (r._i === S.sel) cls.push("sel");
    h.push('<tr data-i="' + r._i + '" data-unit="' + esc(r.unit) + '" data-cluster="' + esc(cl(r)) + '" class="' +
      cls.join(" ") + '">' + COLS.map(function (c) { return cell(r, c[0], prev); }).join("") + "</tr>");
    prev = r;
  });
  $("units").tBodies[0].innerHTML = h.join("");
  rows.forEach(function (r) { units[r.unit] = 1; });
  $("count").textContent = rows.length + " of " + R.length + " explanations, " + Object.keys(units).length + " units";
  $("more").innerHTML = rows.length > shown.length ? '<button id="showall">show all ' + rows.length + "</button>" : "";
  if ($("showall")) $("showall").onclick = function () { S.limit = Infinity; renderTable(); };
}
function link(i) {
  var r = R[i], many = byUnit[r.unit].length > 1;
  return '<a href="#u=' + encodeURIComponent(r.unit) + "&r=" + encodeURIComponent(cl(r)) + '">unit ' + esc(r.unit) +
    (many ? " r" + esc(cl(r)) : "") + "</a>";
}
function renderDetail() {
  var d = $("detail");
  if (S.sel === null || !R[S.sel]) { d.innerHTML = "<p>Select a unit in the table.</p>"; return; }
  var r0 = R[S.sel], rs = byUnit[r0.unit], many = rs.length > 1;
  var h = ["<h2>unit " + esc(r0.unit) + (many ? " <small>(" + rs.length + " ranges)</small>" : "") + "</h2>"];
  rs.forEach(function (r) {
    var src = D.cards[key(r)];
    h.push('<figure class="' + (r === r0 ? "sel" : "") + '">' + (src ? '<img alt="unit card" src="' + esc(src) + '">' :
      '<div class="nocard">' + (HAS_IOU ? "no card (cards are drawn for the highest-IoU explanations only)" :
        "no card for this row") + "</div>") + "<figcaption>" +
      (many ? "range " + esc(cl(r)) + " " : "") + (HAS_RANGE ? bounds(r) + ": " : "") + "<b>" + esc(r.label) +
      "</b> " + (r.category ? cat(r.category) : "") + (HAS_IOU ? " IoU " + esc(fmt(r.iou)) : "") +
      "</figcaption></figure>");
  });
  h.push("<table><thead><tr><th></th>" + rs.map(function (r) {
    return "<th>" + (many ? "range " + esc(cl(r)) : "") + "</th>";
  }).join("") + "</tr></thead><tbody>");
  D.columns.forEach(function (c) {
    h.push("<tr><td>" + esc(c) + "</td>" + rs.map(function (r) { return "<td>" + esc(fmt(r[c])) + "</td>"; }).join("") +
      "</tr>");
  });
  h.push("</tbody></table>");
  rs.forEach(function (r) {
    var g = inGroup[r._i];
    if (g === undefined) return;
    h.push("<p>" + (many ? "range " + esc(cl(r)) + ": " : "") + "equivalent explanations in " +
      D.groups[g].filter(function (i) { return i !== r._i; }).map(link).join(", ") + "</p>");
  });
  d.innerHTML = h.join("");
  d.querySelectorAll("img").forEach(function (img) {  // data-loaded: the browser decoded the card (tests read it)
    function done() { img.setAttribute("data-loaded", img.naturalWidth > 0 ? "1" : "error"); }
    if (img.complete) done();
    img.addEventListener("load", done);
    img.addEventListener("error", done);
  });
}
function renderGroups() {
  if (!D.groups || !D.groups.length) return;
  $("groups").innerHTML = "<h2>Logically equivalent explanations</h2><p>Units whose formulas are equivalent " +
    "(exact truth tables over their concepts), even where written differently.</p><ul>" +
    D.groups.map(function (g) {
      var forms = {};
      g.forEach(function (i) { forms[R[i].label] = 1; });
      return '<li data-group="' + g.join(",") + '">' + Object.keys(forms).map(function (f) {
        return "<code>" + esc(f) + "</code>";
      }).join(" \u2261 ") + ": " + g.map(link).join(", ") + "</li>";
    }).join("") + "</ul>";
}
function writeHash() {
  var p = [];
  if (S.sel !== null) p.push("u=" + encodeURIComponent(R[S.sel].unit), "r=" + encodeURIComponent(cl(R[S.sel])));
  if (S.q) p.push("q=" + encodeURIComponent(S.q));
  if (S.cat) p.push("cat=" + encodeURIComponent(S.cat));
  if (S.above) p.push("above=1");
  if (multi && S.flat) p.push("flat=1");
  if (!(S.sort === SORT0 && S.desc === HAS_IOU)) p.push("sort=" + (S.desc ? "-" : "") + encodeURIComponent(S.sort));
  try { history.replaceState(null, "", "#" + p.join("&")); } catch (e) { /* some file:// setups refuse */ }
}
function readHash() {
  var h = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
    var k = kv.split("=");
    if (k[0]) h[k[0]] = decodeURIComponent(k.slice(1).join("="));
  });
  if (h.q !== undefined) S.q = h.q;
  if (h.cat !== undefined) S.cat = h.cat;
  if (h.above) S.above = h.above === "1";
  if (h.flat) S.flat = h.flat === "1" || !multi;
  if (h.sort) { S.desc = h.sort[0] === "-"; S.sort = h.sort.replace(/^-/, ""); }
  if (h.u !== undefined) {
    var m = (byUnit[h.u] || []).filter(function (r) { return String(cl(r)) === (h.r || "0"); });
    if (!m.length) m = byUnit[h.u] || [];
    if (m.length) S.sel = m[0]._i;
  }
  $("q").value = S.q; $("cat").value = S.cat; $("above").checked = S.above; $("group").checked = !S.flat;
}
function all() { renderTable(); renderDetail(); }
function on(id, ev, f) { $(id)["on" + ev] = function (e) { f.call(this, e); renderTable(); writeHash(); }; }

$("cat").innerHTML += Object.keys(cats).sort().map(function (c) {
  return '<option value="' + esc(c) + '">' + esc(c) + "</option>";
}).join("");
$("thr").textContent = String(T);
if (!multi) $("grouplab").style.display = "none";
if (!HAS_IOU) $("above").parentNode.style.display = "none";
document.querySelectorAll(".cats .cat").forEach(function (e) {
  e.style.setProperty("--h", hue(e.getAttribute("data-cat")));
});
on("q", "input", function () { S.q = this.value; S.limit = 1000; });
on("cat", "change", function () { S.cat = this.value; });
on("above", "change", function () { S.above = this.checked; });
on("group", "change", function () { S.flat = !this.checked; });
$("units").tHead.onclick = function (e) {
  var th = e.target.closest("th");
  if (!th) return;
  var c = th.getAttribute("data-c");
  if (S.sort === c) S.desc = !S.desc;
  else { S.sort = c; S.desc = ["label", "category", "unit", "cluster"].indexOf(c) < 0; }
  renderTable(); writeHash();
};
$("units").tBodies[0].onclick = function (e) {
  var tr = e.target.closest("tr");
  if (tr) { S.sel = +tr.getAttribute("data-i"); all(); writeHash(); }
};
document.addEventListener("keydown", function (e) {  // arrow keys walk the table
  if (e.target.tagName === "INPUT" || (e.key !== "ArrowDown" && e.key !== "ArrowUp")) return;
  var rows = ordered(), k = rows.findIndex(function (r) { return r._i === S.sel; });
  var n = rows[Math.max(0, Math.min(rows.length - 1, k + (e.key === "ArrowDown" ? 1 : -1)))];
  if (!n) return;
  S.sel = n._i; all(); writeHash(); e.preventDefault();
  var tr = document.querySelector('tr[data-i="' + n._i + '"]');
  if (tr) tr.scrollIntoView({block: "nearest"});
});
window.addEventListener("hashchange", function () { readHash(); all(); });
readHash();
if (S.sel === null && R.length) S.sel = (ordered()[0] || R[0])._i;
all();
renderGroups();
document.body.setAttribute("data-ready", "1");
})();
</script></body></html>
"""

#: CSS of the grouped page (:func:`write_view_report`) beside :data:`_STYLE`.
_VIEW_STYLE = r"""#tabs{display:flex;gap:4px;padding:10px 20px 0}#tabs a{padding:4px 14px;border:1px solid #dde1e7;
 border-radius:6px 6px 0 0;background:#eef1f5;text-decoration:none}#tabs a.on{background:#fff;color:#1d2433;
 font-weight:600}
#items th{position:sticky;top:0;background:#eef1f5;cursor:pointer;padding:4px 6px;text-align:left;white-space:nowrap;
 user-select:none}
#items th.sorted{background:#dbe4f3}#items td{padding:3px 6px;border-top:1px solid #eef0f3;white-space:nowrap}
#items tbody tr{cursor:pointer}#items tbody tr:hover{background:#f3f7ff}#items tr.sel{background:#ffeeb8!important}
#items tr.grp td{background:#f7f8fa;border-top:1px solid #c9cfd8;padding-top:5px}
#items tr.grp.sel td{background:#fff5d6}
#items td.label{max-width:340px;overflow:hidden;text-overflow:ellipsis}.sub{color:#667}
.flag{display:inline-block;padding:0 6px;margin-left:4px;border-radius:8px;font-size:11px;background:#e4ebfa;color:#234}
#detail table{margin-bottom:10px}#detail tr.sel td{background:#ffeeb8}.hidden{color:#889}
.back{margin:0 0 8px}.refs a{white-space:nowrap}
"""

_VIEW_TEMPLATE = _DOC_START + _STYLE + _VIEW_STYLE + _BODY_START + r"""<header>@@HEADER@@</header>
<nav id="tabs"></nav>
<main><section id="left"><div class="controls">
<input type="search" id="q" placeholder="filter: words, or a number for a group or an item">
<span id="flags"></span><span id="count"></span></div>
<div class="wrap"><table id="items"><thead></thead><tbody></tbody></table></div><div id="more"></div></section>
<aside id="detail"></aside></main>
<script type="application/json" id="report-data">@@DATA@@</script>
<script>
(function () {
"use strict";
var D = JSON.parse(document.getElementById("report-data").textContent);
""" + _JS_HELPERS + r"""var HAS = Object.prototype.hasOwnProperty;
function own(o, k) { return o && HAS.call(o, k) ? o[k] : undefined; }  // no inherited names ("constructor")
function str(v) { return v === null || v === undefined ? "" : String(v); }
function by(c, desc) {  // rows by column c: numbers before missing values, else text; ties in table order
  return function (a, b) {
    var x = a.r[c], y = b.r[c], nx = num(x), ny = num(y), d;
    if (!isNaN(nx) || !isNaN(ny)) {
      if (isNaN(nx)) return 1;
      if (isNaN(ny)) return -1;
      d = nx - ny;
    } else d = str(x).localeCompare(str(y));
    return (desc ? -d : d) || a.n - b.n;
  };
}

// per view: its groups by key (string), in order (ascending when every key is a number, else first seen)
var V = D.views.map(function (sp) {
  var G = Object.create(null), keys = [];
  function grp(raw) {
    var k = str(raw);
    if (!G[k]) { G[k] = {key: k, raw: raw, items: [], details: null, byItem: Object.create(null)}; keys.push(k); }
    return G[k];
  }
  (sp.details ? D.tables[sp.details] : []).forEach(function (r) { grp(r[sp.group]).details = r; });
  D.tables[sp.table].forEach(function (r, n) {
    var g = grp(r[sp.group]), it = {r: r, n: n, g: g, k: str(r[sp.item])};
    g.items.push(it); g.byItem[it.k] = it;
  });
  if (keys.every(function (k) { return typeof G[k].raw === "number"; })) {
    keys.sort(function (a, b) { return G[a].raw - G[b].raw; });
  }
  var order = sp.order ? by(sp.order.replace(/^-/, ""), sp.order.charAt(0) === "-") :
    function (a, b) { return a.n - b.n; };
  keys.forEach(function (k) {
    var g = G[k], src = g.details && HAS.call(g.details, sp.title) ? g.details : (g.items[0] || {}).r;
    g.items.sort(order);
    g.title = sp.title && src ? str(src[sp.title]) : "";
    if (g.title === g.key) g.title = "";  // a name that repeats the key says nothing
  });
  return {sp: sp, G: G, keys: keys, total: D.tables[sp.table].length};
});
var VI = Object.create(null);  // view name -> index
V.forEach(function (w, k) { VI[w.sp.name] = k; w.ref = Object.create(null); w.sp.refs.forEach(function (p) {
  w.ref[p[0]] = p[1];
}); });
V.forEach(function (w, k) {  // back references: a group of a view lists the groups of other views that name it
  w.keys.forEach(function (key) {
    var g = w.G[key], seen = Object.create(null);
    [g.details].concat(g.items.map(function (it) { return it.r; })).forEach(function (r) {
      if (!r) return;
      w.sp.refs.forEach(function (p) {
        var t = V[VI[p[1]]], v = own(r, p[0]);
        if (v === undefined || v === null || !t.G[str(v)] || seen[p[1] + "\u0000" + str(v)]) return;
        seen[p[1] + "\u0000" + str(v)] = true;
        (t.G[str(v)].back = t.G[str(v)].back || []).push({v: k, g: g});
      });
    });
  });
});
var S;  // view state: v (view index), q, only (flag -> true), sort, desc, g (group key), i (item key), limit

function fresh(v) {
  var only = Object.create(null);
  V[v].sp.only.forEach(function (f) { only[f] = true; });
  return {v: v, q: "", only: only, sort: null, desc: false, g: null, i: null, limit: 1000};
}
function W() { return V[S.v]; }
function anyOnly() { return Object.keys(S.only).length > 0; }
function match(g, it) {  // every word: a number equal to the group's or the item's key, else part of any text
  var text = g.key + " " + g.title;
  if (it) Object.keys(it.r).forEach(function (c) { if (typeof it.r[c] === "string") text += " " + it.r[c]; });
  text = (text + (it ? " " + it.k : "")).toLowerCase();
  return S.q.toLowerCase().split(/\s+/).filter(Boolean).every(function (t) {
    return /^\d+$/.test(t) ? t === g.key || (!!it && t === it.k) : text.indexOf(t) >= 0;
  });
}
function passes(it) {
  return W().sp.flags.every(function (f) { return !S.only[f] || it.r[f] === true; }) && match(it.g, it);
}
function listed() {  // [group, its rows that pass] in the current order; groups without rows only when unfiltered
  var w = W(), out = [];
  w.keys.forEach(function (k) {
    var g = w.G[k], its = g.items.filter(passes);
    if (its.length || (!g.items.length && !anyOnly() && match(g, null))) out.push([g, its]);
  });
  if (S.sort) {
    var f = by(S.sort, S.desc);
    out.forEach(function (e) { e[1].sort(f); });
    out.sort(function (a, b) {
      return !a[1].length || !b[1].length ? !a[1].length - !b[1].length : f(a[1][0], b[1][0]);
    });
  }
  return out;
}
function groupHref(view, key) { return esc("#v=" + encodeURIComponent(view) + "&g=" + encodeURIComponent(key)); }
function itemLink(k) {  // an item names a group of the linked view
  var sp = W().sp;
  return sp.links ? '<a href="' + groupHref(sp.links, k) + '">' + esc(k) + "</a>" : esc(k);
}
function value(r, c) {  // a cell's text; a refs column's value links to the group of the view it names
  var t = own(W().ref, c), v = r[c];
  if (t !== undefined && v !== undefined && v !== null && V[VI[t]].G[str(v)]) {
    return '<a class="ref" data-ref="' + esc(t) + '" href="' + groupHref(t, str(v)) + '">' + esc(fmt(v)) + "</a>";
  }
  return esc(fmt(v));
}
function backLinks(g) {  // the groups of other views that name g, by view: "<view>: <a>group title</a>, ..."
  var by = [];
  (g.back || []).forEach(function (b) {
    if (!by.length || by[by.length - 1][0] !== b.v) by.push([b.v, []]);
    by[by.length - 1][1].push(b.g);
  });
  return by.map(function (e) {
    var sp = V[e[0]].sp;
    return '<span class="refs" data-view="' + esc(sp.name) + '">' + esc(sp.name) + ": " + e[1].map(function (o) {
      return '<a href="' + groupHref(sp.name, o.key) + '" data-group="' + esc(o.key) + '">' + esc(sp.group) + " " +
        esc(o.key) + (o.title ? " " + esc(o.title) : "") + "</a>";
    }).join(", ") + "</span>";
  });
}
function badges(g) {
  return W().sp.flags.map(function (f) {
    var n = g.items.filter(function (it) { return it.r[f] === true; }).length;
    return n ? '<span class="flag" data-flag="' + esc(f) + '">' + esc(f) + " " + n + "</span>" : "";
  }).join("");
}
function groupLine(g, its) {
  var sp = W().sp, h = "<b>" + esc(sp.group) + " " + esc(g.key) + "</b>" + (g.title ? " " + esc(g.title) : "");
  h += ' <span class="sub">' + its.length + (its.length < g.items.length ? " of " + g.items.length : "") + " " +
    esc(sp.item) + " rows</span>" + badges(g);
  sp.summary.forEach(function (c) {  // what the details row has (a skipped class has no numbers)
    var v = own(g.details, c);
    if (v !== undefined && v !== null) {
      h += ' <span class="sub">\u00b7 ' + esc(c.replace(/_/g, " ")) + "</span> " + esc(fmt(v));
    }
  });
  backLinks(g).forEach(function (b) { h += ' <span class="sub">\u00b7</span> ' + b; });
  return h;
}
function cell(it, c) {
  var sp = W().sp;
  if (c === "_card") return '<td class="n">' + (own(D.pictures, str(it.r[sp.picture])) ? "\u25a3" : "") + "</td>";
  if (c === sp.item) return '<td class="label">' + itemLink(it.k) + "</td>";
  return "<td" + (sp.numeric.indexOf(c) >= 0 ? ' class="n"' : "") + ">" + value(it.r, c) + "</td>";
}
function renderTabs() {
  $("tabs").innerHTML = V.length < 2 ? "" : V.map(function (w, k) {
    return '<a href="' + esc("#v=" + encodeURIComponent(w.sp.name)) + '" data-view="' + esc(w.sp.name) + '"' +
      (k === S.v ? ' class="on"' : "") + ">" + esc(w.sp.name) + "</a>";
  }).join("");
  $("flags").innerHTML = W().sp.flags.map(function (f) {
    return '<label><input type="checkbox" data-flag="' + esc(f) + '"' + (S.only[f] ? " checked" : "") + "> only " +
      esc(f) + "</label> ";
  }).join("");
  $("q").value = S.q;
}
function renderTable() {
  var w = W(), sp = w.sp, cols = sp.shown.concat(sp.picture ? ["_card"] : []), L = listed(), h = [], n = 0, all = 0;
  // n: item rows drawn, at most S.limit (a group's line is drawn with its first row)
  $("items").tHead.innerHTML = "<tr>" + cols.map(function (c) {
    if (c === "_card") return "<th>card</th>";
    var on = S.sort === c;
    return '<th data-c="' + esc(c) + '"' + (on ? ' class="sorted"' : "") + ">" + esc(c.replace(/_/g, " ")) +
      (on ? (S.desc ? " \u25be" : " \u25b4") : "") + "</th>";
  }).join("") + "</tr>";
  L.forEach(function (e) { all += e[1].length; });
  L.forEach(function (e) {
    if (n >= S.limit) return;
    var g = e[0], part = e[1].slice(0, S.limit - n);
    h.push('<tr class="grp' + (g.key === S.g && S.i === null ? " sel" : "") + '" data-group="' + esc(g.key) +
      '"><td colspan="' + cols.length + '">' + groupLine(g, e[1]) + "</td></tr>");
    part.forEach(function (it) {
      h.push('<tr class="item' + (g.key === S.g && it.k === S.i ? " sel" : "") + '" data-group="' + esc(g.key) +
        '" data-item="' + esc(it.k) + '">' + cols.map(function (c) { return cell(it, c); }).join("") + "</tr>");
    });
    n += part.length;
  });
  $("items").tBodies[0].innerHTML = h.join("");
  $("count").textContent = all + " of " + w.total + " rows, " + L.length + " " + sp.name;
  $("more").innerHTML = all > n ? '<button id="showall">show all ' + all + " rows</button>" : "";
  if ($("showall")) $("showall").onclick = function () { S.limit = Infinity; renderTable(); };
}
function renderDetail() {
  var sp = W().sp, d = $("detail"), g = S.g === null ? null : W().G[S.g];
  if (!g) { d.innerHTML = "<p>Select a " + esc(sp.group) + " in the table.</p>"; return; }
  var h = ["<h2>" + esc(sp.group) + " " + esc(g.key) + (g.title ? " <small>" + esc(g.title) + "</small>" : "") +
    "</h2>"];
  backLinks(g).forEach(function (b) { h.push('<p class="back">' + b + "</p>"); });
  if (g.details) {
    h.push('<table class="details"><tbody>' + Object.keys(g.details).map(function (c) {
      return "<tr><td>" + esc(c) + "</td><td>" + value(g.details, c) + "</td></tr>";
    }).join("") + "</tbody></table>");
  }
  var its = g.items.filter(function (it) { return passes(it) || it.k === S.i; }), cols = [sp.item].concat(
    sp.all.filter(function (c) { return c !== sp.item; }));
  if (sp.picture) its.forEach(function (it) {
    var src = own(D.pictures, str(it.r[sp.picture]));
    h.push('<figure data-item="' + esc(it.k) + '"' + (it.k === S.i ? ' class="sel"' : "") + ">" + (src ?
      '<img alt="' + esc(sp.item + " " + it.k) + '" src="' + esc(src) + '">' :
      '<div class="nocard">no picture written for this row</div>') + "<figcaption>" + esc(sp.item) + " <b>" +
      esc(it.k) + "</b></figcaption></figure>");
  });
  if (!g.items.length) h.push('<p class="hidden">no ' + esc(sp.item) + " rows</p>");
  else {
    h.push('<table class="rows"><thead><tr>' + cols.map(function (c) {
      return "<th>" + esc(c.replace(/_/g, " ")) + "</th>";
    }).join("") + "</tr></thead><tbody>" + its.map(function (it) {
      return '<tr data-item="' + esc(it.k) + '"' + (it.k === S.i ? ' class="sel"' : "") + ">" + cols.map(function (c) {
        return "<td>" + (c === sp.item ? itemLink(it.k) : value(it.r, c)) + "</td>";
      }).join("") + "</tr>";
    }).join("") + "</tbody></table>");
    if (its.length < g.items.length) {
      h.push('<p class="hidden">' + (g.items.length - its.length) + " more " + esc(sp.item) +
        " rows hidden by the filter</p>");
    }
  }
  d.innerHTML = h.join("");
  d.querySelectorAll("img").forEach(function (img) {  // data-loaded: the browser decoded the picture (tests read it)
    function done() { img.setAttribute("data-loaded", img.naturalWidth > 0 ? "1" : "error"); }
    if (img.complete) done();
    img.addEventListener("load", done);
    img.addEventListener("error", done);
  });
}
function writeHash() {  // only what differs from the view's defaults, so the fragment is the whole state
  var sp = W().sp, p = ["v=" + encodeURIComponent(sp.name)], only = Object.keys(S.only).sort();
  if (S.g !== null) p.push("g=" + encodeURIComponent(S.g));
  if (S.i !== null) p.push("i=" + encodeURIComponent(S.i));
  if (S.q) p.push("q=" + encodeURIComponent(S.q));
  if (only.join(",") !== sp.only.slice().sort().join(",")) {
    p.push("only=" + only.map(encodeURIComponent).join(","));
  }
  if (S.sort) p.push("sort=" + (S.desc ? "-" : "") + encodeURIComponent(S.sort));
  try { history.replaceState(null, "", "#" + p.join("&")); } catch (e) { /* some file:// setups refuse */ }
}
function readHash() {
  var h = Object.create(null), v = 0;
  location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
    var k = kv.split("=");
    if (k[0]) h[k[0]] = decodeURIComponent(k.slice(1).join("="));
  });
  V.forEach(function (w, k) { if (w.sp.name === h.v) v = k; });
  S = fresh(v);
  if (h.q !== undefined) S.q = h.q;
  if (h.only !== undefined) {
    S.only = Object.create(null);
    h.only.split(",").forEach(function (f) { if (V[v].sp.flags.indexOf(f) >= 0) S.only[f] = true; });
  }
  if (h.sort) { S.desc = h.sort.charAt(0) === "-"; S.sort = h.sort.replace(/^-/, ""); }
  if (h.g !== undefined && V[v].G[h.g]) {
    S.g = h.g;
    if (h.i !== undefined && V[v].G[h.g].byItem[h.i]) S.i = h.i;
  }
  if (S.g === null) { var first = listed()[0]; if (first) S.g = first[0].key; }
}
function all() { renderTabs(); renderTable(); renderDetail(); }

$("q").oninput = function () { S.q = this.value; S.limit = 1000; renderTable(); renderDetail(); writeHash(); };
$("flags").onchange = function (e) {
  var f = e.target.getAttribute("data-flag");
  if (e.target.checked) S.only[f] = true; else delete S.only[f];
  renderTable(); renderDetail(); writeHash();
};
$("items").tHead.onclick = function (e) {
  var th = e.target.closest("th[data-c]");
  if (!th) return;
  var c = th.getAttribute("data-c");
  if (S.sort === c) S.desc = !S.desc;
  else { S.sort = c; S.desc = W().sp.numeric.indexOf(c) >= 0; }
  renderTable(); writeHash();
};
$("items").tBodies[0].onclick = function (e) {
  var tr = e.target.closest("tr");
  if (!tr || e.target.closest("a")) return;  // a link goes to the linked view
  S.g = tr.getAttribute("data-group"); S.i = tr.hasAttribute("data-item") ? tr.getAttribute("data-item") : null;
  renderTable(); renderDetail(); writeHash();
};
window.addEventListener("hashchange", function () { readHash(); all(); });
readHash();
all();
document.body.setAttribute("data-ready", "1");
})();
</script></body></html>
"""
