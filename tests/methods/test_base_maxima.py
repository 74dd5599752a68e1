"""LayerMethod's readers of the stored per-image maxima (top images, silent units) against plain Python, and
the bound on what they read at once."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lit_explain.methods.base as base
from lit_explain.methods.base import LayerMethod


class _CountingMaxes:
    """An (N, U) maxima array that records how many images each read covers."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.shape, self.rows = a, a.shape, []

    def __getitem__(self, key):
        out = self.a[key]
        self.rows.append(len(out))
        return out


@pytest.mark.parametrize("block", [1 << 22, 7])
def test_top_images_and_silent_units_equal_plain_sorting(monkeypatch, block):
    monkeypatch.setattr(base, "MAXES_BLOCK", block)
    g = np.random.default_rng(0)
    n, u = 53, 6
    maxes = g.integers(0, 5, size=(n, u)).astype(np.float32)  # many ties
    maxes[:, 4] = 0.0  # a dead unit
    entry = SimpleNamespace(maxes=_CountingMaxes(maxes))
    method = LayerMethod(model="torchvision:resnet18", layer="layer4")
    units = torch.tensor([5, 0, 4, 2])
    for k in (3, 60):  # fewer and more than the images
        values, index = method.top_images(units, k, entry=entry)
        for j, unit in enumerate(units.tolist()):
            ref = sorted(range(n), key=lambda i: (-maxes[i, unit], i))[:k]  # ties to the smaller index
            assert index[j].tolist() == ref + [-1] * (k - len(ref))
            assert values[j].tolist() == [float(maxes[i, unit]) for i in ref] + [float("-inf")] * (k - len(ref))
    thresholds = torch.tensor([3.5, 4.0, 0.0, 2.0], dtype=torch.float64)
    silent = method.silent_units(units, thresholds, entry=entry)
    assert silent.tolist() == [bool(maxes[:, c].max() <= t) for c, t in zip(units.tolist(), thresholds.tolist())]
    # the maxima are read a block of images at a time, never all N x U_sel at once when the block is smaller
    assert max(entry.maxes.rows) <= max(1, block // len(units))
