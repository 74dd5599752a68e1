"""``check``: a Broden-format folder is validated completely: a good miniature passes with the right counts, a broken
copy reports each of its defects (and only those), through the library call and the command line."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_explain.cli import main
from lit_explain.datasets.broden_check import check_broden
from tests.fixtures.broden_writer import encode_ids, make_miniature


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    return make_miniature(tmp_path_factory.mktemp("check") / "broden")


def _expected_counts(mini) -> Counter:
    """Images each label id occurs in, from the fixture's own description (planes and image-level lists)."""
    counts: Counter = Counter()
    for img in mini.images:
        ids = set()
        for planes in img.planes.values():
            for plane in planes:
                ids.update(int(i) for i in np.unique(plane) if i != 0)
        for entries in img.image_labels.values():
            ids.update(int(i) for i in entries if i != 0)
        counts.update(ids)
    return counts


def test_good_folder_passes_with_its_counts(miniature, capsys):
    result = check_broden(miniature.root)
    assert result.ok, result.defects
    assert result.rows == len(miniature.images) == 21
    assert dict(result.image_counts) == dict(_expected_counts(miniature))
    assert result.image_counts[600] == 1 and result.image_counts[700] == 0  # rare-thing once, ghost never
    assert result.splits == Counter(img.split for img in miniature.images)
    assert result.pngs == sum(len(p) for img in miniature.images for p in img.planes.values())
    assert any("ghost" in n for n in result.notes)  # a label in no image is a note, not a defect
    assert main(["check", "--root", str(miniature.root)]) is None  # exit status 0
    out = capsys.readouterr().out
    assert "OK: no defects found." in out and "rare-thing 1" in out


def _rewrite_csv(path: Path, edit) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows = edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_broken_copy_reports_each_defect(miniature, tmp_path, capsys):
    root = tmp_path / "broken"
    shutil.copytree(miniature.root, root)
    images = root / "images"
    (images / miniature.images[2].image).unlink()                                  # 1. an image is missing
    png = miniature.images[5].png_names("object")[0]
    (images / png).unlink()                                                        # 2. a label PNG is missing
    bad_png = miniature.images[6].png_names("color")[0]
    ids = np.full((8, 8), 1)
    ids[0, 0] = 6                                                                  # 3. id 6 is not in label.csv
    Image.fromarray(encode_ids(ids, np.random.default_rng(0)), mode="RGB").save(images / bad_png)

    def unknown_scene(rows):                                                       # 4. image-level id 999
        col = rows[0].index("scene")
        rows[1][col] = "999"
        return rows
    _rewrite_csv(root / "index.csv", unknown_scene)
    _rewrite_csv(root / "category.csv", lambda r: r + [["material", 0, 0, 0, 0]])  # 5. an empty category
    _rewrite_csv(root / "label.csv", lambda r: r + [["800", "wall", "object(1)", 1, 0.1, ""]])  # 6. name twice
    _rewrite_csv(root / "c_object.csv", lambda r: r + [["99", "901", "unknown", 1, 0.1]])       # 7. unknown id

    result = check_broden(root)
    defects = result.defects
    expected = [
        ("missing image", miniature.images[2].image),
        ("label PNG", f"{png} is missing"),
        ("label PNG", "[6]"),
        ("index.csv:2", "scene label 999"),
        ("category.csv", "'material' is empty"),
        ("label.csv", "'wall'"),
        ("c_object.csv", "[901]"),
    ]
    for first, second in expected:
        assert sum(first in d and second in d for d in defects) == 1, (first, second, defects)
    assert len(defects) == len(expected), defects
    assert all("\n" not in d for d in defects)
    with pytest.raises(SystemExit) as info:
        main(["check", "--root", str(root)])
    assert info.value.code == 1
    out = capsys.readouterr().out
    assert f"{len(expected)} defects:" in out and bad_png in out


def test_missing_folder_and_files(tmp_path):
    assert "does not exist" in check_broden(tmp_path / "nowhere").defects[0]
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "label.csv").write_text("number,name,category,frequency,coverage,syns\n")
    defects = check_broden(tmp_path / "half").defects
    assert len(defects) == 2 and "index.csv: missing" in defects[0] and "images" in defects[1]
