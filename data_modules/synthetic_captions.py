"""The synthetic world as image-caption pairs, for training the offline CLIP (``configs/clip_synthetic.yaml``).

:class:`SyntheticCaptionsDataModule` is the :class:`~data_modules.synthetic.SyntheticWorldDataModule` (same world
generation, splits, image cache and flip augmentation) whose train/val batches also carry captions written from
each image's annotations (:mod:`lit_explain.synth.captions`):

``{"image": (B, 3, H, W), "tokens": (B, T) int64, "concepts": (B, C) bool, "target": (B,), "index": (B,)}``

Each image has ``captions_per_image`` captions (the full description first, then sampled partial and
single-concept ones), tokenised once with open_clip's tokenizer. In training each image of a batch gets one of
its captions drawn with torch's global generator (seeded by ``seed_everything``) after the batch is on its
device, so the draw is the same whatever ``num_workers`` is; validation always uses the full description.
``concepts`` marks the concepts each image holds (columns in :attr:`concept_names` order), for zero-shot
retrieval.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from data_modules.synthetic import ClassifiedWorldDataset, SyntheticWorldDataModule
from lit_explain.synth.captions import caption_variants, presence_matrix
from lit_explain.synth.concepts import world_concepts
from lit_explain.synth.world import load_scene, read_world

__all__ = ["SyntheticCaptionsDataModule", "CaptionedWorldDataset"]


class CaptionedWorldDataset(Dataset):
    """Items of a :class:`ClassifiedWorldDataset` plus ``tokens`` (V, T) (V captions) and ``concepts`` (C,) bool.

    Args:
        base: the world split with images and classes.
        records: each item's world record (:func:`lit_explain.synth.world.load_scene`), in ``base`` order.
        world_indices: each item's row in the world's index.csv (seeds its captions).
        concepts: concept names of the ``concepts`` columns.
        context_length: tokens per caption (the CLIP's ``text_cfg.context_length``).
        captions_per_image: captions per image (V).
        caption_seed: seed of the sampled captions.
    """

    def __init__(self, base: ClassifiedWorldDataset, records: Sequence[dict], world_indices: Sequence[int],
                 concepts: Sequence[str], context_length: int, captions_per_image: int, caption_seed: int) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        if len(records) != len(base) or len(world_indices) != len(base):
            raise ValueError(f"CaptionedWorldDataset: {len(base)} images but {len(records)} records and "
                             f"{len(world_indices)} indices")
        self.base, self.records, self.world_indices = base, list(records), [int(i) for i in world_indices]
        self.presence = torch.from_numpy(presence_matrix(self.records, concepts))
        self.tokenizer = SimpleTokenizer(context_length=int(context_length))
        self.captions_per_image, self.caption_seed = int(captions_per_image), int(caption_seed)
        self._tokens: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.base)

    def captions(self, i: int) -> list[str]:
        """The V captions of item ``i`` (full description first)."""
        return caption_variants(self.records[i], self.world_indices[i], self.caption_seed, self.captions_per_image)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        tok = self._tokens.get(i)
        if tok is None:
            tok = self._tokens[i] = self.tokenizer(self.captions(i))
        item["tokens"] = tok
        item["concepts"] = self.presence[i]
        return item


class SyntheticCaptionsDataModule(SyntheticWorldDataModule):
    """The synthetic world's images with captions (see the module docstring).

    Args:
        captions_per_image: captions written per image (>= 1; the first is the full description).
        caption_seed: seed of the sampled captions (same captions for the same seed).
        context_length: tokens per caption; must equal the CLIP's ``text_cfg.context_length`` (>= 8).
        concepts: concept names of the ``concepts`` columns; None = every world concept.
        **kwargs: the arguments of :class:`~data_modules.synthetic.SyntheticWorldDataModule` (root, num_images,
            image_size, mask_size, seed, val_fraction, noise, batch_size, augment, cache_images, ...).
    """

    def __init__(self, captions_per_image: int = 6, caption_seed: int = 0, context_length: int = 56,
                 concepts: Sequence[str] | None = None, **kwargs: Any) -> None:
        if int(captions_per_image) < 1:
            raise ValueError(f"SyntheticCaptionsDataModule: captions_per_image must be >= 1, got {captions_per_image}")
        if int(context_length) < 8:
            raise ValueError(f"SyntheticCaptionsDataModule: context_length must be >= 8 tokens (the CLIP's "
                             f"text_cfg.context_length), got {context_length}")
        super().__init__(**kwargs)
        self.captions_per_image, self.caption_seed = int(captions_per_image), int(caption_seed)
        self.context_length = int(context_length)
        names = [c.name for c in world_concepts()]
        self.concept_names = names if concepts is None else [str(c) for c in concepts]
        unknown = sorted(set(self.concept_names) - set(names))
        if unknown or not self.concept_names:
            raise ValueError(f"SyntheticCaptionsDataModule: concepts {unknown} are not world concepts; choose from "
                             f"{names}")
        self._captioned: dict[str, CaptionedWorldDataset] = {}

    def _captioned_split(self, split: str) -> CaptionedWorldDataset:
        if split not in self._captioned:
            base = self._classified(split)
            num = int(read_world(self.root)["counts"]["images"])
            by_name = {}
            for j in range(num):
                rec = load_scene(self.root, j)
                by_name[rec["image"]] = (j, rec)
            names = base.dataset.image_names
            missing = [n for n in names if n not in by_name]
            if missing:
                raise ValueError(f"{len(missing)} images of {self.root} have no record in instances.jsonl (first: "
                                 f"{missing[0]}); regenerate the world")
            self._captioned[split] = CaptionedWorldDataset(
                base, [by_name[n][1] for n in names], [by_name[n][0] for n in names], self.concept_names,
                self.context_length, self.captions_per_image, self.caption_seed)
        return self._captioned[split]

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) caption batches of ``train`` (tokens (B, V, T) until moved to the device)."""
        return DataLoader(self._captioned_split("train"), batch_size=self.batch_size, shuffle=True,
                          generator=self._epoch_generator, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        """Unshuffled caption batches of ``val`` (the held-out images)."""
        return DataLoader(self._captioned_split("val"), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Flip augmentation (base class), then one caption per image: a random one in training, else the first."""
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        if isinstance(batch, dict) and isinstance(batch.get("tokens"), torch.Tensor) and batch["tokens"].ndim == 3:
            tokens = batch["tokens"]
            trainer = getattr(self, "trainer", None)
            if trainer is not None and trainer.training:
                pick = torch.randint(tokens.shape[1], (tokens.shape[0],)).to(tokens.device)
            else:
                pick = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
            batch["tokens"] = tokens[torch.arange(tokens.shape[0], device=tokens.device), pick]
        return batch
