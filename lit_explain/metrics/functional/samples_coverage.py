"""Samples coverage (CCE): ``#{i : A_i ∧ L_i ≠ ∅} / #{i : L_i ≠ ∅}``.

The share of the samples containing the explanation on which the unit fires on it. It is exactly the
image-level Detection Accuracy of Makinwa, La Rosa & Capobianco (detacc-compexp, dissection.md §4.2), which
upstream rounds to 4 decimals; here it is exact.
"""

from __future__ import annotations

import torch

from lit_explain.metrics.functional._ratio import ratio
from lit_explain.metrics.functional.sample_counts import sample_counts

__all__ = ["samples_coverage"]


def samples_coverage(activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Samples coverage of bool masks (N, ...); 0 when the explanation never occurs."""
    _, m, o = sample_counts(activation, label)
    return ratio((o > 0).sum(), (m > 0).sum())
