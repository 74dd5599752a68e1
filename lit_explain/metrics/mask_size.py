"""AverageMaskSize: CCE's average relative mask sizes (label, activation, overlap, overlapping activation).

Functional twin: :mod:`lit_explain.metrics.functional.mask_size`.
"""

from __future__ import annotations

import torch

from lit_explain.metrics._sample_counts import SampleCountMetric
from lit_explain.metrics.functional.mask_size import MASK_SIZE_KINDS

__all__ = ["AverageMaskSize"]


class AverageMaskSize(SampleCountMetric):
    """Mean of ``|M_i| / P`` over the samples where M is non-empty.

    Args:
        kind: which mask M: ``label`` (CCE avg_segmentation_size), ``activation``, ``overlap`` (A ∧ L) or
            ``overlapping_activation`` (A on the samples where A ∧ L ≠ ∅).
        num_explanations, pixels_per_sample, kwargs: as :class:`~lit_explain.metrics._sample_counts.SampleCountMetric`.
    """

    def __init__(self, kind: str = "label", num_explanations: int | None = None,
                 pixels_per_sample: int | None = None, **kwargs) -> None:
        if kind not in MASK_SIZE_KINDS:
            raise ValueError(f"AverageMaskSize: kind must be one of {MASK_SIZE_KINDS}, got {kind!r}")
        super().__init__(num_explanations, pixels_per_sample, **kwargs)
        self.kind = kind

    def compute(self) -> torch.Tensor:
        return self.all_metrics()[f"avg_{self.kind}_size"]
