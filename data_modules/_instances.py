"""Common base of the LaViSE-style data modules: object instances with masks and category words.

LaViSE trains on *instance samples* (one object region of one image, its mask and its category words) and
explains filters on *image samples* (one image with all its annotated regions, the ground truth of recall@k).
A subclass parses its files into :class:`~data_modules._instance_tables.InstanceTables`;
:class:`InstanceDataModule` adds, once for all of them, the constructor arguments they share, the seen/unseen
split, the geometry check of the annotations and the dataloaders (samples and batches:
:mod:`data_modules._instance_samples`). The names of those two modules and of
:mod:`lit_explain.datasets.files` are re-exported here.
"""

from __future__ import annotations

import logging
from typing import Callable, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from data_modules._instance_samples import (IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, ImageSampleDataset,
                                            InstanceSampleDataset, JointTransform, collate_images, collate_instances)
from data_modules._instance_tables import (TRAIN, VAL, BoxMaskSource, InstanceTables, MaskSource, Units, box_geometry,
                                           build_units, filter_unit_labels, handle_missing, image_split, keep_images,
                                           seen_split, select_units)
from lit_explain.datasets.checks import check_choice, check_int, check_real, check_triple
from lit_explain.datasets.files import atomic_save_npz, file_digest, iter_json_array, load_npz_cache, load_rgb

log = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "TRAIN", "VAL", "BoxMaskSource", "ImageSampleDataset",
    "InstanceDataModule", "InstanceSampleDataset", "InstanceTables", "JointTransform", "MaskSource", "Units",
    "atomic_save_npz", "box_geometry", "build_units", "collate_images", "collate_instances", "file_digest",
    "filter_unit_labels", "handle_missing", "image_split", "iter_json_array", "keep_images", "load_npz_cache",
    "load_rgb", "seen_split", "select_units",
]

class InstanceDataModule(LightningDataModule):
    """Base of the LaViSE data modules; subclasses implement :meth:`_load_tables`.

    ``label_names``, ``seen`` and ``vocabulary`` are available right after construction (they parse the
    annotations, cached, on first access), so a CLI link ``apply_on="instantiate"`` or the model's ``setup``
    can read them.

    Args:
        image_size: side S of the square images and masks in batches.
        resize_size: short side before the centre crop of deterministic transforms; default ``round(S*256/224)``.
        augment: training transform: True = joint RandomResizedCrop + flip; False = the deterministic resize +
            centre crop (the paper trains VG without augmentation, COCO with).
        scale_min: lower bound of RandomResizedCrop's area fraction.
        hflip: include random horizontal flips in augmentation.
        interpolation: image resampling ("bilinear", "bicubic", "nearest"); masks always use nearest.
        mean: per-channel mean of normalisation (ImageNet by default).
        std: per-channel std of normalisation.
        union_per_category: True = a training sample is the union of all objects of one category in one image
            (the paper's VG preprocessing), and image samples hold one mask per category present; False = one
            object per sample (the reproduction), image samples hold one mask per (object, label).
        seen_fraction: fraction of categories drawn (seeded, without replacement) as *seen*; the others are
            *unseen*: dropped from training targets and samples, kept in val and predict. 1.0 = all seen.
        split_seed: seed of the seen/unseen draw (and of subclasses' image splits).
        val_include_unseen: keep unseen categories in val instance samples (to measure generalisation to
            words never trained on); False restricts val to seen categories like train.
        predict_split: images used by predict/test dataloaders: "val", "train" or "all".
        batch_size: instance samples per train/val batch.
        predict_batch_size: images per predict/test batch (default ``batch_size``).
        num_workers: DataLoader workers.
        pin_memory: DataLoader pin_memory.
        max_bad_annotation_fraction: largest share of annotations (boxes, polygons) that may be dropped for lying
            wholly outside their image (or being malformed) before setup fails; default 0.01. Dropped and
            clipped annotations are counted in the log and in :attr:`skipped_annotations` /
            :attr:`clipped_annotations` whatever the share. A release with consistent files drops almost none
            (a few stray boxes); a share of a percent or more means the annotation file does not belong to the
            image list (another release, swapped width/height), whose masks would all be wrong.
    """

    def __init__(
        self,
        image_size: int = 224,
        resize_size: int | None = None,
        augment: bool = False,
        scale_min: float = 0.08,
        hflip: bool = True,
        interpolation: str = "bilinear",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        union_per_category: bool = True,
        seen_fraction: float = 1.0,
        split_seed: int = 0,
        val_include_unseen: bool = True,
        predict_split: Literal["val", "train", "all"] = "val",
        batch_size: int = 32,
        predict_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        max_bad_annotation_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        image_size = check_int(owner, "image_size", image_size, low=1)
        resize_size = check_int(owner, "resize_size", resize_size, low=1, optional=True)
        scale_min = check_real(owner, "scale_min", scale_min, 0.0, 1.0, low_open=True)
        check_choice(owner, "interpolation", interpolation, sorted(INTERPOLATIONS))
        mean, std = check_triple(owner, "mean", mean), check_triple(owner, "std", std, positive=True)
        check_real(owner, "seen_fraction", seen_fraction, 0.0, 1.0, low_open=True)
        check_int(owner, "split_seed", split_seed, low=0)
        check_choice(owner, "predict_split", predict_split, ("val", "train", "all"))
        check_int(owner, "batch_size", batch_size, low=1)
        check_int(owner, "predict_batch_size", predict_batch_size, low=1, optional=True)
        check_int(owner, "num_workers", num_workers, low=0)
        self.image_size = int(image_size)
        self._augment = bool(augment)
        common = dict(image_size=image_size, resize_size=resize_size, interpolation=interpolation, mean=mean, std=std)
        self.train_transform = JointTransform(augment=augment, scale_min=scale_min, hflip=hflip, **common)
        self.eval_transform = JointTransform(augment=False, **common)
        self.union_per_category = bool(union_per_category)
        self.seen_fraction = float(seen_fraction)
        self.split_seed = int(split_seed)
        self.val_include_unseen = bool(val_include_unseen)
        self.predict_split = predict_split
        self.batch_size = int(batch_size)
        self.predict_batch_size = int(predict_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.max_bad_annotation_fraction = check_real(owner, "max_bad_annotation_fraction",
                                                      max_bad_annotation_fraction, 0.0, 1.0)
        self._tables: InstanceTables | None = None
        self._seen: np.ndarray | None = None
        self._datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ subclass hook
    def _load_tables(self) -> InstanceTables:
        """Parse (or read from cache) the annotation files into :class:`InstanceTables`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ vocabulary
    @property
    def tables(self) -> InstanceTables:
        """The parsed annotations (parsed on first access)."""
        if self._tables is None:
            t = self._load_tables()
            log.info("%s: %d images, %d objects, %d categories %s", type(self).__name__, len(t.image_paths),
                     len(t.obj_image), len(t.label_names), t.info or "")
            self._check_annotation_geometry(t.info)
            self._tables = t
        return self._tables

    @property
    def skipped_annotations(self) -> dict[str, int]:
        """Annotations dropped for their geometry, by reason (``outside_image``: the box or polygon lies wholly
        outside its image; ``negative_size``: a box of negative width or height; ``rle_size_mismatch``: a
        crowd RLE drawn on another frame than its image). Parses the annotations on first access."""
        return dict(self.tables.info.get("skipped_annotations", {}))

    @property
    def clipped_annotations(self) -> int:
        """Number of annotations partly outside their image, kept with their mask clipped to the image."""
        return int(self.tables.info.get("clipped_annotations", 0))

    def _check_annotation_geometry(self, info: dict) -> None:
        """Log the dropped and clipped annotations; fail when more than ``max_bad_annotation_fraction`` were dropped.

        ``info`` holds ``annotations`` (how many had their geometry checked), ``skipped_annotations`` (reason ->
        count), ``clipped_annotations`` and ``annotation_files`` (named in the messages).
        """
        skipped = {k: int(v) for k, v in info.get("skipped_annotations", {}).items() if v}
        total, clipped = int(info.get("annotations", 0)), int(info.get("clipped_annotations", 0))
        files = ", ".join(str(f) for f in info.get("annotation_files", [])) or "the annotation files"
        bad = sum(skipped.values())
        if clipped:
            log.info("%s: %d of %d annotations of %s lie partly outside their image; their masks are clipped to it",
                     type(self).__name__, clipped, total, files)
        if not bad:
            return
        share = bad / max(total, 1)
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
        if share > self.max_bad_annotation_fraction:
            raise ValueError(
                f"{type(self).__name__}: {bad} of {total} annotations of {files} ({share:.2%}) cannot be drawn in their "
                f"image ({reasons}), more than max_bad_annotation_fraction={self.max_bad_annotation_fraction}. The "
                "annotations probably do not belong to these images (another release, swapped width/height): use "
                "matching files, or raise max_bad_annotation_fraction to accept dropping them.")
        log.warning("%s: skipped %d of %d annotations of %s that cannot be drawn in their image (%s)",
                    type(self).__name__, bad, total, files, reasons)

    @property
    def label_names(self) -> list[str]:
        """The K category words/phrases (multi-word allowed)."""
        return list(self.tables.label_names)

    @property
    def num_labels(self) -> int:
        return len(self.tables.label_names)

    @property
    def seen(self) -> torch.Tensor:
        """(K,) bool: True for categories used in training."""
        if self._seen is None:
            t = self.tables
            if t.seen is not None:
                self._seen = np.asarray(t.seen, dtype=bool)
            else:
                self._seen = seen_split(len(t.label_names), self.seen_fraction, self.split_seed)
        return torch.from_numpy(self._seen.copy())

    @property
    def vocabulary(self):
        """The categories as a :class:`~lit_explain.concepts.vocabulary.ConceptVocabulary` (category "object")."""
        from lit_explain.concepts.vocabulary import ConceptVocabulary

        k = self.num_labels
        return ConceptVocabulary(tuple(range(k)), tuple(self.label_names), ("object",) * k)

    @property
    def augment(self) -> bool:
        """False when training transforms are deterministic (a frozen backbone's features may then be cached)."""
        return self._augment

    # ------------------------------------------------------------------ datasets
    def _image_mask(self, split: str) -> np.ndarray:
        s = self.tables.image_split
        if split == "train":
            return s == TRAIN
        if split == "val":
            return s == VAL
        return np.ones(len(s), dtype=bool)

    def instance_dataset(self, split: Literal["train", "val"]) -> InstanceSampleDataset:
        """Instance samples of a split (train: seen categories only; see ``val_include_unseen``)."""
        key = f"inst_{split}"
        if key not in self._datasets:
            t = self.tables
            objs = np.flatnonzero(self._image_mask(split)[t.obj_image] & ~t.obj_eval_only)
            units = build_units(t, objs, "category" if self.union_per_category else "object")
            seen = self.seen.numpy()
            allowed = seen if (split == "train" or not self.val_include_unseen) else np.ones_like(seen)
            units = filter_unit_labels(units, allowed)
            transform = self.train_transform if split == "train" else self.eval_transform
            self._datasets[key] = InstanceSampleDataset(t, units, transform)
        return self._datasets[key]  # type: ignore[return-value]

    def image_dataset(self, split: Literal["train", "val", "all"] | None = None) -> ImageSampleDataset:
        """Image samples (all categories, seen and unseen) of ``split`` (default ``predict_split``)."""
        split = split or self.predict_split
        key = f"img_{split}"
        if key not in self._datasets:
            t = self.tables
            objs = np.flatnonzero(self._image_mask(split)[t.obj_image])
            units = build_units(t, objs, "category" if self.union_per_category else "pair")
            self._datasets[key] = ImageSampleDataset(t, units, self.eval_transform)
        return self._datasets[key]  # type: ignore[return-value]

    def setup(self, stage: str | None = None) -> None:
        """Parse the annotations (cached) and build the datasets the stage needs."""
        _ = self.seen
        if stage in (None, "fit"):
            self.instance_dataset("train")
            self.instance_dataset("val")
        if stage == "validate":
            self.instance_dataset("val")
        if stage in (None, "predict", "test"):
            self.image_dataset()

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool, collate: Callable) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.instance_dataset("train"), self.batch_size, True, collate_instances)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.instance_dataset("val"), self.batch_size, False, collate_instances)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.image_dataset(), self.predict_batch_size, False, collate_images)

    def test_dataloader(self) -> DataLoader:
        return self.predict_dataloader()
