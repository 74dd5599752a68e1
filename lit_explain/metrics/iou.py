"""ExplanationIoU: Dataset-level IoU of the explanation with the unit bitmap (CCE ``iou``).

Functional twin: :mod:`lit_explain.metrics.functional.iou`. States are summed per-sample counts, so the value
is exact under DDP.
"""

from __future__ import annotations

import torch

from lit_explain.metrics._sample_counts import SampleCountMetric

__all__ = ["ExplanationIoU"]


class ExplanationIoU(SampleCountMetric):
    """Dataset-level IoU of the explanation with the unit bitmap (CCE ``iou``).

    See :class:`~lit_explain.metrics._sample_counts.SampleCountMetric` for ``update``/``update_counts`` and the
    arguments. ``compute`` returns a float64 scalar, or (J,) with ``num_explanations=J``.
    """

    def compute(self) -> torch.Tensor:
        return self.all_metrics()["iou"]
