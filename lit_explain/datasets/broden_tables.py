"""Broden's small tables and label maps: ``label.csv``, ``category.csv``, ``c_<category>.csv`` and the label PNGs.

On-disk format, read exactly:

* ``label.csv``: ``number,name,category,frequency,coverage,syns``; ``number`` is the global label id stored in
  the PNGs, ``category`` reads ``object(4743)`` or ``material(36);object(3)`` (category, image count). Label 0,
  unnamed rows and numbers missing from the file mean "no label".
* ``category.csv`` (``name,first,last,count,frequency``): the categories and their order (optional file).
* ``c_<category>.csv`` (``code,number,name,frequency,coverage``): per-category coverage (optional per category).
* label PNGs: RGB, the global id of a pixel is ``R + 256 * G`` (B unused, 0 = no label).

A vocabulary file that defines the same id or the same name twice is rejected with the file, both lines and the
repeated value: silently letting the last row win would give a concept another label's pixels.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
from PIL import Image

from lit_explain.errors import ConfigError

__all__ = ["BrodenFormatError", "BrodenLabels", "HOWTO", "NUM_IDS", "check_root", "decode_label_png", "read_csv",
           "split_cell"]

NUM_IDS = 256 * 256  # R + 256 * G < 65536
HOWTO = (
    "Broden cannot be downloaded here: download broden1_224 (or broden1_227 / broden1_384) yourself "
    "(NetDissect's script fetches http://netdissect.csail.mit.edu/data/broden1_224.zip), unzip it and pass the "
    "folder that holds index.csv as `root`."
)


class BrodenFormatError(ConfigError):
    """A Broden file exists but its content is unreadable or inconsistent (corrupt image, unknown label id...)."""


def split_cell(cell: str | None) -> list[str]:
    """The ``;``-separated entries of an index.csv / label.csv cell, stripped, empty ones dropped."""
    return [e.strip() for e in (cell or "").split(";") if e.strip()]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as dicts) of a CSV file; a parse or encoding error names the file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return [c.strip() for c in (reader.fieldnames or [])], rows
    except (csv.Error, UnicodeDecodeError) as e:
        raise BrodenFormatError(f"cannot parse {path}: {e}; the file is corrupt, re-extract the Broden archive") from e


def _float(x: str | None) -> float:
    try:
        return float(x) if x not in (None, "") else 0.0
    except ValueError:
        return 0.0


def check_root(root: Path) -> None:
    """Raise FileNotFoundError saying what a Broden folder must hold (and where one might be) when ``root`` lacks
    index.csv or label.csv."""
    expected = (
        "index.csv (image,split,ih,iw,sh,sw,color,object,part,material,scene,texture), label.csv, "
        "category.csv, c_<category>.csv and the folder images/"
    )
    missing = [n for n in ("index.csv", "label.csv") if not (root / n).is_file()]
    if not missing:
        return
    hint = ""
    if root.is_dir():
        inner = sorted(p.name for p in root.iterdir() if (p / "index.csv").is_file())
        if inner:
            hint = f" Did you mean {root / inner[0]}?"
    what = "does not exist" if not root.exists() else f"lacks {', '.join(missing)}"
    raise FileNotFoundError(f"Broden root {root} {what}. Expected there: {expected}.{hint} {HOWTO}")


def _no_repeat(seen: dict, key, path: Path, line: int, what: str) -> None:
    """Record ``key`` first defined at ``line``; raise naming both lines when it was defined before."""
    if key in seen:
        raise BrodenFormatError(
            f"{path}:{line}: {what} {key!r} is already defined on line {seen[key]}; a vocabulary file must define "
            "each id and each name once (the file is corrupt or was edited: restore it from the Broden archive)")
    seen[key] = line


class BrodenLabels:
    """The label definitions of a Broden folder: names, categories, category order and coverages.

    Attributes:
        names: global label id -> name (label.csv rows with number > 0 and a name).
        label_csv_categories: global id -> {category: image count} from label.csv's ``category`` column.
        known: (65536,) bool, True for the ids ``names`` defines (a lookup table for the PNG check).
        category_csv_order: category.csv's category names in row order ([] without the file).
        coverage: category -> {global id: coverage} from each ``c_<category>.csv``.

    Raises:
        BrodenFormatError: a non-integer or out-of-range number, or an id or name defined twice in label.csv,
            a category named twice in category.csv, an id or name listed twice in one c_ file (file and lines
            in the message).
    """

    def __init__(self, root: Path) -> None:
        root = Path(root)
        self.label_file = path = root / "label.csv"
        _, records = read_csv(path)
        self.names: dict[int, str] = {}
        self.label_csv_categories: dict[int, dict[str, int]] = {}
        id_line: dict[int, int] = {}
        name_line: dict[str, int] = {}
        for line, rec in enumerate(records, start=2):
            try:
                number = int(rec["number"])
            except (KeyError, TypeError, ValueError):
                raise BrodenFormatError(f"{path}:{line}: `number` is not an integer ({rec.get('number')!r})") from None
            name = (rec.get("name") or "").strip()
            if number <= 0 or not name:
                continue  # 0 and unnamed placeholder rows mean "no label"
            if not 0 < number < NUM_IDS:
                raise BrodenFormatError(f"{path}:{line}: label number {number} cannot be stored as R + 256*G")
            _no_repeat(id_line, number, path, line, "label number")
            _no_repeat(name_line, name, path, line, "label name")
            self.names[number] = name
            cats = {}
            for part in split_cell(rec.get("category")):
                m = re.fullmatch(r"\s*([^()]+?)\s*(?:\((\d+)\))?\s*", part)
                if m:
                    cats[m.group(1)] = int(m.group(2) or 0)
            self.label_csv_categories[number] = cats
        self.known = np.zeros(NUM_IDS, dtype=bool)
        self.known[list(self.names)] = True
        cat_path = root / "category.csv"
        self.category_csv_order: list[str] = []
        if cat_path.is_file():
            cat_line: dict[str, int] = {}
            for line, r in enumerate(read_csv(cat_path)[1], start=2):
                name = (r.get("name") or "").strip()
                if name:
                    _no_repeat(cat_line, name, cat_path, line, "category")
                    self.category_csv_order.append(name)
        self.coverage: dict[str, dict[int, float]] = {}
        for f in sorted(root.glob("c_*.csv")):
            cov: dict[int, float] = {}
            c_ids: dict[int, int] = {}
            c_names: dict[str, int] = {}
            for line, rec in enumerate(read_csv(f)[1], start=2):
                try:
                    number = int(rec["number"])
                except (KeyError, TypeError, ValueError):
                    continue
                _no_repeat(c_ids, number, f, line, "label number")
                name = (rec.get("name") or "").strip()
                if name:
                    _no_repeat(c_names, name, f, line, "label name")
                cov[number] = _float(rec.get("coverage"))
            self.coverage[f.stem[2:]] = cov


def decode_label_png(path: Path, shape: tuple[int, int], known: np.ndarray, label_file: Path) -> np.ndarray:
    """One label PNG as (sh, sw) int32 global ids ``R + 256 * G``, checked against ``shape`` and ``known``.

    Raises:
        FileNotFoundError: the PNG does not exist (the caller usually rewords it with the index row).
        BrodenFormatError: unreadable, not RGB(A)/palette, of another size, or holding ids ``known`` lacks.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("RGB", "RGBA", "P"):
                raise BrodenFormatError(f"Broden label map {path} has mode {im.mode}; expected RGB with id = R + 256*G")
            rgb = np.asarray(im.convert("RGB"))
    except (BrodenFormatError, FileNotFoundError):
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise BrodenFormatError(f"cannot read Broden label map {path}: {e}; the file is corrupt, replace it from the archive") from e
    if rgb.shape[:2] != tuple(shape):
        raise BrodenFormatError(f"Broden label map {path} is {rgb.shape[0]}x{rgb.shape[1]}, the index says {shape[0]}x{shape[1]}")
    ids = rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)
    ok = known[ids]
    ok[ids == 0] = True
    if not ok.all():
        bad = np.unique(ids[~ok])
        raise BrodenFormatError(
            f"Broden label map {path} contains label ids {bad[:10].tolist()} that {label_file} does "
            f"not define; the PNG is corrupt or belongs to another Broden version"
        )
    return ids
