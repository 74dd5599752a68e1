"""CUBDataModule on a miniature CUB-200-2011 in the exact on-disk format: labels, boxes rescaled with the
resize of non-square images (checked by arithmetic and in the pixels), clipping counts and clear errors."""

from __future__ import annotations

import pytest
import torch

from data_modules._wsol import IMAGENET_MEAN, IMAGENET_STD
from data_modules.cub import CUBDataModule
from tests.fixtures.cub_writer import COLORS, make_cub


def denorm(img: torch.Tensor) -> torch.Tensor:
    return img * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]


def test_test_split_batch_boxes_and_pixels(tmp_path):
    dm = CUBDataModule(make_cub(tmp_path), image_size=(32, 48), batch_size=3)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (3, 3, 32, 48)
    assert batch["label"].tolist() == [0, 1, 2] and batch["index"].tolist() == [0, 1, 2]
    assert batch["num_boxes"].tolist() == [1, 1, 0]
    # image 2: 60x90, box (5.5, 10, 35.5, 60) -> x * 48/60, y * 32/90
    want = torch.tensor([5.5 * 48 / 60, 10 * 32 / 90, 35.5 * 48 / 60, 60 * 32 / 90])
    torch.testing.assert_close(batch["boxes"][0, 0], want)
    # image 3: 100x50, box (70, 5, 120, 35) clipped to x1 = 100 -> (70*.48, 5*.64, 48, 35*.64)
    torch.testing.assert_close(batch["boxes"][1, 0], torch.tensor([33.6, 3.2, 48.0, 22.4]))
    assert (batch["boxes"][2] == -1).all() and (batch["box_labels"][2] == -1).all()
    assert dm.stats["test"] == {"boxes": 3, "clipped": 1, "dropped": 1, "skipped_images": 0}
    # the painted box colour sits at the centre of the rescaled box
    for j in range(2):
        x0, y0, x1, y1 = batch["boxes"][j, 0].tolist()
        px = denorm(batch["image"][j])[:, int((y0 + y1) / 2), int((x0 + x1) / 2)]
        torch.testing.assert_close(px, torch.tensor(COLORS[j]) / 255.0, atol=0.06, rtol=0)
    assert dm.classes[0] == "001.Black_footed_Albatross"


def test_train_split(tmp_path):
    dm = CUBDataModule(make_cub(tmp_path), image_size=16, batch_size=8)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert sorted(b["label"].tolist()) == [0, 1, 2] and b["boxes"].shape == (3, 1, 4)


def test_errors(tmp_path):
    root = make_cub(tmp_path / "a", extra_label_lines="7 9\n")
    with pytest.raises(ValueError, match=r"image_class_labels\.txt:7: unknown class id 9"):
        CUBDataModule(root).setup("test")
    root = make_cub(tmp_path / "b")
    victim = next((root / "images").rglob("*_0002_102.jpg"))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=r"_0002_102\.jpg \(images\.txt:2\)"):
        CUBDataModule(root).setup("test")
    dm = CUBDataModule(root, on_missing="skip")
    dm.setup("test")
    assert len(dm.dataset("test")) == 2 and dm.stats["test"]["skipped_images"] == 1
    (root / "bounding_boxes.txt").write_text("1 1 2 3\n")
    with pytest.raises(ValueError, match=r"bounding_boxes\.txt:1: expected 5 fields"):
        CUBDataModule(root).setup("test")
    with pytest.raises(ValueError, match=r"batch_size must be >= 1"):
        CUBDataModule(root, batch_size=0)
    with pytest.raises(ValueError, match=r"on_missing must be 'error' or 'skip'"):
        CUBDataModule(root, on_missing="ignore")
    with pytest.raises(ValueError, match=r"mean and std must be 3 numbers \(RGB\) with std > 0"):
        CUBDataModule(root, std=(0.2, 0.0, 0.2))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        CUBDataModule(tmp_path / "nowhere")
