"""Per-unit statistics over a dataset without holding the layer in memory.

:func:`unit_quantiles` computes the NetDissect threshold, the upper-tail 0.005 quantile of all N*h*w raw values
of each unit, **exactly** (numpy's linear interpolation), streaming, vectorised over units, and identical for
any number of DDP processes:

1. global per-unit min/max (all-reduce);
2. a few rounds of a fixed-bin histogram over the interval that holds the target order statistic (all-reduce
   sum), each round narrowing the interval to one bin (1024 bins: about 10 bits of the value per round);
3. once the interval holds at most ``gather_cap`` values per unit, those values are gathered and sorted.

Each round is one read of the (rank-local) activations, typically 2-3 rounds. NetDissect-Lite and CCE use a
randomised KLL-style sketch instead (error ~0.1 %, and rank-count dependent); this is exact, so thresholds
agree with ``numpy.quantile(x, 1 - 0.005)`` bit for bit on the stored values. NetDissect-Lite reads out its
sketch at 994/999 rather than 0.995; pass ``q=994/999`` to mimic that.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

import torch
import torch.distributed as dist

__all__ = ["unit_quantiles", "store_unit_quantiles", "ChunkSource"]

#: A callable returning an iterable of (n_i, U) float tensors: the values of every unit, rank-local.
ChunkSource = Callable[[], Iterable[torch.Tensor]]


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor, op: "dist.ReduceOp") -> torch.Tensor:
    if _dist():
        dist.all_reduce(t, op=op)
    return t


def _gather_varlen(values: torch.Tensor) -> torch.Tensor:
    """Concatenate (n_r, U) tensors from every rank (pads to the largest n, then trims)."""
    if not _dist():
        return values
    n = torch.tensor([values.shape[0]], dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    m = int(max(s.item() for s in sizes))
    padded = torch.zeros(m, values.shape[1], dtype=values.dtype)
    padded[: values.shape[0]] = values
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)])


def _bin_index(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin of each value of x (n, U) for per-unit edges (U, B+1): edges[b] <= x < edges[b+1], last bin closed.

    A float estimate corrected by exact comparisons against the edges, so membership is consistent with the
    edges used to narrow the interval in the next round. Values outside [edges[0], edges[-1]] get -1.
    """
    bins = edges.shape[1] - 1
    lo, hi = edges[:, 0], edges[:, -1]
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    est = ((x - lo) / width * bins).floor().clamp_(0, bins - 1).to(torch.int64)
    unit = torch.arange(x.shape[1]).expand_as(est)
    left = edges[unit, est]
    est = est - (x < left).to(torch.int64)
    right = edges[unit, (est + 1).clamp(max=bins)]
    est = est + ((x >= right) & (est < bins - 1)).to(torch.int64)
    est = est.clamp_(0, bins - 1)
    outside = (x < lo) | (x > hi)
    return torch.where(outside, torch.full_like(est, -1), est)


@torch.no_grad()
def unit_quantiles(chunks: ChunkSource, q: float, bins: int = 1024, gather_cap: int = 4096,
                   max_rounds: int = 8) -> torch.Tensor:
    """Exact per-unit quantile ``q`` (numpy 'linear' interpolation) of all values across chunks and ranks.

    Args:
        chunks: callable returning an iterable of (n_i, U) tensors; it is called once per round and must yield
            the same values each time. Under DDP each rank passes its own shard.
        q: quantile in [0, 1] (NetDissect: ``1 - 0.005``).
        bins: histogram bins per round.
        gather_cap: stop narrowing when the interval holds at most this many values of every unit.
        max_rounds: safety bound on histogram rounds.

    Returns:
        (U,) float64 thresholds.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    # pass 0: count, min, max
    n_local, lo, hi = 0, None, None
    for c in chunks():
        c = c.to(torch.float64)
        if c.numel() == 0:
            continue
        n_local += c.shape[0]
        cmin, cmax = c.amin(0), c.amax(0)
        lo = cmin if lo is None else torch.minimum(lo, cmin)
        hi = cmax if hi is None else torch.maximum(hi, cmax)
    units = None if lo is None else lo.numel()
    meta = torch.tensor([n_local, -1 if units is None else units], dtype=torch.int64)
    counts = _all_reduce(meta[:1].clone(), dist.ReduceOp.SUM) if _dist() else meta[:1]
    n = int(counts.item())
    if units is None:  # this rank saw nothing: learn U from the others
        u_t = _all_reduce(meta[1:].clone(), dist.ReduceOp.MAX)
        units = int(u_t.item())
        lo = torch.full((units,), float("inf"), dtype=torch.float64)
        hi = torch.full((units,), float("-inf"), dtype=torch.float64)
    if n == 0:
        raise ValueError("unit_quantiles: no values")
    lo, hi = _all_reduce(lo, dist.ReduceOp.MIN), _all_reduce(hi, dist.ReduceOp.MAX)

    pos = q * (n - 1)
    k0 = int(pos)  # floor for pos >= 0
    k1 = min(k0 + 1, n - 1)
    frac = pos - k0
    # per unit: interval [lo, hi] holds the k0-th smallest value; `below` values are smaller than lo
    below = torch.zeros(units, dtype=torch.int64)
    inside = torch.full((units,), n, dtype=torch.int64)
    closed_hi = torch.ones(units, dtype=torch.bool)  # whether hi itself belongs to the interval
    steps = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    for _ in range(max_rounds):
        if int(inside.max()) <= gather_cap or bool((hi <= lo).all()):
            break
        edges = lo[:, None] + (hi - lo)[:, None] * steps[None, :]
        edges[:, -1] = hi
        hist = torch.zeros(units, bins, dtype=torch.int64)
        for c in chunks():
            c = c.to(torch.float64)
            if c.numel() == 0:
                continue
            b = _bin_index(c, edges)
            b = torch.where((c == hi) & ~closed_hi, torch.full_like(b, -1), b)
            valid = b >= 0
            flat = (torch.arange(units)[None, :] * bins + b)[valid]
            hist += torch.bincount(flat, minlength=units * bins).view(units, bins)
        hist = _all_reduce(hist, dist.ReduceOp.SUM)
        cum = torch.cumsum(hist, 1)
        target = (k0 - below)[:, None]
        sel = (cum <= target).sum(1).clamp(max=bins - 1)  # first bin whose cumulative count exceeds target
        before = torch.where(sel > 0, cum.gather(1, (sel - 1).clamp(min=0)[:, None])[:, 0], torch.zeros_like(sel))
        done = hi <= lo
        below = torch.where(done, below, below + before)
        inside = torch.where(done, inside, hist.gather(1, sel[:, None])[:, 0])
        new_lo = edges.gather(1, sel[:, None])[:, 0]
        new_hi = edges.gather(1, (sel + 1)[:, None])[:, 0]
        closed_hi = torch.where(done, closed_hi, (sel == bins - 1) & closed_hi)
        lo, hi = torch.where(done, lo, new_lo), torch.where(done, hi, new_hi)

    # final pass: gather the values inside each unit's interval, and the smallest value above it
    gathered, above_min = [], torch.full((units,), float("inf"), dtype=torch.float64)
    for c in chunks():
        c = c.to(torch.float64)
        if c.numel() == 0:
            continue
        in_int = (c >= lo) & ((c < hi) | ((c == hi) & closed_hi))
        gathered.append(torch.where(in_int, c, torch.full_like(c, float("inf"))))
        above = torch.where(c > hi, c, torch.full_like(c, float("inf")))
        if bool((c == hi).any()):
            above = torch.where((c == hi) & ~closed_hi, c, above)
        above_min = torch.minimum(above_min, above.amin(0))
    local = torch.cat(gathered) if gathered else torch.zeros(0, units, dtype=torch.float64)
    # keep at most `cap` smallest per unit locally (values outside the interval are +inf)
    cap = min(local.shape[0], int(inside.max()))
    local = local.sort(0).values[:cap]
    allv = _gather_varlen(local).sort(0).values  # (m, U); the first inside[u] are the interval's values
    above_min = _all_reduce(above_min, dist.ReduceOp.MIN)

    def order_stat(k: int) -> torch.Tensor:
        r = k - below  # rank within the interval
        take = r.clamp(0, max(allv.shape[0] - 1, 0))
        v = allv.gather(0, take[None, :])[0] if allv.shape[0] else torch.full((units,), float("inf"), dtype=torch.float64)
        beyond = r >= inside
        return torch.where(beyond, above_min, torch.where(hi <= lo, lo, v))

    v0 = order_stat(k0)
    v1 = order_stat(k1) if k1 != k0 else v0
    return v0 + (v1 - v0) * frac


@torch.no_grad()
def store_unit_quantiles(acts, q: float, units: torch.Tensor | None = None, max_elements: int = 1 << 26) -> torch.Tensor:
    """Exact per-unit quantile ``q`` (numpy 'linear') over every value of an (N, U, h, w) array (e.g. a memmap).

    Units are processed in groups small enough to hold in memory (``max_elements`` values, held once as float32
    beside the read in the storage dtype); each group is one strided read and one in-place selection of the two
    order statistics per unit (``numpy.partition``). Under DDP, give each rank a different ``units``
    subset and gather the results: the work splits and the thresholds stay exact.

    Returns:
        (len(units),) float64.
    """
    n_img, n_units = acts.shape[0], acts.shape[1]
    units = torch.arange(n_units) if units is None else torch.as_tensor(units, dtype=torch.int64)
    per_unit = n_img * int(torch.tensor(acts.shape[2:]).prod()) if len(acts.shape) > 2 else n_img
    pos = q * (per_unit - 1)
    k0 = int(pos)
    k1 = min(k0 + 1, per_unit - 1)
    frac = pos - k0
    out = torch.zeros(len(units), dtype=torch.float64)
    step = max(1, max_elements // max(per_unit, 1))
    for s in range(0, len(units), step):
        group = units[s : s + step].numpy()
        # unit-major float32 in one conversion copy (the values of a unit in any order), then the two order
        # statistics selected in place: no index array and no further copy (torch.kthvalue clones its input and
        # adds an int64 index per value, 3 times the group's float32 size)
        x = np.ascontiguousarray(np.moveaxis(acts[:, group], 1, 0), dtype=np.float32).reshape(len(group), -1)
        x.partition(sorted({k0, k1}), axis=1)
        v0 = torch.from_numpy(x[:, k0].astype(np.float64))
        v1 = torch.from_numpy(x[:, k1].astype(np.float64))
        out[s : s + step] = v0 + (v1 - v0) * frac
        del x
    return out
