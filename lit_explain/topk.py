"""The one streaming top-k merge: keep the k best candidates per row as batches (or processes) arrive.

Used by LaViSE's filter ranking tests and the NMF prototypes' top cells; a candidate is a (value, index) pair,
and ties go to the smaller index, so the result never depends on the order candidates arrive in (batch size,
DDP rank order). Written here rather than with ``torch.topk`` alone because topk's choice among equal values is
unspecified, which would make 1- and 2-process results differ.
"""

from __future__ import annotations

import torch

__all__ = ["merge_topk"]


def merge_topk(
    values: torch.Tensor, index: torch.Tensor, new_values: torch.Tensor, new_index: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k largest values per row among old and new candidates; ties go to the smaller index.

    The tie rule makes the result independent of the order in which candidates arrive (batches, DDP ranks).

    Args:
        values, index: (U, a) current candidates (pad with ``-inf`` / -1).
        new_values, new_index: (U, b) new candidates.
        k: how many to keep.

    Returns:
        (values (U, k), index (U, k)), sorted by value descending then index ascending.
    """
    v = torch.cat([values, new_values.to(values.dtype)], 1)
    i = torch.cat([index, new_index.to(index.dtype)], 1)
    # sort by index (padding -1 last), then stable sort by value: equal values keep ascending index order
    pad = i < 0
    key = torch.where(pad, torch.full_like(i, torch.iinfo(i.dtype).max), i)
    order = torch.argsort(key, dim=1, stable=True)
    v, i = v.gather(1, order), i.gather(1, order)
    order = torch.argsort(v, dim=1, descending=True, stable=True)
    v, i = v.gather(1, order)[:, :k], i.gather(1, order)[:, :k]
    if v.shape[1] < k:
        v = torch.cat([v, v.new_full((v.shape[0], k - v.shape[1]), float("-inf"))], 1)
        i = torch.cat([i, i.new_full((i.shape[0], k - i.shape[1]), -1)], 1)
    return v, i
