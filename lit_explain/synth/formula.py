"""A tiny formula language over concept names, shared by class rules and planted units.

Grammar (keywords upper case, names are concept names such as ``red`` or ``circle``)::

    sum      := term ('+' term)*                 weighted sum            (planted units only)
    term     := [NUMBER '*'] or_expr             weight, default 1
    or_expr  := and_expr ('OR' and_expr)*        OR
    and_expr := primary (('AND' | 'AND NOT') primary)*   left to right
    primary  := NAME | '(' sum ')'

Examples: ``red``, ``red OR blue``, ``(yellow OR orange) AND triangle``, ``red AND NOT rim``,
``1*red + 2*blue``. Precedence from tight to loose: ``*``, AND / AND NOT, OR, ``+``.

Two semantics:

* boolean, over the set of concepts present in an image (class rules): :func:`evaluate_bool`;
* fuzzy, over activation maps in [0, 1] (planted units): OR = max, AND = min, AND NOT = relu(a - b),
  ``w*x`` = weight times value, ``+`` = sum: :func:`evaluate_maps`.

A formula parses to nested tuples: ``("name", n)``, ``("or", [a, b, ...])``, ``("and", a, b)``,
``("andnot", a, b)``, ``("sum", [(w, a), ...])``.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

__all__ = ["parse", "names_in", "evaluate_bool", "evaluate_maps", "to_dnf", "FormulaError"]

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|(\()|(\))|(\*)|(\+)|([A-Za-z_][A-Za-z0-9_\-]*))")


class FormulaError(ValueError):
    """A formula string that does not parse, or names an unknown concept."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise FormulaError(f"cannot parse {text!r} at position {pos}: {text[pos:pos + 10]!r}")
        num, lp, rp, star, plus, word = m.groups()
        if num is not None:
            out.append(("num", num))
        elif lp:
            out.append(("(", lp))
        elif rp:
            out.append((")", rp))
        elif star:
            out.append(("*", star))
        elif plus:
            out.append(("+", plus))
        elif word.upper() in ("AND", "OR", "NOT"):
            out.append((word.upper(), word))
        else:
            out.append(("name", word))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.toks, self.i = text, _tokens(text), 0

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.toks[j][0] if j < len(self.toks) else None

    def take(self, kind: str) -> str:
        if self.peek() != kind:
            got = self.toks[self.i][1] if self.i < len(self.toks) else "end of text"
            raise FormulaError(f"in formula {self.text!r}: expected {kind!r}, got {got!r}")
        self.i += 1
        return self.toks[self.i - 1][1]

    def parse(self):
        if not self.toks:
            raise FormulaError("empty formula")
        node = self.sum()
        if self.i != len(self.toks):
            raise FormulaError(f"in formula {self.text!r}: unexpected {self.toks[self.i][1]!r}")
        return node

    def sum(self):
        terms = [self.term()]
        while self.peek() == "+":
            self.take("+")
            terms.append(self.term())
        if len(terms) == 1 and terms[0][0] == 1.0:
            return terms[0][1]
        return ("sum", terms)

    def term(self):
        weight = 1.0
        if self.peek() == "num":
            weight = float(self.take("num"))
            self.take("*")
        return (weight, self.or_expr())

    def or_expr(self):
        items = [self.and_expr()]
        while self.peek() == "OR":
            self.take("OR")
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else ("or", items)

    def and_expr(self):
        node = self.primary()
        while self.peek() == "AND":
            self.take("AND")
            if self.peek() == "NOT":
                self.take("NOT")
                node = ("andnot", node, self.primary())
            else:
                node = ("and", node, self.primary())
        return node

    def primary(self):
        if self.peek() == "(":
            self.take("(")
            node = self.sum()
            self.take(")")
            return node
        if self.peek() == "NOT":
            raise FormulaError(f"in formula {self.text!r}: NOT is only allowed as 'a AND NOT b'")
        return ("name", self.take("name"))


def parse(text: str, known: Iterable[str] | None = None):
    """Parse ``text``; when ``known`` is given, every name must be in it (else :class:`FormulaError`)."""
    node = _Parser(text).parse()
    if known is not None:
        known = set(known)
        bad = [n for n in names_in(node) if n not in known]
        if bad:
            raise FormulaError(f"formula {text!r} names unknown concept(s) {bad}; known: {sorted(known)}")
    return node


def names_in(node) -> list[str]:
    """Concept names used by a parsed formula, in first-appearance order."""
    kind = node[0]
    if kind == "name":
        return [node[1]]
    if kind == "or":
        parts = node[1]
    elif kind == "sum":
        parts = [t for _, t in node[1]]
    else:
        parts = [node[1], node[2]]
    return list(dict.fromkeys(n for p in parts for n in names_in(p)))


def evaluate_bool(node, present: set[str] | frozenset[str]) -> bool:
    """Truth of a parsed formula given the set of concepts present (a sum is true when any term is)."""
    kind = node[0]
    if kind == "name":
        return node[1] in present
    if kind == "or":
        return any(evaluate_bool(p, present) for p in node[1])
    if kind == "and":
        return evaluate_bool(node[1], present) and evaluate_bool(node[2], present)
    if kind == "andnot":
        return evaluate_bool(node[1], present) and not evaluate_bool(node[2], present)
    return any(w > 0 and evaluate_bool(t, present) for w, t in node[1])


def evaluate_maps(node, leaf: Callable[[str], "object"], ops) -> "object":
    """Fuzzy value of a parsed formula; ``leaf(name)`` gives a map, ``ops`` provides max/min/relu.

    ``ops`` is a namespace with ``maximum(a, b)``, ``minimum(a, b)`` and ``relu(x)`` (e.g. torch).
    """
    kind = node[0]
    if kind == "name":
        return leaf(node[1])
    if kind == "or":
        vals = [evaluate_maps(p, leaf, ops) for p in node[1]]
        out = vals[0]
        for v in vals[1:]:
            out = ops.maximum(out, v)
        return out
    if kind == "and":
        return ops.minimum(evaluate_maps(node[1], leaf, ops), evaluate_maps(node[2], leaf, ops))
    if kind == "andnot":
        return ops.relu(evaluate_maps(node[1], leaf, ops) - evaluate_maps(node[2], leaf, ops))
    out = None
    for w, t in node[1]:
        v = w * evaluate_maps(t, leaf, ops)
        out = v if out is None else out + v
    return out


def to_dnf(node) -> list[tuple[frozenset[str], frozenset[str]]]:
    """Disjunctive normal form of a boolean formula: a list of (positive names, negated names) clauses.

    Only names may be negated (``a AND NOT b`` with ``b`` a name, or an OR of names); sums are rejected.
    """
    kind = node[0]
    if kind == "name":
        return [(frozenset([node[1]]), frozenset())]
    if kind == "or":
        return [c for p in node[1] for c in to_dnf(p)]
    if kind == "and":
        return [(pa | pb, na | nb) for pa, na in to_dnf(node[1]) for pb, nb in to_dnf(node[2])]
    if kind == "andnot":
        neg = node[2]
        if neg[0] == "name":
            negs = [neg[1]]
        elif neg[0] == "or" and all(p[0] == "name" for p in neg[1]):
            negs = [p[1] for p in neg[1]]
        else:
            raise FormulaError("class rules may negate only a name or an OR of names")
        return [(pa, na | frozenset(negs)) for pa, na in to_dnf(node[1])]
    raise FormulaError("class rules cannot use weighted sums")
