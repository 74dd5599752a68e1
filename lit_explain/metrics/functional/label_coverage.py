"""Label coverage (CCE's ``detection_accuracy`` function, reported as ``label_coverage``): ``|A ∧ L| / |L|``.

The pixel recall of the explanation by the unit. Not to be confused with the Detection Accuracy of Makinwa et
al., which is :func:`~lit_explain.metrics.functional.samples_coverage.samples_coverage`.
"""

from __future__ import annotations

import torch

from lit_explain.metrics.functional._ratio import ratio
from lit_explain.metrics.functional.sample_counts import sample_counts

__all__ = ["label_coverage"]


def label_coverage(activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``Σ|A_i ∧ L_i| / Σ|L_i|`` of bool masks (N, ...); 0 when the explanation never occurs."""
    _, m, o = sample_counts(activation, label)
    return ratio(o.sum(), m.sum())
