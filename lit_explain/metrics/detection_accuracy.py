"""DetectionAccuracy (Makinwa et al., detacc-compexp): image-level recall of the explanation's presence.

Identical to :class:`~lit_explain.metrics.samples_coverage.SamplesCoverage`; kept under its own name because
the two literatures use different words. Functional twin: :mod:`lit_explain.metrics.functional.detection_accuracy`.
"""

from __future__ import annotations

from lit_explain.metrics.samples_coverage import SamplesCoverage

__all__ = ["DetectionAccuracy"]


class DetectionAccuracy(SamplesCoverage):
    """``#{x : F(x) ∧ A(x) ≠ ∅} / #{x : F(x) ≠ ∅}`` (same states and arguments as SamplesCoverage)."""
