"""CCE activation ranges: exact 1-D k-means against brute force, histogram path, conventions, range bitmaps."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lit_explain.activations.clusters import (
    Fp16Histogram,
    activation_ranges,
    kmeans_1d,
    kmeans_1d_batched,
    ranges_from_counts,
    unit_activation_ranges,
)


def sse(points: np.ndarray, weights: np.ndarray, labels: np.ndarray) -> float:
    total = 0.0
    for lab in np.unique(labels):
        p, w = points[labels == lab], weights[labels == lab]
        mu = (p * w).sum() / w.sum()
        total += float((w * (p - mu) ** 2).sum())
    return total


def brute_force_any_partition(points, weights, k):
    """Minimum SSE over *every* assignment of points to at most k clusters (not only contiguous ones)."""
    best = math.inf
    for labels in itertools.product(range(k), repeat=len(points)):
        best = min(best, sse(points, weights, np.asarray(labels)))
    return best


def brute_force_contiguous(points, weights, k):
    m = len(points)
    best, arg = math.inf, None
    for cuts in itertools.combinations(range(1, m), k - 1):
        labels = np.zeros(m, dtype=int)
        for c in cuts:
            labels[c:] += 1
        cost = sse(points, weights, labels)
        if cost < best - 1e-12:
            best, arg = cost, (0,) + cuts
    return best, arg


@pytest.mark.parametrize("seed", range(6))
def test_exact_kmeans_is_globally_optimal_on_small_inputs(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(3, 12))
    points = np.sort(rng.choice(np.round(rng.normal(size=40) * 3, 3), size=m, replace=False))
    weights = rng.integers(1, 6, size=m).astype(float)
    for k in (2, 3, 4):
        if k > m:
            continue
        starts, cost = kmeans_1d(torch.tensor(points), torch.tensor(weights), k)
        ref, _ = brute_force_contiguous(points, weights, k)
        assert cost == pytest.approx(ref, rel=1e-9, abs=1e-9)
        labels = np.zeros(m, dtype=int)
        for s in starts.tolist()[1:]:
            labels[s:] += 1
        assert sse(points, weights, labels) == pytest.approx(ref, rel=1e-9, abs=1e-9)
        if m <= 6:  # contiguity of optimal clusters, checked against all assignments
            assert cost == pytest.approx(brute_force_any_partition(points, weights, k), rel=1e-9, abs=1e-9)


def test_batched_equals_one_by_one_and_handles_small_sets():
    rng = np.random.default_rng(0)
    sets = [np.sort(rng.choice(1000, size=n, replace=False)).astype(float) / 7 for n in (40, 1, 3, 0, 25)]
    ws = [rng.integers(1, 4, size=len(s)).astype(float) for s in sets]
    ptr = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    starts, costs = kmeans_1d_batched(torch.tensor(np.concatenate(sets)), torch.tensor(np.concatenate(ws)),
                                      torch.tensor(ptr), 4)
    for s, w, st, c in zip(sets, ws, starts, costs):
        if len(s) == 0:
            assert st.numel() == 0
            continue
        one, cost1 = kmeans_1d(torch.tensor(s), torch.tensor(w), 4)
        assert torch.equal(one, st) and float(c) == pytest.approx(cost1, abs=1e-8)
        assert len(st) == min(4, len(s))


def test_kmeans_rejects_unsorted_values():
    with pytest.raises(ValueError, match="strictly increasing"):
        kmeans_1d(torch.tensor([1.0, 0.5, 2.0]), None, 2)


def test_ranges_follow_cce_conventions():
    # post-ReLU unit: zeros dropped, three well separated groups
    x = torch.tensor([0.0] * 50 + [1.0, 1.1, 1.2] + [5.0, 5.5] + [9.0, 9.2, 9.4], dtype=torch.float64)
    r = activation_ranges(x, k=3)
    assert r == [(1.0, 1.2), (5.0, 5.5), (9.0, 9.4)]
    # with a negative value (e.g. densenet 'features' before its ReLU) zeros are kept
    r = activation_ranges(torch.cat([x, torch.tensor([-0.5], dtype=torch.float64)]), k=3)
    assert r[0][0] == -0.5 and any(lo <= 0.0 <= hi for lo, hi in r)
    assert activation_ranges(x, k=3, drop_zeros=False)[0][0] == 0.0
    # K = 1 is NetDissect's threshold range
    assert activation_ranges(x, k=1, threshold=2.5) == [(2.5, math.inf)]
    with pytest.raises(ValueError, match="threshold"):
        activation_ranges(x, k=1)
    # fewer distinct values than K; dead unit
    assert activation_ranges(torch.tensor([0.0, 2.0, 2.0, 3.0]), k=5) == [(2.0, 2.0), (3.0, 3.0)]
    assert activation_ranges(torch.zeros(10), k=5) == []
    with pytest.raises(ValueError, match="drop_zeros"):
        activation_ranges(x, k=3, drop_zeros="yes")


def test_fp16_histogram_path_equals_unique_path():
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(40, 3, 5, 5, generator=g) * 2).half()
    hist = Fp16Histogram(3, unit_chunk=2)
    hist.update(acts[:25])
    hist.update(acts[25:])
    by_hist = hist.ranges(4)
    for u in range(3):
        vals, counts = torch.unique(acts[:, u].double().flatten(), return_counts=True)
        assert by_hist[u] == ranges_from_counts(vals, counts, 4)
        # cluster bounds are actual values of the unit, sorted and disjoint
        lows = [lo for lo, _ in by_hist[u]]
        assert lows == sorted(lows)
        for (lo1, hi1), (lo2, _) in zip(by_hist[u], by_hist[u][1:]):
            assert lo1 <= hi1 < lo2
    assert unit_activation_ranges(acts, k=4) == by_hist
    assert unit_activation_ranges(acts.float(), k=4) == by_hist
    assert unit_activation_ranges(acts, k=1, thresholds=torch.tensor([1.0, 2.0, 3.0]))[1] == [(2.0, math.inf)]


def test_exact_optimum_is_never_worse_than_sklearn_kmeans():
    """scikit-learn parity mode runs, returns sorted ranges, and never beats the exact optimum (import ~10 s)."""
    g = torch.Generator().manual_seed(1)
    acts = torch.relu(torch.randn(60, 5, 5, generator=g) * 2).half()
    vals, counts = torch.unique(acts.double().flatten(), return_counts=True)
    exact = ranges_from_counts(vals, counts, 4)
    sk = ranges_from_counts(vals, counts, 4, method="sklearn")
    assert sk == sorted(sk) and len(sk) == 4
    x = np.repeat(vals[vals > 0].numpy(), counts[vals > 0].numpy())

    def cost(ranges):
        lab = np.searchsorted([lo for lo, _ in ranges], x, side="right") - 1
        return sse(x, np.ones_like(x), lab)

    assert cost(exact) <= cost(sk) + 1e-9
