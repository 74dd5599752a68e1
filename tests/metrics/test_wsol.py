"""WSOL metrics against hand-computed examples with several boxes per image, and 1 vs 2 processes."""

from __future__ import annotations

import pytest
import torch

from lit_explain.metrics.functional.wsol import (box_iou, boxes_from_masks, boxes_to_masks, component_boxes,
                                                 localization_iou)
from lit_explain.metrics.wsol import MaxBoxAccV2, WSOLLocalization

NAN4 = [-1.0, -1.0, -1.0, -1.0]


def loc_example():
    """Three 10x10 images (hand-worked in the comments of test_localization_hand_computed)."""
    m = torch.zeros(3, 10, 10, dtype=torch.bool)
    m[0, 2:6, 1:5] = True  # a 4x4 blob: box [1, 2, 5, 6]
    m[0, 8, 8] = True  # a stray pixel far away
    m[1, 0:5, :] = True  # box [0, 0, 10, 5]
    gt = torch.tensor([[[1, 2, 5, 6], [7, 7, 10, 10]],
                       [[0, 0, 10, 4], [0, 5, 10, 10]],
                       [[2, 2, 4, 4], NAN4]], dtype=torch.float64)
    preds, target = torch.tensor([3, 1, 2]), torch.tensor([3, 0, 2])
    return m, gt, preds, target


def test_boxes_and_iou_hand_computed():
    m, gt, _, _ = loc_example()
    boxes, found = boxes_from_masks(m, "all")
    assert boxes.tolist() == [[1, 2, 9, 9], [0, 0, 10, 5], [0, 0, 0, 0]] and found.tolist() == [True, True, False]
    assert boxes_from_masks(m, "largest")[0][0].tolist() == [1, 2, 5, 6]
    # image 0: vs [1,2,5,6]: 16 / 56; vs [7,7,10,10]: inter 2x2=4, union 56+9-4=61
    torch.testing.assert_close(box_iou(boxes[0], gt[0]), torch.tensor([16 / 56, 4 / 61], dtype=torch.float64))
    iou = localization_iou(boxes, found, gt)
    torch.testing.assert_close(iou, torch.tensor([16 / 56, 0.8, 0.0], dtype=torch.float64))
    # HINT's union of GT boxes as one mask: 16 + 9 = 25 GT pixels, 20 of them in the 56-pixel box -> 20/61
    u = localization_iou(boxes, found, gt, "union", (10, 10))
    torch.testing.assert_close(u[0], torch.tensor(20 / 61, dtype=torch.float64))
    assert boxes_to_masks(gt[2:3], 10, 10).sum() == 4
    cb, where = component_boxes(m)
    assert cb.tolist() == [[1, 2, 5, 6], [8, 8, 9, 9], [0, 0, 10, 5]] and where.tolist() == [0, 0, 1]


@pytest.mark.parametrize("mode,gt_known,top1", [("all", 1 / 3, 0.0), ("largest", 2 / 3, 1 / 3)])
def test_localization_hand_computed(mode, gt_known, top1):
    # all: image 0 IoU 0.29 (miss), image 1 0.8 (hit, but class wrong), image 2 empty (miss)
    # largest: image 0's box is the blob, IoU 1 (hit, class right)
    m, gt, preds, target = loc_example()
    metric = WSOLLocalization(box_mode=mode)
    metric.update(m[:2], gt[:2], preds[:2], target[:2])
    metric.update(m[2:], gt[2:, :1], preds[2:], target[2:])  # batches may pad to different M
    out = metric.compute()
    assert out["gt_known_loc"].item() == pytest.approx(gt_known)
    assert out["top1_loc"].item() == pytest.approx(top1)
    first = 16 / 56 if mode == "all" else 1.0
    assert out["mean_iou"].item() == pytest.approx((first + 0.8) / 3, abs=1e-6)


def boxacc_example():
    s = torch.zeros(2, 10, 10, dtype=torch.float64)
    s[0, 1:7, 0:6] = 0.4
    s[0, 2:6, 1:5] = 0.9
    s[1, 0:2, 0:2] = 0.8
    s[1, 5:10, 5:10] = 0.3
    gt = torch.tensor([[[1, 2, 5, 6], NAN4], [[5, 5, 10, 10], [0, 0, 3, 3]]], dtype=torch.float64)
    return s, gt


def test_max_box_acc_v2_hand_computed():
    # tau grid 0, .1, ..., .9. Image 0: tau=0 -> whole image (IoU .16); .1-.4 -> [0,1,6,7] (16/36); .5-.9 -> 1.
    # Image 1: tau=0 -> .25; .1-.3 -> two blobs, best [5,5,10,10] = 1; .4-.8 -> [0,0,2,2] vs [0,0,3,3] = 4/9; .9 -> none.
    # delta .3: both hit at tau .1-.8 -> 1.0; delta .5 and .7: never both -> 0.5. V2 = 2/3.
    s, gt = boxacc_example()
    metric = MaxBoxAccV2(num_thresholds=10)
    metric.update(s, gt)
    out = metric.compute()
    assert out["maxboxacc@0.3"].item() == 1.0 and out["best_threshold@0.3"].item() == pytest.approx(0.1)
    assert out["maxboxacc@0.5"].item() == 0.5 and out["maxboxacc@0.7"].item() == 0.5
    assert out["maxboxacc_v2"].item() == pytest.approx(2 / 3)
    # chunking the threshold sweep does not change the counts
    from lit_explain.metrics.functional.wsol import max_box_acc_hits

    full = max_box_acc_hits(s, gt, metric.taus, metric.ious)
    assert torch.equal(full, max_box_acc_hits(s, gt, metric.taus, metric.ious, max_pixels=250))
    assert full[:, 1].tolist() == [0, 1, 1, 1, 0, 1, 1, 1, 1, 1]


def test_argument_and_input_errors():
    with pytest.raises(ValueError, match=r"iou_threshold must be in \(0, 1\]"):
        WSOLLocalization(iou_threshold=0)
    with pytest.raises(ValueError, match="box_mode must be one of"):
        WSOLLocalization(box_mode="cc")
    with pytest.raises(ValueError, match="num_thresholds must be >= 1"):
        MaxBoxAccV2(num_thresholds=0)
    with pytest.raises(ValueError, match=r"scores must be in \[0, 1\]"):
        MaxBoxAccV2().update(torch.full((1, 4, 4), 2.0), torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match=r"GT boxes must be \(B, M, 4\)"):
        WSOLLocalization().update(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4))


def _ddp_worker(rank: int, world: int):
    m, gt, preds, target = loc_example()
    s, gbox = boxacc_example()
    loc, acc = WSOLLocalization(box_mode="largest"), MaxBoxAccV2(num_thresholds=10)
    for i in range(rank, 3, world):
        loc.update(m[i:i + 1], gt[i:i + 1], preds[i:i + 1], target[i:i + 1])
    for i in range(rank, 2, world):
        acc.update(s[i:i + 1], gbox[i:i + 1])
    return {k: v.item() for k, v in {**loc.compute(), **acc.compute()}.items()}


@pytest.mark.ddp
@pytest.mark.slow
def test_two_processes_equal_one():
    from tests.helpers.ddp import run_distributed

    single = _ddp_worker(0, 1)
    outs = run_distributed(_ddp_worker, 2)
    assert outs[0] == outs[1] == single
