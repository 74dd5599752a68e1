"""Tiny deterministic models for method tests, loadable as ``python:tests.methods.tiny_models:<factory>``."""

import torch
from torch import nn


def tiny_cnn(channels: int = 6, seed: int = 0) -> nn.Module:
    """16x16 input -> ``features`` (channels, 4, 4) after ReLU; weights drawn from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 8, 3, stride=2, padding=1))
    model.add_module("relu1", nn.ReLU())
    model.add_module("features", nn.Sequential(nn.Conv2d(8, channels, 3, stride=2, padding=1), nn.ReLU()))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(channels, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def faulty_cnn(channels: int = 6, seed: int = 0, fault: str = "none", stride: int = 2) -> nn.Module:
    """:func:`tiny_cnn` with a fault at ``features``: ``nan`` (unit 0 outputs NaN), ``huge`` (values beyond float16's
    range), ``dead`` (unit 0 is constant zero), ``none``. ``stride`` of the first conv changes the architecture
    (and the activations) without changing any parameter's name or shape."""
    model = tiny_cnn(channels, seed)
    model.conv1.stride = (stride, stride)
    scale = torch.ones(channels)
    shift = torch.zeros(channels)
    if fault == "nan":
        shift[0] = float("nan")
    elif fault == "huge":
        scale[0] = 1e6
    elif fault == "dead":
        scale[0] = 0.0
    model.features.add_module("fault", _Affine(scale, shift))
    return model


class _Affine(nn.Module):
    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", shift.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def pooled_input_cnn(channels: int = 6, seed: int = 0) -> nn.Module:
    """:func:`tiny_cnn` behind a parameter-free ``stem`` (3x3 average pooling, stride 1): the activations of
    ``stem`` are the same for any weights, so a random-initialisation baseline there is meaningless."""
    model = tiny_cnn(channels, seed)
    return nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), *model)  # stem = "0"
