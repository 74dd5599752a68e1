"""CCE search heuristics (MMESH, CFH, areas) and the per-sample geometry they need.

A heuristic estimates the IoU of a candidate ``F = L op R`` (L a leaf or beam formula, R a leaf c, or ``NOT c``
for AND NOT) from per-sample summaries, so that the beam search evaluates exactly (dense masks) only the
candidates whose estimate can still beat the beam's k-th best. All estimates here are vectorised over every
concept c at once, for one left formula L.

Per sample i: ``A_i`` active pixels of the unit, ``a_T,i`` area of a term, ``I_T,i = |T_i ∧ A_i|``, bounding
boxes ``box_T,i`` and largest inscribed all-ones rectangles ``rect_T,i`` (inclusive (y0, x0, y1, x1); an empty
mask has the empty box (0, 0, -1, -1), which overlaps nothing: CCE uses a 1x1 box at (0, 0) there, which only
loosens the bound).

* **MMESH** (admissible): per sample an upper bound ``Î_i`` on ``|F_i ∧ A_i|`` and a lower bound ``Ǎ_i`` on
  ``|F_i|``; ``est = ΣÎ / (|A| + ΣǍ − ΣÎ)``. OR: ``Î = min(A, I_L + I_R)``, ``Ǎ = max(a_L, a_R, a_L + a_R −
  ov(box_L, box_R), Î)``; AND: ``Î = min(I_L, I_R)``, ``Ǎ = max(ov(rect_L, rect_R), Î)``; AND NOT c:
  ``Î = min(I_L, A − I_c)``, ``Ǎ = max(a_L − ov(box_L, box_c), Î)``; the I terms are zeroed where F is
  absent (presence flags). Since ``Î ≥ I`` and ``max(Ǎ − Î, 0) ≤ |F_i| − I_i`` per sample, est ≥ IoU.
* **Scene shortcut** (MMESH and CFH): when every ``a_L,i`` or every ``a_R,i`` is 0 or H (image-level concepts
  and their negations) the per-sample counts are exact and so is the estimate.
* **CFH** (admissible, loose): the same ``Î``; ``est = ΣÎ / (|A| − ΣÎ)`` (≥ ΣÎ/|A| ≥ IoU; +inf when ΣÎ = |A|).
* **areas** (NOT admissible): ``Î`` from areas only, OR ``min(A, a_L + a_R)``, AND ``min(a_L, a_R)`` with no
  clip to ``A`` (AND NOT uses ``a_R = H − a_c``), ``est = ΣÎ / (|A| − ΣÎ)``, no scene shortcut. When ``ΣÎ > |A|``
  (any AND/AND NOT whose areas exceed the unit's activation, i.e. most candidates with large concepts) the
  estimate is *negative*, so the candidate sorts last and is pruned as soon as the beam is full, whatever
  its true IoU; when ``ΣÎ`` is small the estimate can also fall below the true IoU. It therefore prunes
  candidates with large masks that could enter the beam, and its results can differ from exhaustive search.

Estimates are not rounded (CCE rounds to 4 decimals, which can push an admissible estimate up to 5e-5 below
the true IoU and break exactness of the pruning). Integer sums are exact, so est ≥ IoU holds in floating
point too (correctly rounded division is monotone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lit_explain.concepts.index import ConceptIndex
from lit_explain.ratios import iou_from_counts

__all__ = [
    "HEURISTICS",
    "bounding_boxes",
    "inscribed_rectangles",
    "box_overlap",
    "LeafGeometry",
    "SideInfo",
    "estimate",
]

HEURISTICS = ("none", "mmesh", "cfh", "areas")  # "none": no estimate, every candidate is evaluated
_EMPTY_BOX = (0, 0, -1, -1)


# ---------------------------------------------------------------------- geometry
def bounding_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight bounding boxes of bool masks.

    Args:
        masks: (M, sh, sw) bool.

    Returns:
        (M, 4) int64 inclusive (y0, x0, y1, x1); (0, 0, -1, -1) for an empty mask.
    """
    m, sh, sw = masks.shape
    rows, cols = masks.any(2), masks.any(1)
    out = torch.tensor(_EMPTY_BOX, dtype=torch.int64).repeat(m, 1)
    nz = rows.any(1)
    if bool(nz.any()):
        r, c = rows[nz].to(torch.uint8), cols[nz].to(torch.uint8)
        out[nz, 0] = r.argmax(1)
        out[nz, 1] = c.argmax(1)
        out[nz, 2] = sh - 1 - r.flip(1).argmax(1)
        out[nz, 3] = sw - 1 - c.flip(1).argmax(1)
    return out


def inscribed_rectangles(masks: torch.Tensor, chunk_pixels: int = 1 << 24) -> torch.Tensor:
    """Largest all-ones axis-aligned rectangle inside each mask (maximal rectangle), vectorised over masks.

    The classic row-by-row dynamic programme (height of the run of ones above each cell, and the left/right
    limits of the widest rectangle of that height, each the max/min of the previous row's limit and the
    current row's run), run for all masks of a chunk at once: ``sh`` Python steps of a dozen tensor operations
    on (masks, sw) arrays, O(M·H) work in total, instead of CCE's sh×sw loop. Ties: the first maximum by
    bottom row, then left column.

    Args:
        masks: (M, sh, sw) bool.
        chunk_pixels: bound on masks-per-chunk × H (memory knob).

    Returns:
        (M, 4) int64 inclusive (y0, x0, y1, x1); (0, 0, -1, -1) for an empty mask.
    """
    m, sh, sw = masks.shape
    out = torch.tensor(_EMPTY_BOX, dtype=torch.int64).repeat(m, 1)
    step = max(1, chunk_pixels // (sh * sw))
    dt = torch.int32
    cols = torch.arange(sw, dtype=dt)
    rcols = (sw - 1) - cols
    for s0 in range(0, m, step):
        x = masks[s0 : s0 + step].permute(1, 0, 2).contiguous()  # (sh, b, sw): contiguous rows
        b = x.shape[1]
        height = torch.zeros(b, sw, dtype=dt)
        left = torch.zeros(b, sw, dtype=dt)
        right = torch.full((b, sw), sw - 1, dtype=dt)
        best = torch.zeros(b, dtype=torch.int32)
        rect = torch.tensor(_EMPTY_BOX, dtype=torch.int32).repeat(b, 1)
        for r in range(sh):
            row = x[r]
            height = torch.where(row, height + 1, 0)
            run_left = torch.where(row, -1, cols).cummax(1).values + 1  # first column of the run containing j
            run_right = (sw - 1) - (torch.where(row, -1, rcols).flip(1).cummax(1).values + 1).flip(1)
            left = torch.where(row, torch.maximum(left, run_left), 0)
            right = torch.where(row, torch.minimum(right, run_right), sw - 1)
            area = height * (right - left + 1)
            row_best, j = area.max(1)
            better = row_best > best
            if bool(better.any()):
                jj = j[better, None]
                hh = height[better].gather(1, jj)[:, 0]
                lo = left[better].gather(1, jj)[:, 0]
                hi = right[better].gather(1, jj)[:, 0]
                rect[better] = torch.stack([r - hh + 1, lo, torch.full_like(hh, r), hi], 1)
                best = torch.where(better, row_best, best)
        out[s0 : s0 + b] = rect.to(torch.int64)
    return out


def box_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pixel area of the overlap of inclusive boxes (..., 4) and (..., 4) (broadcasting), int64."""
    dy = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + 1).clamp(min=0)
    dx = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + 1).clamp(min=0)
    return dy * dx


@dataclass
class LeafGeometry:
    """Per-(image, concept) bounding boxes and largest inscribed rectangles of every concept mask.

    Built once per concept index (CCE caches the same as ``positive_rectangles.pkl`` and
    ``positive_inscripted.pkl``). Image-level concepts and concepts covering a whole image get the full box.

    Attributes:
        boxes: (N, C, 4) int16 inclusive (y0, x0, y1, x1), empty (0, 0, -1, -1).
        rects: (N, C, 4) int16, same convention.
    """

    boxes: torch.Tensor
    rects: torch.Tensor

    @classmethod
    def from_index(cls, index: ConceptIndex, chunk_pixels: int = 1 << 25) -> "LeafGeometry":
        from lit_explain.concepts.tally import image_entries

        n, c, h = index.num_images, index.num_concepts, index.pixel_size
        sh, sw = index.mask_shape
        areas = index.image_areas()
        full_box = torch.tensor([0, 0, sh - 1, sw - 1], dtype=torch.int16)
        boxes = torch.tensor(_EMPTY_BOX, dtype=torch.int16).repeat(n, c, 1)
        rects = boxes.clone()
        full = areas == h
        boxes[full] = full_box
        rects[full] = full_box
        # bounding boxes straight from the sparse entries: min/max of y and x per (image, concept)
        step_images = max(1, chunk_pixels // h)
        big = torch.iinfo(torch.int64).max
        for s0 in range(0, n, step_images):
            ids = torch.arange(s0, min(n, s0 + step_images))
            b, e = image_entries(index, ids)
            if e.numel() == 0:
                continue
            pix = index.pixel_offsets[e] % h
            key = b * c + index.pixel_concepts[e]
            y, x = pix // sw, pix % sw
            size = len(ids) * c
            lo_y = torch.full((size,), big).scatter_reduce(0, key, y, "amin")
            lo_x = torch.full((size,), big).scatter_reduce(0, key, x, "amin")
            hi_y = torch.full((size,), -1, dtype=torch.int64).scatter_reduce(0, key, y, "amax")
            hi_x = torch.full((size,), -1, dtype=torch.int64).scatter_reduce(0, key, x, "amax")
            present = hi_y >= 0
            blk = torch.stack([lo_y, lo_x, hi_y, hi_x], 1)[present].to(torch.int16)
            flat_boxes = boxes[s0 : s0 + len(ids)].reshape(size, 4)
            flat_boxes[present] = blk
            boxes[s0 : s0 + len(ids)] = flat_boxes.view(len(ids), c, 4)
            # inscribed rectangles: dense masks of the partial (image, concept) pairs of this chunk only
            part = (areas[ids] > 0) & (areas[ids] < h)  # (B, C)
            pb, pc = torch.nonzero(part, as_tuple=True)
            if pb.numel() == 0:
                continue
            pair_id = torch.full((len(ids), c), -1, dtype=torch.int64)
            pair_id[pb, pc] = torch.arange(len(pb))
            pid = pair_id[b, index.pixel_concepts[e]]
            keep = pid >= 0
            for q0 in range(0, len(pb), max(1, chunk_pixels // h)):
                q1 = min(len(pb), q0 + max(1, chunk_pixels // h))
                sel = keep & (pid >= q0) & (pid < q1)
                dense = torch.zeros((q1 - q0) * h, dtype=torch.bool)
                dense[(pid[sel] - q0) * h + pix[sel]] = True
                r = inscribed_rectangles(dense.view(q1 - q0, sh, sw), chunk_pixels).to(torch.int16)
                rects[s0 + pb[q0:q1], pc[q0:q1]] = r
        return cls(boxes, rects)


# ---------------------------------------------------------------------- estimates
@dataclass
class SideInfo:
    """Per-sample summaries of the left term L (a leaf or a beam formula).

    Attributes:
        area: (N,) int64 ``a_L,i``.
        inter: (N,) int64 ``I_L,i``.
        box: (N, 4) int64 bounding boxes (MMESH only, else None).
        rect: (N, 4) int64 inscribed rectangles (MMESH only, else None).
    """

    area: torch.Tensor
    inter: torch.Tensor
    box: torch.Tensor | None = None
    rect: torch.Tensor | None = None


def estimate(
    heuristic: str,
    op: str,
    left: SideInfo,
    right_area: torch.Tensor,
    right_inter: torch.Tensor,
    act_areas: torch.Tensor,
    total: int,
    pixel_size: int,
    right_scene: torch.Tensor,
    right_box: torch.Tensor | None = None,
    right_rect: torch.Tensor | None = None,
) -> torch.Tensor:
    """IoU estimates of ``L op c`` for a block of concepts c (see the module docstring for the formulas).

    Args:
        heuristic: ``mmesh``, ``cfh`` or ``areas``.
        op: ``or``, ``and`` or ``and_not``.
        left: summaries of L.
        right_area: (N, K) int64 ``a_c,i`` of the K concepts (of c itself, also for ``and_not``).
        right_inter: (N, K) int64 ``I_c,i``.
        act_areas: (N,) int64 ``A_i``.
        total: ``|A|`` (> 0).
        pixel_size: H.
        right_scene: (K,) bool, concept areas all in {0, H}.
        right_box, right_rect: (N, K, 4) int64 (MMESH only).

    Returns:
        (K,) float64 estimates (CFH/areas may be +inf or negative).
    """
    H = pixel_size
    A = act_areas[:, None]
    aL, iL = left.area[:, None], left.inter[:, None]
    if op == "and_not":
        aR, iR = H - right_area, A - right_inter  # the NOT c term
        in_R = right_area < H
    else:
        aR, iR = right_area, right_inter
        in_R = right_area > 0
    in_L = aL > 0
    if heuristic not in ESTIMATORS:
        raise ValueError(f"unknown heuristic {heuristic!r}; expected one of {list(ESTIMATORS)}")
    estimator, scene_shortcut = ESTIMATORS[heuristic]
    if op == "or":
        iLm, iRm = iL, iR  # OR is present wherever either side is, and I > 0 implies presence
    else:
        iLm, iRm = iL * in_R, iR * in_L
    inter_hat = torch.minimum(A, iLm + iRm) if op == "or" else torch.minimum(iLm, iRm)
    t = _Terms(op, left, A, aL, aR, inter_hat, inter_hat.sum(0), total, right_box, right_rect)
    est = estimator(t)
    if not scene_shortcut:
        return est
    # scene shortcut: exact per-sample counts when one side is all-or-nothing in every image
    left_scene = bool(((left.area == 0) | (left.area == H)).all())
    scene = right_scene.clone() | left_scene
    if bool(scene.any()):
        if op == "or":
            area_s = torch.maximum(aL, aR)
            inter_s = torch.where(area_s == H, A, iLm + iRm)
        else:
            area_s = torch.minimum(aL, aR)
            inter_s = torch.minimum(iLm, iRm)
        exact = iou_from_counts(inter_s.sum(0), total, area_s.sum(0))
        est = torch.where(scene, exact, est)
    return est


@dataclass
class _Terms:
    """What every estimator reads: the operator, L's summaries, per-image areas (N, 1)/(N, K) of A, L and the
    right term R (c, or NOT c), the per-image bound of the intersection and its sum over images."""

    op: str
    left: SideInfo
    A: torch.Tensor
    aL: torch.Tensor
    aR: torch.Tensor
    inter_hat: torch.Tensor
    num: torch.Tensor
    total: int
    right_box: torch.Tensor | None
    right_rect: torch.Tensor | None


def _areas_estimate(t: _Terms) -> torch.Tensor:
    """Areas only (no intersections): not admissible, may be negative or inf."""
    inter_hat = torch.minimum(t.A, t.aL + t.aR) if t.op == "or" else torch.minimum(t.aL, t.aR)
    num = inter_hat.sum(0).to(torch.float64)
    return num / (t.total - num)


def _cfh_estimate(t: _Terms) -> torch.Tensor:
    """Coordinates-free: the intersection bound over ``|A| - bound`` (an upper bound of the IoU)."""
    return t.num.to(torch.float64) / (t.total - t.num).to(torch.float64)


def _mmesh_estimate(t: _Terms) -> torch.Tensor:
    """MMESH: the intersection bound over a lower bound of the union from boxes and inscribed rectangles."""
    aL, aR = t.aL, t.aR
    if t.op == "or":
        area_lo = torch.maximum(aL, aR)
        area_lo = torch.maximum(area_lo, aL + aR - box_overlap(t.left.box[:, None, :], t.right_box))
    elif t.op == "and":
        area_lo = box_overlap(t.left.rect[:, None, :], t.right_rect)
    else:
        area_lo = aL - box_overlap(t.left.box[:, None, :], t.right_box)
    area_lo = torch.maximum(area_lo, t.inter_hat)
    return iou_from_counts(t.num, t.total, area_lo.sum(0))  # union >= |A| > 0: area_lo >= inter_hat


#: Registry of the heuristic estimates: name -> (estimate, whether the exact scene shortcut refines it).
ESTIMATORS: dict = {
    "mmesh": (_mmesh_estimate, True),
    "cfh": (_cfh_estimate, True),
    "areas": (_areas_estimate, False),
}
