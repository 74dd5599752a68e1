"""Batched guided-backprop saliency equals an independent per-image loop (full backward hooks, one backward per
image), hooks are gone afterwards (also after an error), and bad layers give clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lit_explain.attribution.guided_backprop import guided_relu, layer_saliency


def small_cnn(inplace: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1),  # probed: index 3, pre-ReLU like VGG's features.30
        nn.ReLU(inplace=inplace),
        nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()


def per_image_reference(model: nn.Module, layer_idx: int, images, targets, guided: bool):
    """One forward/backward per image on a non-in-place copy, guided by full backward hooks on the ReLUs."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
            if guided:
                m.register_full_backward_hook(lambda _m, gin, _gout: (gin[0].clamp(min=0),))
    acts, grads = [], []
    for img, t in zip(images, targets):
        store = {}

        def keep(_m, _i, out):
            out.retain_grad()
            store["a"] = out

        h = ref[layer_idx].register_forward_hook(keep)
        x = img[None].clone().requires_grad_(True)
        ref(x)[0, t].backward()
        h.remove()
        acts.append(store["a"].detach()[0])
        grads.append(store["a"].grad[0])
    return torch.stack(acts), torch.stack(grads)


def hook_counts(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("guided", [True, False])
def test_batched_equals_per_image_loop(guided):
    model = small_cnn(inplace=True)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, 16, 20, generator=g)
    targets = torch.tensor([0, 4, 2, 2, 1, 3])
    out = layer_saliency(model, model[3], images, targets, guided=guided)
    ref_a, ref_s = per_image_reference(model, 3, images, targets, guided)
    assert out.activations.shape == out.saliency.shape == (6, 12, 8, 10)
    assert (out.activations < 0).any()  # pre-ReLU values: the in-place ReLU did not overwrite them
    torch.testing.assert_close(out.activations, ref_a)
    torch.testing.assert_close(out.saliency, ref_s, rtol=1e-5, atol=1e-6)
    assert hook_counts(model) == 0


def test_guided_differs_from_vanilla_and_is_nonnegative_where_relu_guided():
    model = small_cnn()
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1, 2, 3, 4])
    gb = layer_saliency(model, model[3], images, t, guided=True).saliency
    van = layer_saliency(model, model[3], images, t, guided=False).saliency
    assert not torch.allclose(gb, van)
    # the gradient reaching layer 3 passes the guided ReLU 4 last: where it is non-zero it was clamped >= 0
    assert (gb >= 0).all()


def test_hooks_removed_after_exception():
    model = small_cnn()
    with pytest.raises(RuntimeError, match="boom"):
        with guided_relu(model) as n:
            assert n == 3 and hook_counts(model) == 3
            raise RuntimeError("boom")
    assert hook_counts(model) == 0
    with pytest.raises(ValueError, match=r"targets must be in \[0, 5\)"):
        layer_saliency(model, model[3], torch.randn(2, 3, 8, 8), torch.tensor([0, 9]))
    assert hook_counts(model) == 0


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.side = nn.Conv2d(3, 4, 1)  # runs, but its output never reaches the logits
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        self.side(x)
        return self.head(self.relu(self.conv(x)).mean((2, 3)))


class FunctionalOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_clear_errors_for_bad_layers():
    m = Detached().eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="no gradient path"):
        layer_saliency(m, m.side, x, t, layer_name="side")
    with pytest.raises(ValueError, match="not a submodule"):
        layer_saliency(m, nn.Conv2d(1, 1, 1), x, t)
    bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"\['1'\] are in training mode.*model.eval\(\)"):
        layer_saliency(bn, bn[0], x, t)
    f = FunctionalOnly()
    with pytest.raises(ValueError, match="has no nn.ReLU module"):
        layer_saliency(f, f.conv, x, t)
    assert layer_saliency(f, f.conv, x, t, guided=False).saliency.shape == (2, 4, 6, 6)
    for p in m.parameters():  # frozen weights still give a gradient at the layer
        p.requires_grad_(False)
    assert layer_saliency(m, m.conv, x, t).saliency.abs().sum() > 0
    assert hook_counts(m) == 0
