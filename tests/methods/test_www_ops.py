"""WWW tensor math against independent computations: brute-force sums, batch-1 autograd, hand-worked values,
sklearn's roc_auc_score."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from lit_explain.methods import www_ops as W


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


# ---------------------------------------------------------------------------------------------- what
def test_adaptive_cosine_hand_example():
    image = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    text = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    template = torch.tensor([0.0, 1.0])
    s = W.adaptive_cosine(image, text, template)
    r = 1 / math.sqrt(2)
    # image 0 = x axis: cos to text (r, 1), to template 0; image 1 = y axis: cos (r, 0), template 1
    assert torch.allclose(s, torch.tensor([[r, 1.0], [r - 1.0, -1.0]]), atol=1e-6)


@pytest.mark.parametrize("with_mask", [False, True])
def test_mean_embedding_form_equals_full_similarity_sum(with_mask):
    g = torch.Generator().manual_seed(0)
    K, N, V, D = 6, 9, 23, 16
    img = torch.randn(K, N, D, generator=g, dtype=torch.float64) * 3
    txt = torch.randn(V, D, generator=g, dtype=torch.float64)
    t0 = torch.randn(D, generator=g, dtype=torch.float64)
    valid = torch.rand(K, N, generator=g) > 0.3 if with_mask else torch.ones(K, N, dtype=torch.bool)
    # brute force: the full (K*N) x V matrix of cos(I, T_v) - cos(I, T_0), one entry at a time, summed per neuron
    full = torch.zeros(K * N, V, dtype=torch.float64)
    for r in range(K * N):
        for v in range(V):
            full[r, v] = _cos(img.view(K * N, D)[r], txt[v]) - _cos(img.view(K * N, D)[r], t0)
    expected = (full.view(K, N, V) * valid[..., None]).sum(1)
    got = W.concept_scores(img, txt, t0, valid=valid if with_mask else None, chunk_size=5)
    assert got.shape == (K, V)
    assert torch.allclose(got, expected, atol=1e-10)
    # the (K, D) sums path (what processes would add) gives the same
    sums = W.example_embedding_sum(img, valid)
    assert torch.allclose(W.concept_scores(sums, txt, t0), expected, atol=1e-10)


def test_concept_scores_shape_errors():
    with pytest.raises(ValueError, match="same CLIP"):
        W.concept_scores(torch.randn(2, 3, 4), torch.randn(5, 4), torch.randn(3))
    with pytest.raises(ValueError, match="K neurons, N examples"):
        W.example_embedding_sum(torch.randn(3, 4))


def test_select_concepts_alpha_band_and_ranking():
    scores = torch.tensor([[1.0, 0.96, 0.94, 0.5, 0.95],
                           [-1.0, -1.04, -1.06, -3.0, -2.0]])
    keep = W.select_concepts(scores, alpha=0.95)
    # row 0: >= 0.95 * 1.0 -> indices 0, 1, 4; row 1 (negative best): >= -1 - 0.05 -> indices 0, 1
    assert keep.tolist() == [[True, True, False, False, True], [True, True, False, False, False]]
    ranked = W.ranked_concepts(scores, keep)
    assert [i for i, _ in ranked[0]] == [0, 1, 4]
    assert [i for i, _ in ranked[1]] == [0, 1]
    assert ranked[0][1][1] == pytest.approx(0.96)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
        W.select_concepts(scores, alpha=95)


# ---------------------------------------------------------------------------------------------- why
def _batch1_taylor(head, acts, classes):
    """The official loop: one forward + backward per image."""
    out = []
    for a, c in zip(acts, classes):
        a = a[None].clone().requires_grad_(True)
        y = head(a)[0, c]
        (g,) = torch.autograd.grad(y, a)
        out.append((g * a).detach()[0])
    return torch.stack(out)


def test_linear_head_shapley_equals_class_mean_of_batch1_gradients():
    g = torch.Generator().manual_seed(1)
    B, K, C = 40, 7, 4
    head = torch.nn.Linear(K, C).double()
    acts = torch.rand(B, K, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    labels[:4] = torch.arange(4)  # every class present
    per_image = _batch1_taylor(head, acts, labels)
    expected = torch.stack([per_image[labels == c].mean(0) for c in range(C)])
    sums, counts = W.class_activation_sums(acts, labels, C)
    assert counts.tolist() == [int((labels == c).sum()) for c in range(C)]
    phi = W.linear_head_shapley(head.weight.detach(), sums, counts)
    assert torch.allclose(phi, expected, atol=1e-12)
    # sums of two halves (two processes) add up to the same prior
    s1, c1 = W.class_activation_sums(acts[:17], labels[:17], C)
    s2, c2 = W.class_activation_sums(acts[17:], labels[17:], C)
    assert torch.allclose(W.linear_head_shapley(head.weight.detach(), s1 + s2, c1 + c2), expected, atol=1e-12)
    sample = W.linear_head_sample_shapley(head.weight.detach(), acts, labels)
    assert torch.allclose(sample, per_image, atol=1e-12)


def test_gradient_x_activation_batched_equals_batch1_nonlinear_head():
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    head = torch.nn.Sequential(torch.nn.LayerNorm(6), torch.nn.Linear(6, 8), torch.nn.GELU(),
                               torch.nn.Linear(8, 3)).double().eval()
    acts = torch.randn(11, 6, generator=g, dtype=torch.float64)
    classes = torch.randint(0, 3, (11,), generator=g)
    got = W.gradient_x_activation(head, acts, classes)
    assert torch.allclose(got, _batch1_taylor(head, acts, classes), atol=1e-12)


def test_gradient_x_activation_spatial_pooling_head_reduces_to_linear_formula():
    g = torch.Generator().manual_seed(3)
    lin = torch.nn.Linear(5, 4).double()
    head = lambda a: lin(a.mean(dim=(2, 3)))  # noqa: E731  global average pooling + fc
    maps = torch.rand(6, 5, 3, 4, generator=g, dtype=torch.float64)
    classes = torch.tensor([0, 1, 2, 3, 0, 1])
    got = W.gradient_x_activation(head, maps, classes, reduce="sum")
    # by hand: dy/da[k,i,j] = W[c,k] / 12, summed against a over positions = W[c,k] * mean(a_k)
    expected = lin.weight.detach()[classes] * maps.mean(dim=(2, 3))
    assert torch.allclose(got, expected, atol=1e-12)


# ---------------------------------------------------------------------------------------------- where
def test_weighted_heatmap_hand_example_and_upsampling():
    maps = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]],
                          [[0.0, 4.0], [0.0, 0.0]],
                          [[9.0, 9.0], [9.0, 9.0]]]])
    weights = torch.tensor([[3.0, 1.0, -5.0]])  # top-2: neurons 0 and 1, weights 3/4 and 1/4
    h = W.weighted_heatmap(maps, weights, n=2)
    assert torch.allclose(h, torch.tensor([[[0.75, 1.0], [0.0, 0.0]]]))
    # upsampling once after mixing = mixing the individually upsampled maps (bilinear is linear)
    up = F.interpolate(maps, size=(7, 5), mode="bilinear", align_corners=False)
    expected = 0.75 * up[:, 0] + 0.25 * up[:, 1]
    assert torch.allclose(W.weighted_heatmap(maps, weights, n=2, size=(7, 5)), expected, atol=1e-6)
    with pytest.raises(ValueError, match="before global pooling"):
        W.weighted_heatmap(torch.rand(2, 3, 1, 1), torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"top-n must be in \[1, K=3\]"):
        W.weighted_heatmap(maps, weights, n=4)


def test_reliability_is_cosine_and_never_empty():
    hc = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    hs = torch.tensor([[[0.0, 2.0], [0.0, 0.0]], [[3.0, 3.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    r = W.reliability(hc, hs)
    assert r.shape == (3,)  # one value per image (the official script saved an empty list)
    assert torch.allclose(r, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_percentile_masks_keeps_values_above_quantile():
    maps = torch.arange(1.0, 11.0).view(1, 1, 2, 5)
    out = W.percentile_masks(maps, q=0.7)  # linear 0.7-quantile of 1..10 = 7.3
    assert out.flatten().tolist() == [0.0] * 7 + [8.0, 9.0, 10.0]


def test_binary_auroc_matches_sklearn_with_ties():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.9, 0.05])
    positive = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0], dtype=torch.bool)
    assert W.binary_auroc(scores, positive) == pytest.approx(roc_auc_score(positive.numpy(), scores.numpy()))
    # hand count: 16 positive/negative pairs, 14 won, 2 tied (0.4 vs 0.4) -> (14 + 1) / 16
    assert W.binary_auroc(scores, positive) == pytest.approx(15 / 16)
    assert math.isnan(W.binary_auroc(scores, torch.zeros(8, dtype=torch.bool)))


def test_misprediction_auroc_hand_example():
    logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 1.9], [0.0, 5.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0, 0])  # images 2 and 3 are mispredicted
    rel = torch.tensor([0.9, 0.8, 0.2, 0.85, 0.5])
    out = W.misprediction_auroc(rel, logits, labels)
    wrong = [0, 0, 1, 1, 0]
    msp = logits.softmax(1).max(1).values
    assert out["auroc_reliability"] == pytest.approx(roc_auc_score(wrong, (-rel).numpy()))
    assert out["auroc_msp"] == pytest.approx(roc_auc_score(wrong, (-msp).numpy()))
    # by hand: wrong {0.2, 0.85} vs right {0.9, 0.8, 0.5}: 0.2 is lower than all 3, 0.85 than 1 -> 4/6
    assert out["auroc_reliability"] == pytest.approx(4 / 6)
    assert out["error_rate"] == pytest.approx(0.4)
