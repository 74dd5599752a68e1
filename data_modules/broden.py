"""Broden as a LightningDataModule: images for the model and a cached sparse concept index for the methods.

Reading the Broden files (index.csv, label.csv, category.csv, c_*.csv, images and label PNGs), the vocabulary
and the concept-index build live in :mod:`lit_explain.datasets.broden`, without Lightning; this module adds
the dataloaders and the on-disk cache of the concept index (``{cache_dir}/concept_index/<fingerprint>.npz``).
``BrodenDataset``, ``BrodenFormatError`` and ``DEFAULT_CATEGORIES`` are re-exported from here.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning
from torch.utils.data import DataLoader, Dataset

from lit_explain.atomic import atomic_write_text
from lit_explain.concepts import ConceptIndex, ConceptVocabulary
from lit_explain.datasets.broden import (CACHE_FORMAT, DEFAULT_CATEGORIES, IMAGENET_MEAN, IMAGENET_STD,
                                         BrodenDataset, BrodenFormatError)
from lit_explain.datasets.checks import check_choice, check_int, check_path, check_strings, check_triple
from lit_explain.memory import release_free_memory

__all__ = ["BRODEN_SPLITS", "BrodenDataModule", "BrodenDataset", "BrodenFormatError", "DEFAULT_CATEGORIES",
           "IMAGENET_MEAN", "IMAGENET_STD"]

#: Values of index.csv's ``split`` column that the dataloaders serve (``train_dataloader`` / ``val_dataloader``).
BRODEN_SPLITS = ("train", "val")


class BrodenDataModule(lightning.LightningDataModule):
    """Broden for dissection: images for the model, a cached concept index for the methods.

    ``predict_dataloader`` serves the selected rows (``split``) unshuffled; ``train_dataloader`` and
    ``val_dataloader`` serve the ``train`` / ``val`` rows of the same selection for subclasses that train on
    them (override :meth:`_make_dataset` to add targets).

    Args:
        root: the Broden folder holding index.csv, label.csv, c_*.csv and images/ (e.g. ``data/broden1_224``).
        categories: categories to read (NetDissect default object, part, scene, texture, color; add material
            for CCE). None = all categories of the dataset.
        subset: first folder of the image paths to keep (``ade20k``, ``pascal``...), or the ``<subset>`` of an
            existing ``index_<subset>.csv``.
        split: rows served by ``predict_dataloader`` and indexed by ``concept_index``: ``train``, ``val``, or None
            (all rows).
        concepts: explicit concept names in order, each once; None derives the vocabulary from the categories.
        min_image_count: with a derived vocabulary, drop labels occurring in fewer images (detacc uses 5).
        batch_size: images per batch.
        num_workers: DataLoader workers, also used to decode PNGs when the concept index is built.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        image_size: resize images to this square size; None keeps the stored size.
        cache_dir: folder of caches; the concept index goes to ``{cache_dir}/concept_index/<fingerprint>.npz``.
    """

    def __init__(
        self,
        root: str,
        categories: Sequence[str] | None = DEFAULT_CATEGORIES,
        subset: str | None = None,
        split: str | None = None,
        concepts: Sequence[str] | None = None,
        min_image_count: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        image_size: int | None = None,
        cache_dir: str = "cache",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        owner = type(self).__name__
        root = check_path(owner, "root", root)
        check_strings(owner, "categories", categories, optional=True, unique=True)
        if subset is not None and (not isinstance(subset, str) or not subset.strip()):
            raise ValueError(f"{owner}: subset must be a non-empty folder name (ade20k, pascal, ...) or null, got {subset!r}")
        if split is not None:
            check_choice(owner, "split", split, BRODEN_SPLITS + (None,))
        check_strings(owner, "concepts", concepts, optional=True, unique=True)
        min_image_count = check_int(owner, "min_image_count", min_image_count, low=0)
        if concepts is not None and min_image_count > 0:
            raise ValueError(f"{owner}: give either `concepts` (an explicit vocabulary) or `min_image_count` > 0, "
                             "not both")
        self.root, self.categories, self.subset, self.split = root, categories, subset, split
        self.concepts, self.min_image_count = concepts, min_image_count
        self.batch_size = check_int(owner, "batch_size", batch_size, low=1)
        self.num_workers = check_int(owner, "num_workers", num_workers, low=0)
        self.mean, self.std = check_triple(owner, "mean", mean), check_triple(owner, "std", std, positive=True)
        self.image_size = check_int(owner, "image_size", image_size, low=1, optional=True)
        self.cache_dir = check_path(owner, "cache_dir", cache_dir)
        self.dataset: BrodenDataset | None = None
        self._split_datasets: dict[str, BrodenDataset] = {}
        self._concept_index: ConceptIndex | None = None

    # ------------------------------------------------------------------ datasets
    def _dataset_kwargs(self) -> dict[str, Any]:
        """Constructor arguments shared by every dataset this module makes (subclasses reuse them)."""
        return dict(
            root=self.root, categories=self.categories, subset=self.subset, concepts=self.concepts,
            min_image_count=self.min_image_count, mean=self.mean, std=self.std, image_size=self.image_size,
        )

    def _make_dataset(self, split: str | None) -> BrodenDataset:
        """Build the dataset of one split; override to return a subclass (e.g. one adding class targets)."""
        return BrodenDataset(split=split, **self._dataset_kwargs())

    def setup(self, stage: str | None = None) -> None:
        """Build :attr:`dataset` (the ``split`` rows); idempotent."""
        if self.dataset is None:
            self.dataset = self._make_dataset(self.split)

    def _split_dataset(self, split: str) -> BrodenDataset:
        self.setup()
        if split == self.split:
            return self.dataset
        if split not in self._split_datasets:
            self._split_datasets[split] = self._make_dataset(split)
        return self._split_datasets[split]

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def predict_dataloader(self) -> DataLoader:
        """Unshuffled batches ``{"image": (B, 3, ih, iw), "index": (B,) int64}`` of the ``split`` rows."""
        self.setup()
        return self._loader(self.dataset, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of the ``train`` rows of the selection."""
        return self._loader(self._split_dataset("train"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Unshuffled batches of the ``val`` rows of the selection."""
        return self._loader(self._split_dataset("val"), shuffle=False)

    # ------------------------------------------------------------------ concepts
    @property
    def vocabulary(self) -> ConceptVocabulary:
        """The concept vocabulary of :attr:`dataset` (a derived ``min_image_count`` one comes from the cache)."""
        self.setup()
        if self.dataset.vocabulary_needs_pass:
            self.concept_index()
        return self.dataset.vocabulary

    @property
    def num_concepts(self) -> int:
        return len(self.vocabulary)

    @property
    def mask_shape(self) -> tuple[int, int]:
        self.setup()
        return self.dataset.mask_shape

    @property
    def image_shape(self) -> tuple[int, int]:
        self.setup()
        return self.dataset.image_shape

    def _cache_paths(self) -> tuple[Path, Path]:
        folder = Path(self.cache_dir).expanduser() / "concept_index"
        fp = self.dataset.fingerprint()
        return folder / f"{fp}.npz", folder / f"{fp}.json"

    def _load_cache(self, npz: Path, meta_path: Path) -> ConceptIndex | None:
        """The cached index if both files are present and consistent, else None (with a warning if corrupt)."""
        if not (npz.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != self.dataset.fingerprint():
                raise ValueError("stale metadata")
            if npz.stat().st_size != meta["npz_bytes"]:
                raise ValueError(f"size {npz.stat().st_size} != recorded {meta['npz_bytes']} (truncated?)")
            vocab = ConceptVocabulary.from_dict(meta["vocabulary"])
            index = ConceptIndex.load(npz)  # the npz (zip) members are CRC-checked while read
            got = (index.num_images, index.mask_shape, index.num_concepts, int(index.pixel_offsets.numel()))
            want = (len(self.dataset), tuple(self.dataset.mask_shape), len(vocab), meta["num_entries"])
            if got != want:
                raise ValueError(f"content {got} != expected {want}")
            self.dataset.adopt_vocabulary(vocab)
            return index
        except Exception as e:  # noqa: BLE001 - any failure means: do not trust it, rebuild
            warnings.warn(f"ignoring the unreadable concept-index cache {npz} ({type(e).__name__}: {e}); rebuilding it", stacklevel=3)
            return None

    def concept_index(self) -> ConceptIndex:
        """The concept index of :attr:`dataset`, built once and cached at ``{cache_dir}/concept_index/``.

        The cache is keyed by :meth:`BrodenDataset.fingerprint`; the ``.npz`` (ConceptIndex.save) and a ``.json``
        (vocabulary, sizes) are each written atomically, the json last. A cache whose files are missing,
        truncated, corrupt or inconsistent is rebuilt. The index's per-entry arrays are memory-mapped (from the
        cache, or from the unlinked files the build writes beside it), so its size, which grows with the
        annotated pixels, costs page cache shared by the ranks rather than each process's memory.
        """
        if self._concept_index is None:
            self.setup()
            npz, meta_path = self._cache_paths()
            index = self._load_cache(npz, meta_path)
            if index is None:
                # built out of core: the per-entry arrays go to unlinked files beside the cache and are mapped
                index = self.dataset.build_concept_index(num_workers=self.num_workers, spill_dir=npz.parent)
                release_free_memory()  # the build freed many chunk-sized buffers (lit_explain.memory)
                index.save(npz)
                meta = {
                    "format": CACHE_FORMAT, "fingerprint": self.dataset.fingerprint(), "npz_bytes": npz.stat().st_size,
                    "num_entries": int(index.pixel_offsets.numel()), "vocabulary": self.dataset.vocabulary.to_dict(),
                    "root": str(self.dataset.root), "categories": list(self.dataset.categories),
                }
                atomic_write_text(meta_path, json.dumps(meta, indent=1))
            self._concept_index = index
        return self._concept_index
