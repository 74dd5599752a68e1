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
