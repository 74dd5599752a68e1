"""Batched pairwise hyperplanes against per-pair torch logistic regressions; the shifting hook and swap metric."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_explain.decomposition.hyperplanes import (contrastive_mask, pad_classes, pairwise_hyperplanes,
                                                   relevant_pixel_vectors, shift_along,
                                                   shifted_probabilities, swap_metrics)


pytestmark = pytest.mark.usefixtures("one_thread")


def _classes(counts=(5, 7, 3, 6), C=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, C, generator=g, dtype=torch.float64) + 0.7 * i for i, n in enumerate(counts)]


def _per_pair(xi, xj, w0, b0, steps, lr):
    """One pair the way the paper trains it: a linear logit, mean BCE-with-logits, full-batch gradient descent
    (gradients by autograd; torch.optim.SGD without momentum takes the same step)."""
    w, b = w0.clone().requires_grad_(True), b0.clone().reshape(()).requires_grad_(True)
    x = torch.cat([xi, xj])
    y = torch.cat([torch.zeros(len(xi)), torch.ones(len(xj))]).double()
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
        gw, gb = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            w -= lr * gw
            b -= lr * gb
    with torch.no_grad():
        acc = ((x @ w + b > 0).double() == y).double().mean()
    return w.detach(), b.detach(), acc


@pytest.fixture(scope="module")
def per_pair_reference():
    data = _classes()
    K, C = len(data), data[0].shape[1]
    g = torch.Generator().manual_seed(1)
    W0, b0 = torch.randn(K, K, C, generator=g, dtype=torch.float64), torch.randn(K, K, generator=g, dtype=torch.float64)
    ref = {(i, j): _per_pair(data[i], data[j], W0[i, j], b0[i, j], 20, 0.5) for i in range(K) for j in range(K) if i != j}
    return data, W0, b0, ref


@pytest.mark.parametrize("rows_per_pass", [64, 3])
def test_batched_equals_per_pair_logistic_regressions(per_pair_reference, rows_per_pass):
    data, W0, b0, ref = per_pair_reference
    feats, counts = pad_classes(data)
    hp = pairwise_hyperplanes(feats, counts, steps=20, lr=0.5, init=(W0, b0), rows_per_pass=rows_per_pass)
    for i in range(len(data)):
        assert torch.all(hp.normals[i, i] == 0) and torch.isnan(hp.accuracy[i, i])
    for (i, j), (w, b, acc) in ref.items():
        assert torch.allclose(hp.normals[i, j], w, atol=1e-10), (i, j)
        assert torch.allclose(hp.bias[i, j], b, atol=1e-10)
        assert float(hp.accuracy[i, j]) == pytest.approx(float(acc))


def test_zero_init_and_linear_init_laws():
    feats, counts = pad_classes(_classes())
    zero = pairwise_hyperplanes(feats, counts, steps=3)
    w, b, _ = _per_pair(*_classes()[1:3], torch.zeros(6, dtype=torch.float64), torch.tensor(0.0).double(), 3, 0.01)
    assert torch.allclose(zero.normals[1, 2], w, atol=1e-12)
    a = pairwise_hyperplanes(feats, counts, steps=1, init="linear", seed=3)
    assert torch.equal(a.normals, pairwise_hyperplanes(feats, counts, steps=1, init="linear", seed=3).normals)


def test_normal_points_from_i_to_j_on_separable_data():
    C = 4
    mus = torch.eye(C, dtype=torch.float64) * 5
    g = torch.Generator().manual_seed(2)
    data = [mus[i] + 0.3 * torch.randn(8, C, generator=g, dtype=torch.float64) for i in range(3)]
    hp = pairwise_hyperplanes(*pad_classes(data), steps=200, lr=0.1)
    for i in range(3):
        for j in range(3):
            if i != j:
                assert float(hp.normals[i, j] @ (mus[j] - mus[i])) > 0
                assert float(hp.accuracy[i, j]) == 1.0


def test_empty_class_gets_zero_normals():
    data = _classes(counts=(4, 0, 3))
    hp = pairwise_hyperplanes(*pad_classes(data), steps=5)
    assert torch.all(hp.normals[1] == 0) and torch.all(hp.normals[:, 1] == 0)
    assert torch.isnan(hp.accuracy[1]).all() and torch.isnan(hp.accuracy[:, 1]).all()
    assert not torch.isnan(hp.accuracy[0, 2])


@pytest.mark.parametrize("kw,match", [({"steps": 0}, "steps must be an int >= 1"), ({"lr": 0.0}, "lr must be"),
                                      ({"init": "normal"}, "init must be"), ({"rows_per_pass": 0}, "rows_per_pass"),
                                      ({"counts": torch.tensor([9, 1, 1, 1])}, "counts must be")])
def test_argument_errors(kw, match):
    feats, counts = pad_classes(_classes())
    kw = {"counts": counts, **kw}
    with pytest.raises(ValueError, match=match):
        pairwise_hyperplanes(feats, **kw)


def _net():
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(5, 3)).eval()


def test_offset_zero_leaves_logits_unchanged_and_hook_removed():
    m, x = _net(), torch.randn(4, 3, 6, 6)
    ref = m(x)
    with shift_along(m[1], torch.randn(2, 4), torch.tensor([0.0])):
        out = m(x)
    assert torch.equal(out, torch.cat([ref, ref]))
    assert len(m[1]._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with shift_along(m[1], torch.randn(1, 4), torch.tensor([1.0])):
            raise RuntimeError("boom")
    assert len(m[1]._forward_hooks) == 0
    assert torch.equal(m(x), ref)


def test_shift_by_hand():
    """Identity 'layer' on a (1, 2, 1, 1) input: outputs are ReLU(a + o d), direction-major then offset."""
    m = nn.Sequential(nn.Identity(), nn.Flatten())
    a = torch.tensor([[[[1.0]], [[2.0]]]])
    d = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    with shift_along(m[0], d, torch.tensor([0.0, -3.0])):
        out = m(a)
    assert out.tolist() == [[1.0, 2.0], [0.0, 5.0], [1.0, 2.0], [1.0, 0.0]]
    with shift_along(m[0], d, torch.tensor([-3.0]), relu=False):
        assert m(a).tolist() == [[-2.0, 5.0], [1.0, -4.0]]


def test_shifted_probabilities_match_explicit_shift():
    m, x = _net(), torch.randn(3, 3, 6, 6)
    d = torch.randn(3, 4)
    offs = [0.0, 0.5, 2.0]
    P = shifted_probabilities(m, m[1], x, d, offs, directions_per_pass=2)
    assert P.shape == (3, 3, 3)
    a = m[1](m[0](x))
    for di in range(3):
        for oi, o in enumerate(offs):
            shifted = (a + o * d[di][None, :, None, None]).clamp(min=0)
            expected = m[2:](shifted).softmax(-1).mean(0)
            assert torch.allclose(P[di, oi], expected, atol=1e-6)


def test_swap_metric_reads_p_a_at_the_peak_offset():
    """Offsets [0, 1, 2]: p(B) peaks at offset 2 (0.6) where p(A) is 0.3 -> swap. The original read p(A) at
    offset 1 (0.7) and would call it no swap."""
    P = torch.tensor([[[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.3, 0.6, 0.1]],
                      [[0.8, 0.1, 0.1], [0.5, 0.4, 0.1], [0.6, 0.3, 0.1]]])
    s = swap_metrics(P, [0.0, 1.0, 2.0], 0, torch.tensor([1, 1]))
    assert s.p0.tolist() == pytest.approx([0.1, 0.1])
    assert s.pmax.tolist() == pytest.approx([0.6, 0.4]) and s.best.tolist() == [2, 1]
    assert s.p_a_at_best.tolist() == pytest.approx([0.3, 0.5])
    assert s.swap.tolist() == [True, False]
    with pytest.raises(ValueError, match="contain 0 exactly once"):
        swap_metrics(P, [1.0, 2.0, 3.0], 0, torch.tensor([1, 1]))


def test_chunks_split_over_processes_give_the_full_result():
    """5 classes in chunks of 2: 'process' A trains chunks 0 and 2, B chunk 1; together the one-process result."""
    data = _classes(counts=(5, 7, 3, 6, 4))
    feats, counts = pad_classes(data)
    full = pairwise_hyperplanes(feats, counts, steps=10, lr=0.3, init="linear", seed=5, rows_per_pass=2)
    a = pairwise_hyperplanes(feats, counts, steps=10, lr=0.3, init="linear", seed=5, rows_per_pass=2, chunks=[0, 2])
    b = pairwise_hyperplanes(feats, counts, steps=10, lr=0.3, init="linear", seed=5, rows_per_pass=2, chunks=[1])
    order = [0, 1, 4, 2, 3]  # rows of a = classes 0, 1, 4; rows of b = classes 2, 3
    merged = torch.cat([a.normals, b.normals])
    assert torch.equal(merged, full.normals[order])
    assert torch.equal(torch.cat([a.bias, b.bias]), full.bias[order])
    assert torch.equal(torch.cat([a.accuracy, b.accuracy]).isnan(), full.accuracy[order].isnan())
    with pytest.raises(ValueError, match=r"chunks must be distinct chunk numbers in 0..2"):
        pairwise_hyperplanes(feats, counts, rows_per_pass=2, chunks=[0, 3])


def test_relevant_pixel_vectors_by_hand():
    acts = torch.arange(2 * 2 * 1 * 3, dtype=torch.float32).reshape(2, 2, 1, 3)
    # channel-mean relevance per pixel: image 0 -> (1.0, 0.2, 0.3); image 1 -> (-1, -2, -3) (nothing relevant)
    R = torch.tensor([[[[2.0, 0.4, 0.6]], [[0.0, 0.0, 0.0]]],
                      [[[-2.0, -4.0, -6.0]], [[0.0, 0.0, 0.0]]]])
    v, img = relevant_pixel_vectors(acts, R, frac=0.25)
    assert img.tolist() == [0, 0] and v.tolist() == [[0.0, 3.0], [2.0, 5.0]]  # pixels x=0 (1.0) and x=2 (0.3)
    v, img = relevant_pixel_vectors(acts, R, frac=0.5)
    assert v.tolist() == [[0.0, 3.0]]
    with pytest.raises(ValueError, match=r"frac must be a number in \[0, 1\]"):
        relevant_pixel_vectors(acts, R, frac=2.0)


def test_contrastive_mask_by_hand():
    acts = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # pixels a = (1, 0) and (0, 2)
    w, b = torch.tensor([1.0, -1.0]), 0.5
    # consistent: ReLU(-w.a - b): (-1 - 0.5, 2 - 0.5) -> (0, 1.5); paper: ReLU(-w.a + b): (-0.5, 2.5) -> (0, 2.5)
    assert contrastive_mask(acts, w, b).tolist() == [[[[0.0, 1.5]]]]
    assert contrastive_mask(acts, w, b, bias_sign="paper").tolist() == [[[[0.0, 2.5]]]]
    assert contrastive_mask(acts, w, b, extra=2.0).tolist() == [[[[0.5, 3.5]]]]
