"""VOCDataModule on a miniature VOC2007 tree in the exact on-disk format: several boxes per image, 1-based
inclusive coordinates, rescaling with the resize of non-square images, difficult objects, clear errors."""

from __future__ import annotations

import pytest
import torch

from data_modules._wsol import IMAGENET_MEAN, IMAGENET_STD
from data_modules.voc import VOC_CLASSES, VOCDataModule
from tests.fixtures.voc_writer import VOC_COLORS, make_voc, voc_xml

C = {c: i for i, c in enumerate(VOC_CLASSES)}


def test_test_split_boxes_labels_pixels(tmp_path):
    dm = VOCDataModule(make_voc(tmp_path), image_size=(32, 48), batch_size=4)
    dm.setup("test")
    b = next(iter(dm.test_dataloader()))
    assert b["image"].shape == (2, 3, 32, 48) and b["num_boxes"].tolist() == [3, 1]
    # 000007 (60x90): largest non-difficult object is the dog (30x50 > 20x30)
    assert b["label"].tolist() == [C["dog"], C["car"]]
    assert b["box_labels"].tolist() == [[C["person"], C["dog"], C["chair"]], [C["car"], -1, -1]]
    sx, sy = 48 / 60, 32 / 90
    want = torch.tensor([[0, 0, 20, 30], [30, 40, 60, 90], [4, 69, 15, 85]], dtype=torch.float32) * torch.tensor([sx, sy, sx, sy])
    torch.testing.assert_close(b["boxes"][0], want)
    # 000009 (100x50): car (80, 10, 120, 30) clipped to x1 = 100; dog starting at x = 100 dropped
    torch.testing.assert_close(b["boxes"][1, 0], torch.tensor([80 * .48, 10 * .64, 48.0, 30 * .64]))
    assert (b["boxes"][1, 1:] == -1).all()
    assert dm.stats["test"] == {"boxes": 5, "clipped": 1, "dropped": 1, "skipped_images": 0}
    img = b["image"][0] * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    for (x0, y0, x1, y1), name in zip(b["boxes"][0].tolist(), ["person", "dog", "chair"]):
        px = img[:, int((y0 + y1) / 2), int((x0 + x1) / 2)]
        torch.testing.assert_close(px, torch.tensor(VOC_COLORS[name]) / 255.0, atol=0.08, rtol=0)


def test_train_split_and_difficult_skip(tmp_path):
    root = make_voc(tmp_path)
    dm = VOCDataModule(root, image_size=16, difficult="skip", eval_split="test")
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["num_boxes"].tolist() == [2]
    assert [len(r.boxes) for r in dm.dataset("test").records] == [2, 1]


def test_errors(tmp_path):
    root = make_voc(tmp_path)
    base = root / "VOCdevkit" / "VOC2007"
    (base / "Annotations" / "000009.xml").write_text(voc_xml("VOC2007", "000009.jpg", (100, 50),
                                                             [("zebra", 0, 1, 1, 5, 5)]))
    with pytest.raises(ValueError, match=r"000009\.xml: unknown class 'zebra'"):
        VOCDataModule(root).setup("test")
    (base / "Annotations" / "000009.xml").write_text("<annotation><size><width>3</width></size>")
    with pytest.raises(ValueError, match=r"000009\.xml: not valid XML"):
        VOCDataModule(root).setup("test")
    (base / "Annotations" / "000009.xml").write_text("<annotation><size><width>3</width></size></annotation>")
    with pytest.raises(ValueError, match=r"000009\.xml: size/height is missing"):
        VOCDataModule(root).setup("test")
    (base / "Annotations" / "000009.xml").write_text(voc_xml("VOC2007", "000009.jpg", (100, 50),
                                                             [("car", 0, 1, 1, 5, 5)]))
    (base / "JPEGImages" / "000007.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/000007\.jpg"):
        VOCDataModule(root).setup("test")
    with pytest.raises(ValueError, match="eval_split must be one of"):
        VOCDataModule(root, eval_split="testval")
    with pytest.raises(ValueError, match=r"image_size must be an int or \(height, width\), each >= 8"):
        VOCDataModule(root, image_size=4)
