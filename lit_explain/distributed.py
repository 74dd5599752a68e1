"""The collectives every method uses: shard work, sum, reduce, gather, across the processes of a DDP run.

Free functions over ``torch.distributed`` (no Lightning), so tensor-math modules, metrics and methods share one
copy. Without an initialised process group (one process) each is the identity or the obvious single-rank answer,
so the same code runs with 1 or N processes and gives the same result: work is split round-robin by
:func:`shard`, and the pieces come back in a fixed order (:func:`gather_objects` concatenates rank by rank),
so the merged answer never depends on the number of processes.

gloo (CPU) has no bool all-reduce or all-gather: bool tensors travel as uint8 and come back as bool.
"""

from __future__ import annotations

from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_size", "rank", "barrier", "shard", "all_sum", "all_reduce", "all_gather",
           "gather_varlen", "gather_objects", "broadcast_object"]

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard(jobs: Sequence[T]) -> list[T]:
    """This process's share of ``jobs``, round-robin (job i goes to rank i mod W)."""
    return list(jobs)[rank() :: world_size()]


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """A reduced copy of ``t`` over all processes (``op``: sum, min or max); ``t`` itself is left unchanged."""
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    if op not in ops:
        raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}")
    if not is_distributed():
        return t.clone()
    is_bool = t.dtype == torch.bool
    out = t.to(torch.uint8) if is_bool else t.clone()
    dist.all_reduce(out, op=ops[op])
    return out.bool() if is_bool else out


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over all processes (a copy)."""
    return all_reduce(t, "sum")


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """(W, *t.shape): ``t`` of every process stacked in rank order (same shape on every rank)."""
    if not is_distributed():
        return t[None].clone()
    is_bool = t.dtype == torch.bool
    src = (t.to(torch.uint8) if is_bool else t).contiguous()
    parts = [torch.empty_like(src) for _ in range(world_size())]
    dist.all_gather(parts, src)
    out = torch.stack(parts)
    return out.bool() if is_bool else out


def gather_varlen(values: torch.Tensor) -> torch.Tensor:
    """Concatenate (n_r, ...) tensors of every process in rank order (the n_r may differ)."""
    if not is_distributed():
        return values
    sizes = all_gather(torch.tensor([values.shape[0]], dtype=torch.int64)).flatten().tolist()
    m = max(sizes)
    padded = values.new_zeros((m, *values.shape[1:]))
    padded[: values.shape[0]] = values
    stacked = all_gather(padded)
    return torch.cat([stacked[r, :n] for r, n in enumerate(sizes)])


def gather_objects(items: Sequence[T]) -> list[T]:
    """Every process's list of picklable items, concatenated in rank order, on every process."""
    if not is_distributed():
        return list(items)
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, list(items))
    return [x for p in parts for x in p]


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of process ``src`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
