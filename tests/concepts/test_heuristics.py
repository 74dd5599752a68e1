"""Heuristic geometry: bounding boxes, largest inscribed rectangles and box overlaps against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lit_explain.concepts.heuristics import LeafGeometry, bounding_boxes, box_overlap, inscribed_rectangles
from tests.concepts.random_instances import make_instance


def brute_largest_rectangle_area(m: np.ndarray) -> int:
    sh, sw = m.shape
    best = 0
    csum = np.zeros((sh + 1, sw + 1), dtype=np.int64)
    csum[1:, 1:] = m.astype(np.int64).cumsum(0).cumsum(1)
    for y0, y1 in itertools.combinations_with_replacement(range(sh), 2):
        for x0, x1 in itertools.combinations_with_replacement(range(sw), 2):
            area = (y1 - y0 + 1) * (x1 - x0 + 1)
            if area <= best:
                continue
            s = csum[y1 + 1, x1 + 1] - csum[y0, x1 + 1] - csum[y1 + 1, x0] + csum[y0, x0]
            if s == area:
                best = area
    return best


def random_masks(seed, m=60, shape=(7, 9)):
    g = torch.Generator().manual_seed(seed)
    dens = torch.rand(m, 1, 1, generator=g)
    masks = torch.rand(m, *shape, generator=g) < dens
    masks[0] = False
    masks[1] = True
    masks[2] = False
    masks[2, 3, 4] = True
    return masks


@pytest.mark.parametrize("seed", [0, 1])
def test_inscribed_rectangles_are_maximal_all_ones_rectangles(seed):
    masks = random_masks(seed)
    rects = inscribed_rectangles(masks, chunk_pixels=7 * 9 * 11)  # several chunks
    for mask, (y0, x0, y1, x1) in zip(masks.numpy(), rects.tolist()):
        best = brute_largest_rectangle_area(mask)
        if best == 0:
            assert (y0, x0, y1, x1) == (0, 0, -1, -1)
            continue
        assert mask[y0 : y1 + 1, x0 : x1 + 1].all()
        assert (y1 - y0 + 1) * (x1 - x0 + 1) == best


def test_bounding_boxes_match_nonzero_extents():
    masks = random_masks(3)
    boxes = bounding_boxes(masks)
    for mask, box in zip(masks.numpy(), boxes.tolist()):
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            assert box == [0, 0, -1, -1]
        else:
            assert box == [ys.min(), xs.min(), ys.max(), xs.max()]


def test_box_overlap_hand_example():
    a = torch.tensor([1, 1, 3, 4])  # rows 1..3, cols 1..4
    b = torch.tensor([2, 3, 5, 6])  # rows 2..5, cols 3..6
    assert int(box_overlap(a, b)) == 2 * 2
    assert int(box_overlap(a, torch.tensor([0, 0, -1, -1]))) == 0  # the empty box overlaps nothing
    assert int(box_overlap(a, torch.tensor([4, 0, 6, 9]))) == 0


def test_leaf_geometry_from_index_matches_dense_masks():
    inst = make_instance(4, n=20, c=8)
    geo = LeafGeometry.from_index(inst.index, chunk_pixels=5 * 72)  # several image chunks
    sh, sw = inst.mask_shape
    dense = inst.dense.view(20, 8, sh, sw)
    flat = dense.reshape(-1, sh, sw)
    assert torch.equal(geo.boxes.reshape(-1, 4).long(), bounding_boxes(flat))
    rect_area = lambda r: ((r[:, 2] - r[:, 0] + 1) * (r[:, 3] - r[:, 1] + 1)).clamp(min=0)
    got = geo.rects.reshape(-1, 4).long()
    assert torch.equal(rect_area(got), rect_area(inscribed_rectangles(flat)))
    for m, r in zip(flat, got.tolist()):
        if r[2] >= 0:
            assert bool(m[r[0] : r[2] + 1, r[1] : r[3] + 1].all())
