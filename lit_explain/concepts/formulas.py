"""Logical formulas over concepts: the explanations of Compositional (CoEx) and Clustered Compositional (CCE) search.

A formula is a tree of :class:`Leaf` (a dense concept id), :class:`Not`, :class:`And` and :class:`Or`. The beam
search grows formulas left-deep, the new term always on the right: ``f OR c``, ``f AND c``, ``f AND NOT c``.
Length follows CCE: a leaf counts 1, ``NOT`` adds nothing, a binary node is the sum of
its children, so the length is the number of leaves.

Canonical form (:meth:`Formula.canonical`): NOT pushed down to the leaves (De Morgan, double negation), chains of
the same associative operator flattened, their operands de-duplicated (idempotence) and sorted by a total order
(compound operands first, then positive leaves by id, then negated leaves by id), and rebuilt left-deep. Two
formulas with the same canonical form are logically equivalent; the converse does not hold in general (e.g.
``(a OR b) AND NOT a`` vs ``b AND NOT a``), which is what :func:`equivalent` (pyeda) and
:func:`group_equivalent` (exact truth tables) are for. The canonical form is the de-duplication key of the
search (:attr:`Formula.key`) and the printed string (:meth:`Formula.to_str`), which :func:`parse` reads back.

Printed grammar (NOT binds tighter than AND, AND tighter than OR, both left-associative; nested chains are
always parenthesised by the printer)::

    formula := term ("OR" term)*        term := factor ("AND" factor)*
    factor  := "NOT" factor | "(" formula ")" | NAME

Names come from a :class:`~lit_explain.concepts.vocabulary.ConceptVocabulary`; without one a leaf prints as its
integer id. Names that are keywords or contain characters other than letters, digits and ``_-.:/+'`` are
double-quoted (backslash escapes ``\\"`` and ``\\\\``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover
    from lit_explain.concepts.index import ConceptIndex
    from lit_explain.concepts.vocabulary import ConceptVocabulary

__all__ = [
    "Formula",
    "Leaf",
    "Not",
    "And",
    "Or",
    "OPS",
    "extend",
    "parse",
    "to_pyeda",
    "equivalent",
    "group_equivalent",
    "FormulaParseError",
]

#: The extension operators of the search, in generation order: ``f OR c``, ``f AND c``, ``f AND NOT c``.
OPS: tuple[str, ...] = ("or", "and", "and_not")

_KEYWORDS = {"AND", "OR", "NOT"}
_BARE_NAME = re.compile(r"^[A-Za-z0-9_\-.:/+']+$")


class FormulaParseError(ValueError):
    """A formula string could not be parsed; the message shows the position and what was expected."""


class Formula:
    """Base class of formula nodes. Nodes are immutable, hashable and compare structurally."""

    __slots__ = ()

    # ------------------------------------------------------------------ structure
    @property
    def length(self) -> int:
        """CCE length: number of leaves (``NOT`` adds nothing)."""
        raise NotImplementedError

    def leaves(self) -> tuple[int, ...]:
        """Concept ids of the leaves, left to right (with repetitions)."""
        raise NotImplementedError

    @property
    def concepts(self) -> frozenset[int]:
        """The set of concept ids used."""
        return frozenset(self.leaves())

    def has_not(self) -> bool:
        """Whether a NOT occurs anywhere (detacc's tie rule prefers formulas without one)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ canonical form
    def canonical(self) -> "Formula":
        """The canonical form (see the module docstring); idempotent."""
        return _canon(self, False)

    @property
    def key(self) -> tuple:
        """Total-order key of the canonical form: equal keys <=> equal canonical forms.

        Used to de-duplicate candidates and to break ties deterministically (IoU desc, then key asc).
        """
        return self.canonical()._key

    # ------------------------------------------------------------------ printing
    def to_str(self, vocabulary: "ConceptVocabulary | Sequence[str] | None" = None) -> str:
        """Canonical printed form, with concept names from ``vocabulary`` (ids when None)."""
        names = _names_of(vocabulary)
        return _print(self.canonical(), names, top=True)

    def __str__(self) -> str:
        return self.to_str()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, leaf_masks: dict[int, torch.Tensor]) -> torch.Tensor:
        """Evaluate on precomputed bool leaf masks (any common shape), ``leaf_masks[concept_id]``."""
        raise NotImplementedError

    def mask(self, index: "ConceptIndex", image_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Dense bool mask (B, sh, sw) of the formula on the given images of a concept index."""
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64)
        leaves = sorted(self.concepts)
        dense = index.dense_masks(image_ids, torch.tensor(leaves, dtype=torch.int64))  # (B, k, sh, sw)
        return self.evaluate({c: dense[:, j] for j, c in enumerate(leaves)})

    # ------------------------------------------------------------------ convenience constructors
    def __or__(self, other: "Formula") -> "Formula":
        return Or(self, other)

    def __and__(self, other: "Formula") -> "Formula":
        return And(self, other)

    def __invert__(self) -> "Formula":
        return Not(self)


@dataclass(frozen=True, eq=True, repr=False)
class Leaf(Formula):
    """A concept, by its dense id in the concept vocabulary / index."""

    concept: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "concept", int(self.concept))

    @property
    def length(self) -> int:
        return 1

    def leaves(self) -> tuple[int, ...]:
        return (self.concept,)

    def has_not(self) -> bool:
        return False

    def evaluate(self, leaf_masks: dict[int, torch.Tensor]) -> torch.Tensor:
        return leaf_masks[self.concept]

    def __repr__(self) -> str:
        return f"Leaf({self.concept})"

    @cached_property
    def _key(self) -> tuple:
        return (2, self.concept)


@dataclass(frozen=True, eq=True, repr=False)
class Not(Formula):
    """Negation. In search results it only ever wraps a leaf (``f AND NOT c``)."""

    operand: Formula

    @property
    def length(self) -> int:
        return self.operand.length

    def leaves(self) -> tuple[int, ...]:
        return self.operand.leaves()

    def has_not(self) -> bool:
        return True

    def evaluate(self, leaf_masks: dict[int, torch.Tensor]) -> torch.Tensor:
        return ~self.operand.evaluate(leaf_masks)

    def __repr__(self) -> str:
        return f"Not({self.operand!r})"

    @cached_property
    def _key(self) -> tuple:  # only reached on canonical forms, where the operand is a leaf
        return (3, self.operand._key[1])


@dataclass(frozen=True, eq=True, repr=False)
class _Binary(Formula):
    left: Formula
    right: Formula

    @property
    def length(self) -> int:
        return self.left.length + self.right.length

    def leaves(self) -> tuple[int, ...]:
        return self.left.leaves() + self.right.leaves()

    def has_not(self) -> bool:
        return self.left.has_not() or self.right.has_not()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.left!r}, {self.right!r})"

    @cached_property
    def _key(self) -> tuple:
        return (0 if isinstance(self, And) else 1, tuple(o._key for o in _operands(self, type(self))))


@dataclass(frozen=True, eq=True, repr=False)
class And(_Binary):
    """Conjunction (pixel-wise AND of masks)."""

    def evaluate(self, leaf_masks: dict[int, torch.Tensor]) -> torch.Tensor:
        return self.left.evaluate(leaf_masks) & self.right.evaluate(leaf_masks)


@dataclass(frozen=True, eq=True, repr=False)
class Or(_Binary):
    """Disjunction (pixel-wise OR of masks)."""

    def evaluate(self, leaf_masks: dict[int, torch.Tensor]) -> torch.Tensor:
        return self.left.evaluate(leaf_masks) | self.right.evaluate(leaf_masks)


def extend(formula: Formula, op: str, concept: int) -> Formula:
    """Grow ``formula`` left-deep by one concept: ``op`` in :data:`OPS` (``or``, ``and``, ``and_not``)."""
    leaf = Leaf(concept)
    if op == "or":
        return Or(formula, leaf)
    if op == "and":
        return And(formula, leaf)
    if op == "and_not":
        return And(formula, Not(leaf))
    raise ValueError(f"unknown operator {op!r}; expected one of {OPS}")


# ---------------------------------------------------------------------- canonicalisation
def _operands(f: Formula, cls: type) -> list[Formula]:
    """Operands of a (possibly nested) chain of ``cls`` nodes, left to right."""
    if isinstance(f, cls):
        return _operands(f.left, cls) + _operands(f.right, cls)  # type: ignore[attr-defined]
    return [f]


def _chain(cls: type, operands: list[Formula]) -> Formula:
    flat: list[Formula] = []
    for o in operands:
        flat.extend(_operands(o, cls))
    unique = {o._key: o for o in flat}  # idempotence: a AND a = a
    ordered = [unique[k] for k in sorted(unique)]
    out = ordered[0]
    for o in ordered[1:]:
        out = cls(out, o)
    return out


def _canon(f: Formula, negate: bool) -> Formula:
    if isinstance(f, Leaf):
        return Not(f) if negate else f
    if isinstance(f, Not):
        return _canon(f.operand, not negate)
    if isinstance(f, (And, Or)):
        # De Morgan: NOT (l AND r) = NOT l OR NOT r, NOT (l OR r) = NOT l AND NOT r
        cls = (Or if isinstance(f, And) else And) if negate else type(f)
        return _chain(cls, [_canon(f.left, negate), _canon(f.right, negate)])
    raise TypeError(f"not a formula: {f!r}")


# ---------------------------------------------------------------------- printing
def _names_of(vocabulary: Any) -> Sequence[str] | None:
    if vocabulary is None:
        return None
    return vocabulary.names if hasattr(vocabulary, "names") else list(vocabulary)


def _quote(name: str) -> str:
    if _BARE_NAME.match(name) and name.upper() not in _KEYWORDS:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _print(f: Formula, names: Sequence[str] | None, top: bool = False) -> str:
    if isinstance(f, Leaf):
        if names is None:
            return str(f.concept)
        if not 0 <= f.concept < len(names):
            raise IndexError(f"concept id {f.concept} is outside the vocabulary of {len(names)} concepts")
        return _quote(names[f.concept])
    if isinstance(f, Not):
        inner = _print(f.operand, names)
        return f"NOT {inner}" if isinstance(f.operand, (Leaf, Not)) else f"NOT ({inner})"
    word = " AND " if isinstance(f, And) else " OR "
    text = word.join(_print(o, names) for o in _operands(f, type(f)))
    return text if top else f"({text})"


# ---------------------------------------------------------------------- parsing
_TOKEN = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|([^\s()"]+))')


def parse(text: str, vocabulary: "ConceptVocabulary | Sequence[str] | None" = None) -> Formula:
    """Parse a printed formula (see the module docstring for the grammar).

    Args:
        text: e.g. ``"(red AND circle) OR square"`` or, without a vocabulary, ``"(3 AND 7) OR 12"``.
        vocabulary: maps names to dense ids; when None, leaves must be integer ids.

    Raises:
        FormulaParseError: malformed text, or an unknown concept name (the message lists close names).
    """
    names = _names_of(vocabulary)
    lookup = {n: i for i, n in enumerate(names)} if names is not None else None
    tokens: list[tuple[str, str, int]] = []  # (kind, value, position)
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        m = _TOKEN.match(stripped, pos)
        if not m:
            raise FormulaParseError(f"cannot read formula {text!r} at position {pos}")
        if m.group(1):
            tokens.append(("(", "(", m.start(1)))
        elif m.group(2):
            tokens.append((")", ")", m.start(2)))
        elif m.group(3) is not None:
            tokens.append(("name", re.sub(r"\\(.)", r"\1", m.group(3)), m.start(3)))
        else:
            word = m.group(4)
            kind = word if word in _KEYWORDS else "name"
            tokens.append((kind, word, m.start(4)))
        pos = m.end()
    if not tokens:
        raise FormulaParseError("empty formula string")

    i = 0

    def peek() -> str | None:
        return tokens[i][0] if i < len(tokens) else None

    def fail(expected: str) -> FormulaParseError:
        where = tokens[i][2] if i < len(tokens) else len(text)
        got = repr(tokens[i][1]) if i < len(tokens) else "end of text"
        return FormulaParseError(f"in formula {text!r} at position {where}: expected {expected}, got {got}")

    def leaf(value: str) -> Formula:
        if lookup is None:
            try:
                return Leaf(int(value))
            except ValueError:
                raise FormulaParseError(
                    f"in formula {text!r}: leaf {value!r} is not an integer id; pass a vocabulary to parse names"
                ) from None
        if value not in lookup:
            close = [n for n in lookup if value.lower() in n.lower() or n.lower() in value.lower()][:10]
            raise FormulaParseError(f"in formula {text!r}: unknown concept {value!r}; similar names: {close}")
        return Leaf(lookup[value])

    def factor() -> Formula:
        nonlocal i
        kind = peek()
        if kind == "NOT":
            i += 1
            return Not(factor())
        if kind == "(":
            i += 1
            inner = disjunction()
            if peek() != ")":
                raise fail("')'")
            i += 1
            return inner
        if kind == "name":
            i += 1
            return leaf(tokens[i - 1][1])
        raise fail("a concept name, 'NOT' or '('")

    def conjunction() -> Formula:
        nonlocal i
        out = factor()
        while peek() == "AND":
            i += 1
            out = And(out, factor())
        return out

    def disjunction() -> Formula:
        nonlocal i
        out = conjunction()
        while peek() == "OR":
            i += 1
            out = Or(out, conjunction())
        return out

    result = disjunction()
    if i != len(tokens):
        raise fail("'AND', 'OR' or the end of the formula")
    return result


# ---------------------------------------------------------------------- logical equivalence
def to_pyeda(formula: Formula):
    """The pyeda expression of a formula; leaf ``c`` becomes the variable ``c<id>``."""
    from pyeda.inter import exprvar  # local import: pyeda is only needed for equivalence analyses

    def build(f: Formula):
        if isinstance(f, Leaf):
            return exprvar(f"c{f.concept}")
        if isinstance(f, Not):
            return ~build(f.operand)
        if isinstance(f, And):
            return build(f.left) & build(f.right)
        if isinstance(f, Or):
            return build(f.left) | build(f.right)
        raise TypeError(f"not a formula: {f!r}")

    return build(formula)


def equivalent(a: Formula, b: Formula) -> bool:
    """Exact logical equivalence of two formulas (pyeda, as compexp's check_equals)."""
    if a.key == b.key:
        return True
    return bool(to_pyeda(a).equivalent(to_pyeda(b)))


def _signature(f: Formula, max_vars: int = 16) -> tuple | None:
    """(essential variables, truth table over them): equal for exactly the equivalent formulas.

    Evaluates the formula on all 2^k assignments of its k variables (vectorised), drops the variables it
    does not depend on, and returns the truth table over the remaining ones in ascending id order.
    None when k > max_vars (the caller falls back to pyeda).
    """
    variables = sorted(f.concepts)
    k = len(variables)
    if k > max_vars:
        return None
    rows = torch.arange(1 << k, dtype=torch.int64)
    table = f.evaluate({c: ((rows >> j) & 1).bool() for j, c in enumerate(variables)})
    table = torch.as_tensor(table, dtype=torch.bool).expand(1 << k).clone()
    essential = []
    for j in range(k):
        bit = ((rows >> j) & 1).bool()
        if bool((table[bit] != table[~bit]).any()):
            essential.append(j)
    # re-tabulate over the essential variables only (the others do not change the value)
    sub_rows = torch.arange(1 << len(essential), dtype=torch.int64)
    full_rows = torch.zeros_like(sub_rows)
    for t, j in enumerate(essential):
        full_rows |= ((sub_rows >> t) & 1) << j
    return tuple(variables[j] for j in essential), tuple(table[full_rows].tolist())


def group_equivalent(formulas: Iterable[Formula], method: str = "truth_table") -> list[list[int]]:
    """Group logically equivalent formulas (compexp's check_equals analysis, exact and fast).

    Args:
        formulas: the formulas, e.g. one explanation per (unit, range).
        method: ``truth_table`` (default; exact: formulas are equivalent iff they depend on the same variables
            with the same truth table; linear time, pyeda only beyond 16 variables) or ``pyeda`` (pairwise
            ``expr.equivalent`` between canonical-form representatives, quadratic).

    Returns:
        Groups of positions into ``formulas``, each sorted, ordered by their first position; every position
        appears in exactly one group.
    """
    if method not in ("truth_table", "pyeda"):
        raise ValueError(f"method must be 'truth_table' or 'pyeda', got {method!r}")
    formulas = list(formulas)
    groups: dict[Any, list[int]] = {}
    reps: list[tuple[Formula, Any]] = []  # pyeda fallback representatives
    for i, f in enumerate(formulas):
        sig = _signature(f) if method == "truth_table" else None
        if sig is not None:
            groups.setdefault(("tt", sig), []).append(i)
            continue
        key = ("key", f.key)
        if key in groups:
            groups[key].append(i)
            continue
        for rep, rep_key in reps:
            if bool(to_pyeda(rep).equivalent(to_pyeda(f))):
                groups[rep_key].append(i)
                break
        else:
            reps.append((f, key))
            groups[key] = [i]
    return sorted(groups.values(), key=lambda g: g[0])
