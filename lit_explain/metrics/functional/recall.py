"""Recall@k of open-vocabulary filter explanations (LaViSE, CVPR 2022, §4.3; the MLRC reproduction's definition).

For a filter u and one of its top images i:

* the activation region ``R = upsample_bilinear(F_u) > T_u`` on the annotation grid, with ``T_u`` the 99.5th
  percentile of all activations of u over the reference set (``P(a > T_u) = 0.005``, NetDissect's value; the
  reproduction's ``quantile(acts, 0.005)`` is the bug this module exists to avoid);
* the ground truth ``G`` = the categories of the annotations (instance masks) whose IoU with R is > 0.04;
* the predicted words ``W_k`` = the top-k words of the explainer for that (filter, image), mapped to category ids
  (a word that is not a category name can never be a hit);
* ``recall@k = |categories(W_k) ∩ G| / |G|``.

The score of a run is the mean of that ratio over every (filter, image) pair with ``G ≠ ∅`` (a micro-average over
filters × images, as the reproduction computes it). "Seen" and "unseen" restrict G to the categories used / not
used in training before the same computation (pairs whose restricted G is empty are left out of that group).

Two sums per group and k suffice (sum of per-pair recalls, number of pairs), so the metric is exact under DDP.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lit_explain.activations.bitmaps import unit_bitmaps
from lit_explain.ratios import iou_from_counts

__all__ = [
    "activation_regions",
    "mask_iou",
    "iou_ground_truth",
    "recall_at_k_update",
    "recall_at_k_compute",
    "recall_at_k",
    "tail_size",
    "tail_quantile",
    "DEFAULT_KS",
]

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)


def tail_size(n: int, q: float = 0.995) -> int:
    """How many of the largest values of n determine the quantile q (linear interpolation): ``n - floor(q (n-1))``."""
    if n <= 0:
        raise ValueError("tail_size: no values")
    return n - int(q * (n - 1))


def tail_quantile(top_values: torch.Tensor, n: int, q: float = 0.995) -> torch.Tensor:
    """Quantile q of n values per row, from only their largest ones (numpy/``torch.quantile`` 'linear' semantics).

    This is what lets the threshold ``T_u`` be computed exactly in one streaming pass: each unit keeps its
    :func:`tail_size` largest activations (a few per mille of the data), and the order statistics the
    interpolation needs are among them.

    Args:
        top_values: (U, m) the m >= ``tail_size(n, q)`` largest values of each row, in descending order.
        n: the total number of values of each row.
        q: the quantile, 0.995 for LaViSE/NetDissect (``P(a > T_u) = 0.005``).

    Returns:
        (U,) float64.
    """
    need = tail_size(n, q)
    if top_values.shape[-1] < need:
        raise ValueError(f"tail_quantile: need the {need} largest of {n} values per row, got {top_values.shape[-1]}")
    pos = q * (n - 1)
    k0 = int(pos)
    k1 = min(k0 + 1, n - 1)
    frac = pos - k0
    v = top_values.double()
    v0 = v[:, n - 1 - k0]
    v1 = v[:, n - 1 - k1]
    return v0 + (v1 - v0) * frac


def activation_regions(activations: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Thresholded, bilinearly upsampled activation maps.

    Args:
        activations: (P, h, w) one filter's map per (filter, image) pair.
        thresholds: (P,) the filter's threshold T_u for each pair.
        size: (S_h, S_w) the annotation grid.

    Returns:
        (P, S_h, S_w) bool, ``upsample(a) > T`` with ``align_corners=False`` (NetDissect's convention), by the
        same upsampling as the dissection bitmaps (:func:`~lit_explain.activations.bitmaps.unit_bitmaps`).
    """
    return unit_bitmaps(activations, size, thresholds).view(activations.shape[0], *size)


def mask_iou(regions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU of each region with each of its image's masks.

    Args:
        regions: (P, S_h, S_w) bool.
        masks: (P, M, S_h, S_w) bool (padding masks are all False).

    Returns:
        (P, M) float64; 0 where the union is empty.
    """
    r = regions.flatten(1).bool()[:, None, :]  # (P, 1, H)
    m = masks.flatten(2).bool()  # (P, M, H)
    return iou_from_counts((r & m).sum(-1), r.sum(-1), m.sum(-1))


def iou_ground_truth(
    activations: torch.Tensor,
    thresholds: torch.Tensor,
    masks: torch.Tensor,
    mask_labels: torch.Tensor,
    num_labels: int,
    iou_threshold: float = 0.04,
) -> torch.Tensor:
    """Ground-truth concepts of each (filter, image) pair: categories of annotations with IoU > ``iou_threshold``.

    Args:
        activations: (P, h, w) the filter's activation map on the image.
        thresholds: (P,) T_u of the pair's filter.
        masks: (P, M, S_h, S_w) bool instance masks of the pair's image (padded).
        mask_labels: (P, M) int64 category id of each mask, -1 for padding.
        num_labels: K, the number of categories.
        iou_threshold: 0.04 (NetDissect's and the paper's value); strictly greater counts.

    Returns:
        (P, K) bool.
    """
    if masks.shape[0] != activations.shape[0] or mask_labels.shape != masks.shape[:2]:
        raise ValueError(
            f"iou_ground_truth: shapes disagree: activations {tuple(activations.shape)}, masks {tuple(masks.shape)}, "
            f"mask_labels {tuple(mask_labels.shape)}; expected (P,h,w), (P,M,S,S), (P,M)"
        )
    regions = activation_regions(activations, thresholds, tuple(masks.shape[-2:]))
    iou = mask_iou(regions, masks.bool())
    hit = (iou > iou_threshold) & (mask_labels >= 0)
    gt = torch.zeros(activations.shape[0], num_labels, dtype=torch.bool, device=activations.device)
    rows = torch.arange(activations.shape[0], device=activations.device)[:, None].expand_as(mask_labels)
    gt[rows[hit], mask_labels[hit]] = True
    return gt


def _predicted_sets(topk_labels: torch.Tensor, k: int, num_labels: int) -> torch.Tensor:
    """(P, K) bool: the categories among the first k predicted words (-1 entries are words without a category)."""
    pred = torch.zeros(topk_labels.shape[0], num_labels + 1, dtype=torch.bool, device=topk_labels.device)
    first = topk_labels[:, :k]
    idx = torch.where(first >= 0, first, torch.full_like(first, num_labels))
    pred.scatter_(1, idx, True)
    return pred[:, :num_labels]


def recall_at_k_update(
    topk_labels: torch.Tensor,
    ground_truth: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    concept_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of per-pair recalls and number of pairs with a non-empty ground truth.

    Args:
        topk_labels: (P, k_max) int64 category id of each pair's predicted words in rank order, -1 for a word
            that is no category; k_max >= max(ks) (fewer columns are allowed: missing ranks count as misses).
        ground_truth: (P, K) bool.
        ks: the cut-offs.
        concept_mask: (K,) bool, restrict the ground truth to these categories (seen or unseen); None = all.

    Returns:
        ``(recall_sums (len(ks),) float64, count () int64)``.
    """
    gt = ground_truth.bool()
    if concept_mask is not None:
        gt = gt & concept_mask.bool().to(gt.device)[None, :]
    sizes = gt.sum(1)
    valid = sizes > 0
    sums = torch.zeros(len(ks), dtype=torch.float64, device=gt.device)
    if bool(valid.any()):
        tk, g, n = topk_labels[valid], gt[valid], sizes[valid].double()
        for i, k in enumerate(ks):
            hits = (_predicted_sets(tk, k, gt.shape[1]) & g).sum(1).double()
            sums[i] = (hits / n).sum()
    return sums, valid.sum().to(torch.int64)


def recall_at_k_compute(sums: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean recall per k; NaN when no pair had a ground truth."""
    c = count.double()
    return torch.where(c > 0, sums / c.clamp(min=1), torch.full_like(sums, float("nan")))


def recall_at_k(
    topk_labels: torch.Tensor,
    ground_truth: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    seen: torch.Tensor | None = None,
) -> dict[str, float]:
    """Recall@k over pairs, overall and (when ``seen`` (K,) bool is given) for seen and unseen categories.

    Returns:
        ``{"recall@5": ..., "recall@5/seen": ..., "recall@5/unseen": ..., "pairs": ..., ...}``.
    """
    groups: dict[str, torch.Tensor | None] = {"": None}
    if seen is not None:
        groups["/seen"] = seen.bool()
        groups["/unseen"] = ~seen.bool()
    out: dict[str, float] = {}
    for suffix, mask in groups.items():
        sums, count = recall_at_k_update(topk_labels, ground_truth, ks, mask)
        values = recall_at_k_compute(sums, count)
        for k, v in zip(ks, values.tolist()):
            out[f"recall@{k}{suffix}"] = v
        out[f"pairs{suffix}"] = int(count)
    return out
