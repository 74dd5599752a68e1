"""LaViSE tensor math: loss, masks, filter attention, streaming top-k, word ranking (hand-worked and brute force)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_explain.methods.lavise_ops import cosine_hinge_rank_loss, filter_attention, rank_words, resize_masks
from lit_explain.topk import merge_topk


# ------------------------------------------------------------------------------------------------ loss
def test_loss_hand_worked_one_hot():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pred = torch.tensor([[2.0, 0.0]])  # cosine: [1, 0, -1]
    t = torch.tensor([[1.0, 0.0, 0.0]])
    assert cosine_hinge_rank_loss(pred, emb, t, margin=1.0).item() == pytest.approx(0.0)
    # margin 1.5: max(0, 1.5 - 1 + 0) + max(0, 1.5 - 1 - 1) = 0.5
    assert cosine_hinge_rank_loss(pred, emb, t, margin=1.5).item() == pytest.approx(0.5)


def test_loss_hand_worked_multi_hot_and_empty_rows():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pred = torch.tensor([[1.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
    t = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    # row 0: S = [1, 0, -1], pos = mean(1, 0) = .5, negative c=2: max(0, 2 - .5 - 1) = .5 (margin 2)
    # row 1: no positive -> ignored (not NaN, not counted in the mean)
    # row 2: S = [.7071, .7071, -.7071], pos = -.7071; negatives 0, 1: 2 * max(0, 2 + .7071 + .7071)
    r2 = 2 * (2 + 2 * 2 ** -0.5)
    loss = cosine_hinge_rank_loss(pred, emb, t, margin=2.0)
    assert loss.item() == pytest.approx((0.5 + r2) / 2, rel=1e-6)


def test_loss_brute_force_and_gradients():
    g = torch.Generator().manual_seed(0)
    B, K, D = 9, 6, 5
    pred = torch.randn(B, D, generator=g, requires_grad=True)
    emb = torch.randn(K, D, generator=g)
    t = (torch.rand(B, K, generator=g) > 0.7).float()
    t[3] = 0  # an empty row
    loss = cosine_hinge_rank_loss(pred, emb, t, margin=1.0)
    rows = []
    for i in range(B):
        s = [F.cosine_similarity(pred[i], emb[c], dim=0).item() for c in range(K)]
        pos = [s[c] for c in range(K) if t[i, c] > 0]
        if not pos:
            continue
        p = sum(pos) / len(pos)
        rows.append(sum(max(0.0, 1.0 - p + s[c]) for c in range(K) if t[i, c] == 0))
    assert loss.item() == pytest.approx(sum(rows) / len(rows), rel=1e-5)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[3].abs().sum() == 0


def test_loss_all_rows_empty_is_zero_with_grad():
    pred = torch.randn(3, 4, requires_grad=True)
    loss = cosine_hinge_rank_loss(pred, torch.randn(5, 4), torch.zeros(3, 5))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_loss_shape_errors():
    with pytest.raises(ValueError, match="do not fit"):
        cosine_hinge_rank_loss(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2, 5))


# ------------------------------------------------------------------------------------------------ masks
def test_resize_masks_modes():
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, 0, 0] = 1.0  # one pixel: 1/16 of the top-left 4x4 cell
    assert resize_masks(m, (2, 2), "area")[0, 0, 0, 0].item() == pytest.approx(1 / 16)
    assert resize_masks(m, (2, 2), "nearest").sum().item() == 1.0  # nearest samples pixel (0, 0)
    with pytest.raises(ValueError, match="mask resize mode"):
        resize_masks(m, (2, 2), "cubic")


# ------------------------------------------------------------------------------------------------ attention
def test_filter_attention_code_vs_paper_after_pooling():
    g = torch.Generator().manual_seed(1)
    P, C, h, w = 2, 3, 4, 5
    feats = torch.rand(P, C, h, w, generator=g)
    u = 1
    fu = feats[:, u]
    code = filter_attention(feats, fu, None, "attention_code").mean((-2, -1))
    paper = filter_attention(feats, fu, None, "attention_paper").mean((-2, -1))
    for p in range(P):
        a = fu[p].flatten().numpy().astype(np.float64)
        for k in range(C):
            b = feats[p, k].flatten().numpy().astype(np.float64)
            # code: <F_k, F_u> / (||F_u|| h w)
            assert code[p, k].item() == pytest.approx(a @ b / (np.linalg.norm(a) * h * w), rel=1e-5)
            # paper: cos(F_u, F_k) * mean(F_k)
            cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            assert paper[p, k].item() == pytest.approx(cos * b.mean(), rel=1e-5)


def test_filter_attention_activation_and_original():
    feats = torch.arange(8.0).reshape(1, 2, 2, 2)
    fu = feats[:, 1]  # values 4..7
    out = filter_attention(feats, fu, torch.tensor([5.5]), "activation")
    keep = torch.tensor([[False, False], [True, True]])
    assert torch.equal(out[0], feats[0] * keep)
    assert torch.equal(filter_attention(feats, fu, None, "original"), feats)
    with pytest.raises(ValueError, match="unknown mode"):
        filter_attention(feats, fu, None, "projection")


# ------------------------------------------------------------------------------------------------ top-k
def test_merge_topk_streaming_equals_global_sort_with_ties():
    g = torch.Generator().manual_seed(2)
    U, N, k = 4, 57, 6
    vals = torch.randint(0, 5, (U, N), generator=g).float()  # many ties
    idx = torch.arange(N)[None].expand(U, -1)
    ref_v, ref_i = [], []
    for u in range(U):
        order = sorted(range(N), key=lambda j: (-vals[u, j].item(), j))[:k]
        ref_v.append([vals[u, j].item() for j in order])
        ref_i.append(order)
    for perm_seed in range(3):
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(perm_seed))
        cv, ci = torch.full((U, k), float("-inf")), torch.full((U, k), -1, dtype=torch.long)
        for s in range(0, N, 10):
            sel = perm[s : s + 10]
            cv, ci = merge_topk(cv, ci, vals[:, sel], idx[:, sel], k)
        assert ci.tolist() == ref_i and cv.tolist() == ref_v


def test_merge_topk_pads_when_few_candidates():
    v, i = merge_topk(torch.zeros(1, 0), torch.zeros(1, 0, dtype=torch.long), torch.tensor([[3.0]]),
                      torch.tensor([[7]]), 3)
    assert i.tolist() == [[7, -1, -1]] and v[0, 0] == 3.0 and torch.isinf(v[0, 1:]).all()


# ------------------------------------------------------------------------------------------------ ranking
def test_rank_words_hand_worked():
    # unit 0: three images, top-2 words each; image 2 is invalid
    words = torch.tensor([[[4, 1], [1, 2], [3, 3]]])
    sims = torch.tensor([[[0.9, 0.5], [0.8, 0.7], [1.0, 1.0]]])
    valid = torch.tensor([[True, True, False]])
    r = rank_words(words, sims, valid, torch.ones(1, 3), vocab_size=5, top_x=4)
    # word 1 in 2 images (score 1.0); words 4 and 2 once (0.5); tie broken by mean similarity: 4 (.9) > 2 (.7)
    assert r.words.tolist() == [[1, 4, 2, -1]]
    assert r.scores[0, :3].tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert r.counts[0, :3].tolist() == [2, 1, 1]
    assert r.similarity[0, 0].item() == pytest.approx(0.65)
    assert r.images.tolist() == [2]
    # relevance weighting: image 1 weighs 3x -> word 2 (image 1) beats word 4 (image 0)
    rw = rank_words(words, sims, valid, torch.tensor([[1.0, 3.0, 1.0]]), vocab_size=5, top_x=3)
    assert rw.words.tolist() == [[1, 2, 4]]
    assert rw.scores[0].tolist() == pytest.approx([1.0, 0.75, 0.25])


def test_rank_words_many_units_brute_force():
    g = torch.Generator().manual_seed(4)
    U, p, s, V = 5, 7, 3, 11
    words = torch.stack([torch.stack([torch.randperm(V, generator=g)[:s] for _ in range(p)]) for _ in range(U)])
    sims = torch.rand(U, p, s, generator=g)
    valid = torch.rand(U, p, generator=g) > 0.3
    r = rank_words(words, sims, valid, torch.ones(U, p), V, top_x=4)
    for u in range(U):
        counts: dict[int, list[float]] = {}
        for j in range(p):
            if valid[u, j]:
                for t in range(s):
                    counts.setdefault(int(words[u, j, t]), []).append(float(sims[u, j, t]))
        order = sorted(counts, key=lambda wd: (-len(counts[wd]), -sum(counts[wd]) / len(counts[wd]), wd))[:4]
        assert r.words[u, : len(order)].tolist() == order
