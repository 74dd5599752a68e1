"""Which concepts HINT explains, and how they relate: the concept plan built from a hierarchy and the data's classes.

HINT trains one linear classifier per concept of every hierarchy level and compares a concept with its siblings.
A :class:`ConceptPlan` fixes, once, everything the training targets, the Shapley table and localisation need:

* ``concepts``: the K explained concepts (default: every node of the hierarchy that is neither a root nor a leaf
  and has at least one of the data's classes below it; leaves are the classes themselves, which the model's own
  logits already cover);
* ``membership`` (K, L): concept k contains class l (the data module's class order), through de-duplicated leaves;
* ``group`` (K,): the sibling group of each concept = its first parent (a node of a DAG with several parents is
  compared with the children of the first one; the ``level`` column names that parent);
* ``branch``: each concept's top-level ancestor (the ancestor just below a root, or the concept itself): units
  shared by concepts of different branches are *multimodal*.

Hierarchies come from a file (:func:`load_hierarchy`: the ILSVRC2012 ``meta.mat``, a ``node<TAB>parent`` TSV or a
JSON ``{"children": ..., "names": ...}`` record) or from the data module (the synthetic world declares its own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from lit_explain.concepts.hierarchy import ConceptHierarchy, HierarchyError

__all__ = ["HIERARCHY_SUFFIXES", "ConceptPlan", "load_hierarchy", "plan_concepts"]

#: file types :func:`load_hierarchy` reads
HIERARCHY_SUFFIXES = (".mat", ".tsv", ".txt", ".json")


def load_hierarchy(path: str | Path) -> ConceptHierarchy:
    """A hierarchy file: ``.mat`` (ILSVRC2012 devkit meta.mat), ``.tsv``/``.txt`` (``node<TAB>parent`` lines) or
    ``.json`` (:meth:`ConceptHierarchy.to_dict` record or a plain ``{node: [children]}``).

    Raises:
        FileNotFoundError: no such file; HierarchyError: a cycle, an unknown node, a malformed record (the message
        names the file); ValueError: an unknown suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in HIERARCHY_SUFFIXES:
        raise ValueError(f"hierarchy {path}: unknown file type {suffix!r}; use one of {HIERARCHY_SUFFIXES} "
                         "(meta.mat, 'node<TAB>parent' TSV, or JSON {'children': {node: [children]}})")
    if not path.is_file():
        raise FileNotFoundError(f"hierarchy file not found: {path}")
    if suffix == ".mat":
        return ConceptHierarchy.from_meta_mat(path)
    if suffix in (".tsv", ".txt"):
        return ConceptHierarchy.from_tsv(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HierarchyError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise HierarchyError(f"{path}: expected a JSON object {{node: [children]}}, got {type(record).__name__}")
    return ConceptHierarchy.from_dict(record, source=str(path))


@dataclass
class ConceptPlan:
    """The explained concepts and their relations (see the module docstring).

    Attributes:
        concepts: K concept node ids, in head order.
        names: K human-readable names.
        levels: K sibling-group names (each concept's first parent).
        branches: K top-level ancestors.
        membership: (K, L) bool, concept k contains class l.
        group: (K,) int64 sibling-group id (index into the sorted distinct ``levels``).
        classes: the L class (leaf) ids, in the data's label order.
    """

    concepts: list[str]
    names: list[str]
    levels: list[str]
    branches: list[str]
    membership: torch.Tensor
    group: torch.Tensor
    classes: list[str]

    def index(self, concept: str, what: str = "concept") -> int:
        """Position of ``concept`` (a node id or name) among the explained concepts; a clear error otherwise."""
        for i, (c, n) in enumerate(zip(self.concepts, self.names)):
            if concept in (c, n):
                return i
        raise HierarchyError(f"{what} {concept!r} is not one of the {len(self.concepts)} explained concepts "
                             f"(first: {self.concepts[:10]}); add it to 'concepts' or pick one of them")


def _branch(h: ConceptHierarchy, node: str) -> str:
    while h.parents(node) and h.parents(h.parents(node)[0]):
        node = h.parents(node)[0]
    return node


def plan_concepts(hierarchy: ConceptHierarchy, classes: Sequence[str], concepts: Sequence[str] | None = None) -> ConceptPlan:
    """Build the :class:`ConceptPlan` of ``hierarchy`` over the data's ``classes``.

    Args:
        hierarchy: the concept DAG; every class must be one of its leaves.
        classes: the data's class ids in label order (``label`` l of an image is ``classes[l]``).
        concepts: explicit concept nodes (default: every non-root, non-leaf node with a class below it).

    Raises:
        HierarchyError: a class that is not a leaf of the hierarchy, an unknown concept, a root given as a concept,
        a concept with no class of the data below it, or no concept at all (each message names the source file).
    """
    classes = [str(c) for c in classes]
    if not classes:
        raise HierarchyError(f"{hierarchy.source}: the data has no classes")
    unknown = [c for c in classes if c not in hierarchy]
    if unknown:
        raise HierarchyError(f"{hierarchy.source}: {len(unknown)} class(es) of the data are not nodes of the hierarchy: "
                             f"{unknown[:5]}; add them as leaves (a line '<class><TAB><parent>' in a TSV)")
    if concepts is None:
        cls = set(classes)
        concepts = [n for n in hierarchy.nodes if hierarchy.parents(n) and not hierarchy.is_leaf(n)
                    and any(l in cls for l in hierarchy.leaves(n))]
        if not concepts:
            raise HierarchyError(f"{hierarchy.source}: no concept to explain: the hierarchy has no node between its "
                                 "roots and the data's classes")
    concepts = [str(c) for c in concepts]
    if len(set(concepts)) != len(concepts):
        raise HierarchyError(f"{hierarchy.source}: concepts are listed twice: "
                             f"{sorted({c for c in concepts if concepts.count(c) > 1})}")
    for c in concepts:
        hierarchy.children(c)  # unknown node -> HierarchyError naming the source
        if not hierarchy.parents(c):
            raise HierarchyError(f"{hierarchy.source}: {c!r} is a root: it has no siblings to be compared with; "
                                 "explain its children instead")
    membership = torch.from_numpy(hierarchy.membership(concepts, classes))
    empty = [c for c, row in zip(concepts, membership) if not bool(row.any())]
    if empty:
        raise HierarchyError(f"{hierarchy.source}: concept(s) {empty[:5]} have none of the data's {len(classes)} "
                             "classes below them; drop them from 'concepts' or use data that has their classes")
    levels = [hierarchy.parents(c)[0] for c in concepts]
    distinct = sorted(set(levels))
    group = torch.tensor([distinct.index(p) for p in levels], dtype=torch.int64)
    return ConceptPlan(concepts, [hierarchy.name(c) for c in concepts], levels,
                       [_branch(hierarchy, c) for c in concepts], membership, group, classes)
