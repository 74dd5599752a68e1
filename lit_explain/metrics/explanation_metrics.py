"""ExplanationMetrics: every CCE explanation metric of one or many explanations from one set of summed states.

Functional twin: :mod:`lit_explain.metrics.functional.explanation_metrics`.
"""

from __future__ import annotations

import torch

from lit_explain.metrics._sample_counts import SampleCountMetric

__all__ = ["ExplanationMetrics"]


class ExplanationMetrics(SampleCountMetric):
    """All of iou, activation/label/samples/explanation coverage and the four average sizes.

    ``compute`` returns a dict name -> float64 tensor (scalar, or (J,) with ``num_explanations=J``); names are
    :data:`~lit_explain.metrics.functional.explanation_metrics.EXPLANATION_METRICS`.
    """

    def compute(self) -> dict[str, torch.Tensor]:
        return self.all_metrics()
