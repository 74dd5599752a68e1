"""Exact counting engine of the compositional search: per-unit tallies and per-formula concept intersections.

Everything the search and the CCE metrics need is a pixel count over the dataset, and all of it follows from
the sparse :class:`~lit_explain.concepts.index.ConceptIndex` without ever materialising a dense mask per concept
(dissection.md §3.7, §7 "Memory"):

* :class:`SearchContext` holds what depends on the index only: per-(image, concept) areas, which images a
  concept covers fully, and (lazily) a concept-major view of the sparse entries for dense leaf masks.
* :class:`UnitTally` holds what depends on one unit bitmap A (one (unit, range)): per-image active areas
  ``A_i`` and per-(image, concept) intersections ``I[i, c] = |A_i ∧ c_i|`` (one gather + one bincount).
* :func:`formula_stats` is the exact all-candidate pass of one formula f: per-image ``|f_i|``,
  ``|f_i ∧ A_i|`` and, for every concept c at once, ``P_c = |f ∧ c|`` and ``Q_c = |f ∧ c ∧ A|``. From these the
  IoU of ``f OR c``, ``f AND c`` and ``f AND NOT c`` follows for all c (:func:`extension_counts`).

The formula pass only touches the images where f is *partial* (neither empty nor full by the three-valued
status of its leaves); images where f is full contribute whole rows of the precomputed per-image tables, and
images where it is empty contribute nothing. Its cost is one gather over the sparse entries of those images,
so it does not grow with the number of concepts and never builds an (N, H) mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lit_explain.concepts.formulas import And, Formula, Leaf, Not, Or
from lit_explain.concepts.index import ConceptIndex

__all__ = [
    "SearchContext",
    "UnitTally",
    "FormulaStats",
    "formula_stats",
    "extension_counts",
    "iou_from_counts",
    "image_entries",
]

EMPTY, FULL, PARTIAL = 0, 1, 2


def image_entries(index: ConceptIndex, image_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse entries of the given images: (local image position b (E',), global entry index e (E',)).

    ``index.pixel_offsets[e]`` and ``index.pixel_concepts[e]`` give the flat position and concept; entries of
    one image are contiguous (the index is CSR over images), so this is pure index arithmetic.
    """
    image_ids = torch.as_tensor(image_ids, dtype=torch.int64)
    starts, ends = index.image_ptr[image_ids], index.image_ptr[image_ids + 1]
    counts = ends - starts
    total = int(counts.sum())
    if total == 0:
        z = torch.zeros(0, dtype=torch.int64)
        return z, z
    b = torch.repeat_interleave(counts)  # image position of each entry (single-argument form: fast)
    first = (starts - (torch.cumsum(counts, 0) - counts))[b]
    return b, first + torch.arange(total)


class SearchContext:
    """Index-level data shared by every search on one :class:`ConceptIndex` (build once, reuse for all units).

    Args:
        index: the concept index of the probing dataset.
        chunk_pixels: bound on B*H for the dense per-image buffers of a formula pass (memory knob).
    """

    def __init__(self, index: ConceptIndex, chunk_pixels: int = 1 << 24) -> None:
        self.index = index
        self.num_images = index.num_images
        self.num_concepts = index.num_concepts
        self.pixel_size = index.pixel_size
        self.chunk_pixels = int(chunk_pixels)
        #: (N, C) int32 per-image concept areas (image-level concepts count H).
        self.image_areas = index.image_areas()
        #: (C,) int64 total concept areas.
        self.concept_areas = self.image_areas.sum(0, dtype=torch.int64)
        #: (C,) bool: concept areas are all 0 or H (image-level concepts, and pixel concepts that happen to be).
        self.scene_like = ((self.image_areas == 0) | (self.image_areas == self.pixel_size)).all(0)
        self._postings: tuple[torch.Tensor, torch.Tensor] | None = None
        self.geometry = None  # heuristics.LeafGeometry, built on demand by the mmesh scorer

    # ------------------------------------------------------------------ per-image status of a formula
    def status(self, f: Formula) -> torch.Tensor:
        """(N,) int8 three-valued status of f per image: 0 empty, 1 full, 2 partial (or undecided)."""
        if isinstance(f, Leaf):
            a = self.image_areas[:, f.concept]
            out = torch.full((self.num_images,), PARTIAL, dtype=torch.int8)
            out[a == 0] = EMPTY
            out[a == self.pixel_size] = FULL
            return out
        if isinstance(f, Not):
            s = self.status(f.operand)
            out = s.clone()
            out[s == EMPTY] = FULL
            out[s == FULL] = EMPTY
            return out
        if isinstance(f, (And, Or)):
            left, right = self.status(f.left), self.status(f.right)
            absorbing, neutral = (EMPTY, FULL) if isinstance(f, And) else (FULL, EMPTY)
            out = torch.full_like(left, PARTIAL)
            out[(left == neutral) & (right == neutral)] = neutral
            out[(left == absorbing) | (right == absorbing)] = absorbing
            return out
        raise TypeError(f"not a formula: {f!r}")

    # ------------------------------------------------------------------ dense masks (reference paths)
    def _concept_postings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Concept-major view of the pixel entries: (ptr (C+1,), flat offsets (E,)). Built once (radix sort)."""
        if self._postings is None:
            con = self.index.pixel_concepts.numpy()
            small = con.astype(np.int16) if self.num_concepts < (1 << 15) else con
            order = torch.from_numpy(np.argsort(small, kind="stable"))
            ptr = torch.zeros(self.num_concepts + 1, dtype=torch.int64)
            ptr[1:] = torch.cumsum(torch.bincount(self.index.pixel_concepts, minlength=self.num_concepts), 0)
            self._postings = (ptr, self.index.pixel_offsets[order])
        return self._postings

    def leaf_mask(self, concept: int) -> torch.Tensor:
        """Dense (N, H) bool mask of one concept over the whole dataset (reference and heuristic paths only)."""
        ptr, offsets = self._concept_postings()
        out = torch.zeros(self.num_images * self.pixel_size, dtype=torch.bool)
        out[offsets[ptr[concept] : ptr[concept + 1]]] = True
        out = out.view(self.num_images, self.pixel_size)
        out[self.index.image_concepts[:, concept]] = True
        return out

    def formula_mask(self, f: Formula, cache: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Dense (N, H) bool mask of a formula over the whole dataset (reference and heuristic paths only)."""
        leaves = {c: (cache[c] if cache is not None and c in cache else self.leaf_mask(c)) for c in f.concepts}
        return f.evaluate(leaves)


@dataclass
class UnitTally:
    """Statistics of one dataset bitmap A (one (unit, range)) against every concept.

    Attributes:
        bitmap: (N, H) bool, A.
        act_areas: (N,) int64, ``A_i``.
        total: ``|A|``.
        image_inter: (N, C) int64, ``I[i, c] = |A_i ∧ c_i|``.
        unary_inter: (C,) int64, ``|A ∧ c|``.
    """

    bitmap: torch.Tensor
    act_areas: torch.Tensor
    total: int
    image_inter: torch.Tensor
    unary_inter: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.unary_inter = self.image_inter.sum(0)

    @classmethod
    def build(cls, ctx: SearchContext, bitmap: torch.Tensor) -> "UnitTally":
        """One gather of A at the sparse entries of the images where A fires, one bincount."""
        n, h, c = ctx.num_images, ctx.pixel_size, ctx.num_concepts
        bitmap = torch.as_tensor(bitmap)
        if bitmap.dtype != torch.bool:
            raise TypeError(f"bitmap must be bool, got {bitmap.dtype}")
        bitmap = bitmap.reshape(bitmap.shape[0], -1)
        if tuple(bitmap.shape) != (n, h):
            raise ValueError(
                f"bitmap has shape {tuple(bitmap.shape)}, expected (num_images, sh*sw) = ({n}, {h}) of the concept index"
            )
        act_areas = bitmap.sum(1, dtype=torch.int64)
        fired = torch.nonzero(act_areas > 0).flatten()
        image_inter = torch.zeros(n, c, dtype=torch.int64)
        if fired.numel():
            flat = bitmap.reshape(-1)
            for start in range(0, len(fired), max(1, ctx.chunk_pixels // h)):
                ids = fired[start : start + max(1, ctx.chunk_pixels // h)]
                b, e = image_entries(ctx.index, ids)
                if e.numel() == 0:
                    continue
                hit = flat[ctx.index.pixel_offsets[e]]
                key = ids[b[hit]] * c + ctx.index.pixel_concepts[e[hit]]
                image_inter.view(-1).add_(torch.bincount(key, minlength=n * c))
            img_level = ctx.index.image_concepts
            if bool(img_level.any()):
                image_inter = torch.where(img_level, act_areas[:, None], image_inter)
        return cls(bitmap, act_areas, int(act_areas.sum()), image_inter)


@dataclass
class FormulaStats:
    """Exact counts of one formula f against a bitmap A and every concept c.

    Attributes:
        image_area: (N,) int64 ``|f_i|``.
        image_inter: (N,) int64 ``|f_i ∧ A_i|`` (zeros when computed without a tally).
        area: ``|f|``.  inter: ``|f ∧ A|``.
        concept_area: (C,) int64 ``P_c = |f ∧ c|`` (None when not requested).
        concept_inter: (C,) int64 ``Q_c = |f ∧ c ∧ A|`` (None when not requested).
    """

    image_area: torch.Tensor
    image_inter: torch.Tensor
    concept_area: torch.Tensor | None
    concept_inter: torch.Tensor | None

    @property
    def area(self) -> int:
        return int(self.image_area.sum())

    @property
    def inter(self) -> int:
        return int(self.image_inter.sum())


def formula_stats(
    ctx: SearchContext, f: Formula, tally: UnitTally | None = None, with_concepts: bool = True
) -> FormulaStats:
    """Exact per-image and per-concept counts of a formula (module docstring; dissection.md §3.7).

    Args:
        ctx: index context.
        f: any formula.
        tally: the unit's tally; None computes areas only (``image_inter``/``concept_inter`` are zero).
        with_concepts: also compute ``P_c`` and ``Q_c`` for every concept (the all-candidate pass).

    Returns:
        :class:`FormulaStats`.
    """
    index, n, h, c = ctx.index, ctx.num_images, ctx.pixel_size, ctx.num_concepts
    status = ctx.status(f)
    full = torch.nonzero(status == FULL).flatten()
    partial = torch.nonzero(status == PARTIAL).flatten()
    image_area = torch.zeros(n, dtype=torch.int64)
    image_inter = torch.zeros(n, dtype=torch.int64)
    image_area[full] = h
    if tally is not None:
        image_inter[full] = tally.act_areas[full]
    P = Q = None
    if with_concepts:
        P = ctx.image_areas[full].sum(0, dtype=torch.int64)
        Q = tally.image_inter[full].sum(0) if tally is not None else torch.zeros(c, dtype=torch.int64)
    leaves = sorted(f.concepts)
    leaf_t = torch.tensor(leaves, dtype=torch.int64)
    lut = torch.full((c,), -1, dtype=torch.int64)
    lut[leaf_t] = torch.arange(len(leaves))
    step = max(1, ctx.chunk_pixels // (h * (len(leaves) + 2)))
    for start in range(0, len(partial), step):
        ids = partial[start : start + step]
        bsz = len(ids)
        b, e = image_entries(index, ids)
        con = index.pixel_concepts[e]
        local = b * h + index.pixel_offsets[e] % h  # flat position in the (B, H) chunk buffers
        # dense masks of the formula's leaves on these images only
        dense = torch.zeros(len(leaves), bsz * h, dtype=torch.bool)
        k = lut[con]
        sel = k >= 0
        dense[k[sel], local[sel]] = True
        dense = dense.view(len(leaves), bsz, h)
        img_level = index.image_concepts[ids]  # (B, C)
        dense |= img_level[:, leaf_t].T[:, :, None]
        fm = f.evaluate({cc: dense[j] for j, cc in enumerate(leaves)})  # (B, H)
        image_area[ids] = fm.sum(1, dtype=torch.int64)
        fa = None
        if tally is not None:
            fa = fm & tally.bitmap[ids]
            image_inter[ids] = fa.sum(1, dtype=torch.int64)
        if with_concepts:
            hit = fm.view(-1)[local]
            P += torch.bincount(con[hit], minlength=c)
            if tally is not None:
                hit_a = fa.view(-1)[local]
                Q += torch.bincount(con[hit_a], minlength=c)
            if bool(img_level.any()):
                lvl = img_level.to(torch.float64)
                P += (image_area[ids].to(torch.float64) @ lvl).round().to(torch.int64)
                if tally is not None:
                    Q += (image_inter[ids].to(torch.float64) @ lvl).round().to(torch.int64)
    return FormulaStats(image_area, image_inter, P, Q)


def extension_counts(
    stats: FormulaStats, ctx: SearchContext, tally: UnitTally
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (intersection, area) with A of ``f OR c``, ``f AND c``, ``f AND NOT c`` for every concept c.

    Returns:
        inter, area: (3, C) int64 each, rows in :data:`~lit_explain.concepts.formulas.OPS` order.
    """
    P, Q = stats.concept_area, stats.concept_inter
    fa, fi = stats.area, stats.inter
    inter = torch.stack([fi + tally.unary_inter - Q, Q, fi - Q])
    area = torch.stack([fa + ctx.concept_areas - P, P, fa - P])
    return inter, area


def iou_from_counts(inter: torch.Tensor, area: torch.Tensor, total: int) -> torch.Tensor:
    """Dataset-level IoU ``inter / (|A| + area - inter)`` as float64, 0 where the union is empty."""
    union = (total + area - inter).to(torch.float64)
    return torch.where(union > 0, inter.to(torch.float64) / union.clamp(min=1), torch.zeros_like(union))
