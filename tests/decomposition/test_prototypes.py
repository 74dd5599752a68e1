"""Top cosine cells by hand and against a brute-force scan; the prediction-from-components test by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_explain.decomposition.component_prediction import component_prediction_test
from lit_explain.decomposition.prototypes import merge_top_cells, pool_grid, top_cells


pytestmark = pytest.mark.usefixtures("one_thread")

# 3 images with a 1 x 2 grid of 2-channel cells; image i is predicted as class i
CELLS = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]],
                      [[[3.0, 1.0]], [[1.0, 1.0]]],
                      [[[0.0, 2.0]], [[1.0, 0.1]]]])
PREDS = torch.tensor([0, 1, 2])
BASES = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],   # class 0
                      [[1.0, 1.0], [1.0, 0.0]]])  # class 1


def test_top_cells_by_hand():
    tc = top_cells(CELLS, BASES, 3)
    # class 0, component (1, 0): cosines 1 (img0 x0), 2/sqrt(4.01) (img2 x1), 3/sqrt(10) (img1 x0)
    assert tc.image[0, 0].tolist() == [0, 2, 1] and tc.x[0, 0].tolist() == [0, 1, 0] and tc.y[0, 0].tolist() == [0, 0, 0]
    assert tc.score[0, 0].tolist() == pytest.approx([1.0, 2 / math.sqrt(4.01), 3 / math.sqrt(10)])
    # class 0, component (0, 1): img0 x1 and img2 x0 both have cosine 1; the smaller cell index wins
    assert tc.index[0, 1].tolist()[:2] == [1, 4]
    # excluding class 0's own image 0
    tx = top_cells(CELLS, BASES, 3, preds=PREDS, classes=torch.tensor([0, 1]), exclude_own=True)
    assert tx.image[0, 0].tolist() == [2, 1, 1] and tx.x[0, 0].tolist() == [1, 0, 1]
    assert bool((tx.image[1] != 1).all())


def test_too_few_cells_are_marked():
    tx = top_cells(CELLS, BASES, 6, preds=PREDS, classes=torch.tensor([0, 1]), exclude_own=True)
    assert tx.index[0, 0, 4:].tolist() == [-1, -1] and torch.isinf(tx.score[0, 0, 4:]).all()
    assert tx.image[0, 0, :4].ge(0).all()


def test_top_cells_equal_brute_force_for_any_chunking():
    g = torch.Generator().manual_seed(0)
    cells = torch.rand(7, 5, 3, 2, generator=g)
    bases = torch.rand(3, 4, 5, generator=g)
    preds, classes = torch.randint(0, 3, (7,), generator=g), torch.tensor([0, 1, 2])
    for excl in (False, True):
        for chunk in (1, 3, 7):
            tc = top_cells(cells, bases, 5, preds=preds, classes=classes, exclude_own=excl, images_per_pass=chunk)
            for a in range(3):
                for k in range(4):
                    scored = []
                    for n in range(7):
                        if excl and int(preds[n]) == a:
                            continue
                        for y in range(3):
                            for x in range(2):
                                s = float(F.cosine_similarity(cells[n, :, y, x], bases[a, k], dim=0))
                                scored.append((-s, n * 6 + y * 2 + x))
                    best = sorted(scored)[:5]
                    assert tc.index[a, k].tolist() == [i for _, i in best]
                    assert tc.score[a, k].tolist() == pytest.approx([-s for s, _ in best], abs=1e-6)


def test_pool_grid_drops_the_trailing_row():
    acts = torch.arange(2 * 7 * 7, dtype=torch.float32).reshape(1, 2, 7, 7)
    p = pool_grid(acts)
    assert p.shape == (1, 2, 3, 3)
    assert float(p[0, 0, 1, 2]) == float(acts[0, 0, 2:4, 4:6].mean())
    with pytest.raises(ValueError, match="size must be an int in 1..7"):
        pool_grid(acts, 8)


def test_prediction_from_components_by_hand():
    """Head = global average + linear M, so the strip's logits are M @ (mean of the top-1 cell vectors).

    Top-1 cells: class 0, all images: (1,0) and (0,2); excluding image 0: (2,0.1) [cos 0.999 > 3/sqrt(10)] and
    (0,1). Class 1, all: (1,1) and (1,0); excluding image 1: (2,0.1) [cos 0.742 > 0.707] and (1,0).
    """
    M = torch.tensor([[0.0, 2.0], [2.0, 0.0], [1.0, 1.0]])
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3, bias=False))
    head[2].weight.data = M
    res = component_prediction_test(CELLS, PREDS, BASES, torch.tensor([0, 1]), head)
    # logits: class 0 all (2, 1, 1.5) hit; excl (1.1, 2, 1.55) miss; class 1 all (1, 2, 1.5) hit; excl (0.1, 3, 1.55) hit
    logits = torch.tensor([[2.0, 1.0, 1.5], [1.1, 2.0, 1.55], [1.0, 2.0, 1.5], [0.1, 3.0, 1.55]])
    p = logits.softmax(-1)
    assert res.p_all.tolist() == pytest.approx([float(p[0, 0]), float(p[2, 1])])
    assert res.p_excl.tolist() == pytest.approx([float(p[1, 0]), float(p[3, 1])])
    assert res.hit_all.tolist() == [True, True] and res.hit_excl.tolist() == [False, True]
    s = res.summary()
    assert (s["count_all"], s["count_excl"], s["classes_all"], s["classes_excl"]) == (2, 1, 2, 2)
    assert s["mean_p_all"] == pytest.approx((float(p[0, 0]) + float(p[2, 1])) / 2)
    assert s["mean_p_excl"] == pytest.approx((float(p[1, 0]) + float(p[3, 1])) / 2)


def test_prediction_marks_zero_basis_invalid():
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    bases = BASES.clone()
    bases[1] = 0
    res = component_prediction_test(CELLS, PREDS, bases, torch.tensor([0, 1]), head)
    assert res.valid_all.tolist() == [True, False] and math.isnan(float(res.p_all[1]))
    assert res.summary()["classes_excl"] == 1


def test_top_cells_of_image_shards_merge_to_the_whole():
    """Two 'processes' with disjoint images (global ids) merge to the single-process answer, in either order."""
    g = torch.Generator().manual_seed(1)
    cells = torch.rand(9, 4, 2, 2, generator=g)
    cells[4] = cells[1]  # exact ties across the shards
    bases = torch.rand(2, 3, 4, generator=g)
    preds, classes = torch.randint(0, 2, (9,), generator=g), torch.tensor([0, 1])
    whole = top_cells(cells, bases, 4, preds=preds, classes=classes, exclude_own=True)
    shards = [torch.arange(0, 9, 2), torch.arange(1, 9, 2)]
    parts = [top_cells(cells[s], bases, 4, preds=preds[s], classes=classes, exclude_own=True, image_ids=s)
             for s in shards]
    for merged in (merge_top_cells(*parts, grid=(2, 2)), merge_top_cells(*parts[::-1], grid=(2, 2))):
        for f in ("score", "index", "image", "y", "x"):
            assert torch.equal(getattr(merged, f), getattr(whole, f)), f
