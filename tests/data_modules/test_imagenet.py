"""ImageNetDataModule on a miniature ILSVRC2012 folder in the exact layout: class order, val labels from the
ILSVRC XML, several boxes per image rescaled with the resize of non-square images, clipping, clear errors."""

from __future__ import annotations

import pytest
import torch

from data_modules._wsol import IMAGENET_MEAN, IMAGENET_STD
from data_modules.imagenet import ImageNetDataModule
from tests.fixtures.imagenet_writer import COLORS, WNIDS, make_imagenet


def test_val_batch(tmp_path):
    dm = ImageNetDataModule(make_imagenet(tmp_path), image_size=(30, 40), batch_size=3)
    dm.setup("validate")
    b = next(iter(dm.val_dataloader()))
    assert dm.classes == WNIDS
    assert b["label"].tolist() == [1, 2, 0] and b["num_boxes"].tolist() == [2, 1, 2]
    assert b["box_labels"].tolist() == [[1, 1], [2, -1], [0, 0]]
    # val 1 (80x60): x * 40/80, y * 30/60
    torch.testing.assert_close(b["boxes"][0], torch.tensor([[5.0, 10.0, 25.0, 20.0], [27.5, 2.5, 37.5, 12.5]]))
    # val 3 (100x50): the first box (60, 10, 130, 40) clipped to x1 = 100; scale x .4, y .6
    torch.testing.assert_close(b["boxes"][2], torch.tensor([[24.0, 6.0, 40.0, 24.0], [0.8, 1.2, 4.8, 7.2]]))
    assert dm.stats["val"] == {"boxes": 5, "clipped": 1, "dropped": 0, "skipped_images": 0}
    img = b["image"][1] * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    x0, y0, x1, y1 = b["boxes"][1, 0].tolist()
    torch.testing.assert_close(img[:, int((y0 + y1) / 2), int((x0 + x1) / 2)], torch.tensor(COLORS[WNIDS[2]]) / 255.0,
                               atol=0.06, rtol=0)


def test_train_split_and_class_index(tmp_path):
    root = make_imagenet(tmp_path)
    dm = ImageNetDataModule(root, class_index=str(root / "LOC_synset_mapping.txt"), image_size=16, batch_size=16)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert sorted(b["label"].tolist()) == [0, 0, 1, 1, 2, 2] and b["boxes"].shape == (6, 0, 4)
    (root / "order.txt").write_text("n01484850\nn01440764\nn01443537\n")
    assert ImageNetDataModule(root, class_index=str(root / "order.txt")).classes[0] == "n01484850"


def test_errors(tmp_path):
    root = make_imagenet(tmp_path)
    xml = root / "val" / "ILSVRC2012_val_00000002.xml"
    good = xml.read_text()
    xml.write_text(good.replace("n01484850", "n09999999"))
    with pytest.raises(ValueError, match=r"ILSVRC2012_val_00000002\.xml: unknown class 'n09999999'"):
        ImageNetDataModule(root).setup("validate")
    xml.write_text(good.replace("<width>60</width>", "<width>61</width>"))
    with pytest.raises(ValueError, match=r"00000002\.xml: records size 61x90 but the image is 60x90"):
        ImageNetDataModule(root).setup("validate")
    xml.unlink()
    with pytest.raises(FileNotFoundError, match=r"ILSVRC2012_val_00000002\.xml \(boxes of ILSVRC2012_val_00000002\.JPEG\)"):
        ImageNetDataModule(root).setup("validate")
    dm = ImageNetDataModule(root, on_missing="skip")
    dm.setup("validate")
    assert len(dm.dataset("val")) == 2 and dm.stats["val"]["skipped_images"] == 1
    for p in (root / "train" / WNIDS[1]).iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=r"class n01443537 has no training images in .*train/n01443537"):
        ImageNetDataModule(root).setup("fit")
    with pytest.raises(FileNotFoundError, match="class_index"):
        ImageNetDataModule(root, class_index=str(root / "nope.txt"))
