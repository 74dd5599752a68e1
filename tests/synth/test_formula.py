"""The rule/unit formula language: parsing, precedence, boolean and fuzzy semantics, DNF, errors."""

from __future__ import annotations

import types

import pytest
import torch

from lit_explain.synth.formula import FormulaError, evaluate_bool, evaluate_maps, names_in, parse, to_dnf

OPS = types.SimpleNamespace(maximum=torch.maximum, minimum=torch.minimum, relu=torch.relu)


def test_parse_trees_and_precedence():
    assert parse("red") == ("name", "red")
    assert parse("red OR blue AND cap") == ("or", [("name", "red"), ("and", ("name", "blue"), ("name", "cap"))])
    assert parse("(red OR blue) AND NOT rim") == ("andnot", ("or", [("name", "red"), ("name", "blue")]),
                                                  ("name", "rim"))
    assert parse("1*red + 2*blue") == ("sum", [(1.0, ("name", "red")), (2.0, ("name", "blue"))])
    assert parse("red and not rim") == parse("red AND NOT rim")  # keywords are case-insensitive
    assert names_in(parse("(a OR b) AND NOT a")) == ["a", "b"]


@pytest.mark.parametrize("bad", ["", "red OR", "NOT red", "red AND (blue", "red blue", "2*", "red % blue"])
def test_malformed_formulas_raise(bad):
    with pytest.raises(FormulaError):
        parse(bad)


def test_unknown_names_are_listed():
    with pytest.raises(FormulaError, match="hexagon"):
        parse("red AND hexagon", known=["red", "blue"])


def test_boolean_semantics_hand_worked():
    f = parse("(yellow OR orange) AND triangle")
    assert evaluate_bool(f, {"orange", "triangle"}) and evaluate_bool(f, {"yellow", "triangle", "x"})
    assert not evaluate_bool(f, {"orange"}) and not evaluate_bool(f, {"red", "triangle"})
    g = parse("indoor AND NOT circle")
    assert evaluate_bool(g, {"indoor", "square"}) and not evaluate_bool(g, {"indoor", "circle"})


def test_fuzzy_semantics_hand_worked():
    a = torch.tensor([0.0, 0.3, 1.0, 0.8])
    b = torch.tensor([1.0, 0.5, 0.2, 0.8])
    leaf = {"a": a, "b": b}.__getitem__
    assert torch.equal(evaluate_maps(parse("a OR b"), leaf, OPS), torch.tensor([1.0, 0.5, 1.0, 0.8]))
    assert torch.equal(evaluate_maps(parse("a AND b"), leaf, OPS), torch.tensor([0.0, 0.3, 0.2, 0.8]))
    assert torch.allclose(evaluate_maps(parse("a AND NOT b"), leaf, OPS), torch.tensor([0.0, 0.0, 0.8, 0.0]))
    assert torch.allclose(evaluate_maps(parse("1*a + 2*b"), leaf, OPS), torch.tensor([2.0, 1.3, 1.4, 2.4]))


def test_dnf():
    dnf = to_dnf(parse("(yellow OR orange) AND triangle AND NOT rim"))
    assert sorted((sorted(p), sorted(n)) for p, n in dnf) == [
        (["orange", "triangle"], ["rim"]), (["triangle", "yellow"], ["rim"])]
    with pytest.raises(FormulaError):
        to_dnf(parse("red AND NOT (blue AND cap)"))
    with pytest.raises(FormulaError):
        to_dnf(parse("1*red + 2*blue"))
