"""Activation coverage (CCE ``activations_coverage``): ``|A ∧ L| / |A|``, the share of firing pixels inside L."""

from __future__ import annotations

import torch

from lit_explain.metrics.functional._ratio import ratio
from lit_explain.metrics.functional.sample_counts import sample_counts

__all__ = ["activation_coverage"]


def activation_coverage(activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``Σ|A_i ∧ L_i| / Σ|A_i|`` of bool masks (N, ...); 0 when the unit never fires."""
    a, _, o = sample_counts(activation, label)
    return ratio(o.sum(), a.sum())
