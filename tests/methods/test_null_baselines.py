"""Null baselines registry: each baseline's columns equal a dense reference search on its own bitmap."""

from __future__ import annotations

import pytest
import torch

from lit_explain.concepts.search import SearchContext, SearchSettings
from lit_explain.methods.null_baselines import NULL_BASELINES, NullJob
from tests.concepts.random_instances import make_instance, noisy_bitmap
from tests.concepts.test_search import reference_beam_search


class _Names:
    def __init__(self, c):
        self.names = [f"c{i}" for i in range(c)]


@pytest.mark.parametrize("seed", [0, 1])
def test_baselines_search_their_own_bitmaps(seed):
    inst = make_instance(seed, n=24, c=8)
    ctx = SearchContext(inst.index)
    d = inst.dense
    a = noisy_bitmap(inst, seed, d[:, 1] | d[:, 3], 0.05)
    other = noisy_bitmap(inst, seed + 7, d[:, 2] & ~d[:, 5], 0.05)  # stands for the random model's bitmap
    perm = torch.randperm(a.shape[0], generator=torch.Generator().manual_seed(seed))
    job = NullJob(ctx, a, SearchSettings(length=2, beam_size=3), _Names(8), perm, lambda: other)
    shuffled = NULL_BASELINES["shuffled_labels"].compute(job)
    _, ref = reference_beam_search(d, a[perm], length=2, beam=3)
    assert set(shuffled) == set(NULL_BASELINES["shuffled_labels"].columns)
    assert shuffled["null_shuffled_iou"] == pytest.approx(ref, abs=1e-12)
    random = NULL_BASELINES["random_model"].compute(job)
    _, ref = reference_beam_search(d, other, length=2, beam=3)
    assert random["null_random_iou"] == pytest.approx(ref, abs=1e-12) and random["null_random_label"]
    job.random_bitmap = lambda: None  # that unit has no such range in the random model
    assert NULL_BASELINES["random_model"].compute(job) == {"null_random_iou": 0.0, "null_random_label": ""}
    assert NULL_BASELINES["random_model"].needs_random_copy and not NULL_BASELINES["shuffled_labels"].needs_random_copy
