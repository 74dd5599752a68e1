"""Captions of synthetic-world images: hand-written expectations, only present concepts, deterministic per seed,
single prompts balanced over families, family-subset captions naming whole families."""

from __future__ import annotations

import numpy as np
import pytest

from lit_explain.synth.captions import (caption_variants, concept_prompt, full_caption, named_concepts,
                                        presence_matrix, present_concepts)
from lit_explain.synth.concepts import world_concepts

RECORD = {"scene": "desert", "texture": "striped", "instances": [
    {"name": "circle", "color": "red", "material": "metal", "parts": ["rim"]},
    {"name": "square", "color": "orange", "material": None, "parts": []},
]}
PLAIN = {"scene": "indoor", "texture": None, "instances": [
    {"name": "ring", "color": "blue", "material": "wood", "parts": ["rim", "cap"]}]}
NAMES = [c.name for c in world_concepts()]


def test_full_caption_hand_written():
    assert full_caption(RECORD) == ("a photo of a red circle made of metal with a rim, and an orange square, "
                                    "on a striped desert scene")
    assert full_caption(PLAIN) == "a photo of a blue ring made of wood with a rim and a cap, on an indoor scene"


def test_present_concepts_and_matrix():
    assert present_concepts(RECORD) == {"desert", "striped", "circle", "red", "metal", "rim", "square", "orange"}
    m = presence_matrix([RECORD, PLAIN], ["red", "cap", "indoor", "grid"])
    assert m.tolist() == [[True, False, False, False], [False, True, True, False]]


def _mentioned(caption: str) -> set[str]:
    words = caption.replace(",", " ").split()
    return {w for w in words if w in NAMES}


@pytest.mark.parametrize("record", [RECORD, PLAIN])
def test_variants_name_only_present_concepts_and_are_deterministic(record):
    caps = caption_variants(record, index=7, seed=3, count=40)
    assert len(caps) == 40 and caps[0] == full_caption(record)
    present = present_concepts(record)
    for c in caps:
        assert _mentioned(c) and _mentioned(c) <= present, c
    singles = [c for c in caps if c.startswith("a photo of a ") and len(_mentioned(c)) == 1 and "," not in c
               and c == concept_prompt(next(iter(_mentioned(c))))]
    assert singles, "no single-concept prompt in 40 draws"
    assert caption_variants(record, index=7, seed=3, count=40) == caps
    assert caption_variants(record, index=8, seed=3, count=40) != caps
    assert caption_variants(record, index=7, seed=4, count=40) != caps


def test_variant_mix_follows_probabilities():
    caps = caption_variants(RECORD, index=0, seed=0, count=2001, p_single=0.5, p_partial=0.0)[1:]
    singles = np.mean([c.count(" ") == 4 and "," not in c for c in caps])  # "a photo of a X"
    assert 0.45 < singles < 0.55
    only_full = caption_variants(RECORD, index=0, seed=0, count=50, p_single=0.0, p_partial=0.0)
    assert all(_mentioned(c) == present_concepts(RECORD) for c in only_full)


def test_bad_arguments():
    with pytest.raises(ValueError, match="count must be >= 1"):
        caption_variants(RECORD, 0, count=0)
    with pytest.raises(ValueError, match="p_partial <= 1 - p_single"):
        caption_variants(RECORD, 0, p_single=0.7, p_partial=0.5)


FAMILY = {c.name: c.category for c in world_concepts()}
# three colours, one texture: a per-concept draw would name "striped" in 1/9 of single prompts, a per-family one in 1/6
MANY_COLOURS = {"scene": "sky", "texture": "striped", "instances": [
    {"name": "circle", "color": "red", "material": "metal", "parts": ["rim"]},
    {"name": "circle", "color": "green", "material": None, "parts": []},
    {"name": "circle", "color": "blue", "material": None, "parts": []}]}


def test_single_prompts_are_balanced_over_families():
    # present: 3 colours, 1 shape, 1 part, 1 material, 1 scene, 1 texture -> each family 1/6 of the single prompts
    caps = caption_variants(MANY_COLOURS, index=0, seed=0, count=6001, p_single=1.0, p_partial=0.0)[1:]
    named = [_mentioned(c) for c in caps]
    assert all(len(n) == 1 and c == concept_prompt(next(iter(n))) for c, n in zip(caps, named))
    share = {f: np.mean([FAMILY[next(iter(n))] == f for n in named]) for f in set(FAMILY.values())}
    for f, p in share.items():
        assert abs(p - 1 / 6) < 0.02, (f, p)
    colours = [next(iter(n)) for n in named if FAMILY[next(iter(n))] == "color"]
    for c in ("red", "green", "blue"):  # uniform inside the family
        assert abs(colours.count(c) / len(colours) - 1 / 3) < 0.04


def test_family_subset_captions_name_whole_families():
    caps = caption_variants(RECORD, index=1, seed=0, count=4001, p_single=0.0, p_partial=1.0)[1:]
    present = present_concepts(RECORD)
    kept = {f: 0 for f in set(FAMILY.values())}
    for c in caps:
        n = _mentioned(c)
        assert n, c
        for f in kept:  # a family is named completely or not at all
            fam = {x for x in present if FAMILY[x] == f}
            assert n & fam in (set(), fam), (c, f)
            kept[f] += bool(n & fam)
    # every family of RECORD is present: each kept with probability 1/2, the empty draw (1/64) redrawn
    for f, k in kept.items():
        assert abs(k / len(caps) - 0.5 / (1 - 1 / 64)) < 0.03, (f, k / len(caps))
    # hand-written: PLAIN with only parts and material kept, or with only the texture kept (PLAIN has none: redrawn)
    assert "a photo of an object made of wood with a rim and a cap" in caption_variants(
        PLAIN, index=0, seed=0, count=400, p_single=0.0, p_partial=1.0)
    assert "a photo of something on an indoor scene" in caption_variants(
        PLAIN, index=0, seed=0, count=400, p_single=0.0, p_partial=1.0)


def test_named_concepts():
    assert named_concepts("a photo of a red circle made of metal with a rim, on a striped desert scene", NAMES) == \
        {"red", "circle", "metal", "rim", "striped", "desert"}
    assert named_concepts("a photo of an object with a cap, and something", NAMES) == {"cap"}
    assert named_concepts("a photo of a red", ["blue"]) == set()
    filler = "a an photo of made with and on scene background object something".split()
    assert not set(filler) & set(NAMES)
