"""Weakly supervised object localisation (WSOL), functional: boxes from masks, box IoU, GT-known / Top-1 Loc
and the per-threshold hits of MaxBoxAccV2. Plain tensor math, vectorised over the batch.

Box convention: ``(x0, y0, x1, y1)`` in continuous pixel coordinates of the (transformed) image, x1/y1
exclusive, so a box covering pixel columns 2..4 is x0 = 2, x1 = 5 and its area is (x1 − x0)(y1 − y0).
Ground-truth boxes come padded as (B, M, 4) with rows of −1 after each image's last box.

* GT-known Loc: the predicted box's IoU with some GT box is ≥ 0.5 (class ignored); HINT's notebooks use
  the *union* of the GT boxes as one pixel mask instead (``gt_mode="union"``, also supported).
* Top-1 Loc: GT-known Loc and the top-1 class prediction is correct.
* MaxBoxAccV2 (Choe et al., CVPR 2020): score maps in [0, 1] are thresholded at every τ of a grid; each
  connected component (8-connectivity; the reference uses OpenCV contours, which agree for solid blobs) gives
  a box, and an image counts as a hit at (τ, δ) when the best IoU over its component boxes and GT boxes is
  ≥ δ. BoxAcc(τ, δ) = hits / images; MaxBoxAccV2 = mean over δ ∈ {0.3, 0.5, 0.7} of max over τ.

Connected components use ``scipy.ndimage.label`` on the whole stack of masks at once (a structure that does
not connect neighbouring images), and component boxes come from ``numpy.minimum.at`` / ``maximum.at`` over
the labels, so there is no loop over images or components.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ["BOX_MODES", "GT_MODES", "boxes_from_masks", "component_boxes", "box_iou", "boxes_to_masks",
           "localization_iou", "max_box_acc_hits"]

BOX_MODES = ("all", "largest")
GT_MODES = ("max", "union")
_EIGHT = np.zeros((3, 3, 3), dtype=bool)
_EIGHT[1] = True  # 8-connected within an image, never across the stack


def _check_masks(masks: torch.Tensor, name: str = "masks") -> None:
    if masks.ndim != 3:
        raise ValueError(f"{name} must be (B, H, W), got {tuple(masks.shape)}")


def _tight_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W) bool -> ((B, 4) float64 tight boxes, (B,) bool non-empty); empty masks get a zero box."""
    rows, cols = masks.any(2), masks.any(1)
    found = rows.any(1)
    H, W = masks.shape[1:]
    y0 = rows.argmax(1)
    y1 = H - rows[:, ::-1].argmax(1)
    x0 = cols.argmax(1)
    x1 = W - cols[:, ::-1].argmax(1)
    boxes = np.stack([x0, y0, x1, y1], 1).astype(np.float64) * found[:, None]
    return boxes, found


def _largest_component(masks: np.ndarray) -> np.ndarray:
    """(B, H, W) bool -> the largest 8-connected component of each mask (ties: the lower label)."""
    labels, n = ndimage.label(masks, structure=_EIGHT)
    if n == 0:
        return masks.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    img_of = np.zeros(n + 1, dtype=np.int64)
    img_of[labels.ravel()] = np.repeat(np.arange(masks.shape[0]), masks[0].size)
    ids = np.arange(1, n + 1)
    order = np.lexsort((ids, -sizes[1:], img_of[1:]))  # by image, then size descending, then label
    first = np.ones(n, dtype=bool)
    first[1:] = img_of[1:][order][1:] != img_of[1:][order][:-1]
    best = np.zeros(masks.shape[0], dtype=np.int64)
    best[img_of[1:][order][first]] = ids[order][first]
    return (labels == best[:, None, None]) & (labels > 0)


def boxes_from_masks(masks: torch.Tensor, mode: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted box of each mask.

    Args:
        masks: (B, H, W) bool, e.g. the concept map's positive pixels upsampled to the image.
        mode: ``"all"`` (HINT: the tight box of every positive pixel) or ``"largest"`` (of the largest
            8-connected component).

    Returns:
        ((B, 4) float64 boxes, (B,) bool: the mask was non-empty). Empty masks get a zero box (IoU 0).
    """
    if mode not in BOX_MODES:
        raise ValueError(f"boxes_from_masks: mode must be one of {BOX_MODES}, got {mode!r}")
    _check_masks(masks)
    m = masks.detach().bool().cpu().numpy()
    if mode == "largest":
        m = _largest_component(m)
    boxes, found = _tight_boxes(m)
    return torch.from_numpy(boxes), torch.from_numpy(found)


def component_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of every 8-connected component of a stack of masks.

    Args:
        masks: (S, H, W) bool.

    Returns:
        ((N, 4) float64 boxes, (N,) int64 index of the mask each component lies in), components in label order.
    """
    _check_masks(masks)
    m = masks.detach().bool().cpu().numpy()
    labels, n = ndimage.label(m, structure=_EIGHT)
    S, H, W = m.shape
    lab = labels.ravel()
    keep = lab > 0
    lab = lab[keep] - 1
    flat = np.flatnonzero(keep)
    s, rem = np.divmod(flat, H * W)
    r, c = np.divmod(rem, W)
    x0 = np.full(n, W, dtype=np.int64)
    y0 = np.full(n, H, dtype=np.int64)
    x1 = np.zeros(n, dtype=np.int64)
    y1 = np.zeros(n, dtype=np.int64)
    slice_of = np.zeros(n, dtype=np.int64)
    np.minimum.at(x0, lab, c)
    np.minimum.at(y0, lab, r)
    np.maximum.at(x1, lab, c + 1)
    np.maximum.at(y1, lab, r + 1)
    slice_of[lab] = s
    return torch.from_numpy(np.stack([x0, y0, x1, y1], 1).astype(np.float64)), torch.from_numpy(slice_of)


def box_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(..., 4) x (..., 4) -> (...) IoU of boxes (broadcast); zero-area unions give 0."""
    pred, gt = pred.to(torch.float64), gt.to(torch.float64)
    iw = (torch.minimum(pred[..., 2], gt[..., 2]) - torch.maximum(pred[..., 0], gt[..., 0])).clamp(min=0)
    ih = (torch.minimum(pred[..., 3], gt[..., 3]) - torch.maximum(pred[..., 1], gt[..., 1])).clamp(min=0)
    inter = iw * ih
    area = lambda b: (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)  # noqa: E731
    union = area(pred) + area(gt) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def _gt_valid(gt: torch.Tensor) -> torch.Tensor:
    if gt.ndim != 3 or gt.shape[-1] != 4:
        raise ValueError(f"GT boxes must be (B, M, 4) padded with -1 rows, got {tuple(gt.shape)}")
    return ~(gt == -1).all(-1)


def boxes_to_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, M, 4) boxes (−1 rows ignored) -> (B, H, W) bool union of the boxes: pixel (r, c) is inside a box
    when its centre (c + ½, r + ½) lies in [x0, x1) × [y0, y1)."""
    valid = _gt_valid(boxes)
    cx = torch.arange(width, dtype=torch.float64) + 0.5
    cy = torch.arange(height, dtype=torch.float64) + 0.5
    b = boxes.to(torch.float64)
    inx = (cx >= b[..., 0:1]) & (cx < b[..., 2:3])  # (B, M, W)
    iny = (cy >= b[..., 1:2]) & (cy < b[..., 3:4])  # (B, M, H)
    inside = iny[..., :, None] & inx[..., None, :] & valid[..., None, None]
    return inside.any(1)


def localization_iou(pred: torch.Tensor, found: torch.Tensor, gt: torch.Tensor, gt_mode: str = "max",
                     image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """(B,) IoU of each predicted box with its GT: the best single GT box (``"max"``) or the pixel union of
    all GT boxes (``"union"``, HINT's notebooks; needs ``image_size=(H, W)``). Images without a predicted box
    (``found`` False) or without a GT box score 0."""
    if gt_mode not in GT_MODES:
        raise ValueError(f"localization_iou: gt_mode must be one of {GT_MODES}, got {gt_mode!r}")
    valid = _gt_valid(gt)
    if gt_mode == "max":
        ious = box_iou(pred[:, None, :], gt) * valid
        best = ious.max(1).values if gt.shape[1] else torch.zeros(pred.shape[0], dtype=torch.float64)
    else:
        if image_size is None:
            raise ValueError("localization_iou: gt_mode='union' needs image_size=(H, W)")
        H, W = image_size
        gm = boxes_to_masks(gt, H, W)
        pm = boxes_to_masks(pred[:, None, :], H, W)
        inter = (gm & pm).flatten(1).sum(1).double()
        union = (gm | pm).flatten(1).sum(1).double()
        best = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
    return best * found.to(best.device)


def max_box_acc_hits(scores: torch.Tensor, gt: torch.Tensor, thresholds: torch.Tensor,
                     iou_thresholds: torch.Tensor, max_pixels: int = 1 << 24) -> torch.Tensor:
    """(T, D) int64 number of images whose best component box reaches IoU ≥ δ_d at score threshold τ_t.

    Args:
        scores: (B, H, W) score maps in [0, 1] (e.g. normalised concept or CAM maps at image size).
        gt: (B, M, 4) GT boxes padded with −1 rows.
        thresholds: (T,) τ grid; the mask at τ is ``scores >= τ``.
        iou_thresholds: (D,) δ values.
        max_pixels: thresholds are processed in chunks of at most this many mask pixels (memory bound).
    """
    _check_masks(scores, "scores")
    per_chunk = max(1, int(max_pixels) // max(scores.numel(), 1))
    return torch.cat([_hits(scores, gt, thresholds[s:s + per_chunk], iou_thresholds)
                      for s in range(0, thresholds.numel(), per_chunk)])


def _hits(scores: torch.Tensor, gt: torch.Tensor, thresholds: torch.Tensor, iou_thresholds: torch.Tensor) -> torch.Tensor:
    B = scores.shape[0]
    T = thresholds.numel()
    masks = (scores.detach().cpu()[None] >= thresholds.cpu()[:, None, None, None]).reshape(T * B, *scores.shape[1:])
    boxes, where = component_boxes(masks)  # components of every (τ, image) slice
    valid = _gt_valid(gt).cpu()
    ious = box_iou(boxes[:, None, :], gt.cpu()[where % B]) * valid[where % B]  # (N, M)
    best_comp = ious.max(1).values if gt.shape[1] else torch.zeros(boxes.shape[0], dtype=torch.float64)
    best = torch.zeros(T * B, dtype=torch.float64)
    best.scatter_reduce_(0, where, best_comp, reduce="amax")
    hit = best.reshape(T, B)[:, :, None] >= iou_thresholds.cpu().double()[None, None, :]  # (T, B, D)
    return hit.sum(1)
