"""report.html for grouped tables (ReportView): a HINT-like table (several concepts per unit, flags, a concept view
with a details table) and an NMF-like table (components per class with prototype pictures, a class skipped by the
NMF; NMF's class pairs with their contrast figures and contrastive components, linked both ways to the classes),
checked in pure Python and rendered in headless Chromium. Every expectation is computed here from the input
rows, never read back from the page's own data."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import pytest
from PIL import Image

from lit_explain.results import MethodResult, ReportView, check_views
from lit_explain.viz.report import write_report, write_view_report
from tests.viz.test_report import HOSTILE, _browser, _card, _check_loaded, _Page

# ---------------------------------------------------------------------------------------------- HINT-like rows
# (concept, level, branch, display name); "constructor" is a name every plain JS object inherits
CONCEPTS = [("red", "warm", "colour", "red"), ("orange", "warm", "colour", "Orange"),
            ("warm", "colour", "colour", "warm colours"), ("round", "shape", "shape", "round"),
            (HOSTILE, "shape", "shape", HOSTILE.upper()), ("constructor", "shape", "shape", "constructor")]
SHAPLEY = [[0.9, 0.1, 0.8, 0.0, 0.2, 0.0],  # red: units 0, 2
           [0.1, 0.05, 0.9, 0.0, 0.75, 0.0],  # orange: units 2, 4
           [0.5, 0.2, 0.6, 0.1, 0.0, 0.0],  # warm: units 2, 0
           [0.0, 0.3, 0.1, 0.9, 0.4, 0.0],  # round: units 3, 4
           [0.0, 0.2, 0.1, 0.5, 0.8, 0.0],  # HOSTILE: units 4, 3
           [0.0, 0.6, 0.0, 0.05, 0.0, 0.0]]  # constructor: units 1, 3; unit 5 is responsible for nothing
K_RESP = 2
FLAGS = ("responsible", "collaborative", "multimodal")
HINT_VIEWS = (ReportView("units", "hint_neurons", group="unit", item="concept", order="-shapley", flags=FLAGS,
                         only=("responsible",), links="concepts"),
              ReportView("concepts", "hint_neurons", group="concept", item="unit", title="name", order="rank",
                         flags=FLAGS, only=("responsible",), details="hint_concepts", summary=("level",),
                         links="units"))


def _hint_tables():
    """hint_neurons (concept-major, units by rank, as HINT writes them) and hint_concepts, flags worked out here."""
    K, C = len(SHAPLEY), len(SHAPLEY[0])
    rank = [{u: r for r, u in enumerate(sorted(range(C), key=lambda u: (-SHAPLEY[k][u], u)))} for k in range(K)]
    resp = [[rank[k][u] < K_RESP and max(SHAPLEY[k]) > 0 for u in range(C)] for k in range(K)]
    level = [c[1] for c in CONCEPTS]
    branch = [c[2] for c in CONCEPTS]
    rows = []
    for k, (concept, lv, _, _) in enumerate(CONCEPTS):
        for u in sorted(range(C), key=lambda u: rank[k][u]):
            others = [j for j in range(K) if j != k and resp[j][u]]
            rows.append({"unit": u, "concept": concept, "level": lv, "shapley": SHAPLEY[k][u], "rank": rank[k][u],
                         "responsible": resp[k][u],
                         "collaborative": resp[k][u] and any(level[j] == lv for j in others),
                         "multimodal": resp[k][u] and any(branch[j] != branch[k] for j in others)})
    concepts = [{"concept": c, "name": n, "level": lv, "branch": br,
                 "top_units": " ".join(str(u) for u in sorted(rank[k], key=rank[k].get)[:K_RESP])}
                for k, (c, lv, br, n) in enumerate(CONCEPTS)]
    return {"hint_neurons": rows, "hint_concepts": concepts}


def _units_listing(rows, keep=lambda r: r["responsible"]):
    """[(unit, [concepts])] the unit view lists: units ascending, a unit's kept rows by Shapley value descending."""
    units = sorted({r["unit"] for r in rows if keep(r)})
    return [(u, [r["concept"] for r in sorted((r for r in rows if r["unit"] == u and keep(r)),
                                               key=lambda r: -r["shapley"])]) for u in units]


def _meta(method):
    return {"method": method, "hparams": {"model": "toy", "layer": "features"}, "num_images": 9}


class _ViewPage(_Page):
    """Also the text of every ``tr`` (attributes, text), in document order."""

    def __init__(self, text: str) -> None:
        self.trs: list[tuple[dict, str]] = []
        super().__init__(text)

    def handle_starttag(self, tag, attrs):
        super().handle_starttag(tag, attrs)
        if tag == "tr":
            self.trs.append((dict(attrs), ""))

    def handle_data(self, data):
        super().handle_data(data)
        if self.trs and self._in != "data":
            self.trs[-1] = (self.trs[-1][0], self.trs[-1][1] + data)

    def listing(self) -> list[tuple[str, list[str]]]:
        """[(group key, [item keys])] of the list, in order."""
        out = []
        for a, _ in self.trs:
            if "grp" in a.get("class", "").split():
                out.append((a["data-group"], []))
            elif "item" in a.get("class", "").split():
                assert a["data-group"] == out[-1][0], "an item row outside its group"
                out[-1][1].append(a["data-item"])
        return out

    def detail_rows(self) -> list[dict]:
        """Attributes of the detail pane's item rows."""
        return [a for a, _ in self.trs if "data-item" in a and "data-group" not in a]

    def group_text(self, key: str) -> str:
        return next(t for a, t in self.trs if "grp" in a.get("class", "").split() and a["data-group"] == key)


def _hint_report(tmp_path: Path) -> Path:
    tables = _hint_tables()
    return write_view_report(tmp_path, tables, MethodResult(tables=tables, report=HINT_VIEWS).report, _meta("HINT"))


# ---------------------------------------------------------------------------------------------- pure Python
def test_views_are_checked_against_the_tables():
    tables = _hint_tables()
    check_views(HINT_VIEWS, tables)
    bad = [((ReportView("u", "nope", "unit", "concept"),), "no table 'nope'"),
           ((ReportView("u", "hint_neurons", "unit", "colour"),), "no column 'colour'"),
           ((ReportView("u", "hint_neurons", "unit", "level"),), "two rows with level"),
           ((ReportView("u", "hint_neurons", "unit", "concept", links="concepts"),), "names no view"),
           ((ReportView("u", "hint_neurons", "unit", "concept"),) * 2, "distinct names"),
           ((ReportView("u", "hint_neurons", "unit", "concept", order="-size"),), "no column 'size'"),
           ((ReportView("u", "hint_neurons", "unit", "concept", details="hint_concepts"),),
            "row 0 of table 'hint_concepts' has no column 'unit'"),
           ((ReportView("u", "hint_neurons", "unit", "concept", refs={"level": "levels"}),), "names no view"),
           ((ReportView("u", "hint_neurons", "unit", "concept", refs={"colour": "u"}),),
            "column 'colour' is in no row")]
    for views, match in bad:
        with pytest.raises(ValueError, match=match):
            check_views(views, tables)
        with pytest.raises(ValueError, match=match):
            MethodResult(tables=tables, report=views)  # refused where the method builds its result
    for kw, match in [({"name": "a b"}, "letters, digits"), ({"only": ("shown",)}, "among flags"),
                      ({"summary": ("level",)}, "need a details table"), ({"item": "unit"}, "same column"),
                      ({"refs": {"unit": "u"}}, "group or item column")]:
        with pytest.raises(ValueError, match=match):
            ReportView(**{"name": "u", "table": "t", "group": "unit", "item": "concept", **kw})
    assert ReportView("u", "t", "g", "i", flags=["a"], only=["a"]).flags == ("a",)  # lists from configs: tuples
    assert ReportView("u", "t", "g", "i", refs={"a": "v"}).refs == (("a", "v"),)  # a mapping: a frozen tuple
    # a details table's other columns are optional: NMF's classes have no prediction numbers when all were skipped
    check_views([ReportView("c", "hint_neurons", "concept", "unit", details="hint_concepts", summary=("p_all",))],
                tables)
    one = ReportView("u", "hint_neurons", "unit", "concept")
    assert MethodResult(tables=tables, report=one).report == (one,)  # one view alone: a tuple of one


def test_rows_are_data_and_hostile_strings_stay_data(tmp_path):
    tables = _hint_tables()
    text = _hint_report(tmp_path).read_text()
    page = _ViewPage(text)
    assert page.data["tables"] == json.loads(json.dumps(tables))  # both tables, every row, unchanged
    assert [v["name"] for v in page.data["views"]] == ["units", "concepts"] and page.data["pictures"] == {}
    assert text.count("</script>") == 3 and text.count("<script") == 3 and "<!--" not in text
    assert not page.find("b", id="pwned") and page.find("title")
    # header tiles, counted here: units and concepts, units holding each flag, images
    rows = tables["hint_neurons"]
    want = [(len({r["unit"] for r in rows}), "units"), (len(CONCEPTS), "concepts")]
    want += [(len({r["unit"] for r in rows if r[f]}), f"{f} units") for f in FLAGS] + [(9, "images")]
    header = text[text.index("<header>"):text.index("</header>")]
    got = [(int(b), s) for b, s in re.findall(r"<div><b>(\d+)</b><span>([^<]*)</span></div>", header)]
    assert got == want


def test_pictures_relative_embedded_missing_and_outside(tmp_path):
    a = _card(tmp_path / "prototypes" / "x y" / "component_0.png", (255, 0, 0))
    rows = [{"class": 0, "component": t, "prototype_picture": f"prototypes/x y/component_{t}.png"} for t in (0, 1)]
    view = ReportView("classes", "components", "class", "component", picture="prototype_picture")
    data = _Page(write_view_report(tmp_path, {"components": rows}, view, {}).read_text()).data
    assert data["pictures"] == {"prototypes/x y/component_0.png": "prototypes/x%20y/component_0.png",
                                "prototypes/x y/component_1.png": None}  # component 1 was never drawn
    emb = _Page(write_view_report(tmp_path, {"components": rows}, view, {}, embed_images=True).read_text()).data
    assert emb["pictures"]["prototypes/x y/component_0.png"] == (
        "data:image/png;base64," + base64.b64encode(a.read_bytes()).decode())
    # the writer passes the pictures it drew: others show no picture, a drawn one must exist
    none = write_view_report(tmp_path, {"components": rows}, view, {}, [])
    assert set(_Page(none.read_text()).data["pictures"].values()) == {None}
    with pytest.raises(FileNotFoundError, match="component_1.png"):
        write_view_report(tmp_path, {"components": rows}, view, {}, ["prototypes/x y/component_1.png"])
    for evil in ("../secret.png", str(tmp_path / "prototypes" / "x y" / "component_0.png")):
        with pytest.raises(ValueError, match="inside the output folder"):
            write_view_report(tmp_path, {"components": [{**rows[0], "prototype_picture": evil}]}, view, {})


def test_the_unit_browser_is_still_what_a_table_name_gives(tmp_path):
    """A result naming a table keeps the (unit, range) page (its own tests live in test_report.py)."""
    rows = [{"unit": 0, "cluster": 0, "label": "x", "iou": 0.1}]
    assert MethodResult(tables={"explanations": rows}, report="explanations").report == "explanations"
    page = _Page(write_report(tmp_path, rows, {}, {}).read_text())
    assert set(page.data) == {"columns", "numeric", "threshold", "rows", "groups", "cards"}


# ---------------------------------------------------------------------------------------------- Chromium: HINT
def test_chromium_lists_each_units_concepts_under_it(tmp_path):
    report = _hint_report(tmp_path)
    rows = _hint_tables()["hint_neurons"]
    page = _ViewPage(_browser(report.as_uri(), tmp_path, "--dump-dom"))
    _check_loaded(page)
    want = _units_listing(rows)  # the unit view opens with "only responsible"
    assert page.listing() == [(str(u), cs) for u, cs in want]
    three = [u for u, cs in want if len(cs) == 3]
    assert three == [2, 3, 4] and dict(want)[2] == ["orange", "red", "warm"]  # the data is built so
    assert "5" not in dict(page.listing())  # responsible for nothing: not listed
    # the first unit is selected: its responsible concepts in the detail pane, each linking to the concept view
    assert page.h2[0].strip() == "unit 0"
    assert [a["data-item"] for a in page.detail_rows()] == dict(want)[0]
    hrefs = [unquote(a["href"]) for a in page.find("a") if a.get("href", "").startswith("#v=concepts&")]
    assert sorted(hrefs) == sorted(f"#v=concepts&g={c}" for c in dict(want)[0] + [  # list rows, then detail rows
        c for _, cs in want for c in cs])
    # the hostile concept is text in the rows of units 3 and 4, never markup; the tabs name both views
    assert not page.find("b", id="pwned") and page.find("title")
    assert sorted(a.get("data-group") for a, t in page.trs if HOSTILE in t and "item" in a.get("class", "")) == [
        "3", "4"]
    assert [a["data-view"] for a in page.find("a") if "data-view" in a] == ["units", "concepts"]


def test_chromium_fragment_selects_a_concept_and_its_units(tmp_path):
    report = _hint_report(tmp_path)
    tables = _hint_tables()
    rows = tables["hint_neurons"]
    url = f"{report.as_uri()}#v=concepts&g={quote(HOSTILE, safe='')}&i=3"
    page = _ViewPage(_browser(url, tmp_path, "--dump-dom"))
    _check_loaded(page)
    # concepts in the order of hint_concepts, each with its responsible units by rank
    want = [(c, [str(r["unit"]) for r in sorted((r for r in rows if r["concept"] == c and r["responsible"]),
                                                key=lambda r: r["rank"])]) for c, *_ in CONCEPTS]
    assert page.listing() == want
    assert page.h2[0].strip() == f"concept {HOSTILE} {HOSTILE.upper()}"  # key and display name, as text
    assert [(a["data-item"], a.get("class")) for a in page.detail_rows()] == [("4", None), ("3", "sel")]
    assert page.find("tr", class_="item sel", data_group=HOSTILE, data_item="3")
    assert "shape" in page.group_text("round") and not page.find("b", id="pwned")
    # "constructor" is a group like any other (no inherited property mistaken for one)
    assert dict(page.listing())["constructor"] == ["1", "3"]
    # all rows of a unit: the flag filter off (only=), unit 5 lists its six concepts, none responsible
    page = _ViewPage(_browser(f"{report.as_uri()}#v=units&g=5&only=", tmp_path, "--dump-dom"))
    assert page.listing() == [(str(u), cs) for u, cs in _units_listing(rows, keep=lambda r: True)]
    assert page.h2[0].strip() == "unit 5" and len(page.detail_rows()) == len(CONCEPTS)


_CLICKS = """<!DOCTYPE html><html><body><iframe id="f" src="@@URL@@"></iframe><script>
var f = document.getElementById("f"), out = {};
function groups(d) {
  return Array.from(d.querySelectorAll("#items tr.grp")).map(function (t) { return t.dataset.group; });
}
f.onload = function () {
  var d = f.contentDocument, w = f.contentWindow;
  try {
    d.querySelector('#flags input[data-flag="multimodal"]').click(); out.multimodal = groups(d);
    d.querySelector('#items th[data-c="shapley"]').click();
    out.sorted = Array.from(d.querySelectorAll("#items tr.item")).map(function (t) { return t.dataset.item; });
    d.querySelector("#items tr.item:last-child td:nth-child(2)").click();
    out.detail = d.querySelector("#detail h2").textContent; out.hash = w.location.hash;
    d.querySelector("#detail tr[data-item] a").click();
  } catch (e) { out.error = String(e); }
  setTimeout(function () {  // the link's hashchange
    out.after = d.querySelector("#detail h2").textContent; out.tab = d.querySelector("#tabs a.on").textContent;
    out.listed = groups(d); out.errors = d.body.getAttribute("data-errors");
    document.body.setAttribute("data-result", JSON.stringify(out));
  }, 200);
};
</script></body></html>"""


def test_chromium_flag_filter_sort_row_click_and_links(tmp_path):
    report = _hint_report(tmp_path)
    rows = _hint_tables()["hint_neurons"]
    harness = tmp_path / "clicks.html"
    harness.write_text(_CLICKS.replace("@@URL@@", report.as_uri() + "#v=units"))
    out = json.loads(_ViewPage(_browser(harness.as_uri(), tmp_path, "--dump-dom", "--allow-file-access-from-files"))
                     .find("body")[0]["data-result"])
    assert "error" not in out and out["errors"] is None, out
    keep = lambda r: r["responsible"] and r["multimodal"]  # noqa: E731
    assert out["multimodal"] == [str(u) for u, _ in _units_listing(rows, keep)] == ["4"]
    assert out["sorted"] == [r["concept"] for r in sorted(filter(keep, rows), key=lambda r: -r["shapley"])]
    last = out["sorted"][-1]
    assert out["detail"] == "unit 4" and out["hash"] == (f"#v=units&g=4&i={quote(last, safe='')}"
                                                        "&only=multimodal,responsible&sort=-shapley")
    # the detail's first concept link opens that concept in the concept view, with its default filter
    first = out["sorted"][0]
    assert out["tab"] == "concepts" and out["after"].startswith(f"concept {first}")
    assert out["listed"] == [c for c, *_ in CONCEPTS]


# ---------------------------------------------------------------------------------------------- Chromium: NMF
NMF_CLASSES = [(0, "cat", "ok", 0.93, True), (1, HOSTILE, "ok", 0.41, False),
               (2, "dog", "skipped: 1 image predicted as this class", None, None)]
NMF_VIEW = ReportView("classes", "components", group="class", item="component", title="class_name",
                      order="component", picture="prototype_picture", details="classes",
                      columns=("component", "share", "top_units", "loadings"), summary=("status", "p_all", "hit_all"))


def _nmf_report(tmp_path: Path, drawn_but=None) -> tuple[Path, dict]:
    comps, classes, drawn = [], [], []
    for c, name, status, p, hit in NMF_CLASSES:
        row = {"class": c, "class_name": name, "predicted_images": 5, "status": status}
        if status == "ok":
            row.update(p_all=p, hit_all=hit)
            for t in (2, 0, 1):  # not in component order: the view orders them
                pic = f"prototypes/class {c}/component_{t}.png"
                _card(tmp_path / pic, (40 * t, 90 * c, 200))
                comps.append({"class": c, "class_name": name, "component": t, "share": 0.5 - 0.1 * t,
                              "top_units": f"{t} {t + 3}", "loadings": "0.5000 0.2500", "prototype_picture": pic,
                              "p_all": p})
                if pic != drawn_but:
                    drawn.append(pic)
        classes.append(row)
    tables = {"components": comps, "classes": classes}
    result = MethodResult(tables=tables, report=(NMF_VIEW,))
    return write_view_report(tmp_path, tables, result.report, _meta("NMFConcepts"), drawn), tables


def test_chromium_lists_classes_with_components_strips_and_prediction_numbers(tmp_path):
    missing = "prototypes/class 1/component_0.png"
    report, tables = _nmf_report(tmp_path, drawn_but=missing)
    page = _ViewPage(_browser(f"{report.as_uri()}#v=classes&g=1&i=2", tmp_path, "--dump-dom"))
    _check_loaded(page)
    fitted = {r["class"] for r in tables["components"]}
    assert page.listing() == [(str(c), ["0", "1", "2"] if c in fitted else []) for c, *_ in NMF_CLASSES]
    assert "skipped: 1 image predicted as this class" in page.group_text("2")  # a class without components
    assert "0.93" in page.group_text("0") and "\u2713" in page.group_text("0")  # its prediction-test numbers
    # class 1: title escaped; its details row; its strips in component order, the one not drawn shown as missing
    assert page.h2[0].strip() == f"class 1 {HOSTILE}" and not page.find("b", id="pwned")
    details = {t for a, t in page.trs if not a}
    assert "p_all0.41" in details and "statusok" in details
    imgs = page.find("img")
    want = [quote(f"prototypes/class 1/component_{t}.png", safe="/") for t in (1, 2)]
    assert [i["src"] for i in imgs] == want and all(i["data-loaded"] == "1" for i in imgs)
    assert all((tmp_path / Path(p.replace("%20", " "))).is_file() for p in want)
    assert len(page.find("div", class_="nocard")) == 1
    assert [a["data-item"] for a in page.find("figure")] == ["0", "1", "2"]
    assert page.find("figure", data_item="2", class_="sel") and page.find("tr", class_="sel", data_item="2")


def test_chromium_screenshot_shows_a_prototype_strip(tmp_path):
    """The selected class's strips are drawn from disk at their size (pixels found in a screenshot)."""
    report, _ = _nmf_report(tmp_path)
    strip = tmp_path / "prototypes" / "class 0" / "component_1.png"
    Image.new("RGB", (60, 24), (13, 201, 77)).save(strip)  # a colour nothing else on the page has
    shot = tmp_path / "shot.png"
    _browser(f"{report.as_uri()}#v=classes&g=0", tmp_path, f"--screenshot={shot}", "--window-size=1400,900")
    screen = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    ys, xs = np.nonzero((np.abs(screen - (13, 201, 77)).max(-1) <= 2))
    assert len(ys) and (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (24, 60)


def test_chromium_every_class_skipped(tmp_path):
    """No component at all (every class skipped by the NMF): the classes are listed with their reasons."""
    classes = [{"class": c, "class_name": n, "status": f"skipped: {n} has 2 images"} for c, n in ((3, "b"), (1, "a"))]
    result = MethodResult(tables={"components": [], "classes": classes}, report=NMF_VIEW)
    report = write_view_report(tmp_path, result.tables, result.report, _meta("NMFConcepts"), [])
    page = _ViewPage(_browser(report.as_uri(), tmp_path, "--dump-dom"))
    _check_loaded(page)
    assert page.listing() == [("1", []), ("3", [])]  # numeric keys ascending
    assert "skipped: a has 2 images" in page.group_text("1") and page.h2[0].strip() == "class 1 a"


# ---------------------------------------------------------------------------------------------- Chromium: NMF contrasts
_INSERT = ("p_a_orig", "p_b_orig", "p_a_inserted", "p_b_inserted", "p_a_control", "p_b_control")
# (class A, class B, hyperplane accuracy, p_b_unshifted, p_b_max, best_offset, p_a_at_best, patch test p's), as the
# method's contrasts() writes one row per configured pair; the last pair repeats the first (configured twice)
NMF_PAIRS = [(0, 1, 0.91, 0.05, 0.875, 20.0, 0.125, (0.7, 0.05, 0.35, 0.1418, 0.65, 0.06)),
             (1, 0, 0.75, 0.2, 0.45, 5.0, 0.5, (0.6, 0.3, 0.55, 0.325, 0.58, 0.31)),
             (0, 2, None, None, None, None, None, None),  # dog was skipped: no vectors
             (0, 1, 0.91, 0.05, 0.875, 20.0, 0.125, (0.7, 0.05, 0.35, 0.1418, 0.65, 0.06))]
SKIPPED_PAIR = "skipped: a class of the pair has no selected images or no relevant pixels"


def _contrast_input():
    """The contrast rows and contrastive component rows as NMFConcepts.contrasts() hands them to _result (keyed by
    the pair's position among the configured pairs): the pair HOSTILE vs cat had its contrastive NMF skipped (one
    row, component -1)."""
    name = {c: n for c, n, *_ in NMF_CLASSES}
    contrasts, contrastive = [], []
    for i, (a, b, acc, pb0, pbmax, off, pa, ins) in enumerate(NMF_PAIRS):
        row = {"pair": i, "pair_name": f"{name[a]} vs {name[b]}", "class_a": a, "name_a": name[a], "class_b": b,
               "name_b": name[b], "images_a": 5, "images_b": 5, "vectors_a": 40, "vectors_b": 0 if acc is None else 36}
        pair = {k: row[k] for k in ("pair", "class_a", "name_a", "class_b", "name_b")}
        if acc is None:
            contrasts.append({**row, "status": SKIPPED_PAIR})
            continue
        row.update(hyperplane_accuracy=acc, status="ok", p_b_unshifted=pb0, p_a_unshifted=ins[0], p_b_max=pbmax,
                   best_offset=off, p_a_at_best=pa, swap=pbmax >= pa and pbmax > 0.5, patch_image=3, patch_y=4,
                   patch_x=8, **dict(zip(_INSERT, ins)))
        contrasts.append(row)
        if a == 1:
            contrastive.append({**pair, "component": -1, "status": "skipped: all-zero activations"})
        else:
            contrastive += [{**pair, "component": t, "share": 0.625 - 0.25 * t, "top_units": f"{t + 2} {t}",
                             "loadings": "0.9000 0.1000", "norm": 1.5 - t, "error": 0.0125, "status": "ok"}
                            for t in (0, 1)]
    return contrasts, contrastive


def _js(v) -> str:
    """A cell as the page prints it, worked out here: ticks for true, integers plainly, 4 significant digits."""
    if v is None or v is False:
        return ""
    if v is True:
        return "\u2713"
    if isinstance(v, float) and not v.is_integer():
        return repr(float(f"{v:.4g}"))
    return str(int(v)) if isinstance(v, float) else str(v)


def _contrast_report(tmp_path: Path, contrastive: bool = True) -> tuple[Path, list, list]:
    from lit_explain.methods.nmf import NMFConcepts

    _, tables = _nmf_report(tmp_path)
    contrasts, parts = _contrast_input()
    tables["contrasts"] = contrasts
    if contrastive:
        tables["contrastive_components"] = parts
    result = MethodResult(tables=tables, report=NMFConcepts.report_views(tables))
    drawn = [r["prototype_picture"] for r in tables["components"]]
    return write_view_report(tmp_path, tables, result.report, _meta("NMFConcepts"), drawn), contrasts, parts


def test_contrast_views_fit_all_skipped_pairs_and_no_pairs():
    from lit_explain.methods.nmf import NMFConcepts

    contrasts, _ = _contrast_input()
    # every pair skipped: no figures in any row, the views still fit (columns offered only where some row has them)
    skipped = [{k: r[k] for k in ("pair", "pair_name", "class_a", "name_a", "class_b", "name_b")}
               | {"status": SKIPPED_PAIR} for r in contrasts]
    tables = {"components": [], "classes": [], "contrasts": skipped}
    views = NMFConcepts.report_views(tables)
    assert [v.name for v in views] == ["classes", "contrasts"] and views[1].table == "contrasts"
    check_views(views, tables)
    assert [v.name for v in NMFConcepts.report_views({"components": [], "classes": []})] == ["classes"]


def test_chromium_contrasts_view_shows_every_pair_its_figures_and_components(tmp_path):
    report, contrasts, parts = _contrast_report(tmp_path)
    page = _ViewPage(_browser(f"{report.as_uri()}#v=contrasts&g=1", tmp_path, "--dump-dom"))
    _check_loaded(page)
    assert [a["data-view"] for a in page.find("a") if "data-view" in a] == ["classes", "contrasts"]
    # every configured pair in order, with the contrastive components of its two classes by component number
    comps = lambda r: sorted({p["component"] for p in parts  # noqa: E731
                              if (p["class_a"], p["class_b"]) == (r["class_a"], r["class_b"])})
    assert page.listing() == [(str(i), [str(t) for t in comps(r)]) for i, r in enumerate(contrasts)]
    figures = ("hyperplane_accuracy", "p_b_max", "p_b_inserted", "p_b_control")
    for i, r in enumerate(contrasts):
        text = page.group_text(str(i))
        assert text.startswith(f"pair {i} {r['name_a']} vs {r['name_b']} ")  # hostile names as text
        assert f"status {r['status']}" in text
        for c in figures:  # a skipped pair has none of them
            assert (f"{c.replace('_', ' ')} {_js(r[c])}" in text) if c in r else c.replace("_", " ") not in text
        assert ("swap \u2713" in text) == (r.get("swap") is True)
    assert [r.get("swap") for r in contrasts] == [True, False, None, True]  # the data is built so
    # pair 1, HOSTILE vs cat: its whole contrasts row, A and B linking to the class view, its skipped NMF
    sel = contrasts[1]
    assert page.h2[0].strip() == f"pair 1 {sel['name_a']} vs {sel['name_b']}"
    details = {t for a, t in page.trs if not a}
    assert {f"{c}{_js(v)}" for c, v in sel.items()} <= details and "pair1" in details
    assert {"p_b_max0.45", "p_b_inserted0.325", "hyperplane_accuracy0.75"} <= details  # spelled out once
    refs = [unquote(a["href"]) for a in page.find("a", class_="ref")]
    assert refs[:2] == ["#v=classes&g=1", "#v=classes&g=0"]  # the details row's class_a, class_b
    assert [a["data-item"] for a in page.detail_rows()] == ["-1"]
    assert "skipped: all-zero activations" in next(t for a, t in page.trs if a.get("data-item") == "-1"
                                                   and "data-group" not in a)
    assert not page.find("b", id="pwned") and page.find("title") and page.find("img") == []


def test_chromium_a_class_links_to_the_pairs_it_is_in(tmp_path):
    report, contrasts, _ = _contrast_report(tmp_path)
    page = _ViewPage(_browser(f"{report.as_uri()}#v=classes&g=1", tmp_path, "--dump-dom"))
    _check_loaded(page)
    pairs_of = lambda c: [i for i, r in enumerate(contrasts) if c in (r["class_a"], r["class_b"])]  # noqa: E731
    assert pairs_of(0) == [0, 1, 2, 3] and pairs_of(2) == [2]
    # each class's line lists its pairs, then the detail pane of the selected class (HOSTILE) again
    want = [f"#v=contrasts&g={i}" for c, *_ in NMF_CLASSES for i in pairs_of(c)] + [
        f"#v=contrasts&g={i}" for i in pairs_of(1)]
    assert [unquote(a["href"]) for a in page.find("a") if a.get("href", "").startswith("#v=contrasts&")] == want
    text = page.group_text("2")
    assert "contrasts: pair 2 cat vs dog" in text and "skipped: 1 image" in text  # a skipped class still links
    assert page.h2[0].strip() == f"class 1 {HOSTILE}" and not page.find("b", id="pwned") and page.find("title")
    # without contrastive components the pairs' rows are the items, their classes linking all the same
    other = tmp_path / "plain"
    other.mkdir()
    report, contrasts, _ = _contrast_report(other, contrastive=False)
    page = _ViewPage(_browser(f"{report.as_uri()}#v=contrasts", other, "--dump-dom"))
    _check_loaded(page)
    assert page.listing() == [(str(i), [f"{r['name_a']} vs {r['name_b']}"]) for i, r in enumerate(contrasts)]
    hrefs = [unquote(a["href"]) for a in page.find("a", class_="ref")]
    assert hrefs[:2 * len(contrasts)] == [f"#v=classes&g={r[k]}" for r in contrasts for k in ("class_a", "class_b")]
    assert not page.find("b", id="pwned")
