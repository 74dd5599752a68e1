"""Explanation coverage (CCE): ``#{i : A_i ∧ L_i ≠ ∅} / #{i : A_i ≠ ∅}``, the share of firing samples the explanation touches."""

from __future__ import annotations

import torch

from lit_explain.metrics.functional._ratio import ratio
from lit_explain.metrics.functional.sample_counts import sample_counts

__all__ = ["explanation_coverage"]


def explanation_coverage(activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Explanation coverage of bool masks (N, ...); 0 when the unit never fires."""
    a, _, o = sample_counts(activation, label)
    return ratio((o > 0).sum(), (a > 0).sum())
