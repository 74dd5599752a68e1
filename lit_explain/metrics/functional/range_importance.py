"""Range importance (CCE ``compute_ranges_importance.py``): how often the prediction changes when one cluster range is masked.

For each cluster index k, every activation of every selected unit that lies strictly inside that unit's k-th
range is set to 0, the rest of the network is re-run from that layer, and the score is the fraction of
images whose arg-max prediction changes. Upstream re-runs ``fc(avgpool(·))`` (ResNets only) and clones the
activations K times per batch; :func:`mask_activation_ranges` produces the K masked copies in one tensor so
the head runs once on a (K·B)-batch for any model whose tail after the layer is given.
"""

from __future__ import annotations

import torch

__all__ = ["mask_activation_ranges", "prediction_changes", "range_importance_from_counts"]


def mask_activation_ranges(acts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """K masked copies of a layer's activations.

    Args:
        acts: (B, U, h, w) activations of the layer (all its units).
        lo, hi: (U, K) range bounds per unit (strict); units not selected should carry an empty range
            (e.g. lo = +inf) so they are never masked.

    Returns:
        (K, B, U, h, w): copy k with ``lo[u, k] < a < hi[u, k]`` zeroed.
    """
    k = lo.shape[1]
    lo_ = lo.T.to(acts.dtype).reshape(k, 1, -1, 1, 1)
    hi_ = hi.T.to(acts.dtype).reshape(k, 1, -1, 1, 1)
    x = acts.unsqueeze(0)
    inside = (x > lo_) & (x < hi_)
    return torch.where(inside, torch.zeros((), dtype=acts.dtype, device=acts.device), x)


def prediction_changes(logits: torch.Tensor, masked_logits: torch.Tensor) -> torch.Tensor:
    """(K, B) bool: arg-max of ``masked_logits`` (K, B, classes) differs from that of ``logits`` (B, classes)."""
    return masked_logits.argmax(-1) != logits.argmax(-1).unsqueeze(0)


def range_importance_from_counts(changed: torch.Tensor, total: torch.Tensor | int) -> torch.Tensor:
    """(K,) fraction of images with a changed prediction, from summed counts (0 when no image was seen)."""
    changed = torch.as_tensor(changed).to(torch.float64)
    total = float(total)
    return changed / total if total > 0 else torch.zeros_like(changed)
