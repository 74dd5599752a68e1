"""report.html: embedded data, escaping, cards and equivalence groups (pure Python), then a real NetDissect run's
report rendered in headless Chromium (loads without script errors, lists every unit of explanations.csv,
renders the cards from disk, obeys the URL state), checked against the CSV and the card PNGs themselves."""

from __future__ import annotations

import base64
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_explain.results import read_csv
from lit_explain.viz.report import equivalence_groups, write_report
from tests.fixtures.broden_writer import make_miniature
from tests.methods.test_netdissect import _run

HOSTILE = '<b id="pwned">x</b></script><script>document.title="owned"</script><!--'


class _Page(HTMLParser):
    """Every start tag (tag, attrs), the embedded report data, and the text of each table row / of the detail h2."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.data_text: list[str] = []
        self.row_text: list[str] = []
        self.h2: list[str] = []
        self._in = None
        self.feed(text)
        self.data = json.loads("".join(self.data_text)) if self.data_text else None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script" and a.get("type") == "application/json":
            self._in = "data"
        elif tag == "tr" and "data-unit" in a:
            self._in = "row"
            self.row_text.append("")
        elif tag == "h2" and not self.h2:
            self._in = "h2"
            self.h2.append("")

    def handle_endtag(self, tag):
        if tag in ("script", "tr", "h2"):
            self._in = None

    def handle_data(self, data):
        if self._in == "data":
            self.data_text.append(data)
        elif self._in == "row":
            self.row_text[-1] += data
        elif self._in == "h2":
            self.h2[-1] += data

    def find(self, tag, **attrs):
        """Attribute dicts of the ``tag`` elements matching ``attrs`` (``class_`` -> class, ``data_x`` -> data-x)."""
        want = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in want.items())]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One NetDissect run on the miniature Broden (2 unit cards), whose ExplanationWriter wrote report.html."""
    root = tmp_path_factory.mktemp("report_run")
    make_miniature(root / "broden")
    return _run(root, quantile=0.2)


def _meta(names):
    return {"method": "ClusteredCompositional", "hparams": {"model": "toy", "layer": "layer4", "iou_threshold": 0.05},
            "vocabulary": {"names": list(names), "label_ids": list(range(1, len(names) + 1)),
                           "categories": ["object"] * len(names)}, "num_images": 7}


def _card(path: Path, colour) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (30, 20), colour).save(path)
    return path


# ---------------------------------------------------------------------------------------------- pure Python
def test_embedded_rows_equal_the_written_table(run):
    page = _Page((run / "report.html").read_text())
    # the JSON file is written by lib.results (inf as "inf"), independently of the report
    assert page.data["rows"] == json.loads((run / "explanations.json").read_text())["rows"]
    csv_rows = read_csv(run / "explanations.csv")
    assert [(r["unit"], r["label"]) for r in page.data["rows"]] == [(int(r["unit"]), r["label"]) for r in csv_rows]
    for got, want in zip(page.data["rows"], csv_rows):
        assert got["iou"] == pytest.approx(float(want["iou"]), abs=1e-8) and got["range_hi"] == "inf"  # CSV: 8 dp
    # the two cards the writer drew, referenced relatively, exist on disk; no network resource anywhere
    pngs = sorted(p.relative_to(run).as_posix() for p in (run / "units").glob("*.png"))
    assert len(pngs) == 2 and sorted(page.data["cards"].values()) == pngs
    assert page.data["groups"] is None  # plain concept names: no equivalence section
    text = (run / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and not page.find("link")


def test_hostile_strings_are_data_and_round_trip(tmp_path):
    rows = [{"unit": 0, "cluster": 0, "range_lo": 0.5, "range_hi": math.inf, "label": HOSTILE, "category": "a&b",
             "length": 1, "iou": np.float32(0.25), "threshold": 0.5, "null_iou": math.nan, HOSTILE: "\u2028é"},
            {"unit": 1, "cluster": 0, "range_lo": -math.inf, "range_hi": 2.0, "label": "x", "category": "o",
             "length": 1, "iou": 0.0, "threshold": 1.0, "null_iou": 0.01}]
    text = write_report(tmp_path, rows, _meta(["x"]), {}).read_text()
    page = _Page(text)
    assert page.data["rows"] == [
        {"unit": 0, "cluster": 0, "range_lo": 0.5, "range_hi": "inf", "label": HOSTILE, "category": "a&b",
         "length": 1, "iou": 0.25, "threshold": 0.5, "null_iou": None, HOSTILE: "\u2028é"},
        {"unit": 1, "cluster": 0, "range_lo": "-inf", "range_hi": 2.0, "label": "x", "category": "o",
         "length": 1, "iou": 0.0, "threshold": 1.0, "null_iou": 0.01}]
    assert text.count("</script>") == 3 and text.count("<script") == 3  # the template's own scripts only
    assert not page.find("b", id="pwned") and "<!--" not in text
    assert page.data["numeric"] == ["threshold", "null_iou"]  # threshold differs from range_lo on row 2


def test_cards_relative_embedded_and_checked(tmp_path):
    rows = [{"unit": u, "cluster": k, "label": "x", "iou": 0.1} for u in (3, 12) for k in (0, 1)]
    a = _card(tmp_path / "units" / "unit_0003.png", (255, 0, 0))
    b = _card(tmp_path / "units" / "unit_0012_r1.png", (0, 0, 255))
    data = _Page(write_report(tmp_path, rows, {}, {"unit_0003": a, "unit_0012_r1": b}).read_text()).data
    assert data["cards"] == {"3/0": "units/unit_0003.png", "12/1": "units/unit_0012_r1.png"}
    assert _Page(write_report(tmp_path, rows, {}, None).read_text()).data["cards"] == data["cards"]  # found on disk
    emb = _Page(write_report(tmp_path, rows, {}, None, embed_images=True).read_text()).data["cards"]
    assert base64.b64decode(emb["12/1"].split(",", 1)[1]) == b.read_bytes()
    with pytest.raises(FileNotFoundError, match="unit_0007.png"):
        write_report(tmp_path, rows, {}, {"unit_0007": tmp_path / "units" / "unit_0007.png"})
    with pytest.raises(ValueError, match="unit_<unit>"):
        write_report(tmp_path, rows, {}, {"neuron3": a})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "units"]  # no temp file left behind


def test_equivalence_groups_hand_worked():
    names = ["a", "b", "c"]
    labels = ["(a OR b) AND NOT a", "b AND NOT a", "a OR b", "c", "b OR a", "a OR (a AND c)", "a", "not a formula ("]
    # (a|b)&~a == b&~a; a|b == b|a; a|(a&c) == a (absorption); c alone and the unparsable label stay out
    assert equivalence_groups(labels, names) == [[0, 1], [2, 4], [5, 6]]
    assert equivalence_groups(["a", "b", "a"], names) is None  # plain concept names: nothing to show


# ---------------------------------------------------------------------------------------------- Chromium
def _browser(url: str, tmp: Path, *args: str) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get update && apt-get install -y chromium)")
    profile = tmp / f"profile{len(list(tmp.glob('profile*')))}"
    cmd = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", f"--user-data-dir={profile}",
           "--virtual-time-budget=5000", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _check_loaded(page: _Page) -> None:
    body = page.find("body")[0]
    assert body.get("data-ready") == "1" and "data-errors" not in body, body


def test_chromium_lists_every_unit_and_renders_its_cards(run, tmp_path):
    page = _Page(_browser((run / "report.html").as_uri(), tmp_path, "--dump-dom"))
    _check_loaded(page)
    csv_rows = read_csv(run / "explanations.csv")
    listed = [(int(a["data-unit"]), int(a["data-cluster"])) for a in page.find("tr") if "data-unit" in a]
    assert sorted(listed) == sorted((int(r["unit"]), int(r["cluster"])) for r in csv_rows)
    # default order: IoU descending; the selected unit is the best one, and its card is drawn from disk
    assert [u for u, _ in listed] == [int(r["unit"]) for r in sorted(csv_rows, key=lambda r: -float(r["iou"]))]
    best = max(csv_rows, key=lambda r: float(r["iou"]))
    assert page.h2[0].strip() == f"unit {best['unit']}"
    imgs = page.find("img")
    assert [i["src"] for i in imgs] == [f"units/unit_{int(best['unit']):04d}.png"]
    assert (run / imgs[0]["src"]).is_file() and imgs[0]["data-loaded"] == "1"


def test_chromium_follows_url_state(run, tmp_path):
    csv_rows = read_csv(run / "explanations.csv")
    cats = [r["category"] for r in csv_rows]
    cat = max(sorted(set(cats)), key=cats.count)
    want = [int(r["unit"]) for r in sorted((r for r in csv_rows if r["category"] == cat),
                                           key=lambda r: (int(r["unit_area"]), int(r["unit"])))]
    with_card = {int(p.stem.split("_")[1]) for p in (run / "units").glob("*.png")}
    carded, nocard = max(with_card), min({int(r["unit"]) for r in csv_rows} - with_card)
    url = (run / "report.html").as_uri()
    page = _Page(_browser(f"{url}#u={carded}&cat={cat}&sort=unit_area", tmp_path, "--dump-dom"))
    _check_loaded(page)
    assert [int(a["data-unit"]) for a in page.find("tr") if "data-unit" in a] == want
    assert page.h2[0].strip() == f"unit {carded}"
    assert [i["src"] for i in page.find("img")] == [f"units/unit_{carded:04d}.png"]
    page = _Page(_browser(f"{url}#u={nocard}&q={nocard}", tmp_path, "--dump-dom"))
    assert [int(a["data-unit"]) for a in page.find("tr") if "data-unit" in a] == [nocard]
    assert page.h2[0].strip() == f"unit {nocard}" and not page.find("img") and page.find("div", class_="nocard")


_CLICKS = """<!DOCTYPE html><html><body><iframe id="f" src="@@URL@@"></iframe><script>
document.getElementById("f").onload = function () {
  var out = {}, d = this.contentDocument;
  function units() {
    return Array.from(d.querySelectorAll("#units tbody tr")).map(function (t) { return +t.dataset.unit; });
  }
  try {
    d.querySelector('#units th[data-c="unit"]').click(); out.asc = units();
    d.querySelector('#units th[data-c="unit"]').click(); out.desc = units();
    var q = d.getElementById("q"); q.value = "@@WORD@@"; q.dispatchEvent(new Event("input")); out.filtered = units();
    d.querySelector("#units tbody tr:last-child td").click();
    out.detail = d.querySelector("#detail h2").textContent; out.hash = this.contentWindow.location.hash;
  } catch (e) { out.error = String(e); }
  document.body.setAttribute("data-result", JSON.stringify(out));
};
</script></body></html>"""


def test_chromium_header_clicks_sort_typing_filters_row_click_selects(run, tmp_path):
    csv_rows = read_csv(run / "explanations.csv")
    word = csv_rows[0]["label"][:3]
    harness = tmp_path / "clicks.html"
    harness.write_text(_CLICKS.replace("@@URL@@", (run / "report.html").as_uri()).replace("@@WORD@@", word))
    page = _Page(_browser(harness.as_uri(), tmp_path, "--dump-dom", "--allow-file-access-from-files"))
    out = json.loads(page.find("body")[0]["data-result"])
    units = sorted(int(r["unit"]) for r in csv_rows)
    assert out["asc"] == units and out["desc"] == units[::-1]
    want = [int(r["unit"]) for r in csv_rows if word.lower() in (r["label"] + " " + r["category"]).lower()]
    assert out["filtered"] == sorted(want, reverse=True) and len(want) < len(csv_rows)
    assert out["detail"] == f"unit {min(want)}" and out["hash"] == f"#u={min(want)}&r=0&q={word}&sort=-unit"


def test_chromium_screenshot_shows_the_card_pixels(run, tmp_path):
    shot = tmp_path / "shot.png"
    _browser((run / "report.html").as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1400,900")
    screen = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    assert len(np.unique((screen[..., 0] << 16) | (screen[..., 1] << 8) | screen[..., 2])) > 50  # not blank
    best = max(read_csv(run / "explanations.csv"), key=lambda r: float(r["iou"]))
    card = np.asarray(Image.open(run / "units" / f"unit_{int(best['unit']):04d}.png").convert("RGB")).astype(np.int16)
    # the card is shown 1:1 in the detail pane: candidate corners where three of its pixels match, then the whole card
    h, w = card.shape[:2]
    y0, x0 = np.mgrid[: screen.shape[0] - h + 1, : screen.shape[1] - w + 1].reshape(2, -1)
    for py, px in ((30, 10), (h - 10, w // 2), (h // 2, w - 10)):
        keep = np.abs(screen[y0 + py, x0 + px] - card[py, px]).max(-1) <= 2
        y0, x0 = y0[keep], x0[keep]
    found = [(y, x) for y, x in zip(y0, x0) if np.abs(screen[y:y + h, x:x + w] - card).max() <= 2]
    assert found, "the unit card is not visible in the rendered page"


def test_chromium_escapes_concept_names_and_shows_equivalences(tmp_path):
    names = ["a", "b", HOSTILE]
    rows = [{"unit": 0, "cluster": k, "range_lo": float(k), "range_hi": k + 1.0, "label": lab, "category": "object",
             "length": n, "iou": 0.3 - 0.1 * k, "threshold": 0.0}
            for k, (lab, n) in enumerate([("(a OR b) AND NOT a", 3), (f'"{HOSTILE}"', 1), ("a", 1)])]
    rows.append({"unit": 1, "cluster": 0, "range_lo": 0.0, "range_hi": 1.0, "label": "b AND NOT a",
                 "category": "object", "length": 2, "iou": 0.05, "threshold": 0.0})
    report = write_report(tmp_path, rows, _meta(names), {})
    page = _Page(_browser(report.as_uri(), tmp_path, "--dump-dom"))
    _check_loaded(page)
    assert not page.find("b", id="pwned") and page.find("title")  # nothing injected, title untouched
    assert sum(HOSTILE in t for t in page.row_text) == 1  # shown as text in its row
    assert [a["data-group"] for a in page.find("li") if "data-group" in a] == ["0,3"]
    assert page.h2[0].strip() == "unit 0 (3 ranges)"  # grouped ranges of the best unit
