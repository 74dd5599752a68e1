"""CocoDataModule on miniature COCO roots written in the exact format (tests/fixtures/coco_writer.py).

Images are non-square; each annotation's segmentation is painted in its own colour, so the expected mask of
every sample is recovered from the transformed pixels (image and mask must share every transform).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from data_modules.coco import CocoDataModule
from tests.fixtures.coco_writer import BACKGROUND, CocoAnn, CocoImage, ann_mask, write_coco

W, H = 48, 30


def _rect(x, y, w, h):
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def _images(split: str):
    """Colours are unique per annotation; categories: 1 person, 3 car, 10 traffic light, 18 dog."""
    base = 100 if split == "train" else 200
    cols = iter([(230, 10, 10), (10, 230, 10), (10, 10, 230), (230, 230, 10), (230, 10, 230), (10, 230, 230),
                 (150, 60, 10), (10, 150, 60), (60, 10, 150), (200, 120, 40)])
    return [
        CocoImage(base + 1, W, H, [CocoAnn(base * 10 + 1, 1, [4, 3, 20, 5, 14, 25], next(cols)),
                                   CocoAnn(base * 10 + 2, 10, _rect(30, 2, 8, 20), next(cols))]),
        CocoImage(base + 2, W, H, [CocoAnn(base * 10 + 3, 18, [25, 5, 45, 12, 40, 28, 22, 24], next(cols)),
                                   CocoAnn(base * 10 + 4, 3, _rect(2, 15, 15, 10), next(cols)),
                                   CocoAnn(base * 10 + 5, 1, _rect(5, 1, 12, 9), next(cols), iscrowd=1)]),
        CocoImage(base + 3, W, H, [CocoAnn(base * 10 + 6, 10, _rect(10, 5, 6, 18), next(cols)),
                                   CocoAnn(base * 10 + 7, 18, [20, 20, 44, 20, 32, 4], next(cols))]),
        CocoImage(base + 4, W, H, []),  # no annotations: left out
    ]


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    write_coco(root, "train", _images("train"))
    write_coco(root, "val", _images("val"))
    return root


def _dm(root, **kw):
    kw.setdefault("image_size", 24)
    kw.setdefault("mean", (0.0, 0.0, 0.0))
    kw.setdefault("std", (1.0, 1.0, 1.0))
    return CocoDataModule(str(root), **kw)


def _colour_of(images):
    return {a.ann_id: a.color for img in images for a in img.anns}


def _region(image, colour):
    px = (image * 255).round().to(torch.int64)
    return (px == torch.tensor(colour).view(3, 1, 1)).all(0)


def test_category_words_and_tokens(coco_root):
    dm = _dm(coco_root)
    assert dm.label_names == ["person", "car", "traffic light", "dog"]  # category id order
    assert bool(dm.seen.all())
    dm.setup("fit")
    ds = dm.instance_dataset("train")
    # 6 annotations, the crowd one (eval_only by default) is not a training sample
    assert len(ds) == 6
    assert torch.all(torch.stack([ds[i]["target"] for i in range(len(ds))]).sum(1) == 1)

    tok = _dm(coco_root, label_mode="token")
    assert tok.label_names == ["person", "car", "traffic", "light", "dog"]
    tok.setup("fit")
    tds = tok.instance_dataset("train")
    targets = torch.stack([tds[i]["target"] for i in range(len(tds))])
    # the two traffic lights carry {traffic, light}; the others one word
    multi = targets[targets.sum(1) == 2]
    assert len(multi) == 2 and torch.all(multi[:, 2:4] == 1)


def test_instance_masks_are_the_segmentations(coco_root):
    """At the image's own resolution a sample's mask is annToMask of its annotation (the painted region)."""
    dm = _dm(coco_root)
    dm.setup("fit")
    ds = dm.instance_dataset("train")
    images = {img.image_id: img for img in _images("train")}
    tables = dm.tables
    for i in range(len(ds)):
        row = int(ds.units.image[i])
        img = images[int(tables.image_ids[row])]
        ann_id = int(tables.mask_source.obj_ann[ds.units.parts(i)[0]])
        ann = next(a for a in img.anns if a.ann_id == ann_id)
        _, masks = ds.renderer.load(row, ds.units, [i])
        assert masks.shape == (1, H, W)
        np.testing.assert_array_equal(masks[0], ann_mask(ann, H, W))


@pytest.mark.parametrize("seed", [0, 1])
def test_masks_stay_aligned_under_joint_augmentation(coco_root, seed):
    dm = _dm(coco_root, augment=True, scale_min=0.2, interpolation="nearest")
    assert dm.augment is True
    dm.setup("fit")
    ds = dm.instance_dataset("train")
    colours = _colour_of(_images("train"))
    obj_ann = dm.tables.mask_source.obj_ann
    torch.manual_seed(seed)
    nonempty = 0
    for rep in range(8):
        for i in range(len(ds)):
            it = ds[i]
            colour = colours[int(obj_ann[ds.units.parts(i)[0]])]
            mask = it["mask"][0].bool()
            assert torch.equal(mask, _region(it["image"], colour))
            nonempty += bool(mask.any())
    assert nonempty > 20


def test_bilinear_images_agree_with_nearest_masks(coco_root):
    dm = _dm(coco_root, augment=True, scale_min=0.3)
    dm.setup("fit")
    ds = dm.instance_dataset("train")
    colours = _colour_of(_images("train"))
    palette = torch.tensor([BACKGROUND, *colours.values()], dtype=torch.float32)
    obj_ann = dm.tables.mask_source.obj_ann
    torch.manual_seed(0)
    ious = []
    for rep in range(5):
        for i in range(len(ds)):
            it = ds[i]
            colour = torch.tensor(colours[int(obj_ann[ds.units.parts(i)[0]])], dtype=torch.float32)
            px = it["image"] * 255
            nearest = palette[(px[None] - palette[:, :, None, None]).norm(dim=1).argmin(0)]
            soft = nearest.eq(colour).all(-1)
            mask = it["mask"][0].bool()
            if mask.sum() > 20:
                ious.append(float((mask & soft).sum() / (mask | soft).sum()))
    assert len(ious) > 10 and min(ious) > 0.5 and np.mean(ious) > 0.8


def test_image_samples_hold_every_annotation(coco_root):
    dm = _dm(coco_root, interpolation="nearest", predict_batch_size=8)
    dm.setup("predict")
    ds = dm.image_dataset()
    assert len(ds) == 3  # val images with annotations
    assert ds.image_ids.tolist() == [201, 202, 203]
    b = next(iter(dm.predict_dataloader()))
    assert b["masks"].shape == (3, 3, 24, 24) and b["masks"].dtype == torch.bool
    # image 202 has dog, car and the crowd person (eval_only: ground truth for recall)
    names = dm.label_names
    labels = [[names[j] for j in row if j >= 0] for row in b["mask_labels"].tolist()]
    assert labels == [["person", "traffic light"], ["dog", "car", "person"], ["traffic light", "dog"]]
    colours = _colour_of(_images("val"))
    anns = {img.image_id: img.anns for img in _images("val")}
    for k, iid in enumerate([201, 202, 203]):
        for m, lab in zip(b["masks"][k], b["mask_labels"][k]):
            if lab < 0:
                assert not m.any()
                continue
            cands = [a for a in anns[iid] if names[int(lab)] == {1: "person", 3: "car", 10: "traffic light",
                                                                 18: "dog"}[a.category_id]]
            assert len(cands) == 1
            assert torch.equal(m, _region(b["image"][k], colours[cands[0].ann_id]))


def test_crowd_policies(coco_root):
    skip = _dm(coco_root, crowd="skip")
    skip.setup("predict")
    assert (skip.image_dataset()[1]["mask_labels"] >= 0).sum() == 2  # image 202 without its crowd region
    include = _dm(coco_root, crowd="include")
    include.setup("fit")
    assert len(include.instance_dataset("train")) == 7


def test_missing_image_error_or_logged_skip(tmp_path, caplog):
    root = tmp_path / "coco"
    imgs = _images("train")
    imgs[1].write_file = False
    write_coco(root, "train", imgs)
    write_coco(root, "val", _images("val"))
    with pytest.raises(FileNotFoundError, match="000000000102.jpg"):
        _dm(root).label_names
    with caplog.at_level(logging.WARNING):
        dm = _dm(root, on_missing_image="skip")
        dm.setup("fit")
    assert "000000000102.jpg" in caplog.text
    assert 102 not in dm.tables.image_ids.tolist()
    assert len(dm.instance_dataset("train")) == 4


def test_bad_annotation_files(tmp_path):
    root = tmp_path / "coco"
    write_coco(root, "train", _images("train"))
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        _dm(root).label_names
    (root / "annotations" / "instances_val2017.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="instances_val2017.json"):
        _dm(root).label_names


def test_annotations_of_images_missing_from_the_json(tmp_path, caplog):
    root = tmp_path / "coco"
    path = write_coco(root, "train", _images("train"))
    write_coco(root, "val", _images("val"))
    data = json.loads(path.read_text())
    data["images"] = [im for im in data["images"] if im["id"] != 103]  # its annotations stay
    path.write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match="image id 103"):
        _dm(root).label_names
    with caplog.at_level(logging.WARNING):
        dm = _dm(root, on_missing_image="skip")
        dm.setup("fit")
    assert "image id 103" in caplog.text
    assert len(dm.instance_dataset("train")) == 4  # images 101 and 102 (crowd excluded)


# ---------------------------------------------------------------------------------------------- geometry
def _edge_images():
    """One 48x30 image: polygons inside (1), partly past the right edge (2), wholly right of the image (3),
    wholly left with negative coordinates (4), and a triangle whose bounding box overlaps the image corner
    although the triangle itself stays above the image (5)."""
    return [CocoImage(1, W, H, [
        CocoAnn(11, 1, _rect(4, 4, 10, 10), (230, 10, 10)),
        CocoAnn(12, 3, _rect(40, 5, 20, 10), (10, 230, 10)),
        CocoAnn(13, 18, _rect(50, 2, 8, 6), (10, 10, 230)),
        CocoAnn(14, 18, _rect(-10, 0, 8, 5), (230, 230, 10)),
        CocoAnn(15, 10, [36, -20, 76, -20, 76, 10], (230, 10, 230)),  # at x = 48 the edge is at y = -11
    ])]


def test_polygons_outside_the_image_are_clipped_or_dropped_and_counted(tmp_path, caplog):
    root = tmp_path / "coco"
    images = _edge_images()
    write_coco(root, "train", images)
    write_coco(root, "val", _images("val"))
    for a in images[0].anns:  # the fixture's own pycocotools rasterisation: what must be kept
        assert ann_mask(a, H, W).any() == (a.ann_id in (11, 12)), a.ann_id
    with caplog.at_level(logging.WARNING):
        dm = _dm(root, max_bad_annotation_fraction=0.5)
        tables = dm.tables
    n_val = sum(len(img.anns) for img in _images("val"))
    assert dm.skipped_annotations == {"outside_image": 3}
    assert dm.clipped_annotations == 1
    assert f"skipped 3 of {5 + n_val} annotations" in caplog.text
    train = np.flatnonzero(tables.image_split[tables.obj_image] == 0)
    assert len(train) == 2
    for k, ann in zip(train, images[0].anns[:2]):
        np.testing.assert_array_equal(tables.mask_source(int(k), H, W), ann_mask(ann, H, W))
    with pytest.raises(ValueError, match=rf"3 of {5 + n_val} annotations .*instances_train2017\.json.*"
                                         r"max_bad_annotation_fraction=0\.01"):
        _dm(root).label_names


def test_category_defined_twice_is_rejected(tmp_path):
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 1, "name": "rider"}]
    root = tmp_path / "coco"
    write_coco(root, "train", [CocoImage(1, W, H, [CocoAnn(11, 1, _rect(4, 4, 10, 10), (230, 10, 10))])], cats)
    write_coco(root, "val", [CocoImage(2, W, H, [CocoAnn(21, 3, _rect(4, 4, 10, 10), (230, 10, 10))])], cats[:2])
    with pytest.raises(ValueError, match=r"instances_train2017\.json: categories\[2\] defines category id 1 again "
                                         r"\(first at categories\[0\]\)"):
        _dm(root).label_names
    cats[2] = {"id": 7, "name": "car"}
    write_coco(root, "train", [CocoImage(1, W, H, [CocoAnn(11, 1, _rect(4, 4, 10, 10), (230, 10, 10))])], cats)
    with pytest.raises(ValueError, match=r"categories\[2\] defines category name 'car' again \(first at categories\[1\]\)"):
        _dm(root).label_names
    cats[2] = {"id": 7, "name": "truck"}
    write_coco(root, "train", [CocoImage(1, W, H, [CocoAnn(11, 1, _rect(4, 4, 10, 10), (230, 10, 10))])], cats)
    write_coco(root, "val", [CocoImage(2, W, H, [CocoAnn(21, 3, _rect(4, 4, 10, 10), (230, 10, 10))])],
               cats[:2] + [{"id": 8, "name": "truck"}])
    with pytest.raises(ValueError, match=r"category name 'truck' has two ids \(7 and 8\)"):
        _dm(root).label_names


@pytest.mark.parametrize("key", ["annotations", "images"])
def test_repeated_annotation_or_image_id_is_rejected(tmp_path, key):
    root = tmp_path / "coco"
    path = write_coco(root, "train", _images("train"))
    write_coco(root, "val", _images("val"))
    data = json.loads(path.read_text())
    data[key][3]["id"] = data[key][1]["id"]  # pycocotools would keep only the later record
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"instances_train2017\.json: {key}\[1\] and {key}\[3\] share the id "
                                         rf"{data[key][1]['id']}"):
        _dm(root).label_names
