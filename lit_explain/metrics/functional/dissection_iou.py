"""Dataset-level IoU between unit bitmaps and concept masks (NetDissect), as plain tensor math.

``IoU[u, c] = sum_x |A_u(x) & M_c(x)| / sum_x |A_u(x) | M_c(x)|``: one ratio of dataset totals (not a mean of
per-image IoUs). With ``unit_category_area`` the union uses NetDissect-Lite's category-restricted activation
area: the unit's active pixels counted only on images where the concept's category occurs under the activation.
"""

from __future__ import annotations

import torch

from lit_explain.ratios import iou_from_counts

__all__ = ["dissection_iou"]


def dissection_iou(intersection: torch.Tensor, unit_area: torch.Tensor, concept_area: torch.Tensor,
                   unit_category_area: torch.Tensor | None = None,
                   concept_category: torch.Tensor | None = None) -> torch.Tensor:
    """IoU of every unit with every concept from dataset totals.

    Args:
        intersection: (U, C) summed ``|A_u & M_c|``.
        unit_area: (U,) summed ``|A_u|``.
        concept_area: (C,) summed ``|M_c|``.
        unit_category_area: optional (U, K) category-restricted unit areas (NetDissect-Lite ``Ucat``).
        concept_category: (C,) category code of each concept, required with ``unit_category_area``.

    Returns:
        (U, C) float64 IoU; 0 where the union is empty.
    """
    if unit_category_area is not None:
        if concept_category is None:
            raise ValueError("concept_category is required with unit_category_area")
        act = unit_category_area[:, concept_category]
    else:
        act = unit_area[:, None]
    return iou_from_counts(intersection, act, concept_area[None, :])
