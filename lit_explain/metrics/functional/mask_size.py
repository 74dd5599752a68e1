"""Average mask sizes (CCE ``avg_mask_size`` and the four ways ``compute_metrics.py`` reports it).

``avg_mask_size(M) = mean over {i : |M_i| > 0} of |M_i| / P`` (P pixels per sample), i.e. ``Σ|M_i| / (#{|M_i|>0}·P)``.

* ``label`` (CCE ``avg_segmentation_size``): M = L;
* ``activation`` (``avg_activation_size``): M = A;
* ``overlap`` (``avg_overlapping``): M = A ∧ L;
* ``overlapping_activation`` (``avg_overlapping_activation_size``): M = A, on the samples where A ∧ L ≠ ∅.
"""

from __future__ import annotations

import torch

from lit_explain.metrics.functional._ratio import ratio
from lit_explain.metrics.functional.sample_counts import sample_counts

__all__ = ["avg_mask_size", "avg_sizes", "MASK_SIZE_KINDS"]

MASK_SIZE_KINDS = ("label", "activation", "overlap", "overlapping_activation")


def avg_mask_size(mask: torch.Tensor) -> torch.Tensor:
    """Mean relative size of the non-empty masks of a bool (N, ...) tensor; 0 when all are empty."""
    flat = mask.reshape(mask.shape[0], -1).bool()
    sizes = flat.sum(1, dtype=torch.int64)
    return ratio(sizes.sum(), (sizes > 0).sum() * flat.shape[1])


def avg_sizes(activation: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """All four average sizes of bool masks (N, ...) (keys: :data:`MASK_SIZE_KINDS`)."""
    a, m, o = sample_counts(activation, label)
    p = activation.reshape(activation.shape[0], -1).shape[1]
    hit = o > 0
    return {
        "label": ratio(m.sum(), (m > 0).sum() * p),
        "activation": ratio(a.sum(), (a > 0).sum() * p),
        "overlap": ratio(o.sum(), hit.sum() * p),
        "overlapping_activation": ratio((a * hit).sum(), hit.sum() * p),
    }
