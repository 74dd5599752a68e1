"""A concept hierarchy (a DAG of named nodes): parents, children, de-duplicated leaves, sibling groups, depth.

HINT explains neurons at every level of a concept hierarchy: a concept (e.g. "mammal") is represented by the
images of its *leaf* classes, and concepts are compared with their siblings (the children of one parent).
The ImageNet hierarchy is a WordNet DAG, not a tree (1,860 nodes, 75 of them with two parents: "dog" is under
both "domestic animal" and "canine"), so :meth:`ConceptHierarchy.leaves` de-duplicates: a leaf reachable along
two paths is counted once.

Builders:

* :meth:`ConceptHierarchy.from_meta_mat`: the ILSVRC2012 devkit ``meta.mat`` (``synsets`` struct array with
  fields ``ILSVRC2012_ID, WNID, words, gloss, num_children, children, wordnet_height, num_train_images``;
  ``children`` holds ILSVRC2012_IDs), read with :func:`scipy.io.loadmat`.
* :meth:`ConceptHierarchy.from_tsv`: one ``node<TAB>parent`` line per edge (``-`` or an empty parent marks a
  root; a node may appear on several lines, once per parent; ``#`` lines are comments).
* :meth:`ConceptHierarchy.from_dict`: ``{node: [children]}``; a child that is not a key is a leaf.

Depth is the length of the *shortest* path from a root (roots have depth 0); a node of a DAG can be reached
at several depths and the shortest is the one WordNet browsers show. :meth:`levels` groups nodes by depth.
Errors (a cycle, an edge to an unknown node, an inconsistent ``num_children``) name the source file and the
node, so a broken hierarchy file can be found and fixed.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["ConceptHierarchy", "HierarchyError"]


class HierarchyError(ValueError):
    """A malformed hierarchy: a cycle, an unknown node, or an inconsistent record (the message names the source)."""


class ConceptHierarchy:
    """An immutable DAG of concepts.

    Args:
        children: ``{node: children}``; every node that is a key or a child is in the hierarchy, in first-seen
            order. Duplicate children of one node are dropped.
        names: optional human-readable names (e.g. WordNet words); default the node id.
        source: where the hierarchy came from (a file path or ``"<dict>"``), quoted in every error.
        attrs: optional per-node records (e.g. ``ILSVRC2012_ID``, ``gloss``), kept as given.

    Raises:
        HierarchyError: the graph has a cycle (the message lists it) or a node is empty / not a string.
    """

    def __init__(self, children: Mapping[str, Sequence[str]], names: Mapping[str, str] | None = None,
                 source: str = "<dict>", attrs: Mapping[str, dict] | None = None) -> None:
        self.source = str(source)
        order: dict[str, None] = {}
        kids: dict[str, list[str]] = {}
        for node, ch in children.items():
            self._check_name(node)
            order.setdefault(node, None)
            if isinstance(ch, (str, bytes)):
                raise HierarchyError(f"{self.source}: children of {node!r} must be a list of node ids, got the string "
                                     f"{ch!r} (write [{ch!r}])")
            lst = kids.setdefault(node, [])
            for c in ch:
                self._check_name(c)
                order.setdefault(c, None)
                if c not in lst:
                    lst.append(c)
        self._nodes: tuple[str, ...] = tuple(order)
        self._children: dict[str, tuple[str, ...]] = {n: tuple(kids.get(n, ())) for n in self._nodes}
        parents: dict[str, list[str]] = {n: [] for n in self._nodes}
        for n, ch in self._children.items():
            for c in ch:
                parents[c].append(n)
        self._parents = {n: tuple(p) for n, p in parents.items()}
        self._names = {n: str((names or {}).get(n, n)) for n in self._nodes}
        self._attrs = {n: dict((attrs or {}).get(n, {})) for n in self._nodes}
        self._topo = self._toposort()
        self._depth = self._depths()
        self._leaves_cache: dict[str, tuple[str, ...]] = {}

    # ------------------------------------------------------------------------------------------ validation
    def _check_name(self, node) -> None:
        if not isinstance(node, str) or not node.strip():
            raise HierarchyError(f"{self.source}: node ids must be non-empty strings, got {node!r}")

    def _toposort(self) -> tuple[str, ...]:
        """Kahn's algorithm (parents before children); a left-over node lies on or below a cycle."""
        indeg = {n: len(self._parents[n]) for n in self._nodes}
        queue = deque(n for n in self._nodes if indeg[n] == 0)
        out: list[str] = []
        while queue:
            n = queue.popleft()
            out.append(n)
            for c in self._children[n]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    queue.append(c)
        if len(out) < len(self._nodes):
            raise HierarchyError(f"{self.source}: the hierarchy has a cycle: {' -> '.join(self._find_cycle(set(out)))}; "
                                 "remove one of these parent-child edges")
        return tuple(out)

    def _find_cycle(self, done: set[str]) -> list[str]:
        """One cycle among the nodes Kahn's algorithm could not order (every such node has a parent among them)."""
        rest = [n for n in self._nodes if n not in done]
        node, seen = rest[0], {}
        path: list[str] = []
        while node not in seen:  # walk up through parents that are also unordered: must close a loop
            seen[node] = len(path)
            path.append(node)
            node = next(p for p in self._parents[node] if p not in done)
        cycle = path[seen[node]:][::-1]  # reversed walk: parent -> child order
        return cycle + [cycle[0]]

    def _depths(self) -> dict[str, int]:
        depth: dict[str, int] = {}
        for n in self._topo:
            ps = self._parents[n]
            depth[n] = 0 if not ps else 1 + min(depth[p] for p in ps)
        return depth

    def _known(self, node: str) -> str:
        if node not in self._children:
            near = [n for n in self._nodes if str(node).lower() in n.lower() or str(node).lower() in self._names[n].lower()]
            hint = f"; similar: {near[:5]}" if near else ""
            raise HierarchyError(f"{self.source}: unknown node {node!r} ({len(self._nodes)} nodes{hint})")
        return node

    # ------------------------------------------------------------------------------------------ queries
    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node, in first-seen order."""
        return self._nodes

    def __contains__(self, node: object) -> bool:
        return node in self._children

    def __len__(self) -> int:
        return len(self._nodes)

    def name(self, node: str) -> str:
        return self._names[self._known(node)]

    def attrs(self, node: str) -> dict:
        """The node's extra record (e.g. ``ILSVRC2012_ID`` for meta.mat), a copy."""
        return dict(self._attrs[self._known(node)])

    def find(self, key: str, value) -> str:
        """The node whose attribute ``key`` equals ``value`` (e.g. ``find("ILSVRC2012_ID", 1095)``)."""
        hits = [n for n in self._nodes if self._attrs[n].get(key) == value]
        if len(hits) != 1:
            raise HierarchyError(f"{self.source}: {len(hits)} nodes have {key}={value!r}; expected exactly one")
        return hits[0]

    def children(self, node: str) -> tuple[str, ...]:
        return self._children[self._known(node)]

    def parents(self, node: str) -> tuple[str, ...]:
        return self._parents[self._known(node)]

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(n for n in self._nodes if not self._parents[n])

    def is_leaf(self, node: str) -> bool:
        return not self._children[self._known(node)]

    def all_leaves(self) -> tuple[str, ...]:
        return tuple(n for n in self._nodes if not self._children[n])

    def leaves(self, node: str) -> tuple[str, ...]:
        """The leaves under ``node`` (itself if it is a leaf), each once, in depth-first child order."""
        self._known(node)
        if node not in self._leaves_cache:
            out: dict[str, None] = {}
            stack = [node]
            while stack:
                n = stack.pop()
                ch = self._children[n]
                if not ch:
                    out.setdefault(n, None)
                stack.extend(reversed(ch))
            self._leaves_cache[node] = tuple(out)
        return self._leaves_cache[node]

    def descendants(self, node: str) -> tuple[str, ...]:
        """Every node strictly below ``node``, each once."""
        out: dict[str, None] = {}
        stack = list(reversed(self.children(node)))
        while stack:
            n = stack.pop()
            if n not in out:
                out[n] = None
                stack.extend(reversed(self._children[n]))
        return tuple(out)

    def ancestors(self, node: str) -> tuple[str, ...]:
        """Every node strictly above ``node``, each once."""
        out: dict[str, None] = {}
        stack = list(self.parents(node))
        while stack:
            n = stack.pop()
            if n not in out:
                out[n] = None
                stack.extend(self._parents[n])
        return tuple(out)

    def depth(self, node: str) -> int:
        """Edges on the shortest path from a root (roots: 0)."""
        return self._depth[self._known(node)]

    def height(self, node: str) -> int:
        """Edges on the longest path down to a leaf (leaves: 0)."""
        self._known(node)
        h: dict[str, int] = {}
        for n in reversed(self._topo):
            h[n] = 0 if not self._children[n] else 1 + max(h[c] for c in self._children[n])
        return h[node]

    def levels(self) -> list[tuple[str, ...]]:
        """Nodes grouped by :meth:`depth`: ``levels()[d]`` holds the nodes of depth d."""
        out: list[list[str]] = [[] for _ in range(max(self._depth.values(), default=-1) + 1)]
        for n in self._nodes:
            out[self._depth[n]].append(n)
        return [tuple(x) for x in out]

    def siblings(self, node: str) -> tuple[str, ...]:
        """The other children of ``node``'s parents (without ``node``), each once."""
        out: dict[str, None] = {}
        for p in self.parents(node):
            for c in self._children[p]:
                if c != node:
                    out.setdefault(c, None)
        return tuple(out)

    def sibling_groups(self, min_size: int = 2) -> dict[str, tuple[str, ...]]:
        """``{parent: its children}`` for every node with at least ``min_size`` children: HINT's "ID groups"."""
        if int(min_size) < 1:
            raise ValueError(f"sibling_groups: min_size must be >= 1, got {min_size}")
        return {n: ch for n, ch in self._children.items() if len(ch) >= int(min_size)}

    def membership(self, concepts: Sequence[str], leaves: Sequence[str] | None = None) -> np.ndarray:
        """(K, L) bool: ``[k, l]`` is True when leaf ``leaves[l]`` lies under ``concepts[k]``.

        ``leaves`` defaults to :meth:`all_leaves`; a name that is not a leaf of the hierarchy is an error (so a
        class list and a hierarchy that disagree are caught before any image is read).
        """
        leaves = list(self.all_leaves() if leaves is None else leaves)
        col = {l: i for i, l in enumerate(leaves)}
        for l in leaves:
            if not self.is_leaf(l):
                raise HierarchyError(f"{self.source}: {l!r} is not a leaf (it has children {self.children(l)[:5]})")
        out = np.zeros((len(concepts), len(leaves)), dtype=bool)
        for k, c in enumerate(concepts):
            idx = [col[l] for l in self.leaves(c) if l in col]
            out[k, idx] = True
        return out

    def to_dict(self) -> dict:
        """``{"children": {node: [children]}, "names": {node: name}}`` (JSON-ready; :meth:`from_dict` reads it)."""
        return {"children": {n: list(c) for n, c in self._children.items()},
                "names": {n: self._names[n] for n in self._nodes}}

    def __repr__(self) -> str:
        return (f"ConceptHierarchy({len(self._nodes)} nodes, {len(self.all_leaves())} leaves, "
                f"{len(self.roots)} root(s), depth {len(self.levels()) - 1}, from {self.source})")

    # ------------------------------------------------------------------------------------------ builders
    @classmethod
    def from_dict(cls, children: Mapping[str, Sequence[str]], names: Mapping[str, str] | None = None,
                  source: str = "<dict>") -> "ConceptHierarchy":
        """From ``{node: [children]}`` (or the :meth:`to_dict` record ``{"children": ..., "names": ...}``)."""
        if set(children) == {"children", "names"} and isinstance(children.get("children"), Mapping):
            return cls(children["children"], names or children["names"], source=source)
        return cls(children, names, source=source)

    @classmethod
    def from_tsv(cls, path: str | os.PathLike) -> "ConceptHierarchy":
        """From a ``node<TAB>parent`` file (``-`` or empty parent: a root; one line per edge).

        Every parent must itself appear as a node on some line; otherwise the error names the file, the line
        and the parent.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"hierarchy TSV not found: {path} (expected lines 'node<TAB>parent')")
        children: dict[str, list[str]] = {}
        edges: list[tuple[int, str, str]] = []
        for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) > 2:
                raise HierarchyError(f"{path}:{lineno}: expected 'node<TAB>parent', got {len(parts)} tab-separated "
                                     f"fields: {line!r}")
            node = parts[0].strip()
            parent = parts[1].strip() if len(parts) == 2 else ""
            if not node:
                raise HierarchyError(f"{path}:{lineno}: empty node id in {line!r}")
            children.setdefault(node, [])
            if parent and parent != "-":
                edges.append((lineno, node, parent))
        for lineno, node, parent in edges:
            if parent not in children:
                raise HierarchyError(f"{path}:{lineno}: unknown node {parent!r} (parent of {node!r}) never appears "
                                     f"as a node; add a line '{parent}<TAB>-' for a root or its own parent")
            children[parent].append(node)
        return cls(children, source=str(path))

    @classmethod
    def from_meta_mat(cls, path: str | os.PathLike) -> "ConceptHierarchy":
        """From the ILSVRC2012 devkit ``meta.mat`` (``synsets``; children are ILSVRC2012_IDs).

        Nodes are WNIDs, names the ``words`` field; ``attrs(node)`` holds ILSVRC2012_ID, gloss,
        wordnet_height and num_train_images. A child ID missing from ``synsets`` or a ``num_children`` that
        disagrees with ``children`` is an error naming the file and the node.
        """
        from scipy.io import loadmat

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ILSVRC2012 meta.mat not found: {path} (it is data/meta.mat in "
                                    "ILSVRC2012_devkit_t12.tar.gz)")
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        if "synsets" not in mat:
            raise HierarchyError(f"{path}: no 'synsets' variable (found {sorted(k for k in mat if not k.startswith('__'))});"
                                 " is this the devkit's data/meta.mat?")
        syn = np.atleast_1d(mat["synsets"])
        need = ("ILSVRC2012_ID", "WNID", "words", "num_children", "children")
        by_id: dict[int, object] = {}
        for s in syn:
            missing = [f for f in need if not hasattr(s, f)]
            if missing:
                raise HierarchyError(f"{path}: synsets records lack fields {missing}")
            by_id[int(s.ILSVRC2012_ID)] = s
        children: dict[str, list[str]] = {}
        names: dict[str, str] = {}
        attrs: dict[str, dict] = {}
        for sid, s in by_id.items():
            wnid = str(s.WNID)
            kids = [int(c) for c in np.atleast_1d(np.asarray(s.children)).ravel()]
            if len(kids) != int(s.num_children):
                raise HierarchyError(f"{path}: node {wnid!r} (ILSVRC2012_ID {sid}) has num_children="
                                     f"{int(s.num_children)} but {len(kids)} children listed")
            unknown = [c for c in kids if c not in by_id]
            if unknown:
                raise HierarchyError(f"{path}: node {wnid!r} (ILSVRC2012_ID {sid}) lists unknown child "
                                     f"ILSVRC2012_ID(s) {unknown[:5]}")
            children[wnid] = [str(by_id[c].WNID) for c in kids]
            names[wnid] = str(s.words)
            attrs[wnid] = {"ILSVRC2012_ID": sid, "gloss": str(getattr(s, "gloss", "")),
                           "wordnet_height": int(getattr(s, "wordnet_height", -1)),
                           "num_train_images": int(getattr(s, "num_train_images", 0))}
        return cls(children, names, source=str(path), attrs=attrs)

    def restrict(self, nodes: Iterable[str]) -> "ConceptHierarchy":
        """The sub-hierarchy below ``nodes`` (the given nodes become its roots)."""
        keep: dict[str, None] = {}
        for n in nodes:
            keep.setdefault(self._known(n), None)
            for d in self.descendants(n):
                keep.setdefault(d, None)
        return ConceptHierarchy({n: self._children[n] for n in keep}, self._names, source=self.source,
                                attrs=self._attrs)
