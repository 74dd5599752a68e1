"""Per-sample counts of an explanation against a unit bitmap: the sufficient statistics of the CCE metrics.

Every CCE metric of dissection.md §4.1 (IoU, activation / label / samples / explanation coverage, the average
mask sizes) is a function of three per-sample counts of the unit bitmap A and the explanation's mask L, both
bool (N, P) with P = sh·sw pixels per sample:

* ``act[i] = |A_i|``, ``label[i] = |L_i|``, ``overlap[i] = |A_i ∧ L_i|``.

Their dataset sums and the numbers of samples where each is non-zero are plain sums, so every metric is exact
under DDP (sum-reduced states) and can be computed batch by batch.
"""

from __future__ import annotations

import torch

__all__ = ["sample_counts", "count_sums", "COUNT_FIELDS"]

#: Names of the summed statistics, in the order of :func:`count_sums`'s last dimension.
COUNT_FIELDS = ("act", "label", "overlap", "act_where_overlap", "n_act", "n_label", "n_overlap", "n_samples")


def sample_counts(activation: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (|A_i|, |L_i|, |A_i ∧ L_i|).

    Args:
        activation: (N, ...) bool unit bitmap; every dimension after the first is a pixel dimension.
        label: (N, ...) bool explanation mask, same shape.

    Returns:
        act, label, overlap: (N,) int64 each.
    """
    if activation.shape != label.shape:
        raise ValueError(f"activation {tuple(activation.shape)} and label {tuple(label.shape)} masks differ in shape")
    a = activation.reshape(activation.shape[0], -1).bool()
    m = label.reshape(label.shape[0], -1).bool()
    return a.sum(1, dtype=torch.int64), m.sum(1, dtype=torch.int64), (a & m).sum(1, dtype=torch.int64)


def count_sums(act: torch.Tensor, label: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
    """Reduce per-sample counts (N, ...) over samples to the :data:`COUNT_FIELDS` sums (..., 8) int64."""
    act, label, overlap = (torch.as_tensor(t, dtype=torch.int64) for t in (act, label, overlap))
    hit = overlap > 0
    return torch.stack(
        [
            act.sum(0),
            label.sum(0),
            overlap.sum(0),
            (act * hit).sum(0),
            (act > 0).sum(0),
            (label > 0).sum(0),
            hit.sum(0),
            torch.full_like(act.sum(0), act.shape[0]),
        ],
        -1,
    )
