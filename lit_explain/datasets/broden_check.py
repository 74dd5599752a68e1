"""Check a Broden-format folder before a long run: every file there, every label id known, counts per concept.

``python trainer_cli.py check --root <folder>`` (or ``python -m lit_explain.datasets.broden_check --root <folder>``)
reads the folder the way :class:`~lit_explain.datasets.broden.BrodenDataset` does (the same table readers and label
map decoder, :mod:`lit_explain.datasets.broden_tables`), but does not stop at the first problem: it goes through
every row of ``index.csv``, every image and every label PNG, prints what it found (images, splits, sizes, categories,
the number of images each concept occurs in) and lists every defect, one line each with the file and the fix. It
exits with status 1 when there is a defect, 0 otherwise.

Defects (a run would fail, or silently lose data): ``index.csv`` or ``label.csv`` missing or unreadable, index
columns missing, sizes that are not integers, an image or label PNG missing, a PNG unreadable, of another size
than the index says or holding ids ``label.csv`` does not define, an image-level id ``label.csv`` does not define,
an id or name defined twice, a ``c_<category>.csv`` id missing from ``label.csv``, a category listed in
``category.csv`` that no label belongs to. Notes (allowed, but worth knowing): no ``category.csv`` (index column
order is used), categories without a ``c_`` file (label.csv's category column decides the primary category),
rows without any label (skipped by the reader), labels that occur in no image.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lit_explain.datasets.broden_tables import (
    NUM_IDS, BrodenFormatError, BrodenLabels, decode_label_png, read_csv, split_cell,
)

__all__ = ["BrodenCheck", "check_broden", "main"]

#: Columns of index.csv before the category columns.
META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
#: Defects of one kind listed one by one before the rest are counted.
_LIST = 20


@dataclass
class BrodenCheck:
    """What :func:`check_broden` found in a folder.

    Attributes:
        root: the folder.
        rows: rows of index.csv.
        splits: split name -> rows.
        image_sizes, mask_sizes: (h, w) -> rows, from index.csv.
        categories: category -> number of labels that belong to it (category.csv order, then index columns).
        image_counts: label id -> number of index rows (images) it occurs in, in a PNG or as an image-level entry.
        category_counts: (category, label id) -> number of images it occurs in within that category's column.
        names: label id -> name (label.csv).
        pngs: label PNGs read.
        defects: one line each: the file (and line), what is wrong, the fix.
        notes: allowed oddities.
    """

    root: Path
    rows: int = 0
    splits: Counter = field(default_factory=Counter)
    image_sizes: Counter = field(default_factory=Counter)
    mask_sizes: Counter = field(default_factory=Counter)
    categories: dict[str, int] = field(default_factory=dict)
    image_counts: Counter = field(default_factory=Counter)
    names: dict[int, str] = field(default_factory=dict)
    category_counts: Counter = field(default_factory=Counter)
    pngs: int = 0
    defects: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.defects

    def report(self, all_concepts: bool = False) -> str:
        """The printed report: what was found, then the notes and the defects."""
        lines = [f"Broden folder {self.root}"]
        lines.append(f"  index.csv: {self.rows} rows; splits: "
                     + (", ".join(f"{s or '(empty)'} {n}" for s, n in sorted(self.splits.items())) or "-"))
        lines.append("  image sizes (ih x iw): " + _sizes(self.image_sizes)
                     + "; label map sizes (sh x sw): " + _sizes(self.mask_sizes))
        lines.append(f"  label PNGs read: {self.pngs}; labels defined in label.csv: {len(self.names)}")
        for cat, n_labels in self.categories.items():
            ids = sorted((i for c, i in self.category_counts if c == cat),
                         key=lambda i: (-self.category_counts[cat, i], i))
            shown = ids if all_concepts else ids[:8]
            listed = ", ".join(f"{self.names.get(i, i)} {self.category_counts[cat, i]}" for i in shown)
            more = f", ... ({len(ids) - len(shown)} more; --all lists them)" if len(ids) > len(shown) else ""
            lines.append(f"  category {cat}: {n_labels} labels, {len(ids)} occur in images"
                         + (f" (images per concept: {listed}{more})" if ids else ""))
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.defects:
            lines.append(f"{len(self.defects)} defect{'s' if len(self.defects) > 1 else ''}:")
            lines.extend(f"  - {d}" for d in self.defects)
        else:
            lines.append("OK: no defects found.")
        return "\n".join(lines)


def _sizes(counter: Counter) -> str:
    return ", ".join(f"{h}x{w} ({n})" for (h, w), n in counter.most_common(3)) + (" ..." if len(counter) > 3 else "") \
        if counter else "-"


class _Capped:
    """Adds defects of one kind to a list, the first ``_LIST`` one by one, then a count of the rest."""

    def __init__(self, out: list[str], what: str) -> None:
        self.out, self.what, self.listed, self.extra = out, what, 0, 0

    def add(self, line: str) -> None:
        if self.listed < _LIST:
            self.out.append(f"{self.what}: {line}")
            self.listed += 1
        else:
            self.extra += 1

    def close(self) -> None:
        if self.extra:
            self.out.append(f"{self.what}: ... and {self.extra} more")


def _int(text: str | None) -> int | None:
    try:
        return int(text or "")
    except ValueError:
        return None


def _labels(root: Path, check: BrodenCheck) -> tuple[np.ndarray, list[str], dict[str, set[int]], dict[int, set[str]]]:
    """(known ids, category.csv order, c_ file ids per category, label.csv categories per id).

    Read by the reader's :class:`BrodenLabels`; when it refuses a file (a repeated id or name), that is a defect and
    the tables are read leniently (first definition wins) so that the rest of the folder is still checked.
    """
    try:
        labels = BrodenLabels(root)
        check.names = dict(labels.names)
        return (labels.known, labels.category_csv_order, {c: set(cov) for c, cov in labels.coverage.items()},
                {i: set(cats) for i, cats in labels.label_csv_categories.items()})
    except BrodenFormatError as err:
        check.defects.append(str(err))
    known = np.zeros(NUM_IDS, dtype=bool)
    label_cats: dict[int, set[str]] = {}
    for rec in read_csv(root / "label.csv")[1]:
        number, name = _int(rec.get("number")), (rec.get("name") or "").strip()
        if number is not None and 0 < number < NUM_IDS and name and not known[number]:
            known[number] = True
            check.names[number] = name
            label_cats[number] = {part.split("(")[0].strip() for part in split_cell(rec.get("category"))}
    order = []
    if (root / "category.csv").is_file():
        names = ((r.get("name") or "").strip() for r in read_csv(root / "category.csv")[1])
        order = list(dict.fromkeys(n for n in names if n))
    coverage = {f.stem[2:]: {n for r in read_csv(f)[1] if (n := _int(r.get("number"))) is not None}
                for f in sorted(root.glob("c_*.csv"))}
    return known, order, coverage, label_cats


def check_broden(root: str | Path) -> BrodenCheck:
    """Check the Broden-format folder ``root`` completely (see the module docstring); never raises for its content.

    Reads every label PNG once: about as long as the first build of the concept index (a few minutes for the full
    Broden on a few cores).
    """
    root = Path(root).expanduser()
    check = BrodenCheck(root)
    if not root.is_dir():
        check.defects.append(f"{root}: the folder does not exist; pass the folder that holds index.csv")
        return check
    for name in ("index.csv", "label.csv"):
        if not (root / name).is_file():
            check.defects.append(f"{root / name}: missing; a Broden folder needs index.csv, label.csv and images/ "
                                 "(category.csv and c_<category>.csv are recommended)")
    if not (root / "images").is_dir():
        check.defects.append(f"{root / 'images'}: the image folder is missing; index.csv paths are relative to it")
    if check.defects and not ((root / "index.csv").is_file() and (root / "label.csv").is_file()):
        return check
    try:
        known, order, coverage, label_csv_cats = _labels(root, check)
        header, records = read_csv(root / "index.csv")
    except BrodenFormatError as err:  # a file that is not CSV at all
        check.defects.append(str(err))
        return check
    missing_meta = [c for c in META_COLUMNS if c not in header]
    if missing_meta:
        check.defects.append(f"{root / 'index.csv'}: columns {missing_meta} are missing; the header must start with "
                             f"{','.join(META_COLUMNS)} followed by one column per category")
        return check
    columns = [c for c in header if c not in META_COLUMNS]
    if not (root / "category.csv").is_file():
        check.notes.append("no category.csv: categories are taken in index.csv's column order")

    # categories and the labels that belong to them
    belongs: dict[str, set[int]] = {c: set() for c in dict.fromkeys([*order, *columns])}
    for cat, cov in coverage.items():
        belongs.setdefault(cat, set()).update(cov)
        unknown = sorted(i for i in cov if not (0 < i < NUM_IDS and known[i]))
        if unknown:
            check.defects.append(f"{root / f'c_{cat}.csv'}: label numbers {unknown[:10]} are not defined in "
                                 f"{root / 'label.csv'}; the files do not belong together")
    for number, cats in label_csv_cats.items():
        for cat in cats:
            belongs.setdefault(cat, set()).add(number)
    for cat in order:
        if cat not in columns:
            check.defects.append(f"{root / 'category.csv'}: category {cat!r} has no column in index.csv; add the "
                                 "column or remove the category")
        if not belongs.get(cat):
            check.defects.append(f"{root / 'category.csv'}: category {cat!r} is empty (no label of label.csv or "
                                 f"c_{cat}.csv belongs to it); add its labels or remove the category")
    no_c_file = [c for c in belongs if belongs[c] and c not in coverage]
    if no_c_file:
        check.notes.append(f"no c_<category>.csv for {no_c_file}: label.csv's category column decides the primary "
                           "category of their labels")
    check.categories = {c: len(ids) for c, ids in belongs.items() if ids or c in order}

    # every row: sizes, image file, label PNGs, image-level ids
    missing_images = _Capped(check.defects, "missing image")
    bad_pngs = _Capped(check.defects, "label PNG")
    bad_rows = _Capped(check.defects, "index.csv")
    empty_rows = 0
    for line, rec in enumerate(records, start=2):
        check.rows += 1
        image = (rec.get("image") or "").strip()
        check.splits[(rec.get("split") or "").strip()] += 1
        try:
            ih, iw, sh, sw = (int(rec[k]) for k in ("ih", "iw", "sh", "sw"))
        except (TypeError, ValueError):
            bad_rows.add(f"{root / 'index.csv'}:{line} ({image}): ih/iw/sh/sw are not integers")
            continue
        check.image_sizes[(ih, iw)] += 1
        check.mask_sizes[(sh, sw)] += 1
        if not image or not (root / "images" / image).is_file():
            missing_images.add(f"{root / 'images' / image} (index.csv line {line}); copy it there or remove the row")
        found: set[int] = set()
        found_in: set[tuple[str, int]] = set()
        for cat in columns:
            for entry in split_cell(rec.get(cat)):
                if entry.isdigit():
                    number = int(entry)
                    if number == 0:
                        continue
                    if not (number < NUM_IDS and known[number]):
                        bad_rows.add(f"{root / 'index.csv'}:{line} ({image}): {cat} label {number} is not defined in "
                                     f"{root / 'label.csv'}; add it there or fix the row")
                        continue
                    ids = np.asarray([number])
                else:
                    path = root / "images" / entry
                    check.pngs += 1
                    try:
                        ids = np.unique(decode_label_png(path, (sh, sw), known, root / "label.csv"))
                    except FileNotFoundError:
                        bad_pngs.add(f"{path} is missing (index.csv line {line}, {cat}); copy it there or remove "
                                     "the entry")
                        continue
                    except BrodenFormatError as err:
                        bad_pngs.add(str(err))
                        continue
                ids = ids[ids > 0]
                found.update(int(i) for i in ids)
                found_in.update((cat, int(i)) for i in ids)
        if not found:
            empty_rows += 1
        check.image_counts.update(found)
        check.category_counts.update(found_in)
    for capped in (missing_images, bad_pngs, bad_rows):
        capped.close()
    if empty_rows:
        check.notes.append(f"{empty_rows} rows of index.csv hold no label in any category (the reader skips them)")
    unused = [i for i in check.names if check.image_counts[i] == 0]
    if unused:
        shown = ", ".join(check.names[i] for i in unused[:10])
        more = " ..." if len(unused) > 10 else ""
        check.notes.append(f"{len(unused)} labels of label.csv occur in no image: {shown}{more}")
    return check


def main(argv: list[str] | None = None) -> int:
    """``check --root <folder> [--all]``: print the report; return 1 when there is a defect, else 0."""
    parser = argparse.ArgumentParser(
        prog="trainer_cli.py check",
        description="Validate a Broden-format dataset folder (index.csv, label.csv, category.csv, c_*.csv, images/ "
                    "with images and label PNGs) before a long run: print what it holds and list every defect.")
    parser.add_argument("--root", required=True, help="the folder that holds index.csv")
    parser.add_argument("--all", action="store_true", help="list every concept with its image count")
    args = parser.parse_args(argv)
    result = check_broden(args.root)
    print(result.report(all_concepts=args.all))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
