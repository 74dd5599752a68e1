"""RangeImportance: fraction of images whose prediction changes when one cluster range is masked (CCE).

Functional twin and definition: :mod:`lit_explain.metrics.functional.range_importance`.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from lit_explain.metrics.functional.range_importance import prediction_changes, range_importance_from_counts

__all__ = ["RangeImportance"]


class RangeImportance(Metric):
    """``update(logits (B, classes), masked_logits (K, B, classes))``; ``compute`` -> (K,) float64 fractions.

    Args:
        num_ranges: K.
        kwargs: torchmetrics ``Metric`` keyword arguments.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_ranges: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_ranges = int(num_ranges)
        self.add_state("changed", torch.zeros(self.num_ranges, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, masked_logits: torch.Tensor) -> None:
        ch = prediction_changes(logits, masked_logits)
        self.changed += ch.sum(1).to(self.changed.device)
        self.total += logits.shape[0]

    def compute(self) -> torch.Tensor:
        return range_importance_from_counts(self.changed, self.total)
