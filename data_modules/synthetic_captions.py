"""The synthetic world as image-caption pairs, for training the offline CLIP (``configs/clip_synthetic.yaml``).

:class:`SyntheticCaptionsDataModule` is the :class:`~data_modules.synthetic.SyntheticWorldDataModule` (same world
generation, splits, image cache and flip augmentation) whose train/val batches also carry captions written from
each image's annotations (:mod:`lit_explain.synth.captions`):

``{"image": (B, 3, H, W), "tokens": (B * K, T) int64, "caption_concepts": (B * K, C) bool, "concepts": (B, C) bool,
"target": (B,), "index": (B,)}``

Each image has ``captions_per_image`` captions (the full description first, then sampled family-balanced
single-concept prompts, family-subset and shuffled full descriptions:
:func:`lit_explain.synth.captions.caption_variants`), tokenised once with open_clip's tokenizer. In training each
image of a batch gets ``K = captions_per_step`` distinct captions drawn with torch's global generator (seeded by
``seed_everything``) after the batch is on its device, so the draw is the same whatever ``num_workers`` is; rows of
``tokens`` are image-major (caption k of image b is row ``b * K + k``). Validation always uses the full description
(K = 1). ``concepts`` marks the concepts each image holds and ``caption_concepts`` the concepts each chosen caption
names (columns in :attr:`concept_names` order): the first scores zero-shot retrieval, both together tell the
multi-positive loss which captions are true of which images (:mod:`lit_explain.models.clip_trainer`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from data_modules.synthetic import ClassifiedWorldDataset, SyntheticWorldDataModule
from lit_explain.synth.captions import caption_variants, named_concepts, presence_matrix
from lit_explain.synth.concepts import world_concepts
from lit_explain.synth.world import load_scene, read_world

__all__ = ["SyntheticCaptionsDataModule", "CaptionedWorldDataset"]


class CaptionedWorldDataset(Dataset):
    """Items of a :class:`ClassifiedWorldDataset` plus ``tokens`` (V, T) (V captions), ``caption_concepts`` (V, C)
    bool (the concepts each caption names) and ``concepts`` (C,) bool (the concepts the image holds).

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
        self.concepts = list(concepts)
        self._tokens: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.base)

    def captions(self, i: int) -> list[str]:
        """The V captions of item ``i`` (full description first)."""
        return caption_variants(self.records[i], self.world_indices[i], self.caption_seed, self.captions_per_image)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        cached = self._tokens.get(i)
        if cached is None:
            captions = self.captions(i)
            named = torch.tensor([[c in n for c in self.concepts] for n in
                                  (named_concepts(cap, self.concepts) for cap in captions)], dtype=torch.bool)
            cached = self._tokens[i] = (self.tokenizer(captions), named)
        item["tokens"], item["caption_concepts"] = cached
        item["concepts"] = self.presence[i]
        return item


class SyntheticCaptionsDataModule(SyntheticWorldDataModule):
    """The synthetic world's images with captions (see the module docstring).

    Args:
        captions_per_image: captions written per image (>= 1; the first is the full description).
        captions_per_step: distinct captions of each image in a training batch (K, 1 <= K <= captions_per_image);
            K > 1 needs a loss that takes several captions per image (ContrastiveClip's ``multi_positive``).
        caption_seed: seed of the sampled captions (same captions for the same seed).
        context_length: tokens per caption; must equal the CLIP's ``text_cfg.context_length`` (>= 8).
        concepts: concept names of the ``concepts`` and ``caption_concepts`` columns; None = every world concept
            (with fewer, the multi-positive loss judges which captions are true of an image on these only).
        **kwargs: the arguments of :class:`~data_modules.synthetic.SyntheticWorldDataModule` (root, num_images,
            image_size, mask_size, seed, val_fraction, noise, batch_size, augment, cache_images, ...).
    """

    def __init__(self, captions_per_image: int = 6, caption_seed: int = 0, context_length: int = 56,
                 concepts: Sequence[str] | None = None, captions_per_step: int = 1, **kwargs: Any) -> None:
        if int(captions_per_image) < 1:
            raise ValueError(f"SyntheticCaptionsDataModule: captions_per_image must be >= 1, got {captions_per_image}")
        if not 1 <= int(captions_per_step) <= int(captions_per_image):
            raise ValueError(f"SyntheticCaptionsDataModule: captions_per_step must be in [1, captions_per_image = "
                             f"{captions_per_image}], got {captions_per_step}")
        if int(context_length) < 8:
            raise ValueError(f"SyntheticCaptionsDataModule: context_length must be >= 8 tokens (the CLIP's "
                             f"text_cfg.context_length), got {context_length}")
        super().__init__(**kwargs)
        self.captions_per_image, self.caption_seed = int(captions_per_image), int(caption_seed)
        self.captions_per_step = int(captions_per_step)
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
        """Flip augmentation (base class), then the captions of each image: ``captions_per_step`` distinct random
        ones in training (image-major rows), else the first (the full description)."""
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        if isinstance(batch, dict) and isinstance(batch.get("tokens"), torch.Tensor) and batch["tokens"].ndim == 3:
            tokens = batch["tokens"]
            b, v = tokens.shape[:2]
            trainer = getattr(self, "trainer", None)
            if trainer is not None and trainer.training:
                if self.captions_per_step == 1:
                    pick = torch.randint(v, (b, 1))
                else:
                    pick = torch.rand(b, v).argsort(dim=1)[:, :self.captions_per_step]
            else:
                pick = torch.zeros(b, 1, dtype=torch.long)
            pick = pick.to(tokens.device)
            rows = torch.arange(b, device=tokens.device)[:, None]
            batch["tokens"] = tokens[rows, pick].flatten(0, 1)
            if isinstance(batch.get("caption_concepts"), torch.Tensor):
                batch["caption_concepts"] = batch["caption_concepts"][rows, pick].flatten(0, 1)
        return batch
