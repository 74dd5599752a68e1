"""Optimal compositional search: against an exhaustive enumeration of the whole formula space (dense numpy masks),
every bound it computed against the true IoU of every formula under it, the beam, budgets and a planted unit the
beam misses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_explain.concepts.formulas import And, Formula, Leaf, Not, Or, extend
from lit_explain.concepts.index import ConceptIndex
from lit_explain.concepts.optimal import _hull_points, optimal_search
from lit_explain.concepts.search import beam_search
from lit_explain.concepts.tally import SearchContext, UnitTally
from tests.concepts.random_instances import make_instance, noisy_bitmap

OP_NAMES = ("or", "and", "and_not")


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- exhaustive enumeration (independent code)
class Space:
    """Every left-deep formula of length <= L over the candidate concepts, scored on dense numpy masks.

    A formula is a sequence ``(c0, (op1, c1), (op2, c2), ...)`` of distinct concepts. ``iou[seq]`` is its IoU,
    ``below[seq]`` the best IoU among its strict extensions (-inf when it has none).
    """

    def __init__(self, dense: torch.Tensor, bitmap: torch.Tensor, length: int, allowed=None) -> None:
        d = dense.permute(1, 0, 2).reshape(dense.shape[1], -1).numpy()  # (C, N*H)
        a = bitmap.reshape(-1).numpy()
        c = d.shape[0]
        cand = [k for k in range(c) if d[k].any() and (allowed is None or allowed[k])]
        self.iou: dict[tuple, float] = {}
        children: dict[tuple, list[tuple]] = {}
        cand_masks = d[cand]  # (K, P)

        def score(m: np.ndarray) -> np.ndarray:  # (..., P) -> IoU per row, 0 when the union is empty
            inter = (m & a).sum(-1)
            union = (m | a).sum(-1)
            return np.where(union > 0, inter / np.maximum(union, 1), 0.0)

        frontier = {}
        for k, s in zip(cand, score(cand_masks)):
            self.iou[(k,)] = float(s)
            frontier[(k,)] = d[k]
        for _ in range(1, length):
            nxt = {}
            for seq, m in frontier.items():
                used = {seq[0]} | {t[1] for t in seq[1:]}
                grown = {"or": m | cand_masks, "and": m & cand_masks, "and_not": m & ~cand_masks}
                kids = []
                for op in OP_NAMES:
                    scores = score(grown[op])
                    for j, k in enumerate(cand):
                        if k in used:
                            continue
                        child = seq + ((op, k),)
                        self.iou[child] = float(scores[j])
                        nxt[child] = grown[op][j]
                        kids.append(child)
                children[seq] = kids
            frontier = nxt
        self.below: dict[tuple, float] = {}
        for seq in sorted(self.iou, key=len, reverse=True):
            self.below[seq] = max((max(self.iou[k], self.below[k]) for k in children.get(seq, [])), default=-math.inf)
        self.best_iou = max(self.iou.values(), default=0.0)
        tied = [to_formula(s) for s, v in self.iou.items() if v == self.best_iou]
        self.best = min(tied, key=lambda f: (f.length, f.key)) if self.best_iou > 0 else None


def to_formula(seq: tuple) -> Formula:
    f: Formula = Leaf(seq[0])
    for op, k in seq[1:]:
        f = extend(f, op, k)
    return f


def to_seq(f: Formula) -> tuple:
    """The construction sequence of a left-deep formula built by ``extend``."""
    if isinstance(f, Leaf):
        return (f.concept,)
    if isinstance(f, Or):
        return to_seq(f.left) + (("or", f.right.concept),)
    if isinstance(f.right, Not):
        return to_seq(f.left) + (("and_not", f.right.operand.concept),)
    return to_seq(f.left) + (("and", f.right.concept),)


def bitmaps_for(inst, seed):
    d = inst.dense
    n, c, h = d.shape
    yield noisy_bitmap(inst, seed, (d[:, 1] | d[:, 2]) & d[:, 3], 0.04)
    yield noisy_bitmap(inst, seed + 1, (d[:, 2] & ~d[:, 4]) | d[:, c - 1], 0.03)
    yield torch.rand(n, h, generator=torch.Generator().manual_seed(seed)) < 0.2
    yield ~noisy_bitmap(inst, seed + 2, d[:, 1] & d[:, 5], 0.03)  # dense: few pixels outside A, clips bind


def small_instance(seed):
    """A few hundred pixels (6 images of 8x9) and 12 concepts (2 image-level, one empty, one full-image)."""
    return make_instance(seed, n=6, c=12, shape=(8, 9), presence=0.6)


# ---------------------------------------------------------------------- the tests
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_exhaustive_enumeration_and_every_bound_holds(seed):
    inst = small_instance(seed)
    ctx = SearchContext(inst.index)
    for bi, a in enumerate(bitmaps_for(inst, 10 * seed)):
        space = Space(inst.dense, a, 3)
        tally = UnitTally.build(ctx, a)
        res = optimal_search(ctx, tally, length=3, beam_size=1, first_beam_size=1, record=True)
        assert res.proven and res.optimality_gap == 0.0 and res.budget_hit is None
        assert res.iou == space.best_iou, (seed, bi)
        assert res.formula.key == space.best.key, (seed, bi, res.to_str(), space.best.to_str())
        assert res.upper_bound == res.iou
        cols = res.columns()
        assert cols["optimality_gap"] == 0.0 and cols["proven"] and cols["budget_hit"] == ""
        assert cols["visited"] == res.visited + res.seed_visited and cols["beam_iou"] == res.seed_iou
        assert res.records, "no bound was computed"
        for prefix, bound, stage in res.records:
            assert bound >= space.below[to_seq(prefix)], (seed, bi, stage, prefix, bound)
        for beam in (1, 5):
            b = beam_search(ctx, tally, length=3, beam_size=beam)
            assert res.iou >= b.iou


@pytest.mark.parametrize("length", [1, 2, 4])
def test_other_lengths_equal_exhaustive_enumeration(length):
    inst = make_instance(5, n=4, c=9 if length == 4 else 12, shape=(6, 7), presence=0.6)
    a = noisy_bitmap(inst, 3, (inst.dense[:, 1] | inst.dense[:, 2]) & ~inst.dense[:, 3], 0.05)
    space = Space(inst.dense, a, length)
    res = optimal_search(inst.index, a, length=length, beam_size=2, record=True)
    assert res.proven and res.iou == space.best_iou and res.formula.key == space.best.key
    for prefix, bound, _ in res.records or []:
        assert bound >= space.below[to_seq(prefix)]


def test_concepts_allowed_restricts_the_space():
    inst = small_instance(3)
    d = inst.dense
    a = noisy_bitmap(inst, 4, (d[:, 1] | d[:, 2]) & d[:, 3], 0.02)
    allowed = torch.ones(12, dtype=torch.bool)
    allowed[[1, 3]] = False
    space = Space(d, a, 3, allowed=allowed.tolist())
    res = optimal_search(inst.index, a, length=3, concepts_allowed=allowed)
    assert res.proven and res.iou == space.best_iou and res.formula.key == space.best.key
    assert not (res.formula.concepts & {1, 3})


@pytest.mark.parametrize("seed,which", [(0, 2), (1, 0)])
def test_budget_hit_reports_an_honest_gap(seed, which):
    inst = small_instance(seed)
    a = list(bitmaps_for(inst, 10 * seed))[which]
    space = Space(inst.dense, a, 3)
    best_leaf = Leaf(int(np.argmax([space.iou.get((k,), -1.0) for k in range(12)])))
    res = optimal_search(inst.index, a, length=3, seed=best_leaf, max_nodes=1)  # one exact pass only
    assert res.budget_hit == "nodes" and res.expanded == 1 and not res.proven
    assert res.optimality_gap > 0 and res.optimality_gap == res.upper_bound - res.iou
    assert res.iou <= space.best_iou <= res.upper_bound  # the certificate bounds the true optimum
    assert res.iou < space.best_iou  # one pass is not enough here, so it must not claim the optimum
    full = optimal_search(inst.index, a, length=3, seed=best_leaf)
    assert full.proven and full.iou == space.best_iou and full.expanded > 1
    timed = optimal_search(inst.index, a, length=3, seed=best_leaf, time_budget=1e-9)
    assert timed.budget_hit == "time" and timed.optimality_gap > 0 and timed.upper_bound >= space.best_iou


def planted_instance():
    """One 20x20 image; A = (c1 OR c2) AND c3 exactly, and a decoy d0 with the best single IoU (0.8).

    Regions (pixels): c1∧c3 60, c2∧c3 60, c1∧c2∧c3 20 (together A, 140), c1∖c3 50, c2∖c3 50, c3∖(c1∨c2) 60.
    The decoy covers c1∧c3, c1∧c2∧c3, 40 pixels of c2∧c3 and 10 of c3's own pixels: IoU 120/150 = 0.8, the best
    single concept (c3: 140/200, c1 and c2: 80/190). c4 is noise outside A, c5 covers 10 pixels of A and 40 others.
    Every extension of the decoy is worse: OR c2 or OR c3 bring the 20 missing pixels of A with 50 false
    positives (140/200), OR c1 only false positives, AND c3 changes nothing (its 10 extra pixels are c3's own),
    AND NOT c5 loses 10 pixels of A (110/140). So beam 1 (first beam 1) keeps the decoy: 0.8.
    """
    h = 400
    regions = {"13": range(0, 60), "23": range(60, 120), "123": range(120, 140), "1": range(140, 190),
               "2": range(190, 240), "3": range(240, 300)}
    masks = torch.zeros(1, 6, h, dtype=torch.bool)
    for name, px in regions.items():
        for k in name:
            masks[0, int(k), list(px)] = True
    masks[0, 0, list(regions["13"]) + list(regions["123"]) + list(range(60, 100)) + list(range(240, 250))] = True
    masks[0, 4, 300:360] = True  # noise, outside A
    masks[0, 5, list(range(0, 10)) + list(range(360, 400))] = True  # noise, a little of A
    index = ConceptIndex.from_dense(masks.view(1, 6, 20, 20))
    a = (masks[0, 1] | masks[0, 2]) & masks[0, 3]
    return index, a.view(1, h), masks


def test_planted_formula_missed_by_the_beam_is_found_with_gap_zero():
    index, a, masks = planted_instance()
    planted = And(Or(Leaf(1), Leaf(2)), Leaf(3))
    m = masks[0]
    assert int(((m[1] | m[2]) & m[3] ^ a[0]).sum()) == 0  # the planted formula is exactly A
    beam = beam_search(index, a, length=3, beam_size=1, first_beam_size=1)
    assert beam.iou < 1.0 and beam.formula.key != planted.key  # the beam misses it
    assert beam.iou == 120 / 150 and beam.formula.key == Leaf(0).key  # hand-worked above: the decoy
    res = optimal_search(index, a, length=3, beam_size=1, first_beam_size=1)
    assert res.seed_iou == beam.iou
    assert res.iou == 1.0 and res.optimality_gap == 0.0 and res.proven
    assert res.formula.key == planted.key


def test_empty_bitmap_and_no_overlap():
    inst = small_instance(0)
    n, c, h = inst.dense.shape
    res = optimal_search(inst.index, torch.zeros(n, h, dtype=torch.bool))
    assert res.formula is None and res.iou == 0.0 and res.proven
    only_empty = torch.zeros(n, h, dtype=torch.bool)
    only_empty[-1, 0] = True  # the last images carry no annotation at all
    res = optimal_search(inst.index, only_empty, length=3)
    assert res.formula is None and res.iou == 0.0 and res.proven


def test_results_do_not_depend_on_the_block_size(monkeypatch):
    inst = small_instance(1)
    a = list(bitmaps_for(inst, 10))[0]
    ref = optimal_search(inst.index, a, length=3, record=True)
    import lit_explain.concepts.optimal as optimal_module

    monkeypatch.setattr(optimal_module, "_BLOCK_ELEMENTS", 7)  # one or two children per block
    small = optimal_search(inst.index, a, length=3, record=True)
    assert (small.formula.key, small.iou, small.visited) == (ref.formula.key, ref.iou, ref.visited)
    assert [(f.key, b) for f, b, _ in small.records] == [(f.key, b) for f, b, _ in ref.records]


def test_deterministic_and_context_reuse():
    inst = small_instance(2)
    ctx = SearchContext(inst.index)
    a = list(bitmaps_for(inst, 7))[1]
    r1 = optimal_search(ctx, a, length=3)
    r2 = optimal_search(inst.index, UnitTally.build(SearchContext(inst.index), a), length=3)
    assert (r1.formula.key, r1.iou, r1.visited, r1.nodes) == (r2.formula.key, r2.iou, r2.visited, r2.nodes)


def test_hull_points_keep_the_exact_maximum_with_any_point_left_out():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        c = 40
        x = torch.randint(0, 60, (c,), generator=g) * (1 + trial % 3)
        y = torch.randint(0, 60, (c,), generator=g) + x // 2 * (trial % 2)  # correlated in half the trials
        valid = torch.rand(c, generator=g) < 0.8
        hull = _hull_points(x, y, valid)
        assert bool(valid[hull].all())
        ids = torch.nonzero(valid).flatten().tolist()
        for alpha, beta in [(0, 1), (5, 30), (50, 7), (200, 400)]:
            for out in [None] + ids:
                rest = [d for d in ids if d != out]
                brute = max((alpha + int(x[d])) / (beta + int(y[d])) for d in rest)
                kept = [d for d in hull.tolist() if d != out]
                assert max((alpha + int(x[d])) / (beta + int(y[d])) for d in kept) == brute


def test_bad_arguments_raise_with_the_accepted_range():
    inst = small_instance(0)
    a = torch.zeros(6, 72, dtype=torch.bool)
    for kwargs, text in [(dict(length=0), ">= 1"), (dict(beam_size=-1), ">= 0"), (dict(max_nodes=0), ">= 1"),
                         (dict(time_budget=0), "> 0"), (dict(first_beam_size=0), ">= 1"),
                         (dict(concepts_allowed=torch.ones(3, dtype=torch.bool)), "shape (12,)"),
                         (dict(seed=And(Leaf(1), Leaf(2)), length=1), "length <= 1"),
                         (dict(seed="x"), "Formula")]:
        with pytest.raises(ValueError, match=text.replace("(", r"\(").replace(")", r"\)")):
            optimal_search(inst.index, a, **kwargs)
