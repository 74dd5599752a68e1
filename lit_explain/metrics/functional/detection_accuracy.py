"""Detection Accuracy (Makinwa et al., AIxIA 2021; detacc-compexp): ``#{x : F(x) ∧ A(x) ≠ ∅} / #{x : F(x) ≠ ∅}``.

Image-level recall of the explanation's presence by the unit; identical to CCE's samples coverage. Used by
:func:`lit_explain.concepts.search.detacc_optimal_search` to pick a unit-optimal formula length.
"""

from __future__ import annotations

import torch

from lit_explain.metrics.functional._ratio import ratio
from lit_explain.metrics.functional.samples_coverage import samples_coverage

__all__ = ["detection_accuracy", "detection_accuracy_from_counts"]


def detection_accuracy_from_counts(overlap: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """From per-sample (N,) ``|F_i ∧ A_i|`` and ``|F_i|``; 0 when F never occurs."""
    overlap, label = torch.as_tensor(overlap), torch.as_tensor(label)
    return ratio((overlap > 0).sum(), (label > 0).sum())


def detection_accuracy(activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Detection Accuracy of bool masks (N, ...) (= :func:`samples_coverage`)."""
    return samples_coverage(activation, label)
