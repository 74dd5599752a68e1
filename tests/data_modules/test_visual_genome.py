"""VisualGenomeDataModule on miniature VG roots written in the exact file formats (tests/fixtures/vg_writer.py).

Every image is non-square (W != H) so a (W, H) / (H, W) mix-up shows; every category's boxes are painted in
its own colour, so the expected mask of any sample is read back from the (transformed) pixels alone.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules._instances import BoxMaskSource, JointTransform, seen_split
from data_modules.visual_genome import VisualGenomeDataModule, synset_name
from lit_explain.datasets.files import iter_json_array
from tests.fixtures.vg_writer import BACKGROUND, VGImage, VGObject, write_vg

W, H = 40, 24  # every fixture image is 40 wide, 24 high

COLORS = {  # one colour per synset (objects of a category share it)
    "dog.n.01": (220, 20, 20),
    "cat.n.01": (20, 220, 20),
    "bank.n.01": (20, 20, 220),
    "bank.n.09": (20, 20, 220),
    "traffic_light.n.01": (220, 220, 20),
    "zebra.n.01": (220, 20, 220),
    "horse.n.01": (20, 220, 220),
}


def _obj(oid, x, y, w, h, synset, attrs=()):
    name = synset_name(synset) if synset else "thing"
    return VGObject(oid, x, y, w, h, [name], [synset] if synset else [], list(attrs),
                    COLORS.get(synset, (120, 120, 120)))


def _vocab_images():
    """Five 40x24 images. Image counts: dog 3 (4 boxes), cat 2, bank 2 (two synsets), traffic light 3,
    zebra 1, horse 1 (2 boxes), one object without synset."""
    return [
        VGImage(1, W, H, [_obj(11, 1, 1, 6, 5, "dog.n.01", ["brown"]), _obj(12, 30, 15, 8, 7, "dog.n.01"),
                          _obj(13, 10, 2, 5, 9, "cat.n.01"), _obj(14, 20, 14, 6, 6, "bank.n.01")]),
        VGImage(2, W, H, [_obj(21, 2, 3, 9, 4, "dog.n.01", ["brown"]), _obj(22, 15, 10, 6, 10, "cat.n.01"),
                          _obj(23, 30, 1, 4, 12, "traffic_light.n.01")], folder="VG_100K_2"),
        VGImage(3, W, H, [_obj(31, 5, 5, 7, 7, "dog.n.01", ["brown"]), _obj(32, 25, 2, 5, 8, "traffic_light.n.01"),
                          _obj(33, 14, 14, 4, 4, "horse.n.01"), _obj(34, 33, 14, 5, 5, "horse.n.01")]),
        VGImage(4, W, H, [_obj(41, 3, 3, 10, 10, "bank.n.09"), _obj(42, 20, 5, 5, 5, None)], folder="VG_100K_2"),
        VGImage(5, W, H, [_obj(51, 2, 2, 6, 6, "traffic_light.n.01"), _obj(52, 20, 10, 8, 8, "zebra.n.01")]),
    ]


def _dm(root, tmp_path, **kw):
    kw.setdefault("min_images", 2)
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("image_size", 24)
    kw.setdefault("val_fraction", 0.0)
    kw.setdefault("seen_fraction", 1.0)
    return VisualGenomeDataModule(str(root), **kw)


def _colour_region(image: torch.Tensor, colour) -> torch.Tensor:
    """Pixels of a (3,S,S) image in [0,1] (mean 0, std 1 normalisation) equal to ``colour``."""
    px = (image * 255).round().to(torch.int64)
    return (px == torch.tensor(colour).view(3, 1, 1)).all(0)


# ---------------------------------------------------------------------------------------------- parsing
def test_streaming_parser_matches_json_load(tmp_path):
    rng = np.random.default_rng(0)
    data = [{"image_id": int(i), "objects": [{"x": int(rng.integers(100)), "names": ["a \u00e9 [b]", "{c}"],
                                              "w": float(rng.random())} for _ in range(int(rng.integers(0, 4)))]}
            for i in range(40)]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(data, indent=1))
    for chunk in (1, 7, 64, 1 << 20):
        assert list(iter_json_array(p, chunk_size=chunk)) == data
    (tmp_path / "empty.json").write_text(" [ ] ")
    assert list(iter_json_array(tmp_path / "empty.json")) == []
    (tmp_path / "trunc.json").write_text(json.dumps(data)[:-30])
    with pytest.raises(ValueError, match="trunc.json"):
        list(iter_json_array(tmp_path / "trunc.json", chunk_size=16))
    (tmp_path / "obj.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="obj.json"):
        list(iter_json_array(tmp_path / "obj.json"))
    (tmp_path / "ints.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="ints.json.*element 0.*int"):
        list(iter_json_array(tmp_path / "ints.json"))
    (tmp_path / "blank.json").write_text("  \n")
    with pytest.raises(ValueError, match="blank.json"):
        list(iter_json_array(tmp_path / "blank.json"))
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(data[:3]).encode())
    assert list(iter_json_array(tmp_path / "bom.json")) == data[:3]


def test_vocabulary_min_image_frequency_and_synset_merge(tmp_path):
    root = write_vg(tmp_path / "vg", _vocab_images())
    dm = _dm(root, tmp_path)
    # image counts >= 2: dog 3, cat 2, bank (n.01 + n.09 merged) 2, traffic light 3; zebra 1, horse 1 dropped
    assert dm.label_names == ["bank", "cat", "dog", "traffic light"]
    # instance counts >= 2 adds horse (2 boxes in one image)
    dm = _dm(root, tmp_path, min_count_by="instances")
    assert dm.label_names == ["bank", "cat", "dog", "horse", "traffic light"]
    # the reproduction's head token
    dm = _dm(root, tmp_path, merge_by="head_token")
    assert dm.label_names == ["bank", "cat", "dog", "traffic"]
    # names: "thing" (no synset) is a category by name but occurs in 1 image only
    dm = _dm(root, tmp_path, merge_by="name", min_images=1)
    assert dm.label_names == ["bank", "cat", "dog", "horse", "thing", "traffic light", "zebra"]
    # image 5 keeps only its traffic light, image 4 only its bank; all 5 images have kept objects
    dm = _dm(root, tmp_path)
    assert len(dm.tables.image_paths) == 5
    assert dm.tables.info["objects_without_category"] == 1


def test_attributes_become_categories(tmp_path):
    root = write_vg(tmp_path / "vg", _vocab_images())
    dm = _dm(root, tmp_path, include_attributes=True)
    assert dm.label_names == ["bank", "brown", "cat", "dog", "traffic light"]  # brown: images 1, 2, 3
    dm.setup("fit")
    ds = dm.instance_dataset("train")
    brown = dm.label_names.index("brown")
    # every brown unit is a dog box: its mask is the dog-coloured region of the image
    n = 0
    for i in range(len(ds)):
        it = ds[i]
        if it["target"][brown] == 1:
            n += 1
            assert it["target"].sum() == 1  # union per category: one-hot
    assert n == 3


def test_vg12_keys(tmp_path):
    root = write_vg(tmp_path / "vg", _vocab_images(), version="1.2")
    assert _dm(root, tmp_path).label_names == ["bank", "cat", "dog", "traffic light"]


# ---------------------------------------------------------------------------------------------- masks
def test_box_mask_rows_are_y():
    boxes = np.array([[3, 5, 10, 4], [35.5, 20.2, 10, 10], [7, 7, 0, 0]], dtype=np.float32)
    src = BoxMaskSource(boxes)
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    m = src(0, H, W)
    assert m.shape == (H, W)
    np.testing.assert_array_equal(m, (xx >= 3) & (xx < 13) & (yy >= 5) & (yy < 9))
    # fractional, clipped at the image border: x from floor(35.5)=35 to W, y from 20 to H
    np.testing.assert_array_equal(src(1, H, W), (xx >= 35) & (yy >= 20))
    # a degenerate box still covers its pixel
    np.testing.assert_array_equal(src(2, H, W), (xx == 7) & (yy == 7))


def test_image_samples_masks_match_painted_boxes(tmp_path):
    root = write_vg(tmp_path / "vg", _vocab_images())
    dm = _dm(root, tmp_path, interpolation="nearest", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
             predict_split="all")
    dm.setup("predict")
    ds = dm.image_dataset()
    assert len(ds) == 5
    names = dm.label_names
    colour = {"dog": COLORS["dog.n.01"], "cat": COLORS["cat.n.01"], "bank": COLORS["bank.n.01"],
              "traffic light": COLORS["traffic_light.n.01"]}
    n_masks = n_visible = 0
    for i in range(len(ds)):
        it = ds[i]
        assert it["image"].shape == (3, 24, 24) and it["masks"].shape[1:] == (24, 24)
        for m, lab in zip(it["masks"], it["mask_labels"]):
            expected = _colour_region(it["image"], colour[names[int(lab)]])
            assert torch.equal(m, expected), (ds.image_ids[i], names[int(lab)])
            n_masks += 1
            n_visible += bool(m.any())
    # one mask per (image, category): 3 + 3 + 2 + 1 + 1; the centre crop hides a few boxes entirely
    assert n_masks == 10 and n_visible >= 6


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_training_masks_stay_aligned_under_augmentation(tmp_path, interpolation):
    root = write_vg(tmp_path / "vg", _vocab_images())
    dm = _dm(root, tmp_path, augment=True, scale_min=0.25, interpolation=interpolation, mean=(0.0, 0.0, 0.0),
             std=(1.0, 1.0, 1.0))
    dm.setup("fit")
    ds = dm.instance_dataset("train")
    names = dm.label_names
    colour = {"dog": COLORS["dog.n.01"], "cat": COLORS["cat.n.01"], "bank": COLORS["bank.n.01"],
              "traffic light": COLORS["traffic_light.n.01"]}
    torch.manual_seed(0)
    ious = []
    for rep in range(6):
        for i in range(len(ds)):
            it = ds[i]
            mask = it["mask"][0].bool()
            c = colour[names[int(it["target"].argmax())]]
            if interpolation == "nearest":
                assert torch.equal(mask, _colour_region(it["image"], c))
            else:  # bilinear blurs colour edges: compare with the pixels more object than background
                px = it["image"] * 255
                palette = torch.tensor([BACKGROUND, (120, 120, 120), *sorted(set(COLORS.values()))], dtype=torch.float32)
                nearest = (px[None] - palette[:, :, None, None]).norm(dim=1).argmin(0)
                soft = palette[nearest].eq(torch.tensor(c, dtype=torch.float32)).all(-1)
                assert bool(mask[_colour_region(it["image"], c)].all())
                if mask.sum() > 20:
                    ious.append(float((mask & soft).sum() / (mask | soft).sum()))
    if interpolation == "bilinear":  # edges differ by a pixel at most: high overlap, never a shifted region
        assert len(ious) > 20 and min(ious) > 0.5 and np.mean(ious) > 0.8, (min(ious), np.mean(ious))


def test_alignment_check_detects_independent_crops():
    """The check above can fail: image and mask cropped with independent draws disagree."""
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[4:15, 6:20] = (220, 20, 20)
    mask = np.zeros((1, H, W), dtype=bool)
    mask[0, 4:15, 6:20] = True
    t = JointTransform(image_size=24, augment=True, scale_min=0.25, interpolation="nearest", mean=(0, 0, 0),
                       std=(1, 1, 1))
    mismatches = 0
    for s in range(20):
        torch.manual_seed(s)
        a, _ = t(img, mask)
        torch.manual_seed(1000 + s)
        _, b = t(img, mask)
        mismatches += not torch.equal(b[0], _colour_region(a, (220, 20, 20)))
        torch.manual_seed(s)
        a2, b2 = t(img, mask)
        assert torch.equal(b2[0], _colour_region(a2, (220, 20, 20)))
    assert mismatches >= 10


def test_union_per_category_vs_per_instance(tmp_path):
    root = write_vg(tmp_path / "vg", _vocab_images())
    dm = _dm(root, tmp_path, interpolation="nearest", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    dm.setup("fit")
    ds = dm.instance_dataset("train")
    # (image, category) units: img1 dog,cat,bank; img2 dog,cat,tl; img3 dog,tl; img4 bank; img5 tl
    assert len(ds) == 10
    dog = dm.label_names.index("dog")
    img1_dog = [i for i in range(len(ds)) if ds.units.image[i] == 0 and ds.units.labels(i)[0] == dog]
    assert len(img1_dog) == 1
    # at the image's own resolution the unit's mask is the union of image 1's two dog boxes
    _, masks = ds.renderer.load(0, ds.units, img1_dog)
    expected = np.zeros((H, W), dtype=bool)
    expected[1:6, 1:7] = True  # box (x=1, y=1, w=6, h=5)
    expected[15:22, 30:38] = True  # box (x=30, y=15, w=8, h=7)
    np.testing.assert_array_equal(masks[0], expected)
    per = _dm(root, tmp_path, union_per_category=False)
    per.setup("fit")
    # boxes with a kept category: dog 4, cat 2, bank 2, traffic light 3
    assert len(per.instance_dataset("train")) == 11


# ---------------------------------------------------------------------------------------------- splits
def test_seen_split_is_without_replacement_and_seeded():
    s = seen_split(1208, 0.7, seed=0)
    assert s.dtype == bool and s.sum() == 846  # round(0.7 * 1208), no duplicates possible
    assert np.array_equal(s, seen_split(1208, 0.7, seed=0))
    assert not np.array_equal(s, seen_split(1208, 0.7, seed=1))
    # what the original's np.random.choice with replacement yields: fewer distinct categories
    drawn = np.random.default_rng(0).choice(1208, 846, replace=True)
    assert len(np.unique(drawn)) < 846


def test_unseen_categories_never_train_targets(tmp_path):
    images = []
    oid = 1
    syns = ["dog.n.01", "cat.n.01", "bank.n.01", "traffic_light.n.01", "zebra.n.01", "horse.n.01"]
    for i in range(1, 13):  # 6 categories, each in 6 images
        objs = []
        for j, s in enumerate(syns):
            if (i + j) % 2 == 0:
                objs.append(_obj(oid, (j * 6) % 34, (j * 3) % 18, 5, 5, s))
                oid += 1
        images.append(VGImage(i, W, H, objs))
    root = write_vg(tmp_path / "vg", images)
    dm = _dm(root, tmp_path, seen_fraction=0.5, split_seed=3, val_fraction=0.25)
    seen = dm.seen
    assert seen.dtype == torch.bool and int(seen.sum()) == 3
    dm.setup("fit")
    train = dm.instance_dataset("train")
    targets = torch.stack([train[i]["target"] for i in range(len(train))])
    assert targets[:, ~seen].sum() == 0
    assert targets[:, seen].sum(0).min() > 0
    val = dm.instance_dataset("val")
    vt = torch.stack([val[i]["target"] for i in range(len(val))])
    assert vt[:, ~seen].sum() > 0  # val keeps unseen categories (val_include_unseen)
    # the image split is disjoint and seeded
    tr_imgs, va_imgs = set(train.units.image.tolist()), set(val.units.image.tolist())
    assert not tr_imgs & va_imgs and len(va_imgs) == 3
    dm2 = _dm(root, tmp_path, seen_fraction=0.5, split_seed=3, val_fraction=0.25)
    assert torch.equal(dm2.seen, seen)
    assert np.array_equal(dm2.tables.image_split, dm.tables.image_split)


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_image_file_error_or_logged_skip(tmp_path, caplog):
    images = _vocab_images()
    images[2].write_file = False  # image 3 (3.png) is annotated but not on disk
    root = write_vg(tmp_path / "vg", images)
    with pytest.raises(FileNotFoundError, match=r"3\.png"):
        _dm(root, tmp_path).label_names
    with caplog.at_level(logging.WARNING):
        dm = _dm(root, tmp_path, on_missing_image="skip")
        assert len(dm.tables.image_paths) == 4
    assert "3.png" in caplog.text
    assert 3 not in dm.tables.image_ids.tolist()
    dm.setup("fit")
    assert len(dm.instance_dataset("train")) == 8  # 10 units minus image 3's dog and traffic light


def test_annotated_image_missing_from_image_data(tmp_path, caplog):
    images = _vocab_images()
    images[4].in_image_data = False  # image 5 annotated in objects.json, absent from image_data.json
    root = write_vg(tmp_path / "vg", images)
    with pytest.raises(FileNotFoundError, match="image_data.json"):
        _dm(root, tmp_path).label_names
    with caplog.at_level(logging.WARNING):
        dm = _dm(root, tmp_path, on_missing_image="skip")
        assert 5 not in dm.tables.image_ids.tolist()
    assert "missing from" in caplog.text


def test_missing_annotation_file_names_it(tmp_path):
    root = write_vg(tmp_path / "vg", _vocab_images())
    (root / "objects.json").unlink()
    with pytest.raises(FileNotFoundError, match="objects.json"):
        _dm(root, tmp_path).label_names


def test_corrupt_image_names_file(tmp_path):
    root = write_vg(tmp_path / "vg", _vocab_images())
    (root / "VG_100K" / "1.png").write_bytes(b"not an image")
    dm = _dm(root, tmp_path, predict_split="all")
    dm.setup("predict")
    with pytest.raises(OSError, match="1.png"):
        dm.image_dataset()[0]


# ---------------------------------------------------------------------------------------------- cache
def test_cache_is_reused_and_invalidated_by_content(tmp_path, monkeypatch):
    root = write_vg(tmp_path / "vg", _vocab_images())
    first = _dm(root, tmp_path)
    names = first.label_names
    cache = list((tmp_path / "cache").iterdir())
    assert len(cache) == 1 and cache[0].suffix == ".npz"

    def boom(self):
        raise AssertionError("parsed again")

    monkeypatch.setattr(VisualGenomeDataModule, "_parse", boom)
    again = _dm(root, tmp_path)
    assert again.label_names == names
    assert np.array_equal(again.tables.obj_label_ids, first.tables.obj_label_ids)
    # other parameters or other file contents: another key, parsed again
    with pytest.raises(AssertionError, match="parsed again"):
        _dm(root, tmp_path, min_images=1).label_names
    data = json.loads((root / "objects.json").read_text())
    data[0]["objects"].append({"object_id": 99, "x": 1, "y": 1, "w": 2, "h": 2, "names": ["zebra"],
                               "synsets": ["zebra.n.01"]})
    (root / "objects.json").write_text(json.dumps(data))
    with pytest.raises(AssertionError, match="parsed again"):
        _dm(root, tmp_path).label_names
    monkeypatch.undo()
    assert _dm(root, tmp_path).label_names == ["bank", "cat", "dog", "traffic light", "zebra"]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix != ".npz"]  # no temp files left


# ---------------------------------------------------------------------------------------------- batches
def test_batches_follow_the_data_contract(tmp_path):
    root = write_vg(tmp_path / "vg", _vocab_images())
    dm = _dm(root, tmp_path, batch_size=4, predict_split="all", predict_batch_size=5)
    dm.setup("fit")
    dm.setup("predict")
    assert dm.augment is False
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (4, 3, 24, 24) and b["image"].dtype == torch.float32
    assert b["mask"].shape == (4, 1, 24, 24) and b["mask"].dtype == torch.float32
    assert set(b["mask"].unique().tolist()) <= {0.0, 1.0}
    assert b["target"].shape == (4, 4) and torch.all(b["target"].sum(1) == 1)
    assert b["index"].dtype == torch.int64
    p = next(iter(dm.predict_dataloader()))
    assert p["image"].shape == (5, 3, 24, 24)
    assert p["masks"].dtype == torch.bool and p["masks"].shape == (5, 3, 24, 24)  # M = 3 (images 1 and 2)
    counts = (p["mask_labels"] >= 0).sum(1).tolist()
    assert counts == [3, 3, 2, 1, 1]
    assert not p["masks"][p["mask_labels"] < 0].any()  # padding masks are empty
    assert p["index"].tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------- box geometry
def _edge_images():
    """Two 40x24 images whose boxes reach past the edges; colours are unique per box.

    Fates (what the reader must do): inside 11, 14, 24; clipped 12 (past the right edge), 21 (past the top-left
    corner); dropped 13 (wholly right of the image), 22 (wholly below: horse's only box), 23 (negative width).
    """
    def o(oid, x, y, w, h, synset, colour):
        return VGObject(oid, x, y, w, h, [synset_name(synset)], [synset], [], colour)

    return [
        VGImage(1, W, H, [o(11, 1, 1, 6, 5, "dog.n.01", (200, 10, 10)), o(12, 35, 10, 10, 5, "dog.n.01", (10, 200, 10)),
                          o(13, 45, 2, 5, 5, "cat.n.01", (10, 10, 200)), o(14, 10, 2, 5, 9, "cat.n.01", (200, 200, 10))]),
        VGImage(2, W, H, [o(21, -4, -3, 8, 6, "dog.n.01", (200, 10, 200)), o(22, 5, 30, 4, 4, "horse.n.01", (10, 200, 200)),
                          o(23, 5, 5, -3, 4, "cat.n.01", (90, 90, 90)), o(24, 20, 10, 6, 6, "cat.n.01", (150, 60, 30))],
                folder="VG_100K_2"),
    ]


def test_boxes_outside_the_image_are_clipped_or_dropped_and_counted(tmp_path, caplog):
    images = _edge_images()
    root = write_vg(tmp_path / "vg", images)
    with caplog.at_level(logging.WARNING):
        dm = _dm(root, tmp_path, min_images=1, max_bad_annotation_fraction=0.4)
        tables = dm.tables
    assert dm.skipped_annotations == {"outside_image": 2, "negative_size": 1}
    assert dm.clipped_annotations == 2
    assert "skipped 3 of 8 annotations" in caplog.text and "objects.json" in caplog.text
    assert dm.label_names == ["cat", "dog"]  # horse had only the box below the image
    kept = [ob for img in images for ob in img.objects if ob.object_id in (11, 12, 14, 21, 24)]
    assert len(tables.obj_image) == len(kept)
    pixels = {1: np.asarray(Image.open(root / "VG_100K" / "1.png").convert("RGB")),
              2: np.asarray(Image.open(root / "VG_100K_2" / "2.png").convert("RGB"))}
    for k, ob in enumerate(kept):
        image_id = int(tables.image_ids[tables.obj_image[k]])
        painted = (pixels[image_id] == np.array(ob.color)).all(-1)  # the writer's clipped painting
        assert painted.any()
        np.testing.assert_array_equal(tables.mask_source(k, H, W), painted, err_msg=str(ob.object_id))


@pytest.mark.parametrize("limit", [None, 0.37])
def test_too_many_bad_boxes_fail_setup(tmp_path, limit):
    root = write_vg(tmp_path / "vg", _edge_images())
    kw = {} if limit is None else {"max_bad_annotation_fraction": limit}  # 3 of 8 = 0.375 dropped
    for attempt in range(2):  # the second reads the parsed cache: the check still applies
        with pytest.raises(ValueError, match=r"3 of 8 annotations of .*objects\.json \(37\.50%\).*outside_image: 2"):
            _dm(root, tmp_path, min_images=1, **kw).setup("fit")
    assert list((tmp_path / "cache").glob("vg_*.npz"))


def test_box_geometry_against_a_pixel_scan():
    """Each box's fate from the pixels it touches, scanned one by one over a padded frame (a pixel j covers
    [j, j + 1); a box touches it when the open intervals overlap, a zero-width box touches the pixel holding it)."""
    from data_modules._instance_tables import box_geometry

    rng = np.random.default_rng(0)
    n = 300
    boxes = np.stack([rng.integers(-12, 30, n) / 2, rng.integers(-12, 30, n) / 2,
                      rng.integers(-2, 12, n) / 2, rng.integers(-2, 12, n) / 2], 1).astype(np.float32)
    heights, widths = rng.integers(4, 10, n), rng.integers(4, 10, n)
    got = box_geometry(boxes, heights, widths)

    def touched(start, size, j):
        return (start < j + 1 and start + size > j) if size > 0 else j <= start < j + 1

    for i, (x, y, w, h) in enumerate(boxes.astype(float)):
        if w < 0 or h < 0:
            assert got["negative_size"][i] and not got["outside_image"][i] and not got["clipped"][i]
            continue
        cols = [j for j in range(-20, 40) if touched(x, w, j)]
        rows = [j for j in range(-20, 40) if touched(y, h, j)]
        inside = [(r, c) for r in rows for c in cols if 0 <= r < heights[i] and 0 <= c < widths[i]]
        assert got["outside_image"][i] == (not inside), (i, x, y, w, h)
        assert got["clipped"][i] == (bool(inside) and len(inside) < len(rows) * len(cols)), (i, x, y, w, h)
    assert got["outside_image"].sum() > 20 and got["clipped"].sum() > 20 and got["negative_size"].sum() > 20


def test_image_listed_twice_in_image_data_is_rejected(tmp_path):
    root = write_vg(tmp_path / "vg", _vocab_images())
    data = json.loads((root / "image_data.json").read_text())
    data.append(dict(data[2], width=W + 10))  # the same image again, with another size: which one would win?
    (root / "image_data.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"image_data\.json: image id 3 is listed twice \(entries 2 and 5\)"):
        _dm(root, tmp_path).label_names
