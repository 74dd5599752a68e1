"""Explaining filters with a trained LaViSE explainer: the streaming pass and the per-(filter, image) results.

Over the predict pass, :class:`FilterStatistics` keeps, per explained filter and per rank,

* the top-p images by maximum spatial activation (a streaming top-k; ties go to the smaller dataset index, so
  the result does not depend on batch order or on the number of processes);
* the largest ``tail_size(N h w, q)`` activations, from which the threshold ``T_u`` = the exact ``q`` = 0.995
  quantile of all N·h·w activations of the filter follows (:func:`~lit_explain.metrics.functional.recall.
  tail_quantile`). The MLRC reproduction computed ``quantile(acts, 0.005)`` (the 0.5th percentile), which
  passes almost every location: that bug cannot happen here, ``q`` is the upper quantile and is checked;
* the number of reference images that contain each category (the frequency baseline of recall@k).

At epoch end the ranks' candidates are gathered (fixed shapes, so one ``all_gather`` each) and merged into the
same global result on every rank. The (filter, image) pairs are then computed image-sharded across ranks and
gathered again into :class:`FilterExplanations`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from lit_explain.methods.lavise_ops import RankedWords, merge_topk
from lit_explain.metrics.functional.recall import tail_quantile, tail_size

__all__ = ["FilterStatistics", "FilterExplanations"]

#: ``gather(t)`` returns the (W, *t.shape) stack of t over the W ranks (W = 1 without DDP).
Gather = Callable[[torch.Tensor], torch.Tensor]


class FilterStatistics:
    """Rank-local streaming state of the predict pass (see the module docstring).

    Args:
        units: (U,) int64 channels of the layer to explain.
        top_images: p, images kept per filter.
        num_images: N, images of the whole reference set (all ranks), to size the activation tail.
        quantile: q of the threshold, 0.995 (``P(a > T_u) = 0.005``).
        num_labels: K, for the category image counts.
    """

    def __init__(self, units: torch.Tensor, top_images: int, num_images: int, quantile: float, num_labels: int) -> None:
        if not 0.5 < quantile < 1.0:
            raise ValueError(
                f"quantile must be the upper tail, in (0.5, 1) (LaViSE/NetDissect: 0.995, P(a > T) = 0.005); got "
                f"{quantile}. A value like 0.005 would be the MLRC reproduction's bug (the 0.5th percentile)."
            )
        self.units = units.to(torch.int64)
        self.p = int(top_images)
        self.num_images = int(num_images)
        self.q = float(quantile)
        self.num_labels = int(num_labels)
        n_units = len(self.units)
        self.top_values = torch.full((n_units, self.p), float("-inf"))
        self.top_index = torch.full((n_units, self.p), -1, dtype=torch.int64)
        self.tail: torch.Tensor | None = None  # (U, m) descending, sized at the first batch (needs h, w)
        self.grid: tuple[int, int] | None = None
        self.count = torch.zeros((), dtype=torch.int64)  # images seen on this rank
        self.label_images = torch.zeros(self.num_labels, dtype=torch.int64)

    def update(self, feats: torch.Tensor, index: torch.Tensor, mask_labels: torch.Tensor | None) -> None:
        """Add a batch: feats (B, C, h, w) of the layer, index (B,) dataset indices, mask_labels (B, M) or None."""
        acts = feats[:, self.units.to(feats.device)].detach().float().cpu()  # (B, U, h, w)
        b, n_units, h, w = acts.shape
        if self.grid is None:
            self.grid = (h, w)
            m = tail_size(max(self.num_images, 1) * h * w, self.q)
            self.tail = torch.full((n_units, m), float("-inf"))
        elif self.grid != (h, w):
            raise ValueError(f"feature grid changed from {self.grid} to {(h, w)}: images must all have one size")
        maxes = acts.flatten(2).amax(-1).T  # (U, B)
        idx = index.to(torch.int64).cpu()[None, :].expand(n_units, -1)
        self.top_values, self.top_index = merge_topk(self.top_values, self.top_index, maxes, idx, self.p)
        flat = acts.permute(1, 0, 2, 3).reshape(n_units, -1)
        m = self.tail.shape[1]
        batch_top = flat.topk(min(m, flat.shape[1]), dim=1).values
        self.tail = torch.cat([self.tail, batch_top], 1).topk(m, dim=1).values
        self.count += b
        if mask_labels is not None:
            lab = mask_labels.cpu()
            present = torch.zeros(b, self.num_labels + 1, dtype=torch.bool)
            present.scatter_(1, torch.where(lab >= 0, lab, torch.full_like(lab, self.num_labels)), True)
            self.label_images += present[:, : self.num_labels].sum(0)

    def merge(self, gather: Gather) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Combine all ranks: ``(top_values (U,p), top_index (U,p), thresholds (U,) float64, label_images (K,), n)``.

        Every rank must call this (it gathers); every rank gets the same result.
        """
        counts = gather(self.count.reshape(1)).reshape(-1)
        n_images = int(counts.sum())
        if n_images == 0:
            raise RuntimeError("LaViSE predict: no images were seen; is the predict dataloader empty?")
        grids = gather(torch.tensor(self.grid if self.grid is not None else (0, 0), dtype=torch.int64))
        h, w = (int(v) for v in grids.amax(0))
        n_units = len(self.units)
        m = tail_size(max(self.num_images, 1) * h * w, self.q)
        tail = self.tail if self.tail is not None else torch.full((n_units, m), float("-inf"))
        vals = gather(self.top_values)  # (W, U, p)
        idxs = gather(self.top_index)
        world = vals.shape[0]
        tv, ti = merge_topk(
            torch.full((n_units, 0), float("-inf")), torch.full((n_units, 0), -1, dtype=torch.int64),
            vals.permute(1, 0, 2).reshape(n_units, world * self.p), idxs.permute(1, 0, 2).reshape(n_units, -1), self.p,
        )
        all_tail = gather(tail).permute(1, 0, 2).reshape(n_units, -1)
        n_values = n_images * h * w
        need = tail_size(n_values, self.q)
        if need > all_tail.shape[1]:  # more images than announced: cannot happen with the Lightning samplers
            raise RuntimeError(f"LaViSE predict: saw {n_images} images but sized the threshold buffer for "
                               f"{self.num_images}")
        top = all_tail.topk(need, dim=1).values
        thresholds = tail_quantile(top, n_values, self.q)
        labels = gather(self.label_images).sum(0)
        return tv, ti, thresholds, labels, n_images


@dataclass
class FilterExplanations:
    """Everything predict computed for the explained filters; identical on every rank.

    Shapes: U filters, p top images, s_max words kept per image, K categories, V vocabulary words, (h, w) grid.

    Attributes:
        units: (U,) channel of each filter.
        thresholds: (U,) float64 T_u, the ``quantile`` of the filter's activations.
        top_index: (U, p) dataset index of the top images (-1 = none).
        top_values: (U, p) their max activation.
        valid: (U, p) bool: pairs that were explained (an image exists and its max activation is > 0).
        owner: (U, p) int64 rank that computed each pair (each rank feeds only its own pairs to metrics).
        words: (U, p, s_max) vocabulary index of each pair's top words.
        word_scores: (U, p, s_max) their cosine similarity.
        ground_truth: (U, p, K) bool, categories whose masks overlap the thresholded activation (IoU > 0.04).
        maps: (U, p, h, w) the filter's activation map on each top image (for pictures).
        ranked: the per-filter explanation (:class:`~lit_explain.methods.lavise_ops.RankedWords`).
        vocabulary: the V words explanations are chosen from.
        word_labels: (V,) int64 category id of each word (-1 if it names no category).
        label_names: the K categories.
        seen: (K,) bool categories used in training.
        label_images: (K,) reference images containing each category.
        num_images: N, reference images.
        attention: the attention mode used.
        quantile: q of the thresholds.
    """

    units: torch.Tensor
    thresholds: torch.Tensor
    top_index: torch.Tensor
    top_values: torch.Tensor
    valid: torch.Tensor
    owner: torch.Tensor
    words: torch.Tensor
    word_scores: torch.Tensor
    ground_truth: torch.Tensor
    maps: torch.Tensor
    ranked: RankedWords
    vocabulary: list[str]
    word_labels: torch.Tensor
    label_names: list[str]
    seen: torch.Tensor
    label_images: torch.Tensor
    num_images: int
    attention: str
    quantile: float
    extra: dict = field(default_factory=dict)

    def topk_labels(self, k: int) -> torch.Tensor:
        """(U, p, k) category ids of each pair's first k words (-1 for words that name no category)."""
        w = self.words[..., :k]
        return torch.where(w >= 0, self.word_labels[w.clamp(min=0)], torch.full_like(w, -1))

    def word_seen(self, word: int) -> bool:
        """Whether vocabulary word ``word`` names a category used in training."""
        lab = int(self.word_labels[word])
        return lab >= 0 and bool(self.seen[lab])
