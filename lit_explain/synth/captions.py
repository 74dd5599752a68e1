"""Captions of synthetic-world images, written from each image's annotations (for training a small CLIP).

A world image holds 1-3 objects (shape, palette colour, optional material, optional rim and cap parts) on a
scene background with an optional texture (see :mod:`lit_explain.synth.concepts`); its record is
``instances.jsonl`` (:func:`lit_explain.synth.world.load_scene`). Every caption uses the world's concept
names verbatim, so that a CLIP trained on them can be queried with the vocabulary itself:

* :func:`full_caption`: everything in the image, e.g.
  ``"a photo of a red circle made of metal with a rim, and a blue square with a cap, on a striped desert scene"``;
* :func:`caption_variants`: that full caption (variant 0) followed by sampled ones: the full description in a
  shuffled order, partial descriptions (a random subset of the objects, attributes, scene and texture), and
  single-concept prompts in WWW's template ``"a photo of a {concept}"``. Partial and single-concept captions
  teach the contrastive model that a phrase naming one concept matches every image holding it, which is
  what zero-shot concept retrieval and WWW's concept matching ask of it.

Determinism: the variants of image ``i`` come from ``numpy.random.default_rng([seed, i])`` only, so they are
the same whatever the split, the batch order or the number of processes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .concepts import PARTS

__all__ = ["present_concepts", "full_caption", "caption_variants", "concept_prompt", "TEMPLATE"]

#: WWW's prompt template; ``TEMPLATE.format("")`` stripped is the bare template "a photo of a".
TEMPLATE = "a photo of a {}"


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


def _object_phrase(inst: dict, rng: np.random.Generator | None, keep: float = 1.0) -> str:
    """"red circle made of metal with a rim and a cap"; with ``rng``, attribute order is shuffled and each
    attribute is kept with probability ``keep`` (the shape always stays)."""
    def kept() -> bool:
        return rng is None or rng.random() < keep

    head = f"{inst['color']} {inst['name']}" if kept() else inst["name"]
    extras = []
    if inst.get("material") and kept():
        extras.append(f"made of {inst['material']}")
    parts = [p for p in PARTS if p in inst.get("parts", ()) and kept()]
    if parts:
        extras.append("with " + " and ".join(f"a {p}" for p in parts))
    if rng is not None and len(extras) > 1:
        extras = [extras[i] for i in rng.permutation(len(extras))]
    return " ".join([head, *extras])


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


def caption_variants(record: dict, index: int, seed: int = 0, count: int = 6,
                     p_single: float = 0.35, p_partial: float = 0.35) -> list[str]:
    """``count`` captions of one image: the full caption first, then sampled variants.

    Each sampled variant is, with probability ``p_single``, a single-concept prompt ``"a photo of a {c}"`` for a
    present concept c; with probability ``p_partial`` a partial description (each object kept with probability
    1/2, at least one; each attribute, the scene and the texture kept with probability 1/2); otherwise the full
    description with objects and attributes shuffled.

    Args:
        record: the image's record (:func:`lit_explain.synth.world.load_scene`).
        index: the image's row in the world's index.csv (seeds its generator).
        seed: caption seed; the same (seed, index, record) always gives the same list.
        count: number of captions, >= 1.
        p_single: probability of a single-concept prompt, in [0, 1].
        p_partial: probability of a partial description, in [0, 1 - p_single].

    Returns:
        ``count`` strings.
    """
    if int(count) < 1:
        raise ValueError(f"caption_variants: count must be >= 1, got {count}")
    if not (0.0 <= p_single <= 1.0 and 0.0 <= p_partial <= 1.0 - p_single):
        raise ValueError(f"caption_variants: need 0 <= p_single <= 1 and 0 <= p_partial <= 1 - p_single, got "
                         f"p_single={p_single}, p_partial={p_partial}")
    rng = np.random.default_rng([int(seed), int(index)])
    concepts = sorted(present_concepts(record))
    insts = record["instances"]
    out = [full_caption(record)]
    for _ in range(int(count) - 1):
        u = rng.random()
        if u < p_single:
            out.append(concept_prompt(concepts[int(rng.integers(len(concepts)))]))
            continue
        partial = u < p_single + p_partial
        order = rng.permutation(len(insts))
        if partial:
            chosen = [k for k in order if rng.random() < 0.5] or [int(order[0])]
            objects = [_object_phrase(insts[k], rng, keep=0.5) for k in chosen]
            scene = record["scene"] if rng.random() < 0.5 else None
            texture = record.get("texture") if rng.random() < 0.5 else None
        else:
            objects = [_object_phrase(insts[k], rng) for k in order]
            scene, texture = record["scene"], record.get("texture")
        out.append(_sentence(objects, _background(scene, texture)))
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


__all__.append("presence_matrix")
