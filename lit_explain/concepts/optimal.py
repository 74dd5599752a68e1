"""Optimal compositional search with a certificate: branch and bound over left-deep formula prefixes.

The beam search (:func:`~lit_explain.concepts.search.beam_search`) keeps a few formulas per step and can miss
the best explanation. :func:`optimal_search` returns the formula of maximum dataset-level IoU
``|A ∧ F| / |A ∨ F|`` among *all* formulas of length <= L of the same grammar (a first concept, then left-deep
extensions ``f OR c``, ``f AND c``, ``f AND NOT c`` with a concept not yet in f, formulas identified by their
canonical form, :attr:`~lit_explain.concepts.formulas.Formula.key`), or, when its budget runs out, the best
formula found with a proved upper bound on everything it did not evaluate.

Search tree and exact scores
----------------------------
A node is a prefix g (a formula of length k); its children are ``g op c`` for every operator and every
candidate concept c not in g (candidates: allowed concepts that occur somewhere). Expanding g is one exact
all-candidate pass (:func:`~lit_explain.concepts.tally.formula_stats` and
:func:`~lit_explain.concepts.tally.extension_counts`): it gives the exact IoU of all ``3·C`` children at once
and, for every concept d, the two numbers the bounds below are made of:

* ``x_d = |d ∧ A ∖ g|``: pixels of A that ``g OR d`` would add (the OR child's intersection minus ``|g ∧ A|``),
* ``y_d = |d ∖ A ∖ g|``: false positives that ``g OR d`` would add.

The root is the empty prefix (``x_d = |d ∧ A|``, ``y_d = |d ∖ A|``), whose children are the single concepts.
Children of length L are final: their exact IoU is all there is. Every other child h gets an admissible bound
on the IoU of all its strict descendants, computed for all children at once from the parent's vectors; it is
pushed on a best-first queue (highest bound first) unless the bound cannot beat the incumbent. The incumbent is
seeded by the beam search's answer (so the result is never worse than the beam) and replaced by every child
that ranks better: IoU descending, then shorter length, then smaller canonical key, the beam's own order. A
subtree is discarded only when its bound is below the incumbent's IoU, or equal to it while all its formulas
are longer than the incumbent (they would lose the tie), so the result is the first formula of the whole space
in that order: deterministic, and independent of how (unit, range) jobs are spread over processes.
Prefixes with the same canonical form have the same subtree (same concepts, equivalent extensions), so each
canonical prefix is expanded at most once. A child whose mask equals its parent's (``g AND c`` with g ⊆ c,
``g AND NOT c`` with g ∧ c empty, ``g OR c`` with c ⊆ g: equal counts suffice, as one mask contains the other)
or is empty is not queued: applying the same extensions to the parent (or dropping the empty start) gives a
formula with the same mask that is shorter, hence ranks better, so its subtree cannot hold the answer.

Bounds (all are ratios of exact integer counts, so comparisons with IoUs are exact)
-----------------------------------------------------------------------------------
Write ``a = |A|``, and for a child h of g: ``I = |h ∧ A|``, ``F = |h ∖ A|`` (exact, from the parent's pass),
``s = L − len(h) >= 1`` remaining extensions. Let z be a descendant of h, reached by ops ``o_1..o_t``
(1 <= t <= s) with concepts ``d_1..d_t``, and R the concepts added with OR.

1. *Intersection.* An OR adds pixels, AND and AND NOT only remove pixels, so every pixel of ``z ∧ A`` is in
   ``h ∧ A`` or in some ``d ∧ A ∖ h`` with d in R: ``|z ∧ A| <= I + min(a − I, Σ_{d∈R} |d ∧ A ∖ h|)``.
   If h = g OR c then ``A ∖ h ⊆ A ∖ g``, so ``|d ∧ A ∖ h| <= x_d``. If h = g AND (NOT) c then
   ``h ⊆ g`` and ``A ∖ h = (A ∖ g) ∪ (A ∧ g ∖ h)``, so the union over R is at most ``Σ_R x_d + δ`` with
   ``δ = |g ∧ A| − I`` (counted once). Hence ``|z ∧ A| <= I + min(a − I, T_j + δ)``, with ``T_j`` the sum of
   the j largest ``x_d`` over the candidates other than c and those of g (``δ = 0`` for OR children).
2. *Sequences with an AND or AND NOT* (j = |R| <= s − 1): false positives can drop to 0, so
   ``IoU(z) <= (I + min(a − I, T_{s−1} + δ)) / a`` (just ``I / a`` when s = 1: nothing can be added back).
3. *All-OR sequences with j >= 2* (only when s >= 2): ``z ⊇ h`` keeps h's false positives:
   ``IoU(z) <= (I + min(a − I, T_s + δ)) / (a + F)``.
4. *A single OR* (``z = h OR d``): ``IoU = (I + |d ∧ A ∖ h|) / (a + F + |d ∖ A ∖ h|)``. For AND children
   ``|d ∖ A ∖ h| >= y_d`` (h ⊆ g), so ``IoU <= (|g ∧ A| + x_d) / (a + F + y_d)``; for OR children
   ``|d ∖ A ∖ h| >= y_d − y_c`` (only c's false positives can hide d's), so ``IoU <= (I + x_d) / (a + |g ∖ A| + y_d)``.
   Both are ``(α + x_d) / (β + y_d)`` with ``β > 0``: the slope from the point ``(−β, −α)`` to ``(y_d, x_d)``.
   Its maximum over d is reached on the upper-left convex hull of the points (a dominated point, or one under
   the chord of two others, never scores more than they do), so it is evaluated for every child at once on a
   few hull points; two nested hulls make the maximum exact when the child's own concept c must be left out
   (if c is a hull point, the best other point is on the hull of the rest). Since ``|z ∧ A| <= a`` and the
   union is at least ``a + F`` (plus ``min_d y_d`` for AND children), it is also at most
   ``min(a, α + max_{d≠c} x_d) / (a + F [+ min_d y_d])``; the smaller of the two is used.

The bound of a child is the largest of 2-4. It only needs ``x`` and ``y``, hence no pass per child.

*Refinement of the last prefixes* (``s = 1``: children of length L − 1, whose descendants are single
extensions ``h op d``). Their bound is tightened with pair counts ``|c ∧ d ∧ A|`` and ``|c ∧ d ∖ A|`` of the
concepts c of h (rows of the co-occurrence matrices): interval arithmetic over h's formula tree gives, per d,
bounds ``[l, u]`` on ``|h ∧ d ∧ A|`` and on ``|h ∧ d ∖ A|`` (a leaf is exact; ``NOT`` complements within
``d ∧ A``; ``AND``: ``[max(0, l1 + l2 − |d ∧ A|), min(u1, u2)]``; ``OR``: ``[max(l1, l2), min(|d ∧ A|, u1 + u2)]``;
the same outside A), clipped by h's own counts (``|h ∧ d ∧ A| >= I − |A ∖ d|`` etc.). Then
``h AND d <= u_A / (a + l_N)``, ``h AND NOT d <= (I − l_A) / (a + F − u_N)`` and
``h OR d <= (I + |d ∧ A| − l_A) / (a + F + |d ∖ A| − u_N)``, maximised over d. The parent's intervals are
computed once and combined with each child's new concept, so all surviving children are refined in one
(children × concepts) pass before they are queued; the smaller of the two bounds is kept.

Certificate and budget
----------------------
``upper_bound`` is the largest IoU any formula of the space can have, as proved: the incumbent's IoU when the
queue is exhausted (every unevaluated formula lies in a discarded subtree whose bound did not beat it, or has
the mask of a shorter formula), else the
largest bound left in the queue when the node budget (``max_nodes`` exact passes, deterministic) or the
optional ``time_budget`` (seconds; results then depend on the machine) stopped the search.
``optimality_gap = upper_bound − iou`` is 0 exactly when optimality is proved.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

import torch

from lit_explain.concepts.formulas import OPS, And, Formula, Leaf, Not, Or, extend
from lit_explain.concepts.index import ConceptIndex
from lit_explain.concepts.tally import (
    FormulaStats,
    SearchContext,
    UnitTally,
    extension_counts,
    formula_stats,
    iou_from_counts,
    search_inputs,
)

__all__ = ["OptimalResult", "optimal_search", "DEFAULT_MAX_NODES"]

#: Default node budget per (unit, range): exact passes, i.e. expansions of prefixes of length >= 2 (each costs what
#: one beam formula's step costs; a length-3 beam search of width 5 makes 5). Single concepts are expanded from
#: co-occurrence rows, at a cost independent of the dataset's size, at most once each, and are not counted.
DEFAULT_MAX_NODES = 200

#: Elements of one (children x hull points) block of the single-OR bound (memory knob; results do not depend on it).
_BLOCK_ELEMENTS = 1 << 22

_OR_ROWS = torch.tensor([True, False, False])  # rows of extension_counts in OPS order: or, and, and_not


@dataclass
class OptimalResult:
    """Outcome of one optimal search (one (unit, range)).

    Attributes:
        formula: the best formula found (None when no formula has a positive IoU).
        iou: its exact IoU.
        upper_bound: proved upper bound on the IoU of every formula of the space (>= ``iou``).
        optimality_gap: ``upper_bound − iou``; 0.0 exactly when the formula is proved optimal.
        proven: ``optimality_gap == 0``.
        budget_hit: None, ``"nodes"`` or ``"time"``: which budget stopped the search before it finished.
        visited: formulas whose exact IoU the branch and bound computed (children of expanded prefixes, the
            single concepts not counted), the beam's ``visited`` convention.
        nodes: prefixes expanded (the root excluded).
        expanded: prefixes of length >= 2 expanded, i.e. exact passes over the dataset: what ``max_nodes`` counts.
        seed_formula, seed_iou, seed_visited: the beam's answer used as the first incumbent.
        seconds: wall time of the branch and bound (the seed beam excluded).
        records: with ``record=True``, every bound computed: ``(prefix, bound, stage)``, where ``stage`` is
            ``"child"`` (from the parent's pass) or ``"refined"`` (pair intervals, before queueing); the bound
            covers the prefix's strict descendants.
    """

    formula: Formula | None
    iou: float
    upper_bound: float
    optimality_gap: float
    proven: bool
    budget_hit: str | None
    visited: int
    nodes: int
    expanded: int
    seed_formula: Formula | None
    seed_iou: float
    seed_visited: int
    seconds: float
    records: list[tuple[Formula, float, str]] | None = field(default=None, repr=False)

    def to_str(self, vocabulary=None) -> str:
        """Canonical string of the formula ('' when there is none)."""
        return "" if self.formula is None else self.formula.to_str(vocabulary)

    def columns(self) -> dict[str, float | int | bool | str]:
        """The certificate columns of a results table row: ``optimality_gap``, ``upper_bound``, ``proven``,
        ``budget_hit`` ('' when none), ``visited`` (the seed beam's exact IoUs plus the branch and bound's),
        ``search_nodes`` (prefixes expanded), ``search_passes`` (exact passes) and ``beam_iou`` (the seed's IoU)."""
        return dict(optimality_gap=float(self.optimality_gap), upper_bound=float(self.upper_bound),
                    proven=bool(self.proven), budget_hit=self.budget_hit or "",
                    visited=int(self.visited + self.seed_visited), search_nodes=int(self.nodes),
                    search_passes=int(self.expanded), beam_iou=float(self.seed_iou))


# ---------------------------------------------------------------------- hull of (false positives, gain) points
def _reduce(xv: torch.Tensor, yv: torch.Tensor, pos: torch.Tensor, rounds: int = 48) -> torch.Tensor:
    """Positions (subset of ``pos``) that keep ``max (α + x) / (β + y)`` for every α >= 0, β > 0.

    Drops dominated points (another has x >= and y <=), then repeatedly drops every point on or under the chord of
    its neighbours on the remaining chain (a run of such points is convex, so it lies under the chord of the kept
    points around it, and a linear-fractional score on or under a chord is at most that at one of its ends).
    Stopping early only keeps extra points, which never changes the maximum.
    """
    if pos.numel() <= 2:
        return pos
    x, y = xv[pos], yv[pos]
    order = torch.argsort(-x, stable=True)
    order = order[torch.argsort(y[order], stable=True)]  # y ascending, x descending among equal y
    xs = x[order]
    prev = torch.cummax(xs, 0).values
    keep = torch.ones_like(xs, dtype=torch.bool)
    keep[1:] = xs[1:] > prev[:-1]
    chain = order[keep]  # y strictly and x strictly increasing
    for _ in range(rounds):
        if chain.numel() <= 2:
            break
        cx, cy = x[chain], y[chain]
        # point i is dropped when (x_i − x_{i−1})(y_{i+1} − y_{i−1}) <= (x_{i+1} − x_{i−1})(y_i − y_{i−1})
        lhs = (cx[1:-1] - cx[:-2]) * (cy[2:] - cy[:-2])
        rhs = (cx[2:] - cx[:-2]) * (cy[1:-1] - cy[:-2])
        drop = lhs <= rhs
        if not bool(drop.any()):
            break
        keep = torch.ones(chain.numel(), dtype=torch.bool)
        keep[1:-1] = ~drop
        chain = chain[keep]
    return pos[chain]


def _hull_points(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Concept ids whose points ``(y_d, x_d)`` keep the exact maximum of any ``(α + x_d) / (β + y_d)`` over the
    valid concepts, also with any single concept left out (two nested reductions; see the module docstring)."""
    ids = torch.nonzero(valid).flatten()
    if ids.numel() == 0:
        return ids
    xv, yv = x[ids], y[ids]
    everything = torch.arange(ids.numel())
    first = _reduce(xv, yv, everything)
    rest = torch.ones(ids.numel(), dtype=torch.bool)
    rest[first] = False
    second = _reduce(xv, yv, everything[rest])
    return ids[torch.sort(torch.cat([first, second])).values]


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """Exact-count ratio as float64 (denominators are positive here)."""
    return num.to(torch.float64) / den.to(torch.float64)


def _descendant_bounds(
    a: int, i_g: int, f_g: int, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor,
    inter: torch.Tensor, area: torch.Tensor, or_rows: torch.Tensor, s: int,
) -> torch.Tensor:
    """Upper bounds (R, C) on the IoU of every strict descendant of each child ``g op_r c`` (module docstring,
    bounds 2-4); -inf where the child is not a candidate or has no descendant.

    Args:
        a: |A| > 0.  i_g, f_g: ``|g ∧ A|``, ``|g ∖ A|`` of the parent (0, 0 at the root).
        x, y: (C,) int64 ``|d ∧ A ∖ g|`` and ``|d ∖ A ∖ g|``.
        valid: (C,) bool, candidate concepts not in g (the children's concepts and the d's).
        inter, area: (R, C) int64 exact ``|h ∧ A|`` and ``|h|`` of the children.
        or_rows: (R,) bool, rows whose children are ``g OR c`` (the root's single concepts count as OR).
        s: extensions left after the children (>= 1).
    """
    r, c = inter.shape
    out = torch.full((r, c), -math.inf, dtype=torch.float64)
    n = int(valid.sum())
    if n <= 1:  # no concept left to add after c
        return out
    i_h, f_h = inter, area - inter
    xv = x[valid]
    kk = min(s + 1, n)
    tops = torch.zeros(s + 2, dtype=torch.int64)
    tops[1 : kk + 1] = torch.cumsum(torch.topk(xv, kk).values, 0)
    tops[kk + 1 :] = tops[kk]

    def top_without_c(j: int) -> torch.Tensor:  # (C,) sum of the j largest x_d over valid d != c (an upper bound)
        if j == 0:
            return torch.zeros(c, dtype=torch.int64)
        return torch.minimum(tops[j].expand(c), tops[j + 1] - x)

    delta = torch.where(or_rows[:, None], torch.zeros_like(i_h), i_g - i_h)
    room = a - i_h
    # 2. sequences with an AND / AND NOT: no false positives left at best
    if s >= 2:
        b_and = _ratio(i_h + torch.minimum(room, top_without_c(s - 1)[None] + delta), torch.tensor(a))
    else:
        b_and = _ratio(i_h, torch.tensor(a))
    best = b_and
    # 3. all-OR sequences of two or more ORs: h's false positives stay
    if s >= 2:
        best = torch.maximum(best, _ratio(i_h + torch.minimum(room, top_without_c(s) + delta), a + f_h))
    # 4. a single OR: exact maximum of (α + x_d) / (β + y_d) over hull points, c left out
    hull = _hull_points(x, y, valid)
    hx, hy = x[hull], y[hull]
    alpha = torch.where(or_rows[:, None], i_h, torch.full_like(i_h, i_g))  # (R, C)
    beta = torch.where(or_rows[:, None], torch.full_like(f_h, a + f_g), a + f_h)
    single = torch.empty(r, c, dtype=torch.float64)
    step = max(1, _BLOCK_ELEMENTS // max(1, r * hull.numel()))  # bounded (R, step, K) blocks
    for c0 in range(0, c, step):
        block = _ratio(alpha[:, c0 : c0 + step, None] + hx, beta[:, c0 : c0 + step, None] + hy)  # (R, step, K)
        own = (hull >= c0) & (hull < c0 + step)  # d = c is not a descendant of h
        block[:, hull[own] - c0, torch.nonzero(own).flatten()] = -math.inf
        single[:, c0 : c0 + step] = block.max(-1).values
    x_max = top_without_c(1)[None]
    y_min = y[valid].min()
    beta_own = torch.where(or_rows[:, None], a + f_h, a + f_h + y_min)
    single = torch.minimum(single, _ratio(torch.minimum(torch.tensor(a), alpha + x_max), beta_own))
    best = torch.maximum(best, single)
    out[:, valid] = best[:, valid]
    return out


# ---------------------------------------------------------------------- pair intervals for the last prefixes
def _intervals(f: Formula, rows_a: dict[int, torch.Tensor], rows_n: dict[int, torch.Tensor],
               tot_a: torch.Tensor, tot_n: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per concept d, bounds ``(l_A, u_A, l_N, u_N)`` (each (C,) int64) on ``|f ∧ d ∧ A|`` and ``|f ∧ d ∖ A|``
    from pair counts of f's leaves (module docstring, refinement)."""
    if isinstance(f, Leaf):
        e, m = rows_a[f.concept], rows_n[f.concept]
        return e, e, m, m
    if isinstance(f, Not):
        la, ua, ln, un = _intervals(f.operand, rows_a, rows_n, tot_a, tot_n)
        return tot_a - ua, tot_a - la, tot_n - un, tot_n - ln
    l1a, u1a, l1n, u1n = _intervals(f.left, rows_a, rows_n, tot_a, tot_n)
    l2a, u2a, l2n, u2n = _intervals(f.right, rows_a, rows_n, tot_a, tot_n)
    if isinstance(f, And):
        return ((l1a + l2a - tot_a).clamp(min=0), torch.minimum(u1a, u2a),
                (l1n + l2n - tot_n).clamp(min=0), torch.minimum(u1n, u2n))
    if isinstance(f, Or):
        return (torch.maximum(l1a, l2a), torch.minimum(tot_a, u1a + u2a),
                torch.maximum(l1n, l2n), torch.minimum(tot_n, u1n + u2n))
    raise TypeError(f"not a formula: {f!r}")


# ---------------------------------------------------------------------- the search
class _BranchAndBound:
    def __init__(self, ctx: SearchContext, tally: UnitTally, cand: torch.Tensor, length: int, max_nodes: int,
                 time_budget: float | None, record: bool) -> None:
        self.ctx, self.tally, self.cand, self.length = ctx, tally, cand, length
        self.max_nodes, self.time_budget, self.record = max_nodes, time_budget, record
        self.a = tally.total
        self.unary = tally.unary_inter  # (C,) |d ∧ A|
        self.areas = ctx.concept_areas  # (C,) |d|
        self.outside = self.areas - self.unary  # (C,) |d ∖ A|
        self.not_a = ctx.num_images * ctx.pixel_size - self.a
        self.best: tuple[float, int, tuple, Formula | None] = (0.0, 0, (), None)  # (iou, length, key, formula)
        self.visited = self.nodes = self.expanded = 0
        self.records: list[tuple[Formula, float, str]] | None = [] if record else None
        self.heap: list[tuple] = []
        self.seq = 0
        self.prefixes: list[Formula | None] = []  # parent formulas of the queued blocks
        self.done: set[tuple] = set()
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._rows_f: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ incumbent and pruning
    def _offer(self, iou: float, f: Formula) -> None:
        cand = (iou, f.length, f.key)
        if (-cand[0], cand[1], cand[2]) < (-self.best[0], self.best[1], self.best[2]):
            self.best = (iou, f.length, f.key, f)

    def _hopeless(self, bound: float, desc_length: int) -> bool:
        """Whether a subtree whose formulas have length >= ``desc_length`` and IoU <= ``bound`` cannot win."""
        return bound < self.best[0] or (bound == self.best[0] and desc_length > self.best[1])

    def _push(self, bound: float, length: int, item: tuple) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (-bound, length, self.seq, item))

    # ------------------------------------------------------------------ pair rows
    def _pair_rows(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(``|c ∧ d ∧ A|``, ``|c ∧ d ∖ A|``) for every d, cached per concept."""
        if c not in self._rows:
            inside = self.tally.cooccurrence_row(self.ctx, c)
            self._rows[c] = (inside, self.ctx.cooccurrence_row(c) - inside)
        return self._rows[c]

    # ------------------------------------------------------------------ expansion
    def _children(self, f: Formula | None) -> tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor, torch.Tensor]:
        """(|f∧A|, |f∖A|, x, y, valid, inter (R,C), area (R,C), or_rows) of a prefix (None = root)."""
        if f is None:
            return (0, 0, self.unary, self.outside, self.cand.clone(), self.unary[None], self.areas[None],
                    torch.tensor([True]))
        if isinstance(f, Leaf):
            inside, outside = self._pair_rows(f.concept)
            c = f.concept
            st = FormulaStats(torch.tensor([int(self.areas[c])]), torch.tensor([int(self.unary[c])]),
                              inside + outside, inside)
        else:
            st = formula_stats(self.ctx, f, self.tally)
        inter, area = extension_counts(st, self.ctx, self.tally)
        i_g, f_g = st.inter, st.area - st.inter
        p, q = st.concept_area, st.concept_inter
        x = self.unary - q
        y = self.outside - (p - q)
        valid = self.cand.clone()
        valid[list(f.concepts)] = False
        return i_g, f_g, x, y, valid, inter, area, _OR_ROWS

    def _child_formula(self, parent: Formula | None, row: int, c: int) -> Formula:
        return Leaf(c) if parent is None else extend(parent, OPS[row], c)

    def expand(self, f: Formula | None) -> None:
        k = 0 if f is None else f.length
        i_g, f_g, x, y, valid, inter, area, or_rows = self._children(f)
        if f is not None:
            self.visited += int(valid.sum()) * len(OPS)
        ious = iou_from_counts(inter, area, self.a)
        ious[:, ~valid] = -math.inf
        top = float(ious.max()) if bool(valid.any()) else -math.inf
        if top > self.best[0] or (top == self.best[0] and k + 1 <= self.best[1]):
            for row, c in torch.nonzero(ious == top).tolist():
                self._offer(top, self._child_formula(f, row, c))
        s = self.length - k - 1
        if s < 1:
            return
        bounds = _descendant_bounds(self.a, i_g, f_g, x, y, valid, inter, area, or_rows, s)
        if self.record:
            for row, c in torch.nonzero(valid[None].expand_as(bounds)).tolist():
                self.records.append((self._child_formula(f, row, c), float(bounds[row, c]), "child"))
        keep = bounds > self.best[0] if k + 2 > self.best[1] else bounds >= self.best[0]
        # a child with the parent's mask (or an empty one) only repeats shorter formulas: drop its subtree
        keep &= (area > 0) & ((inter != i_g) | (area != i_g + f_g))
        if not bool(keep.any()):
            return
        rows, cs = torch.nonzero(keep, as_tuple=True)
        b = bounds[rows, cs]
        if s == 1:  # children of length L − 1: tighten with pair intervals before queueing
            rb = torch.minimum(b, self.refine(f, rows, cs, inter[rows, cs], (area - inter)[rows, cs]))
            if self.record:
                for row, c, v in zip(rows.tolist(), cs.tolist(), rb.tolist()):
                    self.records.append((self._child_formula(f, row, c), v, "refined"))
            keep = rb > self.best[0] if k + 2 > self.best[1] else rb >= self.best[0]
            if not bool(keep.any()):
                return
            rows, cs, b = rows[keep], cs[keep], rb[keep]
        order = torch.argsort(-b, stable=True)
        block = (len(self.prefixes), b[order].tolist(), rows[order].tolist(), cs[order].tolist())
        self.prefixes.append(f)
        self._push(block[1][0], k + 1, (block, 0))

    def _pair_rows_f(self, c: int) -> torch.Tensor:
        """(2, C) float64 pair rows of c (inside, outside A); integers below 2**53, so float64 arithmetic on them is
        exact and the only rounding is the final division of each bound."""
        if c not in self._rows_f:
            self._rows_f[c] = torch.stack(self._pair_rows(c)).to(torch.float64)
        return self._rows_f[c]

    def refine(self, g: Formula | None, rows: torch.Tensor, cs: torch.Tensor, i_h: torch.Tensor,
               f_h: torch.Tensor) -> torch.Tensor:
        """Pair-interval bounds (K,) on the single extensions of the children ``g op_rows[j] cs[j]`` (module
        docstring, refinement); -inf for a child with nothing left to add."""
        k, a = len(cs), float(self.a)
        tot_a, tot_n = self.unary.to(torch.float64), self.outside.to(torch.float64)
        pairs = torch.stack([self._pair_rows_f(c) for c in cs.tolist()])  # (K, 2, C)
        e_a, e_n = pairs[:, 0], pairs[:, 1]  # |e ∧ d ∧ A|, |e ∧ d ∖ A|
        valid = self.cand[None].repeat(k, 1)
        valid[torch.arange(k), cs] = False
        if g is None:
            la, ua, ln, un = e_a, e_a, e_n, e_n
        else:
            rows_a, rows_n = {}, {}
            for c in g.concepts:
                rows_a[c], rows_n[c] = self._pair_rows(c)
            valid[:, list(g.concepts)] = False
            gla, gua, gln, gun = (t.to(torch.float64) for t in _intervals(g, rows_a, rows_n, self.unary, self.outside))
            la, ua, ln, un = (torch.empty_like(e_a) for _ in range(4))
            for op, sel in enumerate((rows == 0, rows == 1, rows == 2)):
                if not bool(sel.any()):
                    continue
                ea, en = e_a[sel], e_n[sel]
                if op == 0:  # g OR e
                    la[sel], ua[sel] = torch.maximum(gla, ea), torch.minimum(tot_a, gua + ea)
                    ln[sel], un[sel] = torch.maximum(gln, en), torch.minimum(tot_n, gun + en)
                else:  # g AND e, or g AND NOT e with e's exact complement tot − e inside d
                    ra, rn = (ea, en) if op == 1 else (tot_a - ea, tot_n - en)
                    la[sel], ua[sel] = (gla + ra - tot_a).clamp(min=0), torch.minimum(gua, ra)
                    ln[sel], un[sel] = (gln + rn - tot_n).clamp(min=0), torch.minimum(gun, rn)
        ih, fh = i_h[:, None].to(torch.float64), f_h[:, None].to(torch.float64)
        ua = torch.minimum(ua, ih)  # every branch above is already at most tot
        la = torch.maximum(la, ih - (a - tot_a))
        un = torch.minimum(un, fh)
        ln = torch.maximum(ln, fh - (float(self.not_a) - tot_n))
        best = ua / (a + ln)  # h AND d
        torch.maximum(best, (ih - la) / (a + fh - un), out=best)  # h AND NOT d
        torch.maximum(best, (ih + tot_a - la) / (a + fh + tot_n - un), out=best)  # h OR d
        best.masked_fill_(~valid, -math.inf)
        return best.max(1).values

    # ------------------------------------------------------------------ main loop
    def run(self) -> tuple[float, str | None]:
        """Best-first loop; returns (largest bound left in the queue or -inf, budget that stopped it)."""
        start = time.perf_counter()
        self.expand(None)
        while self.heap:
            neg, k, _, item = self.heap[0]
            bound = -neg
            if self._hopeless(bound, k + 1):  # best-first: everything left is hopeless too
                self.heap.clear()
                break
            if k >= 2 and self.expanded >= self.max_nodes:
                return bound, "nodes"
            if self.time_budget is not None and time.perf_counter() - start > self.time_budget:
                return bound, "time"
            heapq.heappop(self.heap)
            block, pos = item
            pid, bs, rows, cs = block
            if pos + 1 < len(bs):
                self._push(bs[pos + 1], k, (block, pos + 1))
            h = self._child_formula(self.prefixes[pid], rows[pos], cs[pos])
            key = h.key
            if key in self.done:
                continue
            self.done.add(key)
            self.nodes += 1
            self.expanded += int(k >= 2)
            self.expand(h)
        return -math.inf, None


def optimal_search(
    index: ConceptIndex | SearchContext,
    bitmap: "torch.Tensor | UnitTally",
    length: int = 3,
    beam_size: int = 5,
    first_beam_size: int | None = None,
    concepts_allowed: torch.Tensor | None = None,
    max_nodes: int = DEFAULT_MAX_NODES,
    time_budget: float | None = None,
    seed: Formula | None = None,
    record: bool = False,
) -> OptimalResult:
    """The formula of maximum IoU among all formulas of length <= ``length`` (module docstring), with a certificate.

    Args:
        index: the concept index, or a :class:`~lit_explain.concepts.tally.SearchContext` built from it (reuse one
            across units, as for the beam search).
        bitmap: (N, H) or (N, sh, sw) bool, the unit's active pixels for one range, or its
            :class:`~lit_explain.concepts.tally.UnitTally`.
        length: maximum formula length L >= 1 (number of concepts).
        beam_size: width of the seed beam search (>= 1), whose answer is the first incumbent; 0 = no seed beam.
        first_beam_size: the seed beam's first beam (None = ``2 * beam_size``, as :func:`beam_search`).
        concepts_allowed: (C,) bool, concepts that may appear; None = all.
        max_nodes: node budget (>= 1): exact passes (expansions of prefixes of length >= 2; single concepts are
            expanded from co-occurrence rows and not counted) before the search stops with the
            best formula found and its gap. Deterministic, so 1 and 2 processes give the same tables.
        time_budget: optional wall-clock budget in seconds (> 0), checked between nodes; None = none. Results
            that hit it depend on the machine's speed.
        seed: a formula to use as the first incumbent instead of running the beam (its IoU is computed exactly).
        record: keep every bound computed in ``records`` (tests; slow on large vocabularies).

    Returns:
        :class:`OptimalResult`.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an integer >= 1, got {length!r}")
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 0:
        raise ValueError(f"beam_size must be an integer >= 0 (0: no seed beam), got {beam_size!r}")
    if first_beam_size is not None and (not isinstance(first_beam_size, int) or first_beam_size < 1):
        raise ValueError(f"first_beam_size must be None or an integer >= 1, got {first_beam_size!r}")
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 1:
        raise ValueError(f"max_nodes must be an integer >= 1, got {max_nodes!r}")
    if time_budget is not None and not (isinstance(time_budget, (int, float)) and time_budget > 0):
        raise ValueError(f"time_budget must be None or a number of seconds > 0, got {time_budget!r}")
    if seed is not None and not isinstance(seed, Formula):
        raise ValueError(f"seed must be None or a Formula, got {type(seed).__name__}")
    ctx, tally, allowed = search_inputs(index, bitmap, concepts_allowed)
    cand = allowed & (ctx.concept_areas > 0)
    if seed is not None:
        bad = [c for c in seed.concepts if not 0 <= c < ctx.num_concepts or not bool(cand[c])]
        if bad or seed.length > length:
            raise ValueError(f"seed must use candidate concepts (allowed, occurring; ids 0..{ctx.num_concepts - 1}) "
                             f"and have length <= {length}; got {seed!r}")

    seed_f, seed_iou, seed_visited = None, 0.0, 0
    if seed is not None:
        st = formula_stats(ctx, seed, tally, with_concepts=False)
        seed_f = seed
        seed_iou = float(iou_from_counts(torch.tensor(st.inter), torch.tensor(st.area), tally.total))
    elif beam_size > 0 and tally.total > 0:
        from lit_explain.concepts.search import beam_search  # the beam module imports heavier pieces; load lazily

        res = beam_search(ctx, tally, length=length, beam_size=beam_size, first_beam_size=first_beam_size,
                          concepts_allowed=allowed)
        seed_f, seed_iou, seed_visited = res.formula, float(res.iou), int(res.visited)

    start = time.perf_counter()
    bb = _BranchAndBound(ctx, tally, cand, length, max_nodes, time_budget, record)
    if seed_f is not None and seed_iou > 0:
        bb._offer(seed_iou, seed_f)
    left, hit = (-math.inf, None) if tally.total == 0 else bb.run()
    iou, _, _, best = bb.best
    upper = max(iou, left)
    gap = upper - iou
    return OptimalResult(best, iou, upper, gap, gap == 0.0, hit, bb.visited, bb.nodes, bb.expanded, seed_f, seed_iou,
                         seed_visited, time.perf_counter() - start, bb.records)
