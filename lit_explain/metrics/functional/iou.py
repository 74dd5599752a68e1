"""Explanation IoU (CCE ``iou``): ``|A ∧ L| / |A ∨ L|`` summed over the dataset (not a mean of per-sample IoUs)."""

from __future__ import annotations

import torch

from lit_explain.metrics.functional._ratio import ratio
from lit_explain.metrics.functional.sample_counts import sample_counts

__all__ = ["explanation_iou", "explanation_iou_from_sums"]


def explanation_iou_from_sums(act, label, overlap) -> torch.Tensor:
    """IoU from dataset sums ``Σ|A_i|``, ``Σ|L_i|``, ``Σ|A_i ∧ L_i|``; 0 when both masks are empty."""
    act, label, overlap = (torch.as_tensor(t, dtype=torch.int64) for t in (act, label, overlap))
    return ratio(overlap, act + label - overlap)


def explanation_iou(activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Dataset-level IoU of bool masks (N, ...) ``activation`` (unit bitmap) and ``label`` (explanation)."""
    a, m, o = sample_counts(activation, label)
    return explanation_iou_from_sums(a.sum(), m.sum(), o.sum())
