"""WSOL metrics as torchmetrics Metrics with summed integer states, so 1 and N processes give identical numbers.

Functional twin and the box / IoU conventions: :mod:`lit_explain.metrics.functional.wsol`.

* :class:`WSOLLocalization`: GT-known Loc and Top-1 Loc of one predicted box per image (from a binary mask:
  all positive pixels as HINT, or the largest connected component).
* :class:`MaxBoxAccV2`: the threshold sweep over continuous score maps (Choe et al., CVPR 2020).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric

from lit_explain.metrics.functional.wsol import (BOX_MODES, GT_MODES, boxes_from_masks, localization_iou,
                                                 max_box_acc_hits)

__all__ = ["WSOLLocalization", "MaxBoxAccV2"]


class WSOLLocalization(Metric):
    """GT-known Loc (IoU ≥ ``iou_threshold`` with the GT) and Top-1 Loc (also the top-1 class is right).

    Args:
        iou_threshold: in (0, 1]; 0.5 is the standard.
        box_mode: ``"all"`` (tight box of every positive pixel, HINT) or ``"largest"`` (largest component).
        gt_mode: ``"max"`` (best single GT box, standard) or ``"union"`` (pixel union of the GT boxes, HINT).

    ``update(masks, gt_boxes, preds=None, target=None)``: masks (B, H, W) bool in the image's pixel frame,
    gt_boxes (B, M, 4) padded with −1 rows, preds/target (B,) class indices (Top-1 Loc counts only batches
    that pass both). ``compute()`` returns ``{"gt_known_loc", "top1_loc", "mean_iou", "images"}`` (float64;
    top1_loc is NaN when no batch had predictions).
    """

    full_state_update = False

    def __init__(self, iou_threshold: float = 0.5, box_mode: str = "all", gt_mode: str = "max", **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"WSOLLocalization: iou_threshold must be in (0, 1], got {iou_threshold}")
        if box_mode not in BOX_MODES:
            raise ValueError(f"WSOLLocalization: box_mode must be one of {BOX_MODES}, got {box_mode!r}")
        if gt_mode not in GT_MODES:
            raise ValueError(f"WSOLLocalization: gt_mode must be one of {GT_MODES}, got {gt_mode!r}")
        self.iou_threshold, self.box_mode, self.gt_mode = float(iou_threshold), box_mode, gt_mode
        for name in ("gt_known_hits", "top1_hits", "top1_images", "images"):
            self.add_state(name, torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        # IoU sum in integer millionths: exact and order-independent under DDP (a float sum is not)
        self.add_state("iou_micro", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, masks: torch.Tensor, gt_boxes: torch.Tensor, preds: torch.Tensor | None = None,
               target: torch.Tensor | None = None) -> None:
        if gt_boxes.shape[0] != masks.shape[0]:
            raise ValueError(f"WSOLLocalization: masks {tuple(masks.shape)} and gt_boxes {tuple(gt_boxes.shape)} "
                             "disagree on the batch size")
        boxes, found = boxes_from_masks(masks, self.box_mode)
        iou = localization_iou(boxes, found, gt_boxes.cpu(), self.gt_mode, tuple(masks.shape[1:]))
        ok = iou >= self.iou_threshold
        self.images += masks.shape[0]
        self.gt_known_hits += int(ok.sum())
        self.iou_micro += int(torch.round(iou * 1e6).sum())
        if (preds is None) != (target is None):
            raise ValueError("WSOLLocalization: pass both preds and target (for Top-1 Loc) or neither")
        if preds is not None:
            correct = preds.detach().cpu().reshape(-1) == target.detach().cpu().reshape(-1)
            if correct.shape[0] != masks.shape[0]:
                raise ValueError(f"WSOLLocalization: preds/target need {masks.shape[0]} entries, got {correct.shape[0]}")
            self.top1_hits += int((ok & correct).sum())
            self.top1_images += masks.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.images.double().clamp(min=1)
        top = self.top1_hits.double() / self.top1_images.double() if self.top1_images > 0 else torch.tensor(float("nan"), dtype=torch.float64)
        return {"gt_known_loc": self.gt_known_hits.double() / n, "top1_loc": top,
                "mean_iou": self.iou_micro.double() / 1e6 / n, "images": self.images.clone()}


class MaxBoxAccV2(Metric):
    """MaxBoxAccV2: mean over IoU thresholds δ of the best box accuracy over score thresholds τ.

    Args:
        iou_thresholds: δ values in (0, 1] (default 0.3, 0.5, 0.7).
        num_thresholds: τ grid size (>= 1): τ = 0, 1/T, ..., (T−1)/T (the reference uses 0.01 steps).

    ``update(scores, gt_boxes)``: scores (B, H, W) in [0, 1] (normalise each map first), gt_boxes (B, M, 4)
    padded with −1. ``compute()`` returns ``{"maxboxacc_v2", "maxboxacc@<δ>" per δ, "best_threshold@<δ>"}``.
    """

    full_state_update = False

    def __init__(self, iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7), num_thresholds: int = 100, **kwargs) -> None:
        super().__init__(**kwargs)
        ious = [float(d) for d in iou_thresholds]
        if not ious or not all(0.0 < d <= 1.0 for d in ious):
            raise ValueError(f"MaxBoxAccV2: iou_thresholds must be a non-empty list in (0, 1], got {iou_thresholds}")
        if int(num_thresholds) < 1:
            raise ValueError(f"MaxBoxAccV2: num_thresholds must be >= 1, got {num_thresholds}")
        self.ious = torch.tensor(ious, dtype=torch.float64)
        self.taus = torch.arange(int(num_thresholds), dtype=torch.float64) / int(num_thresholds)
        self.add_state("hits", torch.zeros(int(num_thresholds), len(ious), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, gt_boxes: torch.Tensor) -> None:
        if gt_boxes.shape[0] != scores.shape[0]:
            raise ValueError(f"MaxBoxAccV2: scores {tuple(scores.shape)} and gt_boxes {tuple(gt_boxes.shape)} "
                             "disagree on the batch size")
        if scores.numel() and (float(scores.min()) < 0 or float(scores.max()) > 1):
            raise ValueError(f"MaxBoxAccV2: scores must be in [0, 1], got range [{float(scores.min()):.3g}, "
                             f"{float(scores.max()):.3g}]; normalise each map (e.g. min-max) first")
        self.hits += max_box_acc_hits(scores, gt_boxes, self.taus, self.ious).to(self.hits.device)
        self.images += scores.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        acc = self.hits.double() / self.images.double().clamp(min=1)  # (T, D)
        best, arg = acc.max(0)
        out = {"maxboxacc_v2": best.mean()}
        for d, b, a in zip(self.ious.tolist(), best, arg):
            out[f"maxboxacc@{d:g}"] = b
            out[f"best_threshold@{d:g}"] = self.taus[a]
        return out
