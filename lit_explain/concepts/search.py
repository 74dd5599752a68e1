"""Beam search for compositional explanations (NetDissect, CoEx and CCE), exact and fast.

Given a unit's dataset bitmap A (one (unit, range): bool (N, H) on the concept-mask grid) and a concept index,
find the formula F over concepts that maximises the dataset-level IoU ``|A ∧ F| / |A ∨ F|``:

1. Score every concept (the NetDissect pass). Length 1 returns the best one.
2. First beam: the ``first_beam_size`` best concepts with IoU > 0 (CCE: 2 × beam, compexp: beam).
3. ``length − 1`` times: extend every beam formula f by every candidate concept c not already in f, with
   ``f OR c``, ``f AND c`` and ``f AND NOT c`` (new term on the right); the new beam is the ``beam_size`` best
   of the old beam and all candidates (old members may survive); the last step keeps only the best.
   Candidates are de-duplicated by canonical form. Ranking is by ``score = penalty^(length−1) · IoU`` (compexp's
   complexity penalty with CCE's length); ties go to the shorter formula, then to the smaller canonical key, so
   results are deterministic and an equally good simpler formula is never displaced by a padded one.
   Concepts that occur nowhere in the dataset are never added (they could only pad a formula).

Scorers (``scorer=``):

* ``exact`` (default): the exact IoU of *every* candidate extension of a beam formula in one vectorised pass
  (:func:`~lit_explain.concepts.tally.formula_stats`): two bincounts over the sparse
  entries of the images where f is partial, no dense masks of the dataset.
* ``none``: exhaustive dense evaluation of every candidate (CCE's heuristic "none", the slow reference).
* ``mmesh`` / ``cfh`` / ``areas``: CCE's heuristics (:mod:`lit_explain.concepts.heuristics`): candidates are sorted
  by their estimate and evaluated densely until the beam is full and the next estimate is below its k-th
  best score. MMESH and CFH are admissible, so they return exactly the ``none`` beams; ``areas`` is not.

``visited`` counts compositional candidates whose exact IoU was computed (CCE's count; the unary pass is not
counted): all unique candidates for ``none``, the evaluated prefix for the heuristics, and every scored
(beam formula, op, concept) triple for ``exact``.

Upstream bugs not replicated: a candidate never reuses a concept already in f, for every
operator (CCE's filter misses ``AND NOT``, generating ``a AND NOT a``). Reusing a concept never helps a
left-deep formula: by Shannon expansion ``f op c`` with c in f equals ``f|c=const op c``, which is a constant or a
shorter left-deep formula. ``beam_size``/``first_beam_size``/``candidate_limit`` are honoured.
"""

from __future__ import annotations

import bisect
import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Sequence

import torch

from lit_explain.concepts.formulas import OPS, Formula, Leaf, extend
from lit_explain.concepts.heuristics import HEURISTICS, LeafGeometry, SideInfo, bounding_boxes, estimate
from lit_explain.concepts.heuristics import inscribed_rectangles
from lit_explain.concepts.index import ConceptIndex
from lit_explain.concepts.tally import SearchContext, UnitTally, extension_counts, formula_stats, search_inputs
from lit_explain.ratios import iou_from_counts

__all__ = ["SCORERS", "SearchSettings", "BeamEntry", "SearchResult", "beam_search", "detacc_optimal_search",
           "SearchContext"]


@dataclass(frozen=True)
class Scorer:
    """How a scorer extends a beam: ``step(ctx, tally, beam, candidates, k, settings, heuristic)`` returns the new
    beam and the number of candidates whose exact IoU was computed. ``needs_geometry``: the scorer reads the
    leaves' bounding boxes and inscribed rectangles (built once per context)."""

    step: Callable
    needs_geometry: bool = False


def _step_exact(ctx, tally, beam, cand, k, settings, heuristic):
    return _exact_step(ctx, tally, beam, cand, k, settings.complexity_penalty)


def _step_heuristic(ctx, tally, beam, cand, k, settings, heuristic):
    return _heuristic_step(ctx, tally, beam, cand, k, settings.complexity_penalty, heuristic, settings.concept_chunk)


#: Registry of the scorers: ``exact`` (vectorised exact scores) and the dense heuristic scorers of CCE.
SCORERS: dict[str, Scorer] = {
    "exact": Scorer(_step_exact),
    **{h: Scorer(_step_heuristic, needs_geometry=h == "mmesh") for h in HEURISTICS},
}


@dataclass(frozen=True)
class SearchSettings:
    """Every setting of one beam search, validated once (the one argument list of the searches, the method and
    its job keys).

    Args:
        length: maximum formula length (number of concepts), >= 1; 1 = NetDissect (argmax unary IoU).
        beam_size: beam width, >= 1.
        first_beam_size: leaves in the first beam, >= 1; None = ``2 * beam_size`` (CCE), compexp uses
            ``beam_size``.
        scorer: a name in :data:`SCORERS`: ``exact`` (default), ``none``, ``mmesh``, ``cfh`` or ``areas``.
        candidate_limit: restrict the concepts added at each step to the top-k leaves by unary IoU, k >= 0
            (compexp's BEAM_SEARCH_LIMIT); None = all allowed concepts.
        complexity_penalty: ranking score ``penalty^(length−1) · IoU``, a finite number > 0 (1.0 = plain IoU).
        concept_chunk: concepts estimated per block by the heuristic scorers (a memory knob), >= 1.
    """

    length: int = 3
    beam_size: int = 5
    first_beam_size: int | None = None
    scorer: str = "exact"
    candidate_limit: int | None = None
    complexity_penalty: float = 1.0
    concept_chunk: int = 256

    def __post_init__(self) -> None:
        def integer(name: str, low: int, optional: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                accepted = f"an integer >= {low}" + (" or None" if optional else "")
                raise ValueError(f"{name} must be {accepted}, got {v!r}")

        integer("length", 1)
        integer("beam_size", 1)
        integer("first_beam_size", 1, optional=True)
        integer("candidate_limit", 0, optional=True)
        integer("concept_chunk", 1)
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {list(SCORERS)}, got {self.scorer!r}")
        p = self.complexity_penalty
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not math.isfinite(p) or p <= 0:
            raise ValueError(f"complexity_penalty must be a finite number > 0 (1.0 = plain IoU), got {p!r}")

    @property
    def first_beam(self) -> int:
        """Leaves in the first beam (``first_beam_size``, or twice the beam)."""
        return 2 * self.beam_size if self.first_beam_size is None else self.first_beam_size

    def to_dict(self) -> dict:
        """The settings as plain values (job keys, result metadata)."""
        return asdict(self)

    @classmethod
    def resolve(cls, settings: "SearchSettings | None" = None, **overrides) -> "SearchSettings":
        """``settings`` (default settings when None) with the given fields replaced; unknown names are an error."""
        if settings is not None and not isinstance(settings, SearchSettings):
            raise TypeError(f"settings must be a SearchSettings, got {type(settings).__name__}; pass the search "
                            "settings by keyword (length=..., beam_size=...) or as SearchSettings(...)")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown search settings {unknown}; accepted: {[f.name for f in fields(cls)]}")
        base = settings if settings is not None else cls()
        return replace(base, **overrides) if overrides else base


@dataclass
class BeamEntry:
    """A formula with its exact IoU and ranking score (``penalty^(length−1) · iou``)."""

    formula: Formula
    iou: float
    score: float
    key: tuple = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.key = self.formula.key

    @property
    def rank(self) -> tuple:
        """Sort key: score descending, then shorter formulas first, then canonical key ascending."""
        return (-self.score, self.formula.length, self.key)


@dataclass
class SearchResult:
    """Outcome of one search.

    Attributes:
        formula: the best formula, or None when no concept overlaps the bitmap (every IoU is 0).
        iou: its exact dataset-level IoU.
        visited: compositional candidates whose exact IoU was computed (see the module docstring).
        beam: the final beam as (formula, iou), best first.
        history: the beam after each step (index 0: the first beam of leaves).
        score: the penalised score of ``formula``.
    """

    formula: Formula | None
    iou: float
    visited: int
    beam: list[tuple[Formula, float]]
    history: list[list[tuple[Formula, float]]] = field(default_factory=list)
    score: float = 0.0

    def to_str(self, vocabulary=None) -> str:
        """Canonical string of the formula ('' when there is none)."""
        return "" if self.formula is None else self.formula.to_str(vocabulary)


def _penalty(penalty: float, length: int) -> float:
    return float(penalty) ** (length - 1)


class _Pool:
    """Beam members plus evaluated candidates, tracking the k-th best rank for pruning."""

    def __init__(self, entries: Sequence[BeamEntry], k: int) -> None:
        self.k = k
        self.entries: dict[tuple, BeamEntry] = {}
        self.ranks: list[tuple] = []
        for e in entries:
            self.add(e)

    def __contains__(self, key: tuple) -> bool:
        return key in self.entries

    def add(self, e: BeamEntry) -> None:
        if e.key in self.entries:
            return
        self.entries[e.key] = e
        bisect.insort(self.ranks, e.rank)

    def full(self) -> bool:
        return len(self.ranks) >= self.k

    def kth_score(self) -> float:
        return -self.ranks[self.k - 1][0]

    def top(self) -> list[BeamEntry]:
        return sorted(self.entries.values(), key=lambda e: e.rank)[: self.k]


# ---------------------------------------------------------------------- exact scorer
def _exact_step(
    ctx: SearchContext, tally: UnitTally, beam: list[BeamEntry], cand: torch.Tensor, k: int, penalty: float
) -> tuple[list[BeamEntry], int]:
    blocks = []
    for e in beam:
        st = formula_stats(ctx, e.formula, tally)
        inter, area = extension_counts(st, ctx, tally)
        iou = iou_from_counts(inter, area, tally.total)  # (3, C)
        valid = cand.clone()
        valid[list(e.formula.concepts)] = False
        score = iou * _penalty(penalty, e.formula.length + 1)
        score[:, ~valid] = -math.inf
        blocks.append(torch.stack([score, iou]))
    allb = torch.stack(blocks)  # (B, 2, 3, C)
    scores, ious = allb[:, 0].reshape(-1), allb[:, 1].reshape(-1)
    visited = int(torch.isfinite(scores).sum())
    order = torch.argsort(scores, descending=True, stable=True)
    pool = _Pool(beam, k)
    sorted_scores = scores[order].tolist()
    n_ops, n_c = len(OPS), ctx.num_concepts
    for pos, s in zip(order.tolist(), sorted_scores):
        if s == -math.inf or (pool.full() and s < pool.kth_score()):
            break
        bi, rem = divmod(pos, n_ops * n_c)
        op, c = divmod(rem, n_c)
        g = extend(beam[bi].formula, OPS[op], c)
        key = g.key
        if key in pool:
            continue
        pool.add(BeamEntry(g, float(ious[pos]), s))
    return pool.top(), visited


# ---------------------------------------------------------------------- dense / heuristic scorers
def _dense_iou(g: torch.Tensor, bitmap: torch.Tensor, total: int) -> float:
    return float(iou_from_counts(torch.count_nonzero(g & bitmap), total, torch.count_nonzero(g)))


def _left_info(ctx: SearchContext, tally: UnitTally, f: Formula, mask: torch.Tensor, heuristic: str) -> SideInfo:
    if isinstance(f, Leaf):
        c = f.concept
        info = SideInfo(ctx.image_areas[:, c].to(torch.int64), tally.image_inter[:, c])
        if heuristic == "mmesh":
            info.box = ctx.geometry.boxes[:, c].to(torch.int64)
            info.rect = ctx.geometry.rects[:, c].to(torch.int64)
        return info
    area = torch.count_nonzero(mask, dim=1)
    info = SideInfo(area, torch.count_nonzero(mask & tally.bitmap, dim=1))
    if heuristic == "mmesh":
        sh, sw = ctx.index.mask_shape
        full_box = torch.tensor([0, 0, sh - 1, sw - 1], dtype=torch.int64)
        box = torch.tensor([0, 0, -1, -1], dtype=torch.int64).repeat(ctx.num_images, 1)
        box[area == ctx.pixel_size] = full_box
        rect = box.clone()
        part = torch.nonzero((area > 0) & (area < ctx.pixel_size)).flatten()
        if part.numel():
            sub = mask[part].view(-1, sh, sw)
            box[part] = bounding_boxes(sub)
            rect[part] = inscribed_rectangles(sub)
        info.box, info.rect = box, rect
    return info


def _heuristic_step(
    ctx: SearchContext,
    tally: UnitTally,
    beam: list[BeamEntry],
    cand: torch.Tensor,
    k: int,
    penalty: float,
    heuristic: str,
    concept_chunk: int,
) -> tuple[list[BeamEntry], int]:
    pool = _Pool(beam, k)
    cand_ids = torch.nonzero(cand).flatten()
    masks: dict[int, torch.Tensor] = {}
    candidates: list[tuple[float, tuple, int, int, int]] = []  # (est score, key, beam idx, op, concept)
    seen: set[tuple] = set()
    for bi, e in enumerate(beam):
        f = e.formula
        masks[bi] = ctx.formula_mask(f)
        pen = _penalty(penalty, f.length + 1)
        if heuristic == "none":
            est = torch.full((len(OPS), ctx.num_concepts), math.inf, dtype=torch.float64)
        else:
            left = _left_info(ctx, tally, f, masks[bi], heuristic)
            est = torch.empty(len(OPS), ctx.num_concepts, dtype=torch.float64)
            for c0 in range(0, ctx.num_concepts, concept_chunk):
                sl = slice(c0, min(ctx.num_concepts, c0 + concept_chunk))
                ra = ctx.image_areas[:, sl].to(torch.int64)
                ri = tally.image_inter[:, sl]
                rb = ctx.geometry.boxes[:, sl].to(torch.int64) if heuristic == "mmesh" else None
                rr = ctx.geometry.rects[:, sl].to(torch.int64) if heuristic == "mmesh" else None
                for oi, op in enumerate(OPS):
                    est[oi, sl] = estimate(
                        heuristic, op, left, ra, ri, tally.act_areas, tally.total, ctx.pixel_size,
                        ctx.scene_like[sl], rb, rr,
                    )
            est = est * pen
        used = f.concepts
        est_l = est.tolist()
        for c in cand_ids.tolist():
            if c in used:
                continue
            for oi, op in enumerate(OPS):
                g = extend(f, op, c)
                key = g.key
                if key in seen or key in pool:
                    continue
                seen.add(key)
                candidates.append((est_l[oi][c], key, bi, oi, c))
    if heuristic == "none":  # every candidate is evaluated: group them by concept to reuse dense leaf masks
        candidates.sort(key=lambda t: (t[4], t[2], t[3]))
    else:
        candidates.sort(key=lambda t: (-t[0], t[1]))
    visited = 0
    for est_s, key, bi, oi, c in candidates:
        if pool.full() and est_s < pool.kth_score():
            break
        f = beam[bi].formula
        g = extend(f, OPS[oi], c)
        leaf = ctx.leaf_mask(c)
        m = masks[bi]
        gm = m | leaf if OPS[oi] == "or" else (m & leaf if OPS[oi] == "and" else m & ~leaf)
        iou = _dense_iou(gm, tally.bitmap, tally.total)
        visited += 1
        pool.add(BeamEntry(g, iou, iou * _penalty(penalty, g.length)))
    return pool.top(), visited


# ---------------------------------------------------------------------- public API
def _prepare(
    index: ConceptIndex | SearchContext, bitmap: "torch.Tensor | UnitTally", concepts_allowed: torch.Tensor | None
) -> tuple[SearchContext, UnitTally, torch.Tensor, torch.Tensor]:
    ctx, tally, allowed = search_inputs(index, bitmap, concepts_allowed)
    unary = iou_from_counts(tally.unary_inter, ctx.concept_areas, tally.total)
    return ctx, tally, allowed, unary


def _ranked_leaves(unary: torch.Tensor, allowed: torch.Tensor) -> list[int]:
    """Allowed concept ids by unary IoU descending, then id ascending."""
    ids = torch.nonzero(allowed).flatten()
    order = torch.argsort(-unary[ids], stable=True)  # ids ascending, so ties keep the lower id first
    return ids[order].tolist()


class _Searcher:
    """Step-wise beam search state (shared by :func:`beam_search` and :func:`detacc_optimal_search`)."""

    def __init__(
        self,
        index: ConceptIndex | SearchContext,
        bitmap: "torch.Tensor | UnitTally",
        settings: SearchSettings,
        concepts_allowed: torch.Tensor | None,
    ) -> None:
        self.ctx, self.tally, self.allowed, self.unary = _prepare(index, bitmap, concepts_allowed)
        self.settings = settings
        self.scorer, self.beam_size = SCORERS[settings.scorer], settings.beam_size
        self.visited = 0
        ranked = _ranked_leaves(self.unary, self.allowed)
        self.ranked = ranked
        positive = [c for c in ranked if float(self.unary[c]) > 0]
        self.beam = [BeamEntry(Leaf(c), float(self.unary[c]), float(self.unary[c]))
                     for c in positive[: settings.first_beam]]
        self.cand = self.allowed & (self.ctx.concept_areas > 0)
        if settings.candidate_limit is not None:
            limited = torch.zeros_like(self.allowed)
            limited[torch.tensor(ranked[: settings.candidate_limit], dtype=torch.int64)] = True
            self.cand &= limited
        if self.scorer.needs_geometry and self.ctx.geometry is None:
            self.ctx.geometry = LeafGeometry.from_index(self.ctx.index)
        self.history = [[(e.formula, e.iou) for e in self.beam]]

    def step(self, k: int) -> None:
        if not self.beam or self.tally.total == 0:
            return
        self.beam, v = self.scorer.step(self.ctx, self.tally, self.beam, self.cand, k, self.settings,
                                        self.settings.scorer)
        self.visited += v
        self.history.append([(e.formula, e.iou) for e in self.beam])

    def result(self) -> SearchResult:
        if not self.beam:
            return SearchResult(None, 0.0, self.visited, [], self.history, 0.0)
        best = self.beam[0]
        return SearchResult(best.formula, best.iou, self.visited, [(e.formula, e.iou) for e in self.beam],
                            self.history, best.score)


def beam_search(
    index: ConceptIndex | SearchContext,
    bitmap: "torch.Tensor | UnitTally",
    settings: SearchSettings | None = None,
    concepts_allowed: torch.Tensor | None = None,
    **overrides,
) -> SearchResult:
    """Best formula of at most ``settings.length`` concepts for one bitmap (see the module docstring).

    Args:
        index: the concept index, or a :class:`SearchContext` built from it (reuse one across units: it caches
            the leaf geometry of the heuristics and the dense-mask postings).
        bitmap: (N, H) or (N, sh, sw) bool, the unit's active pixels for one range on the mask grid, or its
            :class:`~lit_explain.concepts.tally.UnitTally` (reused by callers that also compute metrics).
        settings: the :class:`SearchSettings` (None = the defaults: length 3, beam 5, exact scorer).
        concepts_allowed: (C,) bool, concepts that may appear in formulas; None = all.
        **overrides: :class:`SearchSettings` fields by name (``length=2, beam_size=3``), replacing those of
            ``settings``.

    Returns:
        :class:`SearchResult`; ``formula`` is None when no allowed concept overlaps the bitmap.
    """
    settings = SearchSettings.resolve(settings, **overrides)
    if settings.length == 1:
        ctx, tally, allowed, unary = _prepare(index, bitmap, concepts_allowed)
        ranked = _ranked_leaves(unary, allowed)
        if not ranked or float(unary[ranked[0]]) <= 0:
            return SearchResult(None, 0.0, 0, [], [[]], 0.0)
        best = Leaf(ranked[0])
        iou = float(unary[ranked[0]])
        return SearchResult(best, iou, 0, [(best, iou)], [[(best, iou)]], iou)
    s = _Searcher(index, bitmap, settings, concepts_allowed)
    for step in range(1, settings.length):
        s.step(1 if step == settings.length - 1 else s.beam_size)
    return s.result()


def detacc_optimal_search(
    index: ConceptIndex | SearchContext,
    bitmap: "torch.Tensor | UnitTally",
    detection_accuracy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    settings: SearchSettings | None = None,
    max_length: int = 10,
    concepts_allowed: torch.Tensor | None = None,
    min_length: int | None = None,
    **overrides,
) -> tuple[SearchResult, float]:
    """Detection-accuracy-optimal formula length (detacc-compexp, Makinwa et al.).

    Runs the beam search to ``min_length``, then keeps extending while the best formula's DetAcc
    (``#{images: F ∧ A ≠ ∅} / #{images: F ≠ ∅}``) increases, or stays equal for a formula without NOT, up to
    ``max_length``. The beam keeps ``beam_size`` members throughout (the best formula at each length is the
    top of that beam, the same as the beam-1 last step of :func:`beam_search`).

    Args:
        detection_accuracy: the score, ``(overlap (N,), label (N,)) -> DetAcc`` from a formula's per-image
            ``|F_i ∧ A_i|`` and ``|F_i|`` (:func:`lit_explain.metrics.functional.sample_counts.
            detection_accuracy_from_counts`; passed in, so the search does not depend on the metrics).
        settings, concepts_allowed, **overrides: as :func:`beam_search`; ``min_length`` (default
            ``settings.length``) is the length searched first, ``max_length`` the longest tried.

    Returns:
        (result at the chosen length, its DetAcc).
    """
    settings = SearchSettings.resolve(settings, **overrides)
    min_length = settings.length if min_length is None else int(min_length)
    if min_length < 1:
        raise ValueError(f"min_length must be >= 1, got {min_length}")
    s = _Searcher(index, bitmap, settings, concepts_allowed)

    def detacc(f: Formula | None) -> float:
        if f is None:
            return 0.0
        st = formula_stats(s.ctx, f, s.tally, with_concepts=False)
        return float(detection_accuracy(st.image_inter, st.image_area))

    for _ in range(1, min_length):
        s.step(s.beam_size)
    best = s.result()
    best_d = detacc(best.formula)
    length = min_length
    while length < max_length and best.formula is not None:
        s.step(s.beam_size)
        length += 1
        nxt = s.result()
        d = detacc(nxt.formula)
        if d > best_d or (d == best_d and not nxt.formula.has_not() and nxt.formula.key != best.formula.key):
            best, best_d = nxt, d
        else:
            break
    best.beam = best.beam[:1]
    return best, best_d
