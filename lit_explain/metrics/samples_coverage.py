"""SamplesCoverage: ``#{i: A_i ∧ L_i ≠ ∅} / #{i: L_i ≠ ∅}`` (CCE; equals Makinwa et al.'s Detection Accuracy).

Functional twin: :mod:`lit_explain.metrics.functional.samples_coverage`. States are summed per-sample counts, so the value
is exact under DDP.
"""

from __future__ import annotations

import torch

from lit_explain.metrics._sample_counts import SampleCountMetric

__all__ = ["SamplesCoverage"]


class SamplesCoverage(SampleCountMetric):
    """``#{i: A_i ∧ L_i ≠ ∅} / #{i: L_i ≠ ∅}`` (CCE; equals Makinwa et al.'s Detection Accuracy).

    See :class:`~lit_explain.metrics._sample_counts.SampleCountMetric` for ``update``/``update_counts`` and the
    arguments. ``compute`` returns a float64 scalar, or (J,) with ``num_explanations=J``.
    """

    def compute(self) -> torch.Tensor:
        return self.all_metrics()["samples_coverage"]
