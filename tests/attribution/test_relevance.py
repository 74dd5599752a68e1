"""Relevance at a probed layer: hand-computed gradients, DeepLift's linear-model identity, batch vs per-image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_explain.attribution.relevance import (deeplift_compatible, deeplift_smoothgrad, gradient_x_activation,
                                               smoothgrad_noise, spatial_relevance, weight_activations)


pytestmark = pytest.mark.usefixtures("one_thread")


def _linear_head_model(seed=0, relu=True):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 4, 3, padding=1)] + ([nn.ReLU()] if relu else []) + [nn.Flatten(), nn.Linear(4 * 5 * 5, 6)]
    return nn.Sequential(*layers).eval()


def _images(b=5, seed=1):
    return torch.randn(b, 3, 5, 5, generator=torch.Generator().manual_seed(seed))


def test_gradient_x_activation_by_hand():
    """Linear head: ∂logit_t/∂A = row t of the head's weight, so R = relu(conv(x)) * W[t] reshaped."""
    m = _linear_head_model()
    x, t = _images(), torch.tensor([0, 5, 2, 2, 1])
    R = gradient_x_activation(m, m[1], x, t)
    conv, lin = m[0], m[3]
    a = F.conv2d(x, conv.weight, conv.bias, padding=1).clamp(min=0)
    expected = a * lin.weight[t].reshape(-1, 4, 5, 5)
    assert torch.allclose(R, expected.detach(), atol=1e-6)


def test_gradient_x_activation_equals_per_image_autograd():
    """A nonlinear head: the batched result equals per-image autograd on the model split at the layer."""
    torch.manual_seed(2)
    body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    head = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    m = nn.Sequential(body, head).eval()
    x, t = _images(4), torch.tensor([2, 0, 1, 2])
    R = gradient_x_activation(m, body, x, t)
    for i in range(4):
        a = body(x[i : i + 1]).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(head(a)[0, t[i]], a)
        assert torch.allclose(R[i], (a * g)[0], atol=1e-6)


def test_deeplift_linear_model_identity():
    """Layer followed by a linear head: DeepLift = (A(x) - A(baseline)) * w_t, averaged over the noisy copies."""
    m = _linear_head_model(relu=False)
    x, t = _images(), torch.tensor([1, 1, 3, 0, 5])
    conv, lin = m[0], m[2]
    w = lin.weight[t].reshape(-1, 4, 5, 5)
    a_base = F.conv2d(torch.full((1, 3, 5, 5), 1.0), conv.weight, conv.bias, padding=1)
    R0 = deeplift_smoothgrad(m, conv, x, t, n_samples=1, stdevs=0.0)
    exp0 = (F.conv2d(x, conv.weight, conv.bias, padding=1) - a_base) * w
    assert torch.allclose(R0, exp0.detach(), atol=1e-5)
    R = deeplift_smoothgrad(m, conv, x, t, n_samples=6, stdevs=0.3, seed=4, samples_per_pass=4)
    eps = smoothgrad_noise((3, 5, 5), 6, 0.3, seed=4)
    a_noisy = torch.stack([F.conv2d(x + e, conv.weight, conv.bias, padding=1) for e in eps]).mean(0)
    assert torch.allclose(R, ((a_noisy - a_base) * w).detach(), atol=1e-5)


def test_deeplift_batched_equals_per_image_loop():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x, t = _images(6), torch.tensor([0, 1, 2, 0, 1, 2])
    R = deeplift_smoothgrad(m, m[1], x, t, n_samples=5, stdevs=0.25, seed=9, samples_per_pass=2)
    assert R.shape == (6, 4, 5, 5)
    for i in range(6):
        Ri = deeplift_smoothgrad(m, m[1], x[i : i + 1], t[i : i + 1], n_samples=5, stdevs=0.25, seed=9,
                                 samples_per_pass=5)
        assert torch.allclose(R[i], Ri[0], atol=1e-5)


def test_captum_noise_tunnel_mode_seeded_and_noise_free_equal():
    m = _linear_head_model()
    x, t = _images(3), torch.tensor([0, 1, 2])
    a = deeplift_smoothgrad(m, m[1], x, t, n_samples=3, stdevs=0.2, noise="captum", seed=1)
    b = deeplift_smoothgrad(m, m[1], x, t, n_samples=3, stdevs=0.2, noise="captum", seed=1)
    assert torch.equal(a, b)
    c = deeplift_smoothgrad(m, m[1], x, t, n_samples=2, stdevs=0.0, noise="captum")
    d = deeplift_smoothgrad(m, m[1], x, t, n_samples=2, stdevs=0.0, noise="shared")
    assert torch.allclose(c, d, atol=1e-6)


class _ReusedReLU(nn.Module):
    """One ReLU module called twice, as in torchvision's ResNet blocks."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        return self.head(self.relu(self.c2(self.relu(self.c1(x)))))


class _DistinctReLU(_ReusedReLU):
    """The same network written with two separate, non-in-place ReLU modules."""

    def __init__(self):
        super().__init__()
        self.relu, self.relu_b = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        return self.head(self.relu_b(self.c2(self.relu(self.c1(x)))))


def test_deeplift_compatible_matches_a_model_with_distinct_relus():
    torch.manual_seed(5)
    reused = _ReusedReLU().eval()
    twin = _DistinctReLU().eval()
    twin.load_state_dict(reused.state_dict())
    x, t = _images(4), torch.tensor([0, 2, 1, 1])
    with pytest.raises(RuntimeError, match="used more than once|being used"):
        deeplift_smoothgrad(reused, reused.c1, x, t, n_samples=1, stdevs=0.0)
    fixed = deeplift_compatible(reused, x[:1])
    assert torch.allclose(fixed(x), reused(x))
    R = deeplift_smoothgrad(fixed, fixed.get_submodule("c1"), x, t, n_samples=2, stdevs=0.1, seed=2)
    R_twin = deeplift_smoothgrad(twin, twin.c1, x, t, n_samples=2, stdevs=0.1, seed=2)
    assert torch.allclose(R, R_twin, atol=1e-5)


@pytest.mark.slow
def test_deeplift_compatible_torchvision_resnet():
    """torchvision's blocks reuse one in-place ReLU; the prepared copy gives the same logits and DeepLift runs."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    fixed = deeplift_compatible(m, x[:1])
    assert torch.allclose(fixed(x), m(x), atol=1e-5)
    R = deeplift_smoothgrad(fixed, fixed.get_submodule("layer3.1"), x, torch.tensor([0, 3]), n_samples=1, stdevs=0.0)
    assert R.shape == (2, 256, 2, 2) and torch.isfinite(R).all()


def test_spatial_relevance_and_weighting_by_hand():
    R = torch.tensor([[[[1.0, -2.0]], [[3.0, -4.0]]]])  # (1, 2, 1, 2)
    r = spatial_relevance(R)
    assert r.tolist() == [[[[2.0, 0.0]]]]
    assert spatial_relevance(R, relu=False).tolist() == [[[[2.0, -3.0]]]]
    A = torch.tensor([[[[1.0, 1.0]], [[2.0, 5.0]]]])
    assert weight_activations(A, r).tolist() == [[[[2.0, 0.0]], [[4.0, 0.0]]]]


def test_bad_inputs():
    m = _linear_head_model()
    x = _images(2)
    with pytest.raises(ValueError, match="targets must hold one class index per image"):
        gradient_x_activation(m, m[1], x, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"class indices in 0\.\.5"):
        gradient_x_activation(m, m[1], x, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="not a submodule"):
        gradient_x_activation(m, nn.ReLU(), x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="model.eval"):
        gradient_x_activation(m.train(), m[1], x, torch.tensor([0, 1]))
    m.eval()
    for kw, match in [({"n_samples": 0}, "n_samples must be an int >= 1"), ({"stdevs": -1.0}, "stdevs must be"),
                      ({"noise": "x"}, "noise must be one of"), ({"seed": -1}, "seed must be an int >= 0"),
                      ({"baseline": torch.zeros(3, 4, 4)}, "tensor baseline must be"),
                      ({"samples_per_pass": 0}, "samples_per_pass must be")]:
        with pytest.raises(ValueError, match=match):
            deeplift_smoothgrad(m, m[1], x, torch.tensor([0, 1]), **kw)


def test_works_under_inference_mode_on_a_frozen_model():
    """Lightning's predict runs under torch.inference_mode with a requires_grad_(False) network."""
    m = _linear_head_model().requires_grad_(False)
    x, t = _images(3), torch.tensor([0, 4, 2])
    ref_g = gradient_x_activation(m, m[1], x, t)
    ref_d = deeplift_smoothgrad(m, m[1], x, t, n_samples=2, stdevs=0.1)
    with torch.inference_mode():
        xi, ti = x.clone(), t.clone()
        g = gradient_x_activation(m, m[1], xi, ti)
        d = deeplift_smoothgrad(m, m[1], xi, ti, n_samples=2, stdevs=0.1)
    assert torch.allclose(g, ref_g) and torch.allclose(d, ref_d)
