"""Captions of synthetic-world images: hand-written expectations, only present concepts, deterministic per seed."""

from __future__ import annotations

import numpy as np
import pytest

from lit_explain.synth.captions import (caption_variants, concept_prompt, full_caption, presence_matrix,
                                        present_concepts)
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
