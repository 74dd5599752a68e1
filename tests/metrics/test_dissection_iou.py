"""DissectionIoU against a dense brute-force IoU, a hand-worked example, and under 2 DDP processes."""

import pytest
import torch

from lit_explain.concepts.index import ConceptIndex
from lit_explain.metrics.dissection_iou import DissectionIoU
from lit_explain.metrics.functional.dissection_iou import dissection_iou
from tests.helpers.ddp import run_distributed


def _problem(seed=0, n=9, c=6, sh=5, sw=4, u=3):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, c, sh, sw, generator=g) < 0.25
    image_level = torch.zeros(n, c, dtype=torch.bool)
    image_level[[1, 2, 7], 5] = True
    masks[:, 5] = False
    bitmaps = torch.rand(n, u, sh, sw, generator=g) < 0.3
    return masks, image_level, bitmaps


def _dense_iou(masks, image_level, bitmaps):
    dense = (masks | image_level[:, :, None, None]).double()
    b = bitmaps.double()
    inter = torch.einsum("nuhw,nchw->uc", b, dense)
    union = b.sum((0, 2, 3))[:, None] + dense.sum((0, 2, 3))[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def test_matches_dense_bruteforce():
    masks, image_level, bitmaps = _problem()
    index = ConceptIndex.from_dense(masks, image_level)
    m = DissectionIoU(3, 6)
    for ids in (torch.tensor([0, 4, 8]), torch.tensor([1, 2, 3, 5]), torch.tensor([6, 7])):
        m.update(bitmaps[ids], ids, index)
    torch.testing.assert_close(m.compute(), _dense_iou(masks, image_level, bitmaps), rtol=0, atol=1e-12)


def test_hand_worked_example():
    # 1 image, 2x2 grid. unit on the top row; concept 0 = left column; concept 1 = nothing.
    masks = torch.tensor([[[[1, 0], [1, 0]], [[0, 0], [0, 0]]]], dtype=torch.bool)
    bitmaps = torch.tensor([[[[1, 1], [0, 0]]]], dtype=torch.bool)
    m = DissectionIoU(1, 2)
    m.update(bitmaps, torch.tensor([0]), ConceptIndex.from_dense(masks))
    assert m.compute().tolist() == [[1 / 3, 0.0]]  # |{(0,0)}| / |{(0,0),(0,1),(1,0)}|


def test_category_restricted_union_hand_worked():
    # image 0: unit fires on 2 pixels over concept 0 (cat 0). image 1: unit fires on 3 pixels, only concept 1 (cat 1).
    masks = torch.zeros(2, 2, 1, 4, dtype=torch.bool)
    masks[0, 0, 0, :2] = True
    masks[1, 1, 0, :] = True
    bitmaps = torch.zeros(2, 1, 1, 4, dtype=torch.bool)
    bitmaps[0, 0, 0, :2] = True
    bitmaps[1, 0, 0, :3] = True
    index = ConceptIndex.from_dense(masks)
    plain = DissectionIoU(1, 2)
    plain.update(bitmaps, torch.arange(2), index)
    restricted = DissectionIoU(1, 2, concept_category=torch.tensor([0, 1]))
    restricted.update(bitmaps, torch.arange(2), index)
    assert plain.compute()[0, 0].item() == pytest.approx(2 / 5)  # union 5 active + 2 label - 2
    assert restricted.compute()[0, 0].item() == pytest.approx(1.0)  # image 1 has no cat-0 label under it
    assert restricted.compute()[0, 1].item() == pytest.approx(3 / 4)


def test_functional_twin():
    inter = torch.tensor([[2, 0]])
    assert dissection_iou(inter, torch.tensor([3]), torch.tensor([4, 0])).tolist() == [[2 / 5, 0.0]]


def _ddp_rank(rank, world, seed):
    masks, image_level, bitmaps = _problem(seed)
    index = ConceptIndex.from_dense(masks, image_level)
    ids = torch.arange(masks.shape[0])[rank::world]  # uneven shards (5 and 4 images)
    m = DissectionIoU(3, 6, concept_category=torch.tensor([0, 0, 1, 1, 2, 2]))
    m.update(bitmaps[ids], ids, index)
    return m.compute()


@pytest.mark.ddp
def test_two_processes_equal_one():
    masks, image_level, bitmaps = _problem(5)
    single = DissectionIoU(3, 6, concept_category=torch.tensor([0, 0, 1, 1, 2, 2]))
    single.update(bitmaps, torch.arange(9), ConceptIndex.from_dense(masks, image_level))
    results = run_distributed(_ddp_rank, 2, 5)
    for r in results:
        assert torch.equal(r, single.compute())


@pytest.mark.parametrize("restricted", [False, True])
def test_sparse_pairs_equal_dense_update(restricted):
    masks, image_level, bitmaps = _problem(seed=7)
    bitmaps[2, 1] = False  # pairs with empty bitmaps are left out below
    index = ConceptIndex.from_dense(masks, image_level)
    cat = torch.tensor([0, 1, 1, 2, 0, 2]) if restricted else None
    dense = DissectionIoU(3, 6, concept_category=cat)
    dense.update(bitmaps, torch.arange(9), index)
    sparse = DissectionIoU(3, 6, concept_category=cat)
    flat = bitmaps.flatten(2)
    img, unit = torch.nonzero(flat.any(-1), as_tuple=True)
    perm = torch.randperm(len(img), generator=torch.Generator().manual_seed(0))  # any pair order
    half = len(perm) // 2
    sparse.update(flat[img[perm[:half]], unit[perm[:half]]], img[perm[:half]], index, pair_units=unit[perm[:half]],
                  new_images=torch.arange(9))
    sparse.update(flat[img[perm[half:]], unit[perm[half:]]], img[perm[half:]], index, pair_units=unit[perm[half:]])
    for name in ("intersection", "unit_area", "concept_area", "unit_category_area", "num_images"):
        assert torch.equal(getattr(sparse, name), getattr(dense, name)), name
    # chunked gathering gives the same
    assert torch.equal(index.pair_intersections(flat[img, unit], img, unit, 3, ), dense.intersection)
