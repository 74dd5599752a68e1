"""Captions of synthetic-world images, written from each image's annotations (for training a small CLIP).

A world image holds 1-3 objects (shape, palette colour, optional material, optional rim and cap parts) on a
scene background with an optional texture (see :mod:`lit_explain.synth.concepts`); its record is
``instances.jsonl`` (:func:`lit_explain.synth.world.load_scene`). Every caption uses the world's concept
names verbatim, so that a CLIP trained on them can be queried with the vocabulary itself:

* :func:`full_caption`: everything in the image, e.g.
  ``"a photo of a red circle made of metal with a rim, and a blue square with a cap, on a striped desert scene"``;
* :func:`caption_variants`: that full caption (variant 0) followed by sampled ones, balanced over the six concept
  families (colour, shape, part, material, scene, texture): single-concept prompts in WWW's template
  ``"a photo of a {concept}"`` whose family is drawn uniformly among the families present (so "a photo of a
  dotted" is as frequent as "a photo of a red", however many colours an image has), family-subset descriptions
  (every object, but only the words of a random subset of families: ``"a photo of an object made of wood with a
  rim, on a dotted background"``), and the full description in a shuffled order;
* :func:`named_concepts`: the concepts a caption names (what it claims about an image).

Why families are balanced: in a contrastive batch the full descriptions of 64 images already differ by their
scene and colours, which a small image tower learns first; part, material and texture words then add almost
nothing to the loss and stay unlearnt (measured: at chance after 6 epochs). Captions that withhold the easy
families and prompts that name one hard concept make those concepts the only way to match. A caption that names
a concept subset is true of every image holding that subset, which :func:`named_concepts` lets the loss use
(:mod:`lit_explain.models.clip_trainer`, multi-positive contrastive loss).

Determinism: the variants of image ``i`` come from ``numpy.random.default_rng([seed, i])`` only, so they are
the same whatever the split, the batch order or the number of processes.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .concepts import CATEGORIES, COLORS, MATERIALS, PARTS, SCENES, SHAPES, TEXTURES

__all__ = ["present_concepts", "full_caption", "caption_variants", "concept_prompt", "named_concepts",
           "presence_matrix", "FAMILIES", "TEMPLATE"]

#: WWW's prompt template; ``TEMPLATE.format("")`` stripped is the bare template "a photo of a".
TEMPLATE = "a photo of a {}"

#: The concept families captions are balanced over (the world's categories), each with its concept names.
FAMILIES: dict[str, tuple[str, ...]] = {"color": tuple(COLORS), "object": SHAPES, "part": PARTS,
                                        "material": MATERIALS, "scene": tuple(SCENES), "texture": TEXTURES}
assert tuple(FAMILIES) == CATEGORIES
_FAMILY_OF = {c: f for f, names in FAMILIES.items() for c in names}


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def concept_prompt(concept: str, template: str = TEMPLATE) -> str:
    """The prompt of one concept: ``template.format(concept)`` ("a photo of a red")."""
    return template.format(concept)


def present_concepts(record: dict) -> set[str]:
    """Concept names present in an image record: scene, texture, and each object's shape, colour, material, parts."""
    out = {record["scene"]}
    if record.get("texture"):
        out.add(record["texture"])
    for inst in record["instances"]:
        out.update((inst["name"], inst["color"]))
        if inst.get("material"):
            out.add(inst["material"])
        out.update(inst.get("parts", ()))
    return out


def named_concepts(caption: str, concepts: Iterable[str]) -> set[str]:
    """The concepts of ``concepts`` a caption names: its words (split at spaces and commas) that are concept names.

    Every caption of this module is built from single-word concept names and filler words ("a", "photo", "of",
    "made", "with", "and", "on", "scene", "background", "object", "something") that are no concept's name, so this
    is exactly the set of concepts the caption claims the image holds.
    """
    vocab = set(concepts)
    return {w for w in caption.replace(",", " ").split() if w in vocab}


def _object_phrase(inst: dict, rng: np.random.Generator | None, families: set[str] | frozenset = frozenset(FAMILIES)
                   ) -> str:
    """"red circle made of metal with a rim and a cap", naming only the words of ``families`` ("object" stands for
    the shape when "object" is not among them; "" when nothing is left to name); with ``rng`` the material and
    part clauses come in a random order."""
    head = ([inst["color"]] if "color" in families else []) + [inst["name"] if "object" in families else "object"]
    extras = []
    if inst.get("material") and "material" in families:
        extras.append(f"made of {inst['material']}")
    parts = [p for p in PARTS if p in inst.get("parts", ())] if "part" in families else []
    if parts:
        extras.append("with " + " and ".join(f"a {p}" for p in parts))
    if rng is not None and len(extras) > 1:
        extras = [extras[i] for i in rng.permutation(len(extras))]
    words = [*head, *extras]
    return "" if words == ["object"] else " ".join(words)


def _background(scene: str | None, texture: str | None) -> str:
    if scene and texture:
        return f"on {_article(texture)} {texture} {scene} scene"
    if scene:
        return f"on {_article(scene)} {scene} scene"
    if texture:
        return f"on {_article(texture)} {texture} background"
    return ""


def _sentence(objects: list[str], background: str) -> str:
    if objects:
        listed = ", and ".join(f"{_article(o)} {o}" for o in objects) if len(objects) > 1 else \
            f"{_article(objects[0])} {objects[0]}"
        body = f"a photo of {listed}"
        return f"{body}, {background}" if background else body
    return f"a photo of something {background}".strip()


def full_caption(record: dict) -> str:
    """The complete description of an image, objects in painting order (deterministic, no randomness)."""
    objects = [_object_phrase(inst, None) for inst in record["instances"]]
    return _sentence(objects, _background(record["scene"], record.get("texture")))


def _described(record: dict, rng: np.random.Generator, families: set[str] | frozenset) -> str:
    """Every object (in a random order) and the background, naming only the words of ``families``."""
    insts = record["instances"]
    objects = [o for o in (_object_phrase(insts[k], rng, families) for k in rng.permutation(len(insts))) if o]
    return _sentence(objects, _background(record["scene"] if "scene" in families else None,
                                          record.get("texture") if "texture" in families else None))


def caption_variants(record: dict, index: int, seed: int = 0, count: int = 6,
                     p_single: float = 0.5, p_partial: float = 0.25) -> list[str]:
    """``count`` captions of one image: the full caption first, then sampled variants balanced over families.

    Each sampled variant is, with probability ``p_single``, a single-concept prompt ``"a photo of a {c}"``: a
    family drawn uniformly among those present in the image, then a present concept of it uniformly; with
    probability ``p_partial`` a family-subset description: each of the six families kept with probability 1/2
    (drawn again until a kept family is present), every object listed in a random order with only the kept
    families' words ("a photo of a red object with a rim, on a night scene"); otherwise the full description with
    objects and clauses shuffled. Every variant names only present concepts.

    Args:
        record: the image's record (:func:`lit_explain.synth.world.load_scene`).
        index: the image's row in the world's index.csv (seeds its generator).
        seed: caption seed; the same (seed, index, record) always gives the same list.
        count: number of captions, >= 1.
        p_single: probability of a single-concept prompt, in [0, 1].
        p_partial: probability of a family-subset description, in [0, 1 - p_single].

    Returns:
        ``count`` strings.
    """
    if int(count) < 1:
        raise ValueError(f"caption_variants: count must be >= 1, got {count}")
    if not (0.0 <= p_single <= 1.0 and 0.0 <= p_partial <= 1.0 - p_single):
        raise ValueError(f"caption_variants: need 0 <= p_single <= 1 and 0 <= p_partial <= 1 - p_single, got "
                         f"p_single={p_single}, p_partial={p_partial}")
    rng = np.random.default_rng([int(seed), int(index)])
    present = present_concepts(record)
    by_family = {f: sorted(c for c in present if _FAMILY_OF.get(c) == f) for f in FAMILIES}
    families = [f for f in FAMILIES if by_family[f]]
    out = [full_caption(record)]
    for _ in range(int(count) - 1):
        u = rng.random()
        if u < p_single:
            names = by_family[families[int(rng.integers(len(families)))]]
            out.append(concept_prompt(names[int(rng.integers(len(names)))]))
        elif u < p_single + p_partial:
            while True:
                kept = {f for f in FAMILIES if rng.random() < 0.5}
                if kept & set(families):
                    break
            out.append(_described(record, rng, kept))
        else:
            out.append(_described(record, rng, frozenset(FAMILIES)))
    return out


def presence_matrix(records: Sequence[dict], concepts: Sequence[str]) -> np.ndarray:
    """(M, C) bool: whether concept c is present in image m (:func:`present_concepts`)."""
    col = {c: j for j, c in enumerate(concepts)}
    out = np.zeros((len(records), len(concepts)), dtype=bool)
    for m, rec in enumerate(records):
        for c in present_concepts(rec):
            if c in col:
                out[m, col[c]] = True
    return out
