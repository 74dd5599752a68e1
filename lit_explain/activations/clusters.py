"""CCE activation ranges: exact 1-D k-means of each unit's raw activations.

Clustered Compositional Explanations split the scalar activations of a unit, pooled over every image and
position at the layer's own resolution (not upsampled), into K clusters (K = 5 by default) and explain every
cluster range ``[min, max]`` separately. Upstream runs scikit-learn ``KMeans(random_state=0)`` on about a million
values per unit, which is slow and depends on the scikit-learn version (``n_init`` changed in 1.4).

Here the clustering is **exact**: in one dimension the optimal k-means clusters are contiguous runs of the
sorted values, so the optimum is found by dynamic programming over the distinct values with their counts
(``D[t][j] = min_i D[t−1][i−1] + cost(i, j)``, cost = within-run sum of squares from prefix sums). The optimal split
point is monotone in j (the cost satisfies the quadrangle inequality; Wu 1991, Grønlund et al. 2017), so each
of the K layers is solved by divide and conquer in O(m log m) for m distinct values, vectorised over all
sub-problems of a recursion level (about log2(m) tensor steps per layer). The result is the global minimum of
the k-means objective, deterministic, independent of any library version.

Stored activations are float16 (:mod:`lit_explain.activations.store`), so a unit has at most 65,536 distinct
values: :class:`Fp16Histogram` counts them per unit with one bincount per batch (vectorised over units, a sum
state that is exact under DDP), and the DP then runs on at most 63,488 finite points per unit, whatever the
dataset size. Other dtypes go through ``torch.unique``.

Conventions (CCE): exact zeros are dropped when every value is ≥ 0 (post-ReLU layers; ``drop_zeros="auto"``);
ranges are ``(min, max)`` of each cluster, sorted ascending; bitmaps are ``lo < upsampled < hi``
(:func:`lit_explain.activations.bitmaps.unit_bitmaps`; strict, so each
cluster's own min and max and any upsampled value between two clusters are outside every range); K = 1 is
NetDissect's single range ``(thr, +inf)`` with the caller's quantile threshold. Non-finite values are ignored.
With fewer distinct values than K, each distinct value is its own cluster (fewer ranges).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from lit_explain import distributed

__all__ = [
    "kmeans_1d",
    "ranges_from_counts",
    "activation_ranges",
    "unit_activation_ranges",
    "Fp16Histogram",
    "cached_unit_ranges",
    "CLUSTER_METHODS",
]


# ---------------------------------------------------------------------- exact weighted 1-D k-means
def kmeans_1d_batched(
    values: torch.Tensor, weights: torch.Tensor, ptr: torch.Tensor, k: int = 5
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Globally optimal k-means of several independent weighted point sets on a line, solved together.

    The sets are concatenated (set u is ``values[ptr[u]:ptr[u+1]]``); every divide-and-conquer level of every
    DP layer processes all sets in the same tensor operations, so the number of Python steps is about
    ``(k − 1)·log2(max m)`` whatever the number of sets.

    Args:
        values: (M,) float values; strictly increasing within each set.
        weights: (M,) positive weights (counts).
        ptr: (U+1,) int64 set boundaries.
        k: clusters per set; ``min(k, m_u)`` for a set of m_u points.

    Returns:
        starts: per set, (k_u,) int64 local index of the first value of each cluster (ascending, from 0);
        costs: (U,) float64 minimal within-cluster sums of squares.
    """
    x = torch.as_tensor(values, dtype=torch.float64).flatten().numpy()
    w = torch.as_tensor(weights, dtype=torch.float64).flatten().numpy()
    ptr = torch.as_tensor(ptr, dtype=torch.int64).numpy()
    n_sets = len(ptr) - 1
    sizes = ptr[1:] - ptr[:-1]
    total = x.size
    if total == 0:
        return [torch.zeros(0, dtype=torch.int64) for _ in range(n_sets)], torch.zeros(n_sets, dtype=torch.float64)
    # numpy: its fancy indexing is several times faster than torch's for these 1-D gathers
    owner = np.repeat(np.arange(n_sets), sizes)
    same = owner[1:] == owner[:-1]
    if bool((x[1:][same] <= x[:-1][same]).any()):
        raise ValueError("kmeans_1d: values must be strictly increasing (pass distinct sorted values with counts)")
    wsum = np.bincount(owner, weights=w, minlength=n_sets)
    mean = np.bincount(owner, weights=w * x, minlength=n_sets) / np.maximum(wsum, 1e-300)
    xc = x - mean[owner]  # centring keeps the prefix sums well conditioned
    W = np.concatenate([[0.0], np.cumsum(w)])
    S1 = np.concatenate([[0.0], np.cumsum(w * xc)])
    S2 = np.concatenate([[0.0], np.cumsum(w * xc * xc)])

    def cost(i: np.ndarray, j: np.ndarray) -> np.ndarray:  # run i..j inclusive (global indices)
        ww = W[j + 1] - W[i]
        s1 = S1[j + 1] - S1[i]
        return np.maximum((S2[j + 1] - S2[i]) - s1 * s1 / ww, 0.0)

    k = max(1, int(k))
    starts_g = ptr[:-1]
    prev = cost(starts_g[owner], np.arange(total))  # D[1][j]
    opts: list[np.ndarray] = []
    big = np.iinfo(np.int64).max
    for t in range(2, k + 1):  # layer t: the last run starts at i in [start + t - 1, j]
        cur = prev.copy()
        opt = np.zeros(total, dtype=np.int64)
        active = sizes >= t
        jl = (starts_g + t - 1)[active]
        jh = (ptr[1:] - 1)[active]
        il, ih = jl.copy(), jh.copy()
        while jl.size:
            mid = (jl + jh) // 2
            counts = np.minimum(ih, mid) - il + 1  # >= 1: il <= mid by construction
            first_pos = np.cumsum(counts) - counts
            seg = np.repeat(np.arange(mid.size), counts)
            i = il[seg] + (np.arange(int(counts.sum())) - first_pos[seg])
            vals = prev[i - 1] + cost(i, mid[seg])
            best = np.minimum.reduceat(vals, first_pos)
            # leftmost minimiser: keeps the split points monotone
            first = np.minimum.reduceat(np.where(vals <= best[seg], i, big), first_pos)
            cur[mid] = best
            opt[mid] = first
            left = jl <= mid - 1
            right = mid + 1 <= jh
            jl, jh, il, ih = (
                np.concatenate([jl[left], mid[right] + 1]),
                np.concatenate([mid[left] - 1, jh[right]]),
                np.concatenate([il[left], first[right]]),
                np.concatenate([first[left], ih[right]]),
            )
        opts.append(opt)
        prev = cur  # entries j < start + t - 1 keep stale values; layer t + 1 never reads them
    out: list[torch.Tensor] = []
    costs = torch.zeros(n_sets, dtype=torch.float64)
    # backtrack the split points of each set; its cost is recomputed from its runs
    for u in range(n_sets):
        m = int(sizes[u])
        if m == 0:
            out.append(torch.zeros(0, dtype=torch.int64))
            continue
        ku = min(k, m)
        s0 = int(starts_g[u])
        st = [0] * ku
        j = s0 + m - 1
        for t in range(ku, 1, -1):
            i = int(opts[t - 2][j])
            st[t - 1] = i - s0
            j = i - 1
        starts_u = np.asarray(st, dtype=np.int64)
        ends_u = np.concatenate([starts_u[1:] - 1, [m - 1]])
        costs[u] = float(cost(starts_u + s0, ends_u + s0).sum())
        out.append(torch.from_numpy(starts_u))
    return out, costs


def kmeans_1d(values: torch.Tensor, weights: torch.Tensor | None = None, k: int = 5) -> tuple[torch.Tensor, float]:
    """Globally optimal k-means of weighted points on a line (one set; see :func:`kmeans_1d_batched`).

    Args:
        values: (m,) strictly increasing float values (distinct values, sorted).
        weights: (m,) positive counts (default 1).
        k: number of clusters; ``min(k, m)`` are returned.

    Returns:
        starts: (k',) int64 index of the first value of each cluster (ascending, ``starts[0] == 0``);
        cost: the minimal within-cluster sum of squares.
    """
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    w = torch.ones_like(x) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    starts, costs = kmeans_1d_batched(x, w, torch.tensor([0, x.numel()]), k)
    return starts[0], float(costs[0])


def _drop_zeros(values: torch.Tensor, counts: torch.Tensor, drop_zeros: bool | str) -> tuple[torch.Tensor, torch.Tensor]:
    if drop_zeros == "auto":
        drop = bool(values.numel()) and float(values[0]) >= 0  # values sorted: all >= 0
    elif isinstance(drop_zeros, bool):
        drop = drop_zeros
    else:
        raise ValueError(f"drop_zeros must be True, False or 'auto', got {drop_zeros!r}")
    if drop:
        keep = values != 0
        values, counts = values[keep], counts[keep]
    return values, counts


def ranges_from_counts(
    values: torch.Tensor,
    counts: torch.Tensor,
    k: int = 5,
    drop_zeros: bool | str = "auto",
    method: str = "exact",
    n_init: int | str = 10,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """Cluster ranges of one unit from its distinct values (sorted ascending) and their counts.

    Args:
        values: (m,) distinct finite values, ascending.
        counts: (m,) occurrences of each.
        k: number of clusters (>= 2 here; K = 1 is the NetDissect threshold, see :func:`activation_ranges`).
        drop_zeros: drop exact zeros: ``"auto"`` when every value is >= 0 (CCE), or True/False.
        method: ``exact`` (the DP of the module docstring) or ``sklearn`` (``KMeans(n_clusters=k,
            random_state=seed, n_init=n_init)`` on the expanded raw values, CCE's parity mode).

    Returns:
        Sorted list of ``(lo, hi)`` (cluster min and max), at most k of them; empty for a unit with no values.
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    counts = torch.as_tensor(counts, dtype=torch.int64)
    values, counts = _drop_zeros(values, counts, drop_zeros)
    m = values.numel()
    if m == 0:
        return []
    return _cluster_method(method)([(values, counts)], k, n_init, seed)[0]


def _sklearn_ranges(sets: list[tuple[torch.Tensor, torch.Tensor]], k: int, n_init: int | str = 10,
                    seed: int = 0) -> list[list[tuple[float, float]]]:
    """CCE's parity mode: ``KMeans(n_clusters=k, random_state=seed, n_init=n_init)`` on each set's raw values."""
    from sklearn.cluster import KMeans

    out = []
    for values, counts in sets:
        if values.numel() == 0:
            out.append([])
            continue
        raw = np.repeat(values.numpy(), counts.numpy())
        n_clusters = min(int(k), values.numel())
        km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init).fit(raw[:, None])
        ranges = []
        for lab in range(n_clusters):
            sel = raw[km.labels_ == lab]
            if sel.size:
                ranges.append((float(sel.min()), float(sel.max())))
        out.append(sorted(ranges))
    return out


def _cluster_method(method: str):
    if method not in CLUSTER_METHODS:
        raise ValueError(f"method must be one of {list(CLUSTER_METHODS)}, got {method!r}")
    return CLUSTER_METHODS[method]


def _exact_ranges(sets: list[tuple[torch.Tensor, torch.Tensor]], k: int, n_init: int | str = 10,
                  seed: int = 0) -> list[list[tuple[float, float]]]:
    """Exact ranges of several (values, counts) sets in one batched DP (``n_init`` and ``seed`` are unused: the
    optimum is unique)."""
    sizes = torch.tensor([len(v) for v, _ in sets], dtype=torch.int64)
    ptr = torch.zeros(len(sets) + 1, dtype=torch.int64)
    ptr[1:] = torch.cumsum(sizes, 0)
    if int(ptr[-1]) == 0:
        return [[] for _ in sets]
    vals = torch.cat([v.to(torch.float64) for v, _ in sets])
    cnts = torch.cat([c.to(torch.float64) for _, c in sets])
    starts, _ = kmeans_1d_batched(vals, cnts, ptr, k)
    out = []
    for (v, _), st in zip(sets, starts):
        if len(v) == 0:
            out.append([])
            continue
        ends = torch.cat([st[1:] - 1, torch.tensor([len(v) - 1])])
        out.append([(float(v[a]), float(v[b])) for a, b in zip(st.tolist(), ends.tolist())])
    return out


def activation_ranges(
    acts: torch.Tensor,
    k: int = 5,
    threshold: float | None = None,
    drop_zeros: bool | str = "auto",
    method: str = "exact",
    n_init: int | str = 10,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """Cluster ranges of one unit's raw activations (any shape, e.g. (N, h, w)).

    Args:
        acts: the unit's activations at the layer resolution.
        k: number of clusters; 1 returns ``[(threshold, inf)]`` (NetDissect / CoEx).
        threshold: the unit's NetDissect quantile threshold (required for k = 1).
        drop_zeros, method, n_init, seed: see :func:`ranges_from_counts`.
    """
    if k == 1:
        if threshold is None:
            raise ValueError("activation_ranges: k=1 is NetDissect's (thr, +inf) range; pass the unit's threshold")
        return [(float(threshold), math.inf)]
    x = torch.as_tensor(acts).flatten()
    x = x[torch.isfinite(x)]
    if x.dtype == torch.float16:
        hist = Fp16Histogram(1)
        hist.update(x.view(-1, 1))
        return hist.ranges(k, drop_zeros=drop_zeros, method=method, n_init=n_init, seed=seed)[0]
    values, counts = torch.unique(x.to(torch.float64), sorted=True, return_counts=True)
    return ranges_from_counts(values, counts, k, drop_zeros, method, n_init, seed)


# ---------------------------------------------------------------------- float16 histograms (vectorised over units)
def _fp16_table() -> tuple[torch.Tensor, torch.Tensor]:
    """(order, values): the finite float16 bit patterns sorted by value, and those values (float64).

    -0.0 is left out: :meth:`Fp16Histogram.update` folds its count into +0.0.
    """
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    vals = bits.view(torch.float16).to(torch.float64)
    ok = torch.isfinite(vals) & ~((vals == 0) & (torch.arange(65536) == 0x8000))
    idx = torch.nonzero(ok).flatten()
    order = idx[torch.argsort(vals[idx], stable=True)]
    return order, vals[order]


_FP16_ORDER, _FP16_VALUES = _fp16_table()


class Fp16Histogram:
    """Exact per-unit counts of every float16 activation value (the sufficient statistic of 1-D k-means).

    ``counts`` is a (U, 65536) int64 tensor indexed by bit pattern; it is a plain sum over batches, so it can
    be all-reduced across DDP ranks (``torch.distributed.all_reduce(hist.counts)``) to give the same ranges
    as one process.

    Args:
        num_units: U.
        unit_chunk: units per bincount call (bounds the temporary bin array to unit_chunk·65536 int64).
    """

    def __init__(self, num_units: int, unit_chunk: int = 32) -> None:
        self.num_units = int(num_units)
        self.unit_chunk = max(1, int(unit_chunk))
        self.counts = torch.zeros(self.num_units, 65536, dtype=torch.int64)

    def update(self, acts: torch.Tensor) -> None:
        """Add a batch of activations (B, U, ...) (converted to float16, i.e. the stored values)."""
        if acts.shape[1] != self.num_units:
            raise ValueError(f"Fp16Histogram: expected {self.num_units} units in dim 1, got shape {tuple(acts.shape)}")
        x = acts.detach().to(torch.float16).cpu().reshape(acts.shape[0], self.num_units, -1)
        for u0 in range(0, self.num_units, self.unit_chunk):
            blk = x[:, u0 : u0 + self.unit_chunk]
            nu = blk.shape[1]
            bits = blk.view(torch.int16).to(torch.int64) & 0xFFFF  # (B, nu, P)
            key = (torch.arange(nu).view(1, nu, 1) * 65536 + bits).reshape(-1)
            self.counts[u0 : u0 + nu] += torch.bincount(key, minlength=nu * 65536).view(nu, 65536)
        # fold -0.0 into +0.0 (both are exact zeros)
        self.counts[:, 0] += self.counts[:, 0x8000]
        self.counts[:, 0x8000] = 0

    def values_and_counts(self, unit: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct finite values of one unit (ascending, float64) and their counts."""
        c = self.counts[unit, _FP16_ORDER]
        nz = c > 0
        return _FP16_VALUES[nz], c[nz]

    def ranges(
        self,
        k: int = 5,
        drop_zeros: bool | str = "auto",
        method: str = "exact",
        n_init: int | str = 10,
        seed: int = 0,
        units: Sequence[int] | None = None,
    ) -> list[list[tuple[float, float]]]:
        """Cluster ranges per unit (all units, or the given ones), see :func:`ranges_from_counts`."""
        units = list(range(self.num_units) if units is None else units)
        sets = [_drop_zeros(*self.values_and_counts(int(u)), drop_zeros) for u in units]
        return _cluster_method(method)(sets, k, n_init, seed)  # exact: one batched DP for all units


def unit_activation_ranges(
    acts: torch.Tensor,
    k: int = 5,
    thresholds: torch.Tensor | None = None,
    drop_zeros: bool | str = "auto",
    method: str = "exact",
    n_init: int | str = 10,
    seed: int = 0,
    image_chunk: int = 1024,
) -> list[list[tuple[float, float]]]:
    """Cluster ranges of every unit of a layer's activations (N, U, h, w) (a tensor or a float16 memmap).

    Float16 input is histogrammed in image chunks (no per-unit copy of the layer); other dtypes are clustered
    unit by unit on their distinct values. K = 1 returns ``[(thresholds[u], inf)]`` per unit.
    """
    n, u = acts.shape[0], acts.shape[1]
    if k == 1:
        if thresholds is None:
            raise ValueError("unit_activation_ranges: k=1 needs the per-unit NetDissect thresholds")
        return [[(float(t), math.inf)] for t in torch.as_tensor(thresholds).flatten().tolist()]
    dtype = acts.dtype if isinstance(acts, torch.Tensor) else torch.from_numpy(np.asarray(acts[:1])).dtype
    if dtype == torch.float16:
        hist = Fp16Histogram(u)
        for s in range(0, n, image_chunk):
            hist.update(torch.as_tensor(np.asarray(acts[s : s + image_chunk])))
        return hist.ranges(k, drop_zeros, method, n_init, seed)
    return [
        activation_ranges(torch.as_tensor(np.asarray(acts[:, j])), k, None, drop_zeros, method, n_init, seed)
        for j in range(u)
    ]


def cached_unit_ranges(
    entry,
    image_ids: torch.Tensor,
    units: torch.Tensor,
    thresholds: torch.Tensor,
    k: int,
    drop_zeros: bool | str = "auto",
    method: str = "exact",
    seed: int = 0,
) -> list[list[tuple[float, float]]]:
    """Sorted (lo, hi) ranges of selected units of an activation cache, identical on every DDP process.

    ``k = 1``: NetDissect's single range ``(threshold, +inf)`` per unit. Otherwise the k clusters of all the
    unit's cached values: for a float16 cache each process histograms its own images (``image_ids``), the
    histograms are summed across processes (the sufficient statistic, so 1 and N processes cluster
    identically) and each process clusters its round-robin share of the units; other dtypes cluster each unit's
    distinct values read from the whole cache. The shares are gathered, so every process returns all units.

    Args:
        entry: an :class:`~lit_explain.activations.store.ActivationEntry` (``acts`` (N, U_all, h, w)).
        image_ids: (B,) this process's images.
        units: (U,) unit indices into the entry.
        thresholds: (U,) the units' thresholds (``k = 1`` only).
        k, drop_zeros, method, seed: as :func:`activation_ranges`.
    """
    if k == 1:
        return [[(float(t), math.inf)] for t in thresholds.tolist()]
    units_np = torch.as_tensor(units).numpy()
    mine = distributed.shard(list(range(len(units_np))))
    if entry.acts.dtype == np.float16:
        hist = Fp16Histogram(len(units_np))
        for chunk in torch.as_tensor(image_ids, dtype=torch.int64).split(256):
            hist.update(torch.from_numpy(np.asarray(entry.acts[chunk.numpy()][:, units_np])))
        hist.counts = distributed.all_sum(hist.counts)
        part = hist.ranges(k, drop_zeros, method, seed=seed, units=mine)
    else:  # float32 cache: cluster each of this process's units on its distinct values
        part = [activation_ranges(torch.from_numpy(np.asarray(entry.acts[:, int(units_np[j])])), k, None,
                                  drop_zeros, method, seed=seed) for j in mine]
    got = dict(distributed.gather_objects(list(zip(mine, part))))
    return [got[j] for j in range(len(units_np))]


#: Registry of the clustering methods: name -> (sets of (values, counts), k, n_init, seed) -> ranges per set.
CLUSTER_METHODS = {"exact": _exact_ranges, "sklearn": _sklearn_ranges}
