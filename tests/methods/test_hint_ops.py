"""HINT step 2-3 tensor math against numpy per image, hand-worked masks and targets, and seeded sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_explain.methods.hint_ops import (channel_norm, concept_targets, responsible_mask, robust_normalize,
                                          sample_region_pixels)


def test_norm_and_p99_normalisation_match_numpy_per_image():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 7, 9, generator=g, dtype=torch.float64)
    got = robust_normalize(channel_norm(s))
    for b in range(3):
        n = np.sqrt((s[b].numpy() ** 2).sum(0))
        lo, hi = n.min(), np.percentile(n, 99)
        ref = np.clip((n - lo) / (hi - lo), 0, 1)
        np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_responsible_mask_hand_worked():
    # one channel, values 0..9 on a 1x10 row: min 0, P99 = 8.91; ĝ > 0.5 <=> x > 4.455 -> cells 5..9
    s = torch.arange(10.0).reshape(1, 1, 1, 10)
    assert responsible_mask(s)[0, 0].tolist() == [False] * 5 + [True] * 5
    # the L2 norm over channels: (3, 4) -> 5 beats (0, 4.9); a constant map has no region
    s2 = torch.tensor([[[[3.0, 0.0, 0.0]]], [[[4.0, 4.9, 0.0]]]]).permute(1, 0, 2, 3)  # (1, 2, 1, 3)
    assert responsible_mask(s2)[0, 0].tolist() == [True, True, False]
    assert not responsible_mask(torch.ones(2, 3, 4, 4)).any()
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        responsible_mask(s, threshold=1.5)


def test_sampling_counts_features_and_seed():
    B, C, h, w = 4, 6, 5, 5
    feats = torch.randn(B, C, h, w, generator=torch.Generator().manual_seed(3))
    pos = torch.zeros(B, h, w, dtype=torch.bool)
    pos[0, 1:3, 1:3] = True  # 4 positives -> floor(4 / 2) = 2 background draws
    pos[2, 4, :] = True  # 5 positives -> 2 draws
    pos[3] = True  # all positive: no background to draw from
    pos[3, 0, 0] = False  # ... except one cell: 24 positives -> 12 draws of that cell
    labels = torch.tensor([7, 8, 9, 10])
    out = sample_region_pixels(feats, pos, labels, 0.5, seed=5, dtype=torch.float32)
    assert out.positive.sum() == 4 + 5 + 24 and out.features.shape == (33 + 2 + 2 + 12, C)
    assert out.image[:9].tolist() == [0] * 4 + [2] * 5 and out.label[:9].tolist() == [7] * 4 + [9] * 5
    assert out.image[33:].tolist() == [0, 0, 2, 2] + [3] * 12 and (out.cell[37:] == 0).all()
    # every cell's features are that cell's column; background draws lie in the background
    torch.testing.assert_close(out.features, feats.flatten(2)[out.image, :, out.cell])
    assert not pos.flatten(1)[out.image[33:], out.cell[33:]].any()
    again = sample_region_pixels(feats, pos, labels, 0.5, seed=5, dtype=torch.float32)
    assert torch.equal(again.cell, out.cell)
    assert not torch.equal(sample_region_pixels(feats, pos, labels, 0.5, seed=6).cell[33:37], out.cell[33:37])
    assert sample_region_pixels(feats, pos, labels, 0.5).features.dtype == torch.float16


def test_sampling_does_not_depend_on_batching():
    """Two half batches (or two processes) with their dataset indices draw the same cells as one batch."""
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(6, 3, 4, 4, generator=g)
    pos = torch.rand(6, 4, 4, generator=g) > 0.6
    labels, ids = torch.arange(6), torch.tensor([10, 11, 12, 13, 14, 15])
    whole = sample_region_pixels(feats, pos, labels, 0.7, ids, seed=1)
    parts = [sample_region_pixels(feats[s], pos[s], labels[s], 0.7, ids[s], seed=1) for s in (slice(0, 3), slice(3, 6))]

    def canon(r):
        key = torch.stack([r.image, r.cell, r.positive.long()], 1).tolist()
        return sorted(key)

    assert canon(whole) == sorted(canon(parts[0]) + canon(parts[1]))
    # the background draws are spread over the background cells (not always the first one)
    assert len(set(whole.cell[~whole.positive].tolist())) > 3


def test_concept_targets_hand_worked():
    # leaves: 0 beagle, 1 wolf, 2 tabby, 3 car. Concepts: group 0 = {canine(0,1), cat(2)}; group 1 = {animal(0,1,2), car(3)}
    membership = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    group = torch.tensor([0, 0, 1, 1])
    label = torch.tensor([0, 0, 2, 3, 3])
    positive = torch.tensor([True, False, True, True, False])
    want = [[1, 0, 1, 0],  # positive beagle cell: canine +, cat -, animal +, car -
            [0, 0, 0, 0],  # background beagle cell: negative for everything in its groups
            [0, 1, 1, 0],  # positive tabby
            [-1, -1, 0, 1],  # positive car: canine/cat say nothing about cars
            [-1, -1, 0, 0]]  # background car
    assert concept_targets(label, positive, membership, group).tolist() == want
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        concept_targets(torch.tensor([4]), torch.tensor([True]), membership, group)


def test_cam_mean_plus_bias_is_the_logit_of_a_gap_linear_head():
    from lit_explain.methods.hint_ops import class_activation_maps

    g = torch.Generator().manual_seed(4)
    feats = torch.randn(3, 5, 4, 6, generator=g, dtype=torch.float64)
    head = torch.nn.Linear(5, 7).double()
    classes = torch.tensor([6, 0, 3])
    cam = class_activation_maps(feats, head.weight.detach(), classes)
    logits = head(feats.mean((2, 3))).detach()
    torch.testing.assert_close(cam.mean((1, 2)) + head.bias.detach()[classes], logits[torch.arange(3), classes])


def test_minmax_and_upsampling():
    from lit_explain.methods.hint_ops import minmax_normalize, upsample_maps

    m = torch.tensor([[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]])
    assert minmax_normalize(m).tolist() == [[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]
    up = upsample_maps(torch.tensor([[[0.0, 1.0]]]), (1, 4))
    # cell centres at x = 0.5 and 1.5 (in grid units) -> image pixel centres 0.25, 0.75, 1.25, 1.75
    assert up.tolist() == [[[0.0, 0.25, 0.75, 1.0]]]


def test_neuron_rows_hand_worked():
    from lit_explain.methods.hint_ops import neuron_rows

    scores = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.7, 0.0], [0.0, 0.6, 0.2]], dtype=torch.float64)
    rows = neuron_rows(scores, ["dog", "cat", "car"], ["animal", "animal", "thing"], ["organism", "organism", "artifact"], k=2)
    assert len(rows) == 9
    assert [(r["concept"], r["unit"], r["rank"]) for r in rows[:3]] == [("dog", 1, 0), ("dog", 2, 1), ("dog", 0, 2)]
    by = {(r["concept"], r["unit"]): r for r in rows}
    # unit 1: top-2 of dog and cat (level animal) -> collaborative; also of car (other branch) -> multimodal
    assert by["dog", 1]["collaborative"] and by["cat", 1]["collaborative"] and not by["car", 1]["collaborative"]
    assert by["dog", 1]["multimodal"] and by["car", 1]["multimodal"]
    assert not by["dog", 2]["collaborative"] and by["dog", 2]["multimodal"]  # unit 2: dog and car
    assert not by["cat", 0]["multimodal"] and by["cat", 0]["responsible"] and not by["dog", 0]["responsible"]
    assert by["car", 1]["shapley"] == 0.6
