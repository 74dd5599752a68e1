"""Instance and image samples of :class:`~data_modules._instance_tables.InstanceTables`: the joint image+mask
transform, the two torch datasets and their collation (the LaViSE data contract).

Batches (what ``lit_explain.methods.lavise`` consumes):

* train/val: ``{"image": (B,3,S,S) float normalised, "mask": (B,1,S,S) float in {0,1}, "target": (B,K) float
  multi-hot, "index": (B,) int64}``, image and mask transformed by ONE sampled parameter set (the
  reproduction cropped the image randomly and the mask centrally; here both go through the same
  ``torchvision.transforms.v2`` call, which applies identical geometry to an ``Image`` and a ``Mask``);
* predict/test: ``{"image": (B,3,S,S), "masks": (B,M,S,S) bool, "mask_labels": (B,M) int64 (-1 = padding),
  "index": (B,) int64}``, deterministic resize + centre crop.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from data_modules._instance_tables import InstanceTables, Units
from lit_explain.datasets.files import load_rgb

log = logging.getLogger(__name__)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "ImageSampleDataset", "InstanceSampleDataset",
           "JointTransform", "collate_images", "collate_instances"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


class JointTransform:
    """One transform for an image and its masks, sharing every sampled parameter.

    ``torchvision.transforms.v2`` transforms a ``(tv_tensors.Image, tv_tensors.Mask)`` pair with one draw of
    the random parameters (crop box, flip) and always resizes a ``Mask`` with nearest neighbour, so the masks
    stay aligned with the pixels whatever the augmentation.

    Args:
        image_size: side S of the square output.
        resize_size: short side before the centre crop (deterministic mode); default ``round(S * 256 / 224)``.
        augment: True = RandomResizedCrop(S, scale=(scale_min, 1)) + horizontal flip (COCO training in the
            paper); False = Resize(resize_size) + CenterCrop(S) (VG training and all evaluation in the paper).
        scale_min: lower bound of the RandomResizedCrop area fraction.
        hflip: whether augmentation includes a random horizontal flip.
        interpolation: image interpolation ("bilinear", "bicubic", "nearest"); masks always use nearest.
        mean, std: per-channel normalisation of the [0, 1] image.
    """

    def __init__(
        self,
        image_size: int = 224,
        resize_size: int | None = None,
        augment: bool = False,
        scale_min: float = 0.08,
        hflip: bool = True,
        interpolation: str = "bilinear",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
        interp = INTERPOLATIONS[interpolation]
        self.augment = bool(augment)
        resize_size = resize_size or int(round(image_size * 256 / 224))
        if self.augment:
            ops: list = [v2.RandomResizedCrop(image_size, scale=(scale_min, 1.0), interpolation=interp, antialias=True)]
            if hflip:
                ops.append(v2.RandomHorizontalFlip())
        else:
            ops = [v2.Resize(resize_size, interpolation=interp, antialias=True), v2.CenterCrop(image_size)]
        self.geometry = v2.Compose(ops)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform an (H, W, 3) uint8 image and (M, H, W) bool masks.

        Returns:
            image (3, S, S) float normalised, masks (M, S, S) bool.
        """
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)))
        img, msk = self.geometry(img, msk)
        out = (img.as_subclass(torch.Tensor).float() / 255.0 - self.mean) / self.std
        return out, msk.as_subclass(torch.Tensor).bool()


# ---------------------------------------------------------------------------------------------- datasets
class _UnitRenderer:
    """Loads an image and renders unit masks in its pixel frame (shared by the two dataset kinds)."""

    def __init__(self, tables: InstanceTables) -> None:
        self.tables = tables
        self._warned_size = False

    def load(self, image_row: int, units: Units, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        t = self.tables
        image = load_rgb(t.image_paths[image_row])
        h, w = image.shape[:2]
        ah, aw = (int(v) for v in t.image_sizes[image_row])
        masks = np.zeros((len(rows), ah, aw), dtype=bool)
        for j, u in enumerate(rows):
            for obj in units.parts(int(u)):
                masks[j] |= t.mask_source(int(obj), ah, aw)
        if (ah, aw) != (h, w):
            if not self._warned_size:
                log.warning("image %s is %dx%d (HxW) but its annotations say %dx%d; masks are rescaled "
                            "(nearest) to the image (further mismatches are not logged)", t.image_paths[image_row],
                            h, w, ah, aw)
                self._warned_size = True
            m = torch.from_numpy(masks).unsqueeze(0).float()
            masks = torch.nn.functional.interpolate(m, size=(h, w), mode="nearest")[0].bool().numpy()
        return image, masks


class InstanceSampleDataset(Dataset):
    """Instance samples: one unit (an object, or a category's objects in one image) per item.

    Items: ``{"image": (3,S,S) float, "mask": (1,S,S) float, "target": (K,) float multi-hot, "index": int}``.
    """

    def __init__(self, tables: InstanceTables, units: Units, transform: JointTransform) -> None:
        self.units = units
        self.transform = transform
        self.num_labels = len(tables.label_names)
        self.renderer = _UnitRenderer(tables)

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, masks = self.renderer.load(int(self.units.image[i]), self.units, [i])
        img, msk = self.transform(image, masks)
        target = torch.zeros(self.num_labels, dtype=torch.float32)
        target[torch.from_numpy(self.units.labels(i))] = 1.0
        return {"image": img, "mask": msk.float(), "target": target, "index": i}


class ImageSampleDataset(Dataset):
    """Image samples: one image with the masks of all its ground-truth units (one label each).

    Items: ``{"image": (3,S,S) float, "masks": (M,S,S) bool, "mask_labels": (M,) int64, "index": int}``.
    ``image_rows[i]`` is the row of item i in the tables (``image_paths``, ``image_ids``).
    """

    def __init__(self, tables: InstanceTables, units: Units, transform: JointTransform) -> None:
        self.tables = tables
        self.units = units
        self.transform = transform
        order = np.argsort(units.image, kind="stable")
        self._order = order
        self.image_rows, starts = np.unique(units.image[order], return_index=True)
        self._ptr = np.r_[starts, len(order)].astype(np.int64)
        self.renderer = _UnitRenderer(tables)

    def __len__(self) -> int:
        return len(self.image_rows)

    @property
    def image_paths(self) -> list[str]:
        """File of each item, in item order."""
        return [self.tables.image_paths[int(r)] for r in self.image_rows]

    @property
    def image_ids(self) -> np.ndarray:
        """The dataset's image id of each item, (len,) int64."""
        return self.tables.image_ids[self.image_rows]

    def __getitem__(self, i: int) -> dict[str, Any]:
        rows = self._order[self._ptr[i]:self._ptr[i + 1]]
        image, masks = self.renderer.load(int(self.image_rows[i]), self.units, rows)
        img, msk = self.transform(image, masks)
        labels = torch.from_numpy(np.array([self.units.labels(int(u))[0] for u in rows], dtype=np.int64))
        return {"image": img, "masks": msk, "mask_labels": labels, "index": i}


def collate_instances(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack instance items into the train/val batch of the data contract."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "target": torch.stack([it["target"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
    }


def collate_images(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack image items, padding masks to M = the most units of an image in the batch (labels -1 = padding)."""
    b = len(items)
    m = max((len(it["mask_labels"]) for it in items), default=0)
    s = items[0]["image"].shape[-2:]
    masks = torch.zeros((b, m, *s), dtype=torch.bool)
    labels = torch.full((b, m), -1, dtype=torch.int64)
    for i, it in enumerate(items):
        n = len(it["mask_labels"])
        masks[i, :n] = it["masks"]
        labels[i, :n] = it["mask_labels"]
    return {
        "image": torch.stack([it["image"] for it in items]),
        "masks": masks,
        "mask_labels": labels,
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
    }
