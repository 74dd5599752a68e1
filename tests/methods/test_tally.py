"""The NetDissect pair tally against a dense brute-force count, including images and runs with no active pair."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_explain.concepts.index import ConceptIndex
from lit_explain.methods.netdissect import tally_iou

N, U, C, S = 40, 16, 6, 12  # images, units, concepts, mask side


def _world(seed: int = 0):
    g = np.random.default_rng(seed)
    planes = [g.integers(0, C + 1, size=(2, S, S)) for _ in range(N)]  # label ids 1..C, 0 = none
    labels = [[int(g.integers(1, C + 1))] if i % 3 == 0 else [] for i in range(N)]  # image-level, some images
    lut = np.arange(C + 1) - 1
    index = ConceptIndex.from_label_planes(planes, labels, lut, C, (S, S))
    masks = np.zeros((N, C, S * S), dtype=bool)  # dense masks written out independently of the index
    for i in range(N):
        for c in range(C):
            masks[i, c] = (planes[i] == c + 1).any(0).reshape(-1)
            if c + 1 in labels[i]:
                masks[i, c] = True
    acts = torch.relu(torch.randn(N, U, 4, 4, generator=torch.Generator().manual_seed(seed))).half()
    acts[N // 2:] = 0  # half of the images have no active pair at all
    entry = SimpleNamespace(acts=acts.numpy(), maxes=acts.float().flatten(2).amax(-1).numpy())
    return index, masks, entry


def _dense(acts: np.ndarray, thr: torch.Tensor, masks: np.ndarray):
    up = F.interpolate(torch.from_numpy(acts).float(), size=(S, S), mode="bilinear", align_corners=False)
    bits = (up.flatten(2) > thr[None, :, None]).numpy()  # (N, U, H)
    inter = np.einsum("nuh,nch->uc", bits.astype(np.int64), masks.astype(np.int64))
    return inter, bits.sum((0, 2)), masks.sum((0, 2))


@pytest.mark.parametrize("pairs_per_step", [7, 4096])
def test_pair_tally_equals_dense_count(pairs_per_step):
    index, masks, entry = _world()
    thr = torch.from_numpy(np.quantile(entry.acts[: N // 2].astype(np.float64).transpose(1, 0, 2, 3).reshape(U, -1),
                                       0.9, axis=1)).float()
    thr[:3] = 1e4  # units that never fire
    metric = tally_iou(entry, torch.arange(N), torch.arange(U), thr, index, pairs_per_step=pairs_per_step)
    inter, unit_area, concept_area = _dense(entry.acts, thr, masks)
    assert inter[3:].sum() > 0
    assert np.array_equal(metric.intersection.numpy(), inter)
    assert np.array_equal(metric.unit_area.numpy(), unit_area)
    assert np.array_equal(metric.concept_area.numpy(), concept_area)


def test_no_active_pair_anywhere():
    index, masks, entry = _world(1)
    metric = tally_iou(entry, torch.arange(N // 2, N), torch.arange(U), torch.full((U,), 0.5), index)
    assert metric.intersection.sum() == 0 and metric.unit_area.sum() == 0
    assert np.array_equal(metric.concept_area.numpy(), masks[N // 2:].sum((0, 2)))
    assert int(metric.num_images) == N - N // 2


@pytest.mark.parametrize("images", [N // 4, N])
def test_tally_working_set_does_not_grow_with_the_images(monkeypatch, images):
    """The tally lays out a chunk's label planes in groups of at most BLOCK entries, holds at most chunk_values
    plane values and sums concept areas per chunk, never through the (N, C) per-image table: with 4x the images,
    nothing it handles at once is larger (before, the planes of up to 1,024 images were laid out in one go at
    ~80 bytes per entry, and every dataset image's areas were tabled)."""
    import lit_explain.concepts.index as mod

    index, masks, entry = _world()
    monkeypatch.setattr(mod, "BLOCK", 300)  # one image has at most 2 * 144 entries
    entries, chunks = [], []
    orig_entries, orig_planes = ConceptIndex._entries, ConceptIndex.label_planes

    def spy_entries(self, image_ids, with_slots=False):
        out = orig_entries(self, image_ids, with_slots)
        entries.append(len(out[0]))
        return out

    def spy_planes(self, image_ids, max_entries=None):
        chunks.append(len(image_ids))
        return orig_planes(self, image_ids, max_entries)

    monkeypatch.setattr(ConceptIndex, "_entries", spy_entries)
    monkeypatch.setattr(ConceptIndex, "label_planes", spy_planes)
    thr = torch.full((U,), 0.3)
    metric = tally_iou(entry, torch.arange(images), torch.arange(U), thr, index,
                       chunk_values=3 * index.depth * S * S)
    inter, unit_area, concept_area = _dense(entry.acts[:images], thr, masks[:images])
    assert np.array_equal(metric.intersection.numpy(), inter) and inter.sum() > 0
    assert np.array_equal(metric.concept_area.numpy(), concept_area)
    assert max(entries) <= 300 and max(chunks) <= 3
    assert index._image_areas is None
