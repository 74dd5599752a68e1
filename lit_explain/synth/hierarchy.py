"""A concept hierarchy over the synthetic world's concepts, with levels whose members are known by construction.

The world's concepts (:mod:`lit_explain.synth.concepts`) are grouped into families, so hierarchical methods
(HINT) have parents, siblings and leaves to explain:

* ``entity`` (root) > the categories ``color``, ``object``, ``material``, ``scene``, ``texture``;
* ``color`` > ``warm`` {red, orange, yellow, pink} and ``cool`` {green, cyan, blue, purple} (by palette hue:
  warm = hue within 60 degrees of red);
* ``object`` > ``round`` {circle, ring} (curved outline), ``angular`` {square, triangle, diamond, cross}
  (straight edges) and ``part`` {rim, cap} (object > part: parts are pixels of an object);
* ``material``, ``scene`` and ``texture`` > their concepts directly.

With ``classes`` (the world's class rules, e.g. ``{"red_circle": "red AND circle"}``) every class becomes a
leaf under each concept its rule requires (the positive names of every clause of its DNF), as ImageNet
classes sit under WordNet synsets: then ``leaves("round")`` are the classes whose images show a round object,
which is how HINT samples a concept's images. A class can have several parents (the hierarchy is a DAG).
Concepts and families with no class below them are then dropped, so every leaf is a class.

The hierarchy is derived from the world's definitions (no file is written, the generated world is unchanged);
:meth:`~lit_explain.concepts.hierarchy.ConceptHierarchy.to_dict` gives a JSON record to store beside results.
"""

from __future__ import annotations

from typing import Mapping

from lit_explain.concepts.hierarchy import ConceptHierarchy

from .concepts import COLORS, MATERIALS, PARTS, SCENES, SHAPES, TEXTURES, hue_degrees
from .formula import parse, to_dnf

__all__ = ["world_hierarchy", "ROUND_SHAPES", "WARM_HUE_DEGREES"]

#: Shapes with a curved outline; the other shapes have straight edges ("angular").
ROUND_SHAPES: tuple[str, ...] = ("circle", "ring")
#: A palette colour is warm when its hue is within this many degrees of red (0 degrees).
WARM_HUE_DEGREES = 60.0


def _warm(rgb) -> bool:
    h = hue_degrees(rgb)
    return min(h, 360.0 - h) <= WARM_HUE_DEGREES


def world_hierarchy(classes: Mapping[str, str] | None = None) -> ConceptHierarchy:
    """The synthetic world's concept hierarchy (see the module docstring for its levels).

    Args:
        classes: optional ``{class name: rule}``; each class becomes a leaf under the concepts its rule
            requires. A rule naming an unknown concept raises the formula parser's error naming the class.

    Returns:
        a :class:`ConceptHierarchy` rooted at ``entity``.
    """
    warm = [c for c, rgb in COLORS.items() if _warm(rgb)]
    cool = [c for c, rgb in COLORS.items() if not _warm(rgb)]
    children: dict[str, list[str]] = {
        "entity": ["color", "object", "material", "scene", "texture"],
        "color": ["warm", "cool"],
        "warm": warm,
        "cool": cool,
        "object": ["round", "angular", "part"],
        "round": [s for s in SHAPES if s in ROUND_SHAPES],
        "angular": [s for s in SHAPES if s not in ROUND_SHAPES],
        "part": list(PARTS),
        "material": list(MATERIALS),
        "scene": list(SCENES),
        "texture": list(TEXTURES),
    }
    if classes:
        known = set(COLORS) | set(SHAPES) | set(PARTS) | set(MATERIALS) | set(SCENES) | set(TEXTURES)
        for cls, rule in classes.items():
            if cls in known or cls in children:
                raise ValueError(f"world_hierarchy: class name {cls!r} collides with a concept or family name")
            try:
                clauses = to_dnf(parse(rule, known))
            except ValueError as exc:
                raise ValueError(f"world_hierarchy: class {cls!r} rule {rule!r}: {exc}") from exc
            required = sorted({n for pos, _neg in clauses for n in pos})
            if not required:
                raise ValueError(f"world_hierarchy: class {cls!r} rule {rule!r} requires no concept; it cannot be "
                                 "placed in the hierarchy")
            for n in required:
                children.setdefault(n, []).append(cls)
        # every leaf must be a class (as in ImageNet): drop concepts and families with no class below them
        full = ConceptHierarchy(children)
        keep = {n for n in full.nodes if any(l in classes for l in full.leaves(n))}
        children = {n: [c for c in ch if c in keep] for n, ch in children.items() if n in keep}
    return ConceptHierarchy(children, source="lit_explain.synth.hierarchy.world_hierarchy")
