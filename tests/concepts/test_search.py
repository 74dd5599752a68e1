"""Compositional beam search: exact vectorised scores and every scorer against dense brute-force references."""

from __future__ import annotations

import math

import pytest
import torch

from lit_explain.concepts.formulas import OPS, And, Leaf, Not, Or, extend
from lit_explain.concepts.heuristics import SideInfo, estimate
from lit_explain.concepts.search import SCORERS, SearchContext, SearchSettings, beam_search, detacc_optimal_search
from lit_explain.concepts.tally import UnitTally, extension_counts, formula_stats, iou_from_counts
from lit_explain.metrics.functional.sample_counts import detection_accuracy_from_counts
from tests.concepts.random_instances import make_instance, noisy_bitmap


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- dense references (independent code)
def dense_eval(f, dense):
    """Evaluate a formula on dense (N, C, H) masks by plain recursion."""
    if isinstance(f, Leaf):
        return dense[:, f.concept]
    if isinstance(f, Not):
        return ~dense_eval(f.operand, dense)
    left, right = dense_eval(f.left, dense), dense_eval(f.right, dense)
    return left & right if isinstance(f, And) else left | right


def dense_iou(m, a):
    inter = int((m & a).sum())
    union = int((m | a).sum())
    return inter / union if union else 0.0


def reference_beam_search(dense, a, length=3, beam=5, first=None, allowed=None, limit=None, penalty=1.0):
    """Straightforward beam search on dense masks: the semantics the library must reproduce."""
    c = dense.shape[1]
    allowed = list(range(c)) if allowed is None else [i for i in range(c) if allowed[i]]
    unary = {k: dense_iou(dense[:, k], a) for k in allowed}
    ranked = sorted(allowed, key=lambda k: (-unary[k], k))
    if length == 1:
        return (Leaf(ranked[0]), unary[ranked[0]]) if unary[ranked[0]] > 0 else (None, 0.0)
    first = 2 * beam if first is None else first
    cur = [(Leaf(k), unary[k], unary[k]) for k in ranked if unary[k] > 0][:first]
    cands = ranked[:limit] if limit is not None else ranked
    cands = [k for k in cands if bool(dense[:, k].any())]  # concepts that never occur only pad formulas
    history = [cur]
    for step in range(1, length):
        k_keep = 1 if step == length - 1 else beam
        pool = {f.key: (f, iou, score) for f, iou, score in cur}
        for f, _, _ in cur:
            for cc in sorted(cands):
                if cc in f.concepts:
                    continue
                for op in OPS:
                    g = extend(f, op, cc)
                    if g.key in pool:
                        continue
                    iou = dense_iou(dense_eval(g, dense), a)
                    pool[g.key] = (g, iou, iou * penalty ** (g.length - 1))
        cur = sorted(pool.values(), key=lambda t: (-t[2], t[0].length, t[0].key))[:k_keep]
        history.append(cur)
    if not cur:
        return None, 0.0
    return cur[0][0], cur[0][1]


def bitmaps_for(inst, seed):
    d = inst.dense
    n, c, h = d.shape
    yield "planted_or_and", noisy_bitmap(inst, seed, (d[:, 1] & d[:, 2]) | d[:, 3], 0.03)
    yield "planted_and_not", noisy_bitmap(inst, seed + 1, d[:, 2] & ~d[:, 4], 0.02)
    yield "scene_and", noisy_bitmap(inst, seed + 2, d[:, 1] & d[:, c - 1], 0.02)
    yield "random", torch.rand(n, h, generator=torch.Generator().manual_seed(seed)) < 0.15
    yield "single_pixel", torch.zeros(n, h, dtype=torch.bool).index_put_((torch.tensor([3]), torch.tensor([5])), torch.tensor(True))


# ---------------------------------------------------------------------- exact vectorised scores
@pytest.mark.parametrize("seed,contiguous", [(0, 0.25), (1, 0.0), (2, 2.0)])
def test_exact_extension_scores_equal_dense_iou_for_every_candidate(seed, contiguous):
    inst = make_instance(seed)
    ctx = SearchContext(inst.index, chunk_pixels=5 * 72)  # tiny chunks: exercise the chunked loop
    ctx.contiguous_fraction = contiguous  # 0: always contiguous image blocks, 2: always gathered entries
    c = inst.dense.shape[1]
    formulas = [Leaf(0), Leaf(3), Leaf(c - 1), Leaf(c - 3), Or(Leaf(1), Leaf(2)), And(Leaf(2), Not(Leaf(c - 1))),
                And(Or(Leaf(1), Leaf(c - 2)), Leaf(4)), Not(Leaf(1)), And(Leaf(1), Leaf(c - 3))]
    for _, a in bitmaps_for(inst, seed):
        tally = UnitTally.build(ctx, a)
        # unary pass
        for k in range(c):
            assert int(tally.unary_inter[k]) == int((inst.dense[:, k] & a).sum())
            assert int(ctx.concept_areas[k]) == int(inst.dense[:, k].sum())
        for f in formulas:
            st = formula_stats(ctx, f, tally)
            fm = dense_eval(f, inst.dense)
            assert torch.equal(st.image_area, fm.sum(1))
            assert torch.equal(st.image_inter, (fm & a).sum(1))
            inter, area = extension_counts(st, ctx, tally)
            iou = iou_from_counts(inter, area, tally.total)
            for cc in range(c):
                for oi, op in enumerate(OPS):
                    g = extend(f, op, cc)
                    gm = dense_eval(g, inst.dense)
                    assert int(inter[oi, cc]) == int((gm & a).sum()), (f, op, cc)
                    assert int(area[oi, cc]) == int(gm.sum()), (f, op, cc)
                    assert float(iou[oi, cc]) == dense_iou(gm, a)


# ---------------------------------------------------------------------- admissibility of MMESH and CFH
@pytest.mark.parametrize("seed", [0, 3, 4])
def test_mmesh_and_cfh_estimates_bound_the_true_iou(seed):
    from lit_explain.concepts.heuristics import LeafGeometry, bounding_boxes, inscribed_rectangles

    inst = make_instance(seed, n=24, c=9)
    ctx = SearchContext(inst.index)
    geo = LeafGeometry.from_index(inst.index)
    sh, sw = inst.mask_shape
    c = inst.dense.shape[1]
    lefts = [Leaf(1), Leaf(c - 1), Or(Leaf(1), Leaf(2)), And(Leaf(2), Not(Leaf(3))), And(Leaf(1), Leaf(c - 2))]
    checked = 0
    for _, a in bitmaps_for(inst, seed):
        tally = UnitTally.build(ctx, a)
        if tally.total == 0:
            continue
        for f in lefts:
            fm = dense_eval(f, inst.dense)
            area = fm.sum(1)
            left = SideInfo(area, (fm & a).sum(1), bounding_boxes(fm.view(-1, sh, sw)),
                            inscribed_rectangles(fm.view(-1, sh, sw)))
            for op in OPS:
                for h in ("mmesh", "cfh"):
                    est = estimate(h, op, left, ctx.image_areas.long(), tally.image_inter, tally.act_areas,
                                   tally.total, ctx.pixel_size, ctx.scene_like, geo.boxes.long(), geo.rects.long())
                    for cc in range(c):
                        true = dense_iou(dense_eval(extend(f, op, cc), inst.dense), a)
                        assert float(est[cc]) >= true, (h, f, op, cc, float(est[cc]), true)
                        checked += 1
    assert checked > 500


def test_scene_shortcut_is_exact():
    inst = make_instance(5)
    ctx = SearchContext(inst.index)
    c = inst.dense.shape[1]
    a = noisy_bitmap(inst, 9, inst.dense[:, 1] & inst.dense[:, c - 1], 0.02)
    tally = UnitTally.build(ctx, a)
    scene = Leaf(c - 1)  # image-level concept: per-sample masks are all-or-nothing
    left = SideInfo(inst.dense[:, c - 1].sum(1), (inst.dense[:, c - 1] & a).sum(1))
    for op in OPS:
        est = estimate("cfh", op, left, ctx.image_areas.long(), tally.image_inter, tally.act_areas, tally.total,
                       ctx.pixel_size, ctx.scene_like)
        for cc in range(c):
            assert float(est[cc]) == pytest.approx(dense_iou(dense_eval(extend(scene, op, cc), inst.dense), a), abs=1e-12)


def test_areas_heuristic_is_not_admissible():
    """A large AND candidate gets a negative 'areas' estimate although its true IoU is positive."""
    inst = make_instance(6)
    ctx = SearchContext(inst.index)
    d = inst.dense
    a = d[:, 0] & d[:, 1]  # concept 0 covers whole images, so 0 AND 1 is the exact answer
    tally = UnitTally.build(ctx, a)
    left = SideInfo(d[:, 0].sum(1), (d[:, 0] & a).sum(1))
    est = estimate("areas", "and", left, ctx.image_areas.long(), tally.image_inter, tally.act_areas, tally.total,
                   ctx.pixel_size, ctx.scene_like)
    true = dense_iou(d[:, 0] & d[:, 1], a)
    assert true == 1.0 and float(est[1]) < true


# ---------------------------------------------------------------------- full searches
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_search_equals_dense_reference(seed):
    inst = make_instance(seed, n=24, c=9)
    ctx = SearchContext(inst.index)
    for name, a in bitmaps_for(inst, seed):
        for length in (1, 2, 3):
            ref_f, ref_iou = reference_beam_search(inst.dense, a, length=length, beam=3)
            res = beam_search(ctx, a, length=length, beam_size=3)
            assert res.iou == ref_iou, (name, length)
            assert (res.formula is None) == (ref_f is None)
            if ref_f is not None:
                assert res.formula.key == ref_f.key, (name, length, res.formula, ref_f)
                assert res.iou == dense_iou(dense_eval(res.formula, inst.dense), a)
            # no concept is ever used twice (no 'a AND NOT a')
            for beam in res.history:
                for f, _ in beam:
                    assert len(set(f.leaves())) == len(f.leaves())


@pytest.mark.parametrize("seed", [0])
def test_search_options_match_reference(seed):
    inst = make_instance(seed, n=24, c=9)
    ctx = SearchContext(inst.index)
    allowed = torch.ones(9, dtype=torch.bool)
    allowed[[2, 5]] = False
    for name, a in bitmaps_for(inst, seed):
        cases = [
            dict(ref=dict(first=2), lib=dict(first_beam_size=2)),
            dict(ref=dict(allowed=allowed), lib=dict(concepts_allowed=allowed)),
            dict(ref=dict(limit=3), lib=dict(candidate_limit=3)),
            dict(ref=dict(penalty=0.9), lib=dict(complexity_penalty=0.9)),
        ]
        for case in cases:
            ref_f, ref_iou = reference_beam_search(inst.dense, a, length=3, beam=2, **case["ref"])
            res = beam_search(ctx, a, length=3, beam_size=2, **case["lib"])
            assert res.iou == ref_iou, (name, case)
            if ref_f is not None:
                assert res.formula.key == ref_f.key, (name, case)
    res = beam_search(ctx, inst.dense[:, 2] | inst.dense[:, 5], concepts_allowed=allowed)
    assert res.formula is None or not (res.formula.concepts & {2, 5})


@pytest.mark.parametrize("seed", [0, 1])
def test_scorers_agree_with_exhaustive_search(seed):
    inst = make_instance(seed, n=24, c=9)
    ctx = SearchContext(inst.index)
    for name, a in bitmaps_for(inst, seed):
        none = beam_search(ctx, a, scorer="none", beam_size=3)
        exact = beam_search(ctx, a, scorer="exact", beam_size=3)
        assert exact.iou == none.iou and exact.score == none.score
        assert (exact.formula is None) == (none.formula is None)
        if none.formula is not None:
            assert exact.formula.key == none.formula.key
        for h in ("mmesh", "cfh"):
            r = beam_search(ctx, a, scorer=h, beam_size=3)
            assert r.iou == none.iou, (name, h)
            # same beams at every step (IoUs; formulas identical since ties are broken by the same key)
            assert [[i for _, i in b] for b in r.history] == [[i for _, i in b] for b in none.history]
            assert r.visited <= none.visited
        r = beam_search(ctx, a, scorer="areas", beam_size=3)
        assert r.iou <= none.iou + 1e-12  # never better than exhaustive; can be worse


def test_planted_formulas_are_recovered_exactly():
    inst = make_instance(11, n=40, c=10)
    ctx = SearchContext(inst.index)
    d = inst.dense
    planted = [And(Or(Leaf(1), Leaf(3)), Not(Leaf(4))), And(Leaf(2), Not(Leaf(4))), And(Leaf(1), Leaf(9)), Leaf(5),
               Or(Leaf(3), Leaf(6)), And(Or(Leaf(1), Leaf(2)), Leaf(8))]
    for f in planted:
        a = dense_eval(f, d)
        for scorer in ("exact", "mmesh"):
            res = beam_search(ctx, a, scorer=scorer)
            assert res.iou == 1.0, (f, res.formula)
            assert torch.equal(dense_eval(res.formula, d), a)
            assert res.formula.length == f.length  # ties go to the shortest formula: nothing padded


def test_empty_bitmap_and_no_overlap():
    inst = make_instance(0)
    ctx = SearchContext(inst.index)
    empty = torch.zeros_like(inst.dense[:, 0])
    for scorer in ("exact", "none", "mmesh"):
        r = beam_search(ctx, empty, scorer=scorer)
        assert r.formula is None and r.iou == 0.0
    r = beam_search(ctx, empty, length=1)
    assert r.formula is None


def test_bad_inputs_raise():
    inst = make_instance(0)
    a = inst.dense[:, 1]
    with pytest.raises(ValueError, match="scorer"):
        beam_search(inst.index, a, scorer="fast")
    with pytest.raises(ValueError, match="shape"):
        beam_search(inst.index, a[:-1])
    with pytest.raises(TypeError, match="bool"):
        beam_search(inst.index, a.float())
    with pytest.raises(TypeError, match="unknown search settings"):
        beam_search(inst.index, a, beam=3)
    with pytest.raises(TypeError, match="SearchSettings"):
        beam_search(inst.index, a, 3)  # the settings are not positional numbers


@pytest.mark.parametrize("field,value,accepted", [
    ("length", 0, "length must be an integer >= 1"),
    ("beam_size", 0, "beam_size must be an integer >= 1"),
    ("beam_size", 2.5, "beam_size must be an integer >= 1"),
    ("first_beam_size", 0, "first_beam_size must be an integer >= 1 or None"),
    ("candidate_limit", -1, "candidate_limit must be an integer >= 0 or None"),
    ("complexity_penalty", 0.0, "complexity_penalty must be a finite number > 0"),
    ("complexity_penalty", math.inf, "complexity_penalty must be a finite number > 0"),
    ("concept_chunk", 0, "concept_chunk must be an integer >= 1"),
    ("scorer", "fast", "scorer must be one of"),
])
def test_search_settings_refuse_values_outside_their_range(field, value, accepted):
    with pytest.raises(ValueError, match=accepted):
        SearchSettings(**{field: value})


def test_search_settings_are_the_keyword_arguments():
    """A SearchSettings object and the same fields by keyword give the same search; keywords override it."""
    inst = make_instance(3, n=20, c=8)
    ctx = SearchContext(inst.index)
    a = noisy_bitmap(inst, 3, inst.dense[:, 1] | inst.dense[:, 4], 0.1)
    s = SearchSettings(length=2, beam_size=2, first_beam_size=3, scorer="exact", candidate_limit=5)
    by_kw = beam_search(ctx, a, length=2, beam_size=2, first_beam_size=3, candidate_limit=5)
    by_obj = beam_search(ctx, a, s)
    assert by_obj.formula.key == by_kw.formula.key and by_obj.iou == by_kw.iou and by_obj.visited == by_kw.visited
    longer = beam_search(ctx, a, s, length=3)
    assert longer.formula.key == beam_search(ctx, a, SearchSettings(3, 2, 3, "exact", 5)).formula.key
    assert SearchSettings(beam_size=4).first_beam == 8 and SearchSettings(first_beam_size=3).first_beam == 3
    assert set(SCORERS) == {"exact", "none", "mmesh", "cfh", "areas"}


def test_detacc_optimal_search_extends_while_detection_accuracy_grows():
    inst = make_instance(2, n=30, c=10)
    ctx = SearchContext(inst.index)
    d = inst.dense
    a = noisy_bitmap(inst, 1, d[:, 1] | d[:, 2] | d[:, 3] | d[:, 4], 0.0)
    res, det = detacc_optimal_search(ctx, a, detection_accuracy_from_counts, min_length=2, max_length=5)
    # brute-force DetAcc of the chosen formula
    fm = dense_eval(res.formula, d)
    present = fm.any(1)
    hit = (fm & a).any(1)
    assert det == pytest.approx(float(hit.sum()) / float(present.sum()))
    assert res.formula.length >= 2
    base = beam_search(ctx, a, length=2)
    fb = dense_eval(base.formula, d)
    base_det = float((fb & a).any(1).sum()) / float(fb.any(1).sum())
    assert det >= base_det
    assert not math.isnan(det)


@pytest.mark.parametrize("mmap", [True, False])
def test_search_context_copies_nothing_of_the_index(tmp_path, mmap):
    """The context's per-entry arrays are the index's own (memory-mapped when loaded), its (N, C) area table is
    the narrowest dtype that holds H, and the image-level labels are kept as pairs, not an (N, C_img) matrix."""
    import numpy as np

    from lit_explain.concepts.index import ConceptIndex

    for shape, dtype in (((8, 9), torch.int8), ((12, 12), torch.int16)):
        inst = make_instance(3, shape=shape)
        inst.index.save(tmp_path / "index.npz")
        index = ConceptIndex.load(tmp_path / "index.npz", mmap=mmap)
        ctx = SearchContext(index)
        n, c = index.num_images, index.num_concepts
        assert np.shares_memory(ctx.concepts, index.pixel_concepts.numpy())
        assert np.shares_memory(ctx.offsets, index.pixel_offsets.numpy())
        assert ctx.concepts.nbytes == index.pixel_concepts.numel() * 4
        assert ctx.image_areas.dtype == dtype and ctx.image_areas.nbytes == n * c * dtype.itemsize
        assert ctx.image_areas is index.image_areas()
        assert torch.equal(ctx.image_areas.long(), inst.dense.sum(-1))
        assert torch.equal(ctx.concept_areas, inst.dense.sum((0, 2)))
        assert ctx.level_images.numel() == ctx.level_concepts.numel() == int(inst.image_level.sum())
        held = [v for v in vars(ctx).values() if isinstance(v, (torch.Tensor, np.ndarray))]
        assert not any(v.dtype in (torch.float64, np.float64) for v in held)
        # the co-occurrence rows (image-level corrections included) still equal the dense counts
        d = inst.dense.long()
        for a in range(c):
            assert torch.equal(ctx.cooccurrence_row(a), (d[:, a : a + 1] * d).sum((0, 2)))
