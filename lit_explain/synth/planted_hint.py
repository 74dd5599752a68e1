"""A planted-unit *classifier* of the synthetic world, ground truth for HINT's neuron-concept associations.

HINT needs a classifier: it back-propagates each image's ground-truth class logit to the probed layer and keeps
the grid cells where that saliency is large (the responsible region). The planted models of
:mod:`lit_explain.synth.planted` end in average pooling and a linear read-out, whose gradient with respect to the
layer is the same at every cell (no region at all). Here each class logit is instead

    logit_c = mean over cells of ReLU(gain · unit_{u(c)}(i, j) − bias)

with ``u(c)`` the planted unit of class c: the gradient of logit_c reaches the layer only through unit u(c), and
only at the cells where that unit fires (through an ``nn.ReLU`` module, so guided backpropagation applies). The
responsible region of an image of class c is therefore the region of its own concept, by construction.

Units are formulas over the world's detectable concepts (grammar of :mod:`lit_explain.synth.planted`): single
concepts (``red``) are the detectors a concept's classifier should rank first, ``red OR orange`` is a unit of the
parent concept (warm) that both sibling concepts share, so HINT must report it as collaborative at that level.

Load it as ``python:lit_explain.synth.planted_hint:planted_hint_model`` with a world generated with colour classes,
e.g. ``generate_world(root, classes={"red_thing": "red", "orange_thing": "orange", ...})``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from .planted import PlantedFeatures, planted_model

__all__ = ["PlantedClassifier", "planted_hint_model", "HINT_UNITS", "HINT_CLASS_UNITS"]

#: Default units: four colour detectors and one OR-unit per colour family (warm = red OR orange, cool = blue OR green).
HINT_UNITS: tuple[str, ...] = ("red", "orange", "blue", "green", "red OR orange", "blue OR green")
#: Default class -> unit (the class rules of the matching world are the same single concepts).
HINT_CLASS_UNITS: dict[str, str] = {"red_thing": "red", "orange_thing": "orange", "blue_thing": "blue",
                                    "green_thing": "green"}


class PlantedClassifier(nn.Module):
    """``features`` (the planted layer, (B, U, h, w)) -> ``head`` (1x1 conv picking each class's unit) -> ReLU ->
    spatial mean -> (B, K) logits (see the module docstring)."""

    def __init__(self, features: PlantedFeatures, class_units: Sequence[int], gain: float = 2.0,
                 bias: float = 1.0) -> None:
        super().__init__()
        u = len(features.unit_specs)
        if not class_units or any(not 0 <= int(i) < u for i in class_units):
            raise ValueError(f"planted_hint_model: class units must be unit indices in [0, {u}), got {list(class_units)}")
        if not float(gain) > 0 or not float(bias) >= 0:
            raise ValueError(f"planted_hint_model: gain must be > 0 and bias >= 0, got {gain}, {bias}")
        self.features = features
        self.head = nn.Conv2d(u, len(class_units), 1)
        with torch.no_grad():
            self.head.weight.zero_()
            for k, i in enumerate(class_units):
                self.head.weight[k, int(i)] = float(gain)
            self.head.bias.fill_(-float(bias))
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.requires_grad_(False)

    @property
    def unit_specs(self) -> list[str]:
        return self.features.unit_specs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.relu(self.head(self.features(x)))).flatten(1)


def planted_hint_model(world_root: str | None = None, units: Sequence[str] = HINT_UNITS,
                       class_units: Mapping[str, str] | None = None, stride: int = 4, gain: float = 2.0,
                       bias: float = 1.0, peak: float = 0.0) -> PlantedClassifier:
    """Build the planted classifier.

    Args:
        world_root: the generated world (its palette and scenes; see :func:`lit_explain.synth.planted.planted_model`).
        units: unit formulas of the probed layer ``features``.
        class_units: class name -> the unit formula (one of ``units``) its logit reads, in the world's class order
            (default :data:`HINT_CLASS_UNITS`).
        stride: pooling from the 64 px image to the layer grid (4 -> 16 x 16).
        gain, bias: logit_c = mean ReLU(gain · unit − bias): a unit near 1 inside its concept and 0 outside gives
            a positive pre-activation exactly inside (gain > bias > 0).
        peak: interior peaking of the detectors (0: flat, so the saliency is flat over the region).
    """
    class_units = dict(HINT_CLASS_UNITS if class_units is None else class_units)
    missing = [f for f in class_units.values() if f not in units]
    if missing:
        raise ValueError(f"planted_hint_model: class units {missing} are not among the units {list(units)}")
    feats = planted_model(world_root, units=list(units), stride=stride, peak=peak).features
    return PlantedClassifier(feats, [list(units).index(f) for f in class_units.values()], gain=gain, bias=bias)
