"""The synthetic concept world as a LightningDataModule: Broden-format dissection data plus class labels.

:class:`SyntheticWorldDataModule` generates the world on first use (``prepare_data``; see
:mod:`lit_explain.synth.world`) and then is a :class:`~data_modules.broden.BrodenDataModule` over it, so
dissection methods read it exactly as they read real Broden. For classifier training it adds class targets:
``train_dataloader`` / ``val_dataloader`` yield ``{"image", "target", "index"}`` over the world's
``train`` / ``val`` splits; ``predict_dataloader`` (from the base) yields ``{"image", "index"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_modules.broden import IMAGENET_MEAN, IMAGENET_STD, BrodenDataModule, BrodenDataset
from lit_explain.datasets.checks import check_int, check_real
from lit_explain.synth.concepts import CATEGORIES
from lit_explain.synth.world import (WorldMismatchError, generate_world, is_complete_world, load_classes,
                                     read_world)

__all__ = ["SyntheticWorldDataModule", "ClassifiedWorldDataset"]


class ClassifiedWorldDataset(Dataset):
    """A :class:`BrodenDataset` of the world with each item's class: ``{"image", "target", "index"}``.

    Args:
        dataset: the Broden view of (one split of) the world (default transform: ToTensor + Normalize).
        classes: image path (as in index.csv) -> class id, from ``classes.csv``.
        cache_images: keep each decoded image (uint8, 12 KB at 64 px) after its first read, so later epochs
            skip the JPEG decode; the normalisation is then applied here, identical to the dataset's.
        mean: normalisation mean used with ``cache_images``.
        std: normalisation std used with ``cache_images``.
    """

    def __init__(self, dataset: BrodenDataset, classes: dict[str, int], cache_images: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.dataset = dataset
        missing = [n for n in dataset.image_names if n not in classes]
        if missing:
            raise ValueError(f"{len(missing)} images of {dataset.root} have no class in classes.csv "
                             f"(first: {missing[0]}); regenerate the world")
        self.targets = torch.tensor([classes[n] for n in dataset.image_names], dtype=torch.int64)
        self.cache_images = bool(cache_images)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not self.cache_images:
            item = self.dataset[i]
            item["target"] = self.targets[i]
            return item
        img = self._cache.get(i)
        if img is None:
            img = torch.from_numpy(np.array(self.dataset.load_image(i), dtype=np.uint8)).permute(2, 0, 1).contiguous()
            self._cache[i] = img
        image = (img.float().div(255.0) - self._mean) / self._std
        return {"image": image, "index": i, "target": self.targets[i]}


class SyntheticWorldDataModule(BrodenDataModule):
    """The synthetic concept world (generated on first use) for classifier training and dissection.

    Args:
        root: folder of the world; generated there by ``prepare_data`` when it holds no complete world.
        num_images: number of images to generate.
        image_size: generated image side in pixels, >= 16 (images are served at this size).
        mask_size: generated label mask side in pixels, in [4, image_size] (Broden: image_size / 2).
        seed: world seed (scenes, noise) and seed of the training shuffle order.
        val_fraction: fraction of images in the ``val`` split, in [0, 1] (class-balanced).
        noise: standard deviation of the generator's pixel noise (intensities in [0, 1]).
        overwrite: regenerate when ``root`` holds a world made with other parameters (default: raise an error
            naming the differences).
        generation_workers: processes used to generate the world (same files whatever the number).
        augment: random horizontal flips of training batches (every class rule is flip-invariant).
        cache_images: keep decoded train/val images in memory after the first epoch (about 12 KB per 64 px
            image per loader worker).
        categories: Broden categories read for dissection; default: all of the world's, material included.
        subset: Broden subset filter (the world's images all live under ``synth/``).
        split: rows served by ``predict_dataloader`` and indexed by ``concept_index``; None = all.
        concepts: explicit concept names in order; None derives the vocabulary from the categories.
        min_image_count: with a derived vocabulary, drop concepts present in fewer images.
        batch_size: images per batch.
        num_workers: DataLoader workers.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        cache_dir: folder of caches (the concept index goes to ``{cache_dir}/concept_index/``).
    """

    def __init__(
        self,
        root: str = "data/synthetic_world",
        num_images: int = 2000,
        image_size: int = 64,
        mask_size: int = 32,
        seed: int = 0,
        val_fraction: float = 0.2,
        noise: float = 0.015,
        overwrite: bool = False,
        generation_workers: int = 1,
        augment: bool = True,
        cache_images: bool = True,
        categories: Sequence[str] | None = CATEGORIES,
        subset: str | None = None,
        split: str | None = None,
        concepts: Sequence[str] | None = None,
        min_image_count: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        cache_dir: str = "cache",
    ) -> None:
        super().__init__(root=root, categories=categories, subset=subset, split=split, concepts=concepts,
                         min_image_count=min_image_count, batch_size=batch_size, num_workers=num_workers,
                         mean=mean, std=std, image_size=None, cache_dir=cache_dir)
        owner = type(self).__name__
        self.num_images = check_int(owner, "num_images", num_images, low=1)
        self.world_image_size = check_int(owner, "image_size", image_size, low=16)
        self.mask_size = check_int(owner, "mask_size", mask_size, low=4, high=self.world_image_size)
        self.seed = check_int(owner, "seed", seed, low=0)
        self.val_fraction = check_real(owner, "val_fraction", val_fraction, 0.0, 1.0)
        self.noise = check_real(owner, "noise", noise, low=0.0)
        self.overwrite, self.augment, self.cache_images = bool(overwrite), bool(augment), bool(cache_images)
        self.generation_workers = check_int(owner, "generation_workers", generation_workers, low=1)
        self._classified_sets: dict[str, ClassifiedWorldDataset] = {}
        self._classes: dict[str, int] | None = None
        self._epoch_generator = torch.Generator()
        self._epoch_generator.manual_seed(self.seed)

    # ------------------------------------------------------------------ world
    def _generate_kwargs(self) -> dict[str, Any]:
        return dict(num_images=self.num_images, image_size=self.world_image_size, mask_size=self.mask_size,
                    seed=self.seed, val_fraction=self.val_fraction, noise=self.noise)

    def prepare_data(self) -> None:
        """Generate the world at ``root`` unless it is already complete with these parameters.

        Raises:
            WorldMismatchError: ``root`` holds a world made with other parameters (and ``overwrite`` is False).
        """
        try:
            generate_world(self.root, overwrite=self.overwrite, workers=self.generation_workers,
                           **self._generate_kwargs())
        except WorldMismatchError as e:
            raise WorldMismatchError(
                f"{e}. Every config that reads {self.root} must give the world parameters (num_images, image_size, "
                "mask_size, seed, val_fraction, noise) of the run that generated it, e.g. "
                "configs/synthetic_classifier.yaml") from None

    def setup(self, stage: str | None = None) -> None:
        """Build the Broden view of the world (generating it first if a caller skipped ``prepare_data``)."""
        if self.dataset is None and not is_complete_world(self.root):
            self.prepare_data()
        super().setup(stage)

    @property
    def world(self) -> dict:
        """The world's ``world.json`` (parameters, concepts, class names and rules)."""
        return read_world(self.root)

    @property
    def class_names(self) -> list[str]:
        """Class names, index = class id."""
        return list(self.world["class_names"]) if is_complete_world(self.root) else self._default_class_names()

    @property
    def num_classes(self) -> int:
        """Number of classes of the world."""
        return len(self.class_names)

    @staticmethod
    def _default_class_names() -> list[str]:
        from lit_explain.synth.concepts import DEFAULT_CLASSES

        return list(DEFAULT_CLASSES)

    # ------------------------------------------------------------------ loaders
    def _classified(self, split: str) -> ClassifiedWorldDataset:
        if split not in self._classified_sets:
            if self._classes is None:
                self.setup()
                self._classes = load_classes(Path(self.root))
            self._classified_sets[split] = ClassifiedWorldDataset(
                self._split_dataset(split), self._classes, cache_images=self.cache_images, mean=self.mean,
                std=self.std)
        return self._classified_sets[split]

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) batches ``{"image": (B, 3, H, W), "target": (B,), "index": (B,)}`` of ``train``."""
        return DataLoader(self._classified("train"), batch_size=self.batch_size, shuffle=True,
                          generator=self._epoch_generator, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        """Unshuffled batches ``{"image", "target", "index"}`` of the ``val`` split."""
        return DataLoader(self._classified("val"), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training augmentation on the whole batch: each image flipped left-right with probability 1/2.

        Done here, in the main process with torch's global RNG (seeded by ``seed_everything``), so it is
        deterministic whatever ``num_workers`` is.
        """
        trainer = getattr(self, "trainer", None)
        if self.augment and trainer is not None and trainer.training and isinstance(batch, dict):
            img = batch["image"]
            flip = torch.rand(img.shape[0], device=img.device) < 0.5
            batch["image"] = torch.where(flip[:, None, None, None], img.flip(-1), img)
        return batch
