"""Formulas: length, canonical form, printing/parsing round trip, dense evaluation, logical equivalence."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from lit_explain.concepts.formulas import (
    OPS,
    And,
    FormulaParseError,
    Leaf,
    Not,
    Or,
    equivalent,
    extend,
    group_equivalent,
    parse,
    to_pyeda,
)
from lit_explain.concepts.index import ConceptIndex
from lit_explain.concepts.vocabulary import ConceptVocabulary

a, b, c, d = Leaf(0), Leaf(1), Leaf(2), Leaf(3)


def truth_table(f, variables):
    """Brute force: evaluate on every assignment with Python booleans (independent of the library's tensors)."""
    out = []
    for bits in itertools.product([False, True], repeat=len(variables)):
        env = dict(zip(variables, bits))

        def ev(g):
            if isinstance(g, Leaf):
                return env[g.concept]
            if isinstance(g, Not):
                return not ev(g.operand)
            if isinstance(g, And):
                return ev(g.left) and ev(g.right)
            return ev(g.left) or ev(g.right)

        out.append(ev(f))
    return tuple(out)


def random_formula(rng, max_leaves=4, n_concepts=6, allow_not_anywhere=True):
    leaves = rng.sample(range(n_concepts), rng.randint(1, max_leaves))
    f = Leaf(leaves[0])
    for x in leaves[1:]:
        f = extend(f, rng.choice(OPS), x)
    if allow_not_anywhere and rng.random() < 0.3:
        f = Not(f)
    return f


def test_length_counts_leaves_and_not_adds_nothing():
    assert a.length == 1
    assert Not(a).length == 1
    assert And(a, Not(b)).length == 2
    assert Or(And(a, b), Not(c)).length == 3
    assert Or(And(a, b), c).leaves() == (0, 1, 2)


def test_canonical_form_merges_commutative_associative_variants():
    assert Or(And(a, b), c).key == Or(c, And(b, a)).key
    assert Or(Or(a, c), b).key == Or(Or(b, a), c).key == Or(a, Or(b, c)).key
    assert And(And(a, b), Not(c)).key == And(And(a, Not(c)), b).key
    assert Or(And(a, b), c).key != And(Or(a, c), b).key  # the pair CCE's structural equality confuses
    assert Or(a, a).key == a.key  # idempotence
    assert Not(Not(a)).key == a.key
    # De Morgan: NOT pushed to the leaves
    assert Not(Or(a, b)).canonical() == And(Not(a), Not(b))
    assert Not(And(a, Not(b))).canonical() == Or(b, Not(a)) or Not(And(a, Not(b))).key == Or(Not(a), b).key
    assert Not(And(a, Not(b))).key == Or(Not(a), b).key


def test_canonical_form_is_equivalent_and_idempotent_on_random_formulas():
    rng = random.Random(0)
    for _ in range(300):
        f = random_formula(rng)
        g = f.canonical()
        variables = sorted(f.concepts)
        assert truth_table(f, variables) == truth_table(g, variables)
        assert g.canonical() == g
        # NOT only on leaves
        stack = [g]
        while stack:
            x = stack.pop()
            if isinstance(x, Not):
                assert isinstance(x.operand, Leaf)
            elif isinstance(x, (And, Or)):
                stack += [x.left, x.right]


def test_printing_and_parsing_round_trip():
    vocab = ConceptVocabulary((10, 20, 30, 40, 50, 60), ("red", "circle", "sky-s", "AND", "two words", 'q"uote'),
                              ("color", "object", "scene", "x", "y", "z"))
    assert Or(And(a, b), c).to_str(vocab) == "(red AND circle) OR sky-s"
    assert And(b, Not(a)).to_str(vocab) == "circle AND NOT red"
    assert And(Leaf(3), Leaf(4)).to_str(vocab) == '"AND" AND "two words"'
    rng = random.Random(1)
    for _ in range(200):
        f = random_formula(rng)
        s = f.to_str(vocab)
        g = parse(s, vocab)
        assert g.key == f.key
        assert g.to_str(vocab) == s
        # without a vocabulary: integer ids
        assert parse(f.to_str(), None).key == f.key
    # precedence: NOT > AND > OR, left-associative
    assert parse("red OR circle AND sky-s", vocab).key == Or(a, And(b, c)).key
    assert parse("NOT red AND circle", vocab).key == And(Not(a), b).key
    assert parse("NOT (red OR circle)", vocab).key == And(Not(a), Not(b)).key


@pytest.mark.parametrize("text,match", [("red AND", "expected"), ("(red OR circle", r"\)"), ("", "empty"),
                                        ("red circle", "end of the formula"), ("blue", "unknown concept")])
def test_parse_errors_are_clear(text, match):
    vocab = ConceptVocabulary((1, 2), ("red", "circle"), ("color", "object"))
    with pytest.raises(FormulaParseError, match=match):
        parse(text, vocab)


def test_parse_without_vocabulary_requires_ids():
    with pytest.raises(FormulaParseError, match="integer id"):
        parse("red OR 3")


def test_mask_evaluates_on_the_concept_index():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 4, 5, 5, generator=g) < 0.4
    img = torch.zeros(6, 4, dtype=torch.bool)
    img[[1, 4], 3] = True
    masks[:, 3] = False
    index = ConceptIndex.from_dense(masks, img)
    full = masks | img[:, :, None, None]
    f = Or(And(a, Not(b)), d)
    ids = torch.tensor([4, 0, 1])
    expect = (full[ids, 0] & ~full[ids, 1]) | full[ids, 3]
    assert torch.equal(f.mask(index, ids), expect)


def test_pyeda_equivalence_and_grouping():
    assert equivalent(And(Or(a, b), Not(a)), And(b, Not(a)))
    assert equivalent(Or(a, And(a, b)), a)  # absorption: beyond the canonical form
    assert not equivalent(Or(And(a, b), c), And(Or(a, c), b))
    assert str(to_pyeda(And(a, Not(b)))).replace(" ", "") in ("And(c0,~c1)", "And(~c1,c0)")
    rng = random.Random(2)
    formulas = [random_formula(rng, max_leaves=3, n_concepts=4) for _ in range(40)]
    formulas += [And(Or(a, b), Not(a)), And(b, Not(a)), Or(a, And(a, b)), a]
    groups = group_equivalent(formulas)
    assert sorted(i for grp in groups for i in grp) == list(range(len(formulas)))
    # reference: pairwise pyeda equivalence (an independent decision procedure)
    exprs = [to_pyeda(f) for f in formulas]
    label = {i: gi for gi, grp in enumerate(groups) for i in grp}
    for i, j in itertools.combinations(range(len(formulas)), 2):
        assert (label[i] == label[j]) == bool(exprs[i].equivalent(exprs[j])), (formulas[i], formulas[j])
    assert group_equivalent(formulas, method="pyeda") == groups
    with pytest.raises(ValueError, match="method"):
        group_equivalent(formulas, method="sat")
