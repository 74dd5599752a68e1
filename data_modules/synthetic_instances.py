"""The synthetic concept world as LaViSE instance data: generated and exported on first use, read by the
Visual Genome (or COCO) reader.

:class:`SyntheticInstancesDataModule` makes sure the world exists at ``root`` (generating it with the same
parameters and reuse rules as :class:`~data_modules.synthetic.SyntheticWorldDataModule`, so a LaViSE run
explains a classifier trained on that very world), exports it with :mod:`lit_explain.synth.export`, and then
serves it through :class:`~data_modules.visual_genome.VisualGenomeDataModule` (``format="vg"``, the
default: object boxes, shape names plus colour/material attribute words) or
:class:`~data_modules.coco.CocoDataModule` (``format="coco"``: pixel masks; shapes, or "<colour> <shape>"
names split into words). Train/val follow the world's own split. Batches follow the LaViSE data contract
(:mod:`data_modules._instances`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from data_modules._instance_tables import TRAIN, VAL, InstanceTables
from data_modules._instances import InstanceDataModule
from lit_explain.datasets.checks import check_choice, check_int, check_path, check_real
from lit_explain.synth.export import export_coco, export_vg, world_split
from lit_explain.synth.world import generate_world

log = logging.getLogger(__name__)

__all__ = ["SyntheticInstancesDataModule"]


class SyntheticInstancesDataModule(InstanceDataModule):
    """LaViSE instance/image samples of the synthetic world (see the module docstring).

    Args:
        root: folder of the world; generated there when it holds no complete world.
        num_images: number of world images to generate.
        world_image_size: side of the generated images (the world's ``image_size``).
        mask_size: the world's label mask side.
        seed: world seed.
        val_fraction: the world's fraction of ``val`` images.
        noise: the world's pixel noise.
        overwrite: regenerate when ``root`` holds a world made with other parameters (default: raise).
        export_root: folder of the VG/COCO export; default ``<root>_lavise_<format>`` beside the world.
        format: "vg" (boxes via VisualGenomeDataModule) or "coco" (pixel masks via CocoDataModule).
        include_attributes: vg: colour and material words become categories besides shapes; coco: categories
            are "<colour> <shape>" split into words (colour and shape words) instead of shapes only.
        min_images: vg: minimum number of images of a category.
        cache_dir: vg: cache of parsed annotations (None = off).
        image_size: side S of batches; default the world's image size.
        resize_size: short side before the centre crop; default S (the whole image is kept).
        scale_min: lower bound of RandomResizedCrop's area fraction, in (0, 1].
        seen_fraction: fraction of categories seen in training, in (0, 1] (seeded, without replacement).
        batch_size: instance samples per batch.
        **kwargs: the other arguments every instance data module shares (augment, hflip, interpolation, mean,
            std, union_per_category, split_seed, val_include_unseen, predict_split, predict_batch_size,
            num_workers, pin_memory, max_bad_annotation_fraction), documented on
            :class:`~data_modules._instances.InstanceDataModule` (the world's classifier uses the ImageNet
            mean and std, the defaults).
    """

    def __init__(
        self,
        root: str = "data/synthetic_world",
        num_images: int = 2000,
        world_image_size: int = 64,
        mask_size: int = 32,
        seed: int = 0,
        val_fraction: float = 0.2,
        noise: float = 0.015,
        overwrite: bool = False,
        export_root: str | None = None,
        format: Literal["vg", "coco"] = "vg",
        include_attributes: bool = True,
        min_images: int = 1,
        cache_dir: str | None = "cache/synthetic_instances",
        image_size: int | None = None,
        resize_size: int | None = None,
        scale_min: float = 0.35,
        seen_fraction: float = 0.7,
        batch_size: int = 64,
        **kwargs,
    ) -> None:
        owner = type(self).__name__
        check_choice(owner, "format", format, ("vg", "coco"))
        world_image_size = check_int(owner, "world_image_size", world_image_size, low=16)
        image_size = check_int(owner, "image_size", image_size, low=1, optional=True)
        size = int(image_size or world_image_size)
        super().__init__(image_size=size, resize_size=resize_size or size, scale_min=scale_min,
                         seen_fraction=seen_fraction, batch_size=batch_size, **kwargs)
        self.save_hyperparameters()
        self.root = Path(check_path(owner, "root", root))
        check_path(owner, "export_root", export_root, optional=True)
        check_path(owner, "cache_dir", cache_dir, optional=True)
        self.world_kwargs = dict(
            num_images=check_int(owner, "num_images", num_images, low=1), image_size=world_image_size,
            mask_size=check_int(owner, "mask_size", mask_size, low=4, high=world_image_size),
            seed=check_int(owner, "seed", seed, low=0), val_fraction=check_real(owner, "val_fraction", val_fraction, 0.0, 1.0),
            noise=check_real(owner, "noise", noise, low=0.0))
        self.overwrite = bool(overwrite)
        self.format = format
        self.export_root = Path(export_root) if export_root else self.root.with_name(f"{self.root.name}_lavise_{format}")
        self.include_attributes = bool(include_attributes)
        self.min_images = check_int(owner, "min_images", min_images, low=0)
        self.cache_dir = cache_dir

    def prepare_data(self) -> None:
        """Generate the world (unless complete with these parameters) and export it (unless current)."""
        generate_world(self.root, overwrite=self.overwrite, **self.world_kwargs)
        if self.format == "vg":
            export_vg(self.root, self.export_root)
        else:
            export_coco(self.root, self.export_root, "color_shape" if self.include_attributes else "shape")

    def _load_tables(self) -> InstanceTables:
        self.prepare_data()  # cheap when done: both steps reuse what is current
        if self.format == "vg":
            from data_modules.visual_genome import VisualGenomeDataModule

            reader = VisualGenomeDataModule(
                str(self.export_root), merge_by="name", min_images=self.min_images,
                include_attributes=self.include_attributes, on_missing_image="error", val_fraction=0.0,
                seen_fraction=1.0, cache_dir=self.cache_dir)
        else:
            from data_modules.coco import CocoDataModule

            reader = CocoDataModule(str(self.export_root), label_mode="token" if self.include_attributes else "category",
                                    on_missing_image="error")
        tables = reader._load_tables()
        split = world_split(self.root)
        tables.image_split = np.array([VAL if split[int(i)] == "val" else TRAIN for i in tables.image_ids],
                                      dtype=np.int8)
        return tables
