"""Exact counting engine of the compositional search: per-unit tallies and per-formula concept intersections.

Everything the search and the CCE metrics need is a pixel count over the dataset, and all of it follows from
the sparse :class:`~lit_explain.concepts.index.ConceptIndex` without ever materialising a dense mask per concept:

* :class:`SearchContext` holds what depends on the index only: per-(image, concept) areas, which images a
  concept covers fully, the concept co-occurrence matrix ``|a ∧ c|``, and (lazily, for the dense reference
  scorers only) a concept-major view of the sparse entries.
* :class:`UnitTally` holds what depends on one unit bitmap A (one (unit, range)): per-image active areas
  ``A_i``, per-(image, concept) intersections ``I[i, c] = |A_i ∧ c_i|`` and the co-occurrence inside A,
  ``|a ∧ c ∧ A|``: one gather of A at the sparse entries of the images where A fires, and bincounts.
* :func:`formula_stats` is the exact all-candidate pass of one formula f: per-image ``|f_i|``,
  ``|f_i ∧ A_i|`` and, for every concept c at once, ``P_c = |f ∧ c|`` and ``Q_c = |f ∧ c ∧ A|``. From these the
  IoU of ``f OR c``, ``f AND c`` and ``f AND NOT c`` follows for all c (:func:`extension_counts`).

For a leaf f = a, ``P`` and ``Q`` are rows of the two co-occurrence matrices (no pass at all). For any other
formula the pass touches only the images where f is *partial* (neither empty nor full by the three-valued
status of its leaves): images where f is full contribute rows of the per-image tables, images where it is
empty nothing. Its cost is a few vectorised passes over the sparse entries of those images (numpy, in image
chunks of bounded memory); it does not grow with the number of concepts and never builds an (N, H) mask.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from lit_explain.concepts.formulas import And, Formula, Leaf, Not, Or
from lit_explain.concepts.index import ConceptIndex
from lit_explain.ratios import iou_from_counts  # re-exported: the searches score with it

__all__ = [
    "SearchContext",
    "UnitTally",
    "FormulaStats",
    "formula_stats",
    "extension_counts",
    "iou_from_counts",
    "image_entries",
    "search_inputs",
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


def _entry_ranges(ptr: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(entry indices of the images ``ids`` (concatenated), entries per image)."""
    starts = ptr[ids]
    counts = ptr[ids + 1] - starts
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return np.arange(int(counts.sum()), dtype=np.int64) + shift, counts


def _chunks(ctx: "SearchContext", ids: np.ndarray):
    """Iterate over the sparse entries of the images ``ids`` (sorted) in chunks of bounded memory.

    Yields ``(rows, active, off, con, local)``: the image ids of the chunk's (B, H) buffers, a (B,) bool mask of
    the rows that belong to ``ids`` (None when all do), the entries' flat offsets and concepts, and their
    positions in the chunk buffers. When ``ids`` covers a good fraction of its span, whole contiguous blocks of
    images are read as slices (no index arrays at all); otherwise the entries of ``ids`` are gathered.
    """
    h = ctx.pixel_size
    step = max(1, ctx.chunk_pixels // h)
    if len(ids) == 0:
        return
    lo, hi = int(ids[0]), int(ids[-1]) + 1
    if len(ids) >= ctx.contiguous_fraction * (hi - lo):
        want = np.zeros(hi - lo, dtype=bool)
        want[ids - lo] = True
        for s in range(lo, hi, step):
            t = min(hi, s + step)
            act = want[s - lo : t - lo]
            if not act.any():
                continue
            e0, e1 = int(ctx.ptr[s]), int(ctx.ptr[t])
            off = ctx.offsets[e0:e1]
            yield np.arange(s, t), (None if act.all() else act), off, ctx.concepts[e0:e1], off - s * h
    else:
        for s in range(0, len(ids), step):
            sub = ids[s : s + step]
            e, counts = _entry_ranges(ctx.ptr, sub)
            off = ctx.offsets[e]
            # position in the (B, H) buffers: global offset minus (image id - buffer row) * H
            yield sub, None, off, ctx.concepts[e], off - np.repeat((sub - np.arange(len(sub))) * h, counts)


def _pair_counts(offsets: np.ndarray, concepts: np.ndarray, num_concepts: int, max_labels: int) -> np.ndarray:
    """(C, C) int64 counts of pixels carrying both concepts, from entries sorted by offset (each pair once
    per pixel and in both orders; the diagonal counts each entry once)."""
    c = num_concepts
    con = concepts.astype(np.int64, copy=False)
    out = np.bincount(con * (c + 1), minlength=c * c)  # diagonal
    for s in range(1, max_labels):
        same = offsets[s:] == offsets[:-s]
        if not same.any():
            break
        a, b = con[:-s][same], con[s:][same]
        out += np.bincount(a * c + b, minlength=c * c)
        out += np.bincount(b * c + a, minlength=c * c)
    return out.reshape(c, c)


class SearchContext:
    """Index-level data shared by every search on one :class:`ConceptIndex` (build once, reuse for all units).

    Args:
        index: the concept index of the probing dataset.
        chunk_pixels: bound on B*H for the per-image buffers of a formula pass (memory knob).
        leaf_cache_bytes: memory for recently used dense leaf masks of the dense reference/heuristic scorers.
    """

    def __init__(self, index: ConceptIndex, chunk_pixels: int = 1 << 22, leaf_cache_bytes: int = 1 << 30) -> None:
        self.index = index
        self.num_images = index.num_images
        self.num_concepts = index.num_concepts
        self.pixel_size = index.pixel_size
        self.chunk_pixels = int(chunk_pixels)
        #: (N, C) per-image concept areas (image-level concepts count H), the index's cached table: the narrowest
        #: integer dtype that holds H (int8, int16 up to a 181x181 grid, else int32); widen before summing.
        self.image_areas = index.image_areas()
        #: (C,) int64 total concept areas; (C,) bool: concept areas are all 0 or H (image-level concepts, and pixel
        #: concepts that happen to be). Both in blocks of rows, so no (N, C) temporary.
        self.concept_areas = torch.zeros(self.num_concepts, dtype=torch.int64)
        self.scene_like = torch.ones(self.num_concepts, dtype=torch.bool)
        step = max(1, (1 << 22) // max(1, self.num_concepts))
        for s in range(0, self.num_images, step):
            blk = self.image_areas[s : s + step]
            self.concept_areas += blk.sum(0, dtype=torch.int64)
            self.scene_like &= ((blk == 0) | (blk == self.pixel_size)).all(0)
        # numpy views for the hot loops (numpy's 1-D gathers are several times faster than torch indexing); the
        # per-entry arrays are the index's own (memory-mapped when it was loaded): no copy of size E
        self.ptr = index.image_ptr.numpy()
        self.offsets = index.pixel_offsets.numpy()
        self.concepts = index.pixel_concepts.numpy()  # int32, shares memory with the index
        self.image_level = index.image_concepts.numpy()
        self.any_image_level = bool(self.image_level.any())
        #: the image-level labels as (image, concept) pairs, (L,) int32 each, sorted by image (not an (N, C_img)
        #: matrix: an image carries a handful of them)
        lvl = torch.nonzero(index.image_concepts).to(torch.int32)
        self.level_images, self.level_concepts = lvl[:, 0].contiguous(), lvl[:, 1].contiguous()
        #: _chunks reads whole contiguous image blocks when the wanted images fill this fraction of their span
        self.contiguous_fraction = 0.25
        #: most labels on one pixel
        self.max_labels = max(1, index.depth)
        self._pixel_pairs: np.ndarray | None = None
        self._cooc_rows: dict[int, torch.Tensor] = {}
        self._postings: tuple[np.ndarray, np.ndarray] | None = None
        self._leaf_cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.leaf_cache_size = max(1, int(leaf_cache_bytes) // max(1, self.num_images * self.pixel_size))
        self.geometry = None  # heuristics.LeafGeometry, built on demand by the mmesh scorer

    # ------------------------------------------------------------------ co-occurrence (unit independent)
    def pixel_pairs(self) -> np.ndarray:
        """(C, C) pixels labelled with both concepts, pixel-level labels only (one pass, cached)."""
        if self._pixel_pairs is None:
            c, total = self.num_concepts, self.offsets.size
            out = np.zeros((c, c), dtype=np.int64)
            bounds, pos = [0], 1 << 24
            while pos < total:  # chunk boundaries at pixel starts, so no pixel is split
                while pos < total and self.offsets[pos] == self.offsets[pos - 1]:
                    pos += 1
                bounds.append(pos)
                pos += 1 << 24
            bounds.append(total)
            for s, e in zip(bounds[:-1], bounds[1:]):
                if e > s:
                    out += _pair_counts(self.offsets[s:e], self.concepts[s:e], c, self.max_labels)
            self._pixel_pairs = out
        return self._pixel_pairs

    def cooccurrence_row(self, a: int) -> torch.Tensor:
        """(C,) int64 ``|a ∧ c|`` over the dataset for every c (image-level labels cover their images)."""
        if a not in self._cooc_rows:
            self._cooc_rows[a] = _cooc_row(a, self.pixel_pairs(), self, self.image_areas, None)
        return self._cooc_rows[a]

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
    def _concept_postings(self) -> tuple[np.ndarray, np.ndarray]:
        """Concept-major view of the pixel entries: (ptr (C+1,), flat offsets (E,)). Built once (radix sort)."""
        if self._postings is None:
            narrow = self.concepts.astype(np.int16) if self.num_concepts < (1 << 15) else self.concepts
            order = np.argsort(narrow, kind="stable")  # 16-bit keys: numpy's radix sort (same stable order)
            del narrow
            ptr = np.zeros(self.num_concepts + 1, dtype=np.int64)
            ptr[1:] = np.cumsum(np.bincount(self.concepts, minlength=self.num_concepts))
            self._postings = (ptr, self.offsets[order])
        return self._postings

    def leaf_mask(self, concept: int) -> torch.Tensor:
        """Dense (N, H) bool mask of one concept over the whole dataset (reference and heuristic paths only).

        The most recently used masks are kept (``leaf_cache_bytes``); callers must not modify them.
        """
        if concept in self._leaf_cache:
            self._leaf_cache.move_to_end(concept)
            return self._leaf_cache[concept]
        ptr, offsets = self._concept_postings()
        out = np.zeros(self.num_images * self.pixel_size, dtype=bool)
        out[offsets[ptr[concept] : ptr[concept + 1]]] = True
        out = out.reshape(self.num_images, self.pixel_size)
        out[self.image_level[:, concept]] = True
        mask = torch.from_numpy(out)
        self._leaf_cache[concept] = mask
        while len(self._leaf_cache) > self.leaf_cache_size:
            self._leaf_cache.popitem(last=False)
        return mask

    def formula_mask(self, f: Formula, cache: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Dense (N, H) bool mask of a formula over the whole dataset (reference and heuristic paths only)."""
        leaves = {c: (cache[c] if cache is not None and c in cache else self.leaf_mask(c)) for c in f.concepts}
        return f.evaluate(leaves)


def _cooc_row(
    a: int,
    pairs: np.ndarray,
    ctx: "SearchContext",
    per_image: torch.Tensor,
    act_areas: torch.Tensor | None,
) -> torch.Tensor:
    """Row a of ``Σ_i |a_i ∧ c_i (∧ A_i)|`` from pixel-level pairs plus image-level corrections.

    Per image, if a is image-level there, the term is ``per_image[i, c]`` (area of c, or ``I[i, c]``); if c is
    image-level there, it is ``per_image[i, a]``; if both are, ``H`` (or ``A_i``), counted once.
    """
    row = torch.from_numpy(pairs[a].copy())
    if not ctx.any_image_level:
        return row
    img, con = ctx.level_images, ctx.level_concepts  # the image-level labels (image i, concept c), exact int64 sums
    row.index_add_(0, con, per_image[img, a].to(torch.int64))  # c image-level
    in_a = ctx.index.image_concepts[:, a]
    if bool(in_a.any()):
        row += per_image[in_a].sum(0, dtype=torch.int64)  # a image-level: all of c in those images
        both = in_a[img]
        full = torch.full((int(both.sum()),), ctx.pixel_size, dtype=torch.int64) if act_areas is None \
            else act_areas[img[both]].to(torch.int64)
        row.index_add_(0, con[both], full, alpha=-1)  # both image-level: counted twice above
    row[a] = int(per_image[:, a].sum())
    return row


@dataclass
class UnitTally:
    """Statistics of one dataset bitmap A (one (unit, range)) against every concept.

    Attributes:
        bitmap: (N, H) bool, A.
        act_areas: (N,) int64, ``A_i``.
        total: ``|A|``.
        image_inter: (N, C) int64, ``I[i, c] = |A_i ∧ c_i|``.
        unary_inter: (C,) int64, ``|A ∧ c|``.
        pixel_pairs: (C, C) int64 pixels of A labelled with both concepts (pixel-level labels only).
    """

    bitmap: torch.Tensor
    act_areas: torch.Tensor
    total: int
    image_inter: torch.Tensor
    unary_inter: torch.Tensor
    pixel_pairs: np.ndarray

    @classmethod
    def build(cls, ctx: SearchContext, bitmap: torch.Tensor) -> "UnitTally":
        """One gather of A at the sparse entries of the images where A fires, then bincounts."""
        n, h, c = ctx.num_images, ctx.pixel_size, ctx.num_concepts
        bitmap = torch.as_tensor(bitmap)
        if bitmap.dtype != torch.bool:
            raise TypeError(f"bitmap must be bool, got {bitmap.dtype}")
        bitmap = bitmap.reshape(bitmap.shape[0], -1)
        if tuple(bitmap.shape) != (n, h):
            raise ValueError(
                f"bitmap has shape {tuple(bitmap.shape)}, expected (num_images, sh*sw) = ({n}, {h}) of the concept index"
            )
        flat = bitmap.reshape(-1).numpy()
        act_areas = torch.from_numpy(np.count_nonzero(bitmap.numpy(), axis=1).astype(np.int64))
        fired = np.flatnonzero(act_areas.numpy() > 0)
        inter = np.zeros(n * c, dtype=np.int64)
        pairs = np.zeros((c, c), dtype=np.int64)
        for rows, _, off, con, _ in _chunks(ctx, fired):
            hit = flat[off]  # rows of images that do not fire are all False
            off_a = off[hit]
            con_a = con[hit].astype(np.int64)
            first, span = int(rows[0]), int(rows[-1]) - int(rows[0]) + 1
            inter[first * c : (first + span) * c] += np.bincount((off_a // h - first) * c + con_a, minlength=span * c)
            pairs += _pair_counts(off_a, con_a, c, ctx.max_labels)
        image_inter = torch.from_numpy(inter.reshape(n, c))
        if ctx.any_image_level:
            image_inter = torch.where(ctx.index.image_concepts, act_areas[:, None], image_inter)
        return cls(bitmap, act_areas, int(act_areas.sum()), image_inter, image_inter.sum(0), pairs)

    def cooccurrence_row(self, ctx: SearchContext, a: int) -> torch.Tensor:
        """(C,) int64 ``|a ∧ c ∧ A|`` for every c."""
        return _cooc_row(a, self.pixel_pairs, ctx, self.image_inter, self.act_areas)


def search_inputs(
    index: ConceptIndex | SearchContext, bitmap: "torch.Tensor | UnitTally", concepts_allowed: torch.Tensor | None
) -> tuple[SearchContext, UnitTally, torch.Tensor]:
    """What every search of one (unit, range) starts from: the context, the unit's tally and the allowed concepts.

    The beam search (:mod:`lit_explain.concepts.search`) and the optimal search (:mod:`lit_explain.concepts.optimal`)
    take the same loose arguments (a built context or the index, a tally or the bitmap, an optional mask) and
    normalise them here, so both accept and refuse the same inputs with the same messages.

    Args:
        index: the concept index, or a :class:`SearchContext` built from it (used as is).
        bitmap: (N, H) or (N, sh, sw) bool, the unit's active pixels on the mask grid, or its :class:`UnitTally`
            (used as is).
        concepts_allowed: (C,) bool (anything ``torch.as_tensor`` turns into one), concepts that may appear in
            formulas; None = all.

    Returns:
        ``(ctx, tally, allowed)``; ``allowed`` is (C,) bool.

    Raises:
        ValueError: ``concepts_allowed`` does not have shape (C,).
    """
    ctx = index if isinstance(index, SearchContext) else SearchContext(index)
    tally = bitmap if isinstance(bitmap, UnitTally) else UnitTally.build(ctx, bitmap)
    allowed = torch.ones(ctx.num_concepts, dtype=torch.bool)
    if concepts_allowed is not None:
        allowed = torch.as_tensor(concepts_allowed, dtype=torch.bool)
        if allowed.shape != (ctx.num_concepts,):
            raise ValueError(f"concepts_allowed must have shape ({ctx.num_concepts},), got {tuple(allowed.shape)}")
    return ctx, tally, allowed


@dataclass
class FormulaStats:
    """Exact counts of one formula f against a bitmap A and every concept c.

    Attributes:
        image_area: (N,) int64 ``|f_i|``.
        image_inter: (N,) int64 ``|f_i ∧ A_i|`` (zeros when computed without a tally).
        concept_area: (C,) int64 ``P_c = |f ∧ c|`` (None when not requested).
        concept_inter: (C,) int64 ``Q_c = |f ∧ c ∧ A|`` (None when not requested).
    """

    image_area: torch.Tensor
    image_inter: torch.Tensor
    concept_area: torch.Tensor | None
    concept_inter: torch.Tensor | None

    @property
    def area(self) -> int:
        """``|f|``."""
        return int(self.image_area.sum())

    @property
    def inter(self) -> int:
        """``|f ∧ A|``."""
        return int(self.image_inter.sum())


def formula_stats(
    ctx: SearchContext, f: Formula, tally: UnitTally | None = None, with_concepts: bool = True
) -> FormulaStats:
    """Exact per-image and per-concept counts of a formula (see the module docstring).

    Args:
        ctx: index context.
        f: any formula.
        tally: the unit's tally; None computes areas only (``image_inter``/``concept_inter`` are zero).
        with_concepts: also compute ``P_c`` and ``Q_c`` for every concept (the all-candidate pass).

    Returns:
        :class:`FormulaStats`.
    """
    n, h, c = ctx.num_images, ctx.pixel_size, ctx.num_concepts
    if isinstance(f, Leaf):  # rows of the per-image tables and of the co-occurrence matrices
        a = f.concept
        P = ctx.cooccurrence_row(a) if with_concepts else None
        if tally is None:
            return FormulaStats(ctx.image_areas[:, a].to(torch.int64), torch.zeros(n, dtype=torch.int64), P,
                                torch.zeros(c, dtype=torch.int64) if with_concepts else None)
        Q = tally.cooccurrence_row(ctx, a) if with_concepts else None
        return FormulaStats(ctx.image_areas[:, a].to(torch.int64), tally.image_inter[:, a].clone(), P, Q)
    status = ctx.status(f)
    full = torch.nonzero(status == FULL).flatten()
    partial = np.flatnonzero(status.numpy() == PARTIAL)
    image_area = np.zeros(n, dtype=np.int64)
    image_inter = np.zeros(n, dtype=np.int64)
    image_area[full.numpy()] = h
    if tally is not None:
        image_inter[full.numpy()] = tally.act_areas.numpy()[full.numpy()]
    P = np.zeros(c, dtype=np.int64)
    Q = np.zeros(c, dtype=np.int64)
    leaves = sorted(f.concepts)
    k = len(leaves)
    lut = np.full(c, -1, dtype=np.int64)
    lut[leaves] = np.arange(k)
    bitmap = tally.bitmap.reshape(-1).numpy() if tally is not None else None
    for rows, active, off, con, local in _chunks(ctx, partial):
        bsz = len(rows)
        kk = lut[con]
        sel = kk >= 0
        dense = np.zeros((k, bsz * h), dtype=bool)
        dense[kk[sel], local[sel]] = True
        dense = dense.reshape(k, bsz, h)
        if ctx.any_image_level:
            dense |= ctx.image_level[rows][:, leaves].T[:, :, None]
        fm = f.evaluate({cc: torch.from_numpy(dense[j]) for j, cc in enumerate(leaves)}).numpy()  # (B, H)
        if active is not None:  # rows of images that are not partial are accounted for elsewhere
            fm &= active[:, None]
        keep = rows if active is None else rows[active]
        area_b = np.count_nonzero(fm, axis=1)
        image_area[keep] = area_b if active is None else area_b[active]
        fa = None
        if tally is not None:
            a2d = bitmap.reshape(n, h)
            fa = fm & (a2d[rows[0] : rows[-1] + 1] if _contiguous(rows) else a2d[rows])
            inter_b = np.count_nonzero(fa, axis=1)
            image_inter[keep] = inter_b if active is None else inter_b[active]
        if with_concepts:
            hit = fm.reshape(-1)[local]
            P += np.bincount(con[hit], minlength=c)
            if tally is not None:
                hit_a = fa.reshape(-1)[local]
                Q += np.bincount(con[hit_a], minlength=c)
            if ctx.any_image_level:
                lvl = ctx.image_level[rows].astype(np.float64)
                P += np.rint(area_b.astype(np.float64) @ lvl).astype(np.int64)
                if tally is not None:
                    Q += np.rint(inter_b.astype(np.float64) @ lvl).astype(np.int64)
    Pt = Qt = None
    if with_concepts:
        Pt = torch.from_numpy(P) + ctx.image_areas[full].sum(0, dtype=torch.int64)
        Qt = torch.from_numpy(Q)
        if tally is not None:
            Qt = Qt + tally.image_inter[full].sum(0)
    return FormulaStats(torch.from_numpy(image_area), torch.from_numpy(image_inter), Pt, Qt)


def _contiguous(rows: np.ndarray) -> bool:
    return len(rows) > 0 and int(rows[-1]) - int(rows[0]) + 1 == len(rows)


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
