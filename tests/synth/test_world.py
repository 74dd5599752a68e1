"""The synthetic world generator: determinism, exact Broden format, class rules, instances, atomic writes.

Every check reads the written files with plain csv/PIL/numpy, independently of the generator's own
bookkeeping; the class rules are re-stated here by hand as Python predicates over the decoded ground truth.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_explain.synth import world as world_mod
from lit_explain.synth.world import (WorldMismatchError, generate_world, instance_masks, load_classes,
                                     load_instances, load_scene, read_world)

N = 32  # images of the small test world (4 per class)

# The default class rules, restated by hand over the set of concepts present in an image.
HAND_RULES = {
    "red_circle": ("red AND circle", lambda p: {"red", "circle"} <= p),
    "blue_square": ("blue AND square", lambda p: {"blue", "square"} <= p),
    "warm_triangle": ("(yellow OR orange) AND triangle", lambda p: bool(p & {"yellow", "orange"}) and "triangle" in p),
    "striped_cross": ("striped AND cross", lambda p: {"striped", "cross"} <= p),
    "night_ring": ("night AND ring", lambda p: {"night", "ring"} <= p),
    "green_on_grass": ("green AND grass", lambda p: {"green", "grass"} <= p),
    "capped_purple": ("purple AND cap", lambda p: {"purple", "cap"} <= p),
    "indoor_no_circle": ("indoor AND NOT circle", lambda p: "indoor" in p and "circle" not in p),
}
PIXEL_CATS = ("color", "object", "part", "material")


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames), list(r)


def _decode(path: Path) -> np.ndarray:
    a = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return a[..., 0] + 256 * a[..., 1]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("w") / "world", num_images=N, seed=3)


@pytest.fixture(scope="module")
def decoded(world):
    """Per image: (presence set, {category: [planes]}) decoded from the files; plus the label tables."""
    _, labels = _csv(world / "label.csv")
    name_of = {int(r["number"]): r["name"] for r in labels}
    _, rows = _csv(world / "index.csv")
    out = []
    for r in rows:
        planes = {c: [_decode(world / "images" / f) for f in r[c].split(";") if f] for c in PIXEL_CATS}
        present = {name_of[int(v)] for p in planes.values() for pl in p for v in np.unique(pl) if v}
        present |= {name_of[int(r[c])] for c in ("scene", "texture") if r[c]}
        out.append((present, planes))
    return rows, name_of, out


def test_generation_is_deterministic_and_image_i_does_not_depend_on_n(tmp_path):
    a = _tree_bytes(generate_world(tmp_path / "a", num_images=12, seed=7))
    b = _tree_bytes(generate_world(tmp_path / "b", num_images=12, seed=7))
    assert a == b
    c = _tree_bytes(generate_world(tmp_path / "c", num_images=20, seed=7))
    images = [k for k in a if k.startswith("images/")]
    assert len(images) >= 12 * 3
    assert all(a[k] == c[k] for k in images)  # the first 12 images' files are identical in the bigger world
    lines_a = a["index.csv"].decode().splitlines()
    assert c["index.csv"].decode().splitlines()[: len(lines_a)] == lines_a
    d = _tree_bytes(generate_world(tmp_path / "d", num_images=12, seed=8))
    assert d["images/synth/000000.jpg"] != a["images/synth/000000.jpg"]


def test_parallel_generation_writes_the_same_bytes(tmp_path):
    serial = _tree_bytes(generate_world(tmp_path / "serial", num_images=140, seed=2))
    parallel = _tree_bytes(generate_world(tmp_path / "parallel", num_images=140, seed=2, workers=2))
    assert serial.keys() == parallel.keys()
    assert [k for k in serial if serial[k] != parallel[k]] == []


def test_broden_files_exact_format(world):
    header, rows = _csv(world / "index.csv")
    assert header == ["image", "split", "ih", "iw", "sh", "sw", "color", "object", "part", "material", "scene",
                      "texture"]
    assert len(rows) == N and {r["split"] for r in rows} == {"train", "val"}
    lh, labels = _csv(world / "label.csv")
    assert lh == ["number", "name", "category", "frequency", "coverage", "syns"]
    numbers = [int(r["number"]) for r in labels]
    assert numbers == list(range(1, len(numbers) + 1))  # 0 reserved, numbering starts at 1, no gaps
    assert 25 <= len(numbers) <= 50
    ch, cats = _csv(world / "category.csv")
    assert ch == ["name", "first", "last", "count", "frequency"]
    assert [c["name"] for c in cats] == ["color", "object", "part", "material", "scene", "texture"]
    cat_of = {}
    for c in cats:
        members = [r for r in labels if r["category"].split("(")[0] == c["name"]]
        assert [int(r["number"]) for r in members] == list(range(int(c["first"]), int(c["last"]) + 1))
        assert int(c["count"]) == len(members)
        cat_of.update({int(r["number"]): c["name"] for r in members})
        code_h, codes = _csv(world / f"c_{c['name']}.csv")
        assert code_h == ["code", "number", "name", "frequency", "coverage"]
        assert [int(r["code"]) for r in codes] == list(range(1, len(members) + 1))
        assert [(int(r["number"]), r["name"]) for r in codes] == [(int(r["number"]), r["name"]) for r in members]
    for r in labels:  # label.csv fields parse the way NetDissect's loader parses them
        assert r["category"] == f"{cat_of[int(r['number'])]}({r['frequency']})"
        assert r["coverage"].replace(".", "", 1).isdigit() and "." in r["coverage"]
    for r in rows:
        assert (int(r["ih"]), int(r["iw"]), int(r["sh"]), int(r["sw"])) == (64, 64, 32, 32)
        img = Image.open(world / "images" / r["image"])
        assert img.format == "JPEG" and img.size == (64, 64) and img.mode == "RGB"
        assert r["image"].startswith("synth/")
        for c in PIXEL_CATS:
            for f in filter(None, r[c].split(";")):
                pl = _decode(world / "images" / f)
                assert pl.shape == (32, 32)
                ids = set(np.unique(pl).tolist()) - {0}
                assert ids and all(cat_of[i] == c for i in ids), (f, ids)
        assert r["scene"].isdigit() and cat_of[int(r["scene"])] == "scene"
        assert r["texture"] == "" or cat_of[int(r["texture"])] == "texture"
    assert any(len(r["part"].split(";")) == 2 for r in rows)  # some images have two part planes
    assert any(r["material"] for r in rows) and any(not r["material"] for r in rows)
    assert any(not r["texture"] for r in rows)


def test_label_statistics_match_the_masks(world, decoded):
    rows, name_of, per_image = decoded
    _, labels = _csv(world / "label.csv")
    freq, cover = Counter(), Counter()
    for r, (present, planes) in zip(rows, per_image):
        for name in present:
            freq[name] += 1
        for ps in planes.values():
            for pl in ps:
                for v, n in zip(*np.unique(pl, return_counts=True)):
                    if v:
                        cover[name_of[int(v)]] += n / pl.size
        for c in ("scene", "texture"):
            if r[c]:
                cover[name_of[int(r[c])]] += 1.0
    for r in labels:
        assert int(r["frequency"]) == freq[r["name"]], r
        assert float(r["coverage"]) == pytest.approx(cover[r["name"]], abs=1e-5), r
    _, cats = _csv(world / "category.csv")
    for c in cats:
        want = sum(1 for r in rows if r[c["name"]])
        assert int(c["frequency"]) == want


def test_class_rules_hold_exactly_on_ground_truth(world, decoded):
    info = read_world(world)
    assert info["class_names"] == list(HAND_RULES)
    assert [c["rule"] for c in info["classes"]] == [v[0] for v in HAND_RULES.values()]
    classes = load_classes(world)
    rows, _, per_image = decoded
    counts = Counter()
    for r, (present, _) in zip(rows, per_image):
        k = classes[r["image"]]
        holding = [j for j, (_, rule) in enumerate(HAND_RULES.values()) if rule(present)]
        assert holding == [k], (r["image"], sorted(present), holding, k)
        counts[k] += 1
    assert set(counts.values()) == {N // len(HAND_RULES)}  # balanced
    # classes.csv lists every image in index order
    _, crow = _csv(world / "classes.csv")
    assert [c["image"] for c in crow] == [r["image"] for r in rows]
    assert all(c["class_name"] == info["class_names"][int(c["class"])] for c in crow)


def test_instances_match_the_label_pngs(world, decoded):
    rows, name_of, per_image = decoded
    number = {v: k for k, v in name_of.items()}
    for i, (r, (present, planes)) in enumerate(zip(rows, per_image)):
        insts = load_instances(world, i)
        scene = load_scene(world, i)
        assert scene["image"] == r["image"] and name_of[int(r["scene"])] == scene["scene"]
        assert 1 <= len(insts) <= 3
        small = instance_masks(world, i, size=32)
        big = instance_masks(world, i)
        assert small.shape == (len(insts), 32, 32) and big.shape == (len(insts), 64, 64)
        obj, col = planes["object"][0], planes["color"][0]
        assert np.array_equal(small.any(0), obj > 0)
        assert (small.sum(0) <= 1).all()
        for inst, m, mb in zip(insts, small, big):
            assert m.any()
            assert (obj[m] == number[inst["name"]]).all() and (col[m] == number[inst["color"]]).all()
            ys, xs = np.nonzero(mb)
            assert inst["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            if inst["material"]:
                assert (planes["material"][0][m] == number[inst["material"]]).all()
            for part in ("rim", "cap"):
                part_px = np.zeros_like(m)
                for pl in planes["part"]:
                    part_px |= pl == number[part]
                assert (part_px & m).any() == (part in inst["parts"])


def test_reuse_mismatch_and_overwrite(tmp_path):
    root = generate_world(tmp_path / "w", num_images=8, seed=1)
    stamp = (root / "world.json").stat().st_mtime_ns
    assert generate_world(root, num_images=8, seed=1) == root  # same params: reused untouched
    assert (root / "world.json").stat().st_mtime_ns == stamp
    with pytest.raises(WorldMismatchError, match="num_images: 8 -> 9"):
        generate_world(root, num_images=9, seed=1)
    generate_world(root, num_images=9, seed=1, overwrite=True)
    assert read_world(root)["params"]["num_images"] == 9
    assert len(_csv(root / "index.csv")[1]) == 9
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(WorldMismatchError, match="not empty"):
        generate_world(other, num_images=8)
    assert (other / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "w"]  # no temporary folders left
    umask = os.umask(0)
    os.umask(umask)
    assert (root.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's private 0700


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = world_mod._png_bytes

    def failing(plane):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt("killed")
        return real(plane)

    monkeypatch.setattr(world_mod, "_png_bytes", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_world(tmp_path / "w", num_images=20)
    assert list(tmp_path.iterdir()) == []  # neither the world nor a temporary folder
    with pytest.raises(FileNotFoundError, match="not a complete synthetic world"):
        read_world(tmp_path / "w")


def test_bad_arguments_are_reported(tmp_path):
    with pytest.raises(ValueError, match="mask_size"):
        generate_world(tmp_path / "w", num_images=4, mask_size=128)
    with pytest.raises(ValueError, match="unknown concept"):
        generate_world(tmp_path / "w", num_images=4, classes={"a": "red AND hexagon", "b": "blue"})
    assert not (tmp_path / "w").exists()


def test_world_json_describes_concepts(world):
    info = read_world(world)
    _, labels = _csv(world / "label.csv")
    assert [(c["number"], c["name"], c["category"]) for c in info["concepts"]] == \
        [(int(r["number"]), r["name"], r["category"].split("(")[0]) for r in labels]
    assert {c["category"] for c in info["concepts"] if c["image_level"]} == {"scene", "texture"}
    assert all(c["semantics"] for c in info["concepts"])
    assert info["counts"]["images"] == N and info["params"]["seed"] == 3
    assert json.loads(json.dumps(info)) == info
    assert not any(n.startswith(".") for n in os.listdir(world.parent))
