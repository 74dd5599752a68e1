"""ExplanationCoverage: ``#{i: A_i ∧ L_i ≠ ∅} / #{i: A_i ≠ ∅}`` (CCE ``explanation_coverage``).

Functional twin: :mod:`lit_explain.metrics.functional.explanation_coverage`. States are summed per-sample counts, so the value
is exact under DDP.
"""

from __future__ import annotations

import torch

from lit_explain.metrics._sample_counts import SampleCountMetric

__all__ = ["ExplanationCoverage"]


class ExplanationCoverage(SampleCountMetric):
    """``#{i: A_i ∧ L_i ≠ ∅} / #{i: A_i ≠ ∅}`` (CCE ``explanation_coverage``).

    See :class:`~lit_explain.metrics._sample_counts.SampleCountMetric` for ``update``/``update_counts`` and the
    arguments. ``compute`` returns a float64 scalar, or (J,) with ``num_explanations=J``.
    """

    def compute(self) -> torch.Tensor:
        return self.all_metrics()["explanation_coverage"]
