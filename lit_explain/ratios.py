"""Ratios of counts with the project's conventions: the safe ratio and the one IoU-from-counts.

Every dataset-level IoU of the project (NetDissect's tally, the compositional searches and their heuristics,
the explanation metrics, LaViSE's ground truth) is ``|A ∧ B| / (|A| + |B| − |A ∧ B|)`` computed from three
counts rather than from masks, so sparse tallies, DDP-summed states and dense references share the same
arithmetic and the same convention for an empty union: **0** (neither set has a pixel, nothing is explained).
A module of its own at the bottom of the house (it imports only torch), so the concept searches and the
metrics use the same function without importing each other.
"""

from __future__ import annotations

import torch

__all__ = ["ratio", "iou_from_counts"]


def ratio(num, den) -> torch.Tensor:
    """Float64 ``num / den``, broadcast, 0 where ``den`` is 0 (a metric of nothing is 0, not NaN)."""
    num = torch.as_tensor(num).to(torch.float64)
    den = torch.as_tensor(den).to(torch.float64)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def iou_from_counts(intersection, area_a, area_b) -> torch.Tensor:
    """Float64 IoU ``inter / (|A| + |B| − inter)``, broadcast over the three arguments; 0 where the union is 0.

    Args:
        intersection: ``|A ∧ B|`` (any shape; int or float counts).
        area_a: ``|A|``, broadcastable against ``intersection``.
        area_b: ``|B|``, broadcastable against ``intersection``.

    Returns:
        float64 tensor of the broadcast shape. Counts below 2**53 are exact in float64, so the result is the
        correctly rounded ratio of the integer counts whatever their dtype (and symmetric in A and B).
    """
    inter = torch.as_tensor(intersection).to(torch.float64)
    a = torch.as_tensor(area_a).to(torch.float64)
    b = torch.as_tensor(area_b).to(torch.float64)
    return ratio(inter, a + b - inter)
