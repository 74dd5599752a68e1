"""Recall@k of filter explanations: hand-worked examples, brute-force references, DDP exactness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_explain.metrics.functional.recall import (
    activation_regions,
    iou_ground_truth,
    mask_iou,
    recall_at_k,
    tail_quantile,
    tail_size,
)
from lit_explain.metrics.recall import RecallAtK
from tests.helpers.ddp import run_distributed


# ------------------------------------------------------------------------------------------------ threshold
@pytest.mark.parametrize("n", [1, 2, 7, 199, 200, 201, 1000, 4321])
def test_tail_quantile_equals_numpy_on_all_values(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, n, generator=g, dtype=torch.float64)
    x[1, : n // 2] = 0.0  # many ties, as after a ReLU
    m = tail_size(n, 0.995)
    top = x.sort(1, descending=True).values[:, :m]
    got = tail_quantile(top, n, 0.995)
    ref = np.quantile(x.numpy(), 0.995, axis=1)  # numpy 'linear', computed on every value
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12)


def test_tail_quantile_is_the_upper_tail_not_the_reproduction_bug():
    x = torch.arange(1000, dtype=torch.float64)[None]  # 0..999
    t = tail_quantile(x.flip(1)[:, : tail_size(1000)], 1000, 0.995)
    # 99.5th percentile of 0..999 is 994.005 (linear); the reproduction's quantile(., 0.005) would give 4.995
    assert t.item() == pytest.approx(994.005)
    assert (x > t).sum().item() == 5  # P(a > T) = 0.005


def test_tail_quantile_needs_enough_values():
    with pytest.raises(ValueError, match="largest"):
        tail_quantile(torch.zeros(1, 2), 1000, 0.995)


# ------------------------------------------------------------------------------------------------ IoU and GT
def test_mask_iou_hand_worked():
    r = torch.zeros(1, 4, 4, dtype=torch.bool)
    r[0, :2, :2] = True  # 4 pixels
    m = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    m[0, 0, :2, :] = True  # 8 pixels, overlap 4 -> 4/8
    m[0, 1, 3, 3] = True  # disjoint -> 0
    # mask 2 empty (padding) -> 0
    np.testing.assert_allclose(mask_iou(r, m).numpy(), [[0.5, 0.0, 0.0]])


def test_activation_regions_bilinear_align_corners_false():
    a = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])  # right column active
    reg = activation_regions(a, torch.tensor([0.5]), (4, 4))
    # align_corners=False: upsampled columns are 0, .25, .75, 1 -> columns 2 and 3 exceed 0.5
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, :, 2:] = True
    assert torch.equal(reg, expected)


def test_iou_ground_truth_against_dense_loop():
    g = torch.Generator().manual_seed(0)
    P, M, K, S = 6, 4, 5, 8
    acts = torch.rand(P, 4, 4, generator=g)
    thr = torch.full((P,), 0.6)
    masks = torch.rand(P, M, S, S, generator=g) > 0.7
    labels = torch.randint(0, K, (P, M), generator=g)
    labels[:, -1] = -1  # padding
    masks[:, -1] = True  # padding masks must be ignored even when non-empty
    got = iou_ground_truth(acts, thr, masks, labels, K, 0.04)
    up = torch.nn.functional.interpolate(acts[:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    ref = torch.zeros(P, K, dtype=torch.bool)
    for p in range(P):
        region = up[p] > thr[p]
        for j in range(M):
            if labels[p, j] < 0:
                continue
            inter = (region & masks[p, j]).sum().item()
            union = (region | masks[p, j]).sum().item()
            if union and inter / union > 0.04:
                ref[p, labels[p, j]] = True
    assert torch.equal(got, ref)
    assert ref.any() and not ref.all()


def test_iou_threshold_is_strict():
    acts = torch.zeros(1, 2, 2)
    acts[0, 0, 0] = 1.0
    masks = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    masks[0, 0, 0, :] = True  # IoU = 1/2
    assert iou_ground_truth(acts, torch.tensor([0.5]), masks, torch.tensor([[0]]), 1, 0.5).sum() == 0
    assert iou_ground_truth(acts, torch.tensor([0.5]), masks, torch.tensor([[0]]), 1, 0.49).sum() == 1


# ------------------------------------------------------------------------------------------------ recall
def _hand_example():
    """Three pairs over K=4 categories; seen = {0, 1}."""
    topk = torch.tensor([
        [0, 2, -1, 3],  # G = {0, 3}: @1 hits {0} -> 1/2; @2 -> 1/2; @4 -> 2/2
        [1, 1, 1, 1],  # G = {2}: never -> 0 (repeated category counts once)
        [3, 2, 1, 0],  # G = {} -> ignored
    ])
    gt = torch.tensor([[1, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    seen = torch.tensor([True, True, False, False])
    return topk, gt, seen


def test_recall_at_k_hand_worked():
    topk, gt, seen = _hand_example()
    r = recall_at_k(topk, gt, ks=(1, 2, 4), seen=seen)
    assert r["pairs"] == 2
    assert r["recall@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert r["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert r["recall@4"] == pytest.approx((1.0 + 0.0) / 2)
    # seen: only pair 0 has a seen GT ({0}); found at rank 1
    assert r["pairs/seen"] == 1 and r["recall@1/seen"] == pytest.approx(1.0)
    # unseen: pair 0 G={3} (found at rank 4), pair 1 G={2} (never)
    assert r["pairs/unseen"] == 2
    assert r["recall@2/unseen"] == pytest.approx(0.0)
    assert r["recall@4/unseen"] == pytest.approx(0.5)


def test_recall_without_ground_truth_is_nan():
    r = recall_at_k(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool), ks=(5,))
    assert r["pairs"] == 0 and math.isnan(r["recall@5"])


def test_recall_brute_force_random():
    g = torch.Generator().manual_seed(3)
    P, K = 50, 12
    topk = torch.randint(-1, K, (P, 20), generator=g)
    gt = torch.rand(P, K, generator=g) > 0.8
    got = recall_at_k(topk, gt, ks=(5, 10, 20))
    for k in (5, 10, 20):
        vals = []
        for p in range(P):
            G = set(torch.nonzero(gt[p]).flatten().tolist())
            if not G:
                continue
            W = {c for c in topk[p, :k].tolist() if c >= 0}
            vals.append(len(W & G) / len(G))
        assert got[f"recall@{k}"] == pytest.approx(sum(vals) / len(vals))


def test_metric_matches_functional_across_batches():
    g = torch.Generator().manual_seed(5)
    P, K = 40, 9
    topk = torch.randint(-1, K, (P, 20), generator=g)
    gt = torch.rand(P, K, generator=g) > 0.75
    seen = torch.rand(K, generator=g) > 0.4
    metric = RecallAtK()
    for chunk in range(0, P, 7):
        metric.update(topk[chunk : chunk + 7], gt[chunk : chunk + 7], seen)
    out = metric.compute()
    ref = recall_at_k(topk, gt, seen=seen)
    for key, value in ref.items():
        assert float(out[key]) == pytest.approx(value, nan_ok=True)


def test_metric_rejects_bad_shapes():
    m = RecallAtK()
    with pytest.raises(ValueError, match="topk_labels"):
        m.update(torch.zeros(3, 5, dtype=torch.long), torch.zeros(4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="seen"):
        m.update(torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 2, dtype=torch.bool), torch.ones(3, dtype=torch.bool))


def _ddp_recall(rank: int, world: int, topk, gt, seen):
    metric = RecallAtK()
    metric.update(topk[rank::world], gt[rank::world], seen)
    return {k: float(v) for k, v in metric.compute().items()}


@pytest.mark.ddp
@pytest.mark.slow
def test_metric_ddp_sum_states_exact():
    g = torch.Generator().manual_seed(11)
    P, K = 33, 7
    topk = torch.randint(-1, K, (P, 20), generator=g)
    gt = torch.rand(P, K, generator=g) > 0.7
    seen = torch.tensor([True, False] * 3 + [True])
    ref = recall_at_k(topk, gt, seen=seen)
    for out in run_distributed(_ddp_recall, 2, topk, gt, seen):
        for key, value in ref.items():
            assert out[key] == pytest.approx(value, rel=1e-12, nan_ok=True)
