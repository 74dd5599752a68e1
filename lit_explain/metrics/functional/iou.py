"""IoU from counts: the one formula every dataset-level IoU of the project goes through.

``IoU = |A ∧ B| / (|A| + |B| − |A ∧ B|)``, computed from three counts (pixels, summed over a dataset or per
sample) rather than from masks, so that sparse tallies, DDP-summed states and dense references share the same
arithmetic and the same convention for an empty union: **0** (neither set has a pixel, nothing is explained).
"""

from __future__ import annotations

import torch

from lit_explain.metrics.functional._ratio import ratio

__all__ = ["iou_from_counts"]


def iou_from_counts(intersection, area_a, area_b) -> torch.Tensor:
    """Float64 IoU ``inter / (|A| + |B| − inter)``, broadcast over the three arguments; 0 where the union is 0.

    Args:
        intersection: ``|A ∧ B|`` (any shape; int or float counts).
        area_a: ``|A|``, broadcastable against ``intersection``.
        area_b: ``|B|``, broadcastable against ``intersection``.

    Returns:
        float64 tensor of the broadcast shape. Counts below 2**53 are exact in float64, so the result is the
        correctly rounded ratio of the integer counts whatever their dtype.
    """
    inter = torch.as_tensor(intersection).to(torch.float64)
    a = torch.as_tensor(area_a).to(torch.float64)
    b = torch.as_tensor(area_b).to(torch.float64)
    return ratio(inter, a + b - inter)
