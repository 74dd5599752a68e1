"""A planted-unit classifier of the synthetic world whose classes are concept compositions: ground truth for NMF.

The NMF concept method factorises, per class, the relevance-weighted activations of the images predicted as the
class; its components should be the concepts the class is made of. Here the probed layer ``features`` is a
set of planted concept detectors (:class:`~lit_explain.synth.planted.PlantedFeatures`, one unit per colour and
part), and each class c is a conjunction of concepts S_c (e.g. ``red AND blue``) with the logit

    logit_c = Σ_{u ∈ S_c} log(eps + m_u),    m_u = spatial mean of unit u,

a soft AND: it is very negative unless every concept of the rule is present, and its gradient with respect to
the layer is 1 / (hw (eps + m_u)) on every cell of each unit u ∈ S_c and 0 on every other unit. So gradient x
activation puts relevance exactly on the pixels where the class's own concepts fire, and the class's components
should load on the units of S_c, one concept each when the concepts sit on different objects (two colours).

Load it as ``python:lit_explain.synth.planted_nmf:planted_nmf_model`` with a world generated from the same class
rules: ``generate_world(root, classes=NMF_CLASSES)``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from .formula import parse
from .planted import PlantedFeatures, planted_model

__all__ = ["PlantedConjunctionClassifier", "planted_nmf_model", "NMF_UNITS", "NMF_CLASSES", "rule_units"]

#: Default units: six colour detectors and the two parts (parts co-occur with the colour of their object).
NMF_UNITS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "rim", "cap")
#: Default classes: each the conjunction of two colours, so its two concepts sit on two different objects.
NMF_CLASSES: dict[str, str] = {"red_blue": "red AND blue", "green_yellow": "green AND yellow",
                               "purple_orange": "purple AND orange", "red_green": "red AND green"}


def rule_units(rule: str, units: Sequence[str]) -> list[int]:
    """The unit indices of the concepts of a conjunction ``a AND b AND ...`` (each concept must be a unit)."""
    names = [t.strip() for t in str(rule).split(" AND ")]
    parse(rule)  # a syntax error is reported by the formula parser
    missing = [n for n in names if n not in units]
    if missing or any(" " in n for n in names):
        raise ValueError(f"planted_nmf_model: class rule {rule!r} must be a conjunction 'a AND b' of units "
                         f"{list(units)}; not units: {missing}")
    return [list(units).index(n) for n in names]


class PlantedConjunctionClassifier(nn.Module):
    """``features`` (B, U, h, w) -> spatial mean (B, U) -> logits (B, K) = log(eps + m) @ Mᵀ, M (K, U) the 0/1
    membership of each unit in each class's rule (see the module docstring)."""

    def __init__(self, features: PlantedFeatures, class_units: Sequence[Sequence[int]], eps: float = 0.02) -> None:
        super().__init__()
        u = len(features.unit_specs)
        if not class_units or any(not cu or any(not 0 <= int(i) < u for i in cu) for cu in class_units):
            raise ValueError(f"planted_nmf_model: class units must be non-empty lists of unit indices in [0, {u}), "
                             f"got {[list(c) for c in class_units]}")
        if not float(eps) > 0:
            raise ValueError(f"planted_nmf_model: eps must be > 0, got {eps}")
        self.features = features
        membership = torch.zeros(len(class_units), u)
        for k, cu in enumerate(class_units):
            membership[k, list(cu)] = 1.0
        self.register_buffer("membership", membership)
        self.eps = float(eps)
        self.requires_grad_(False)

    @property
    def unit_specs(self) -> list[str]:
        return self.features.unit_specs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.features(x).mean((2, 3))
        return torch.log(self.eps + m) @ self.membership.T


def planted_nmf_model(world_root: str | None = None, units: Sequence[str] = NMF_UNITS,
                      classes: Mapping[str, str] | None = None, stride: int = 4, eps: float = 0.02,
                      peak: float = 0.0) -> PlantedConjunctionClassifier:
    """Build the planted conjunction classifier.

    Args:
        world_root: the generated world (its palette; see :func:`lit_explain.synth.planted.planted_model`).
        units: unit formulas of the probed layer ``features`` (every concept of a class rule must be one).
        classes: class name -> rule ``a AND b``, in the world's class order (default :data:`NMF_CLASSES`).
        stride: pooling from image to layer resolution (64 px images, stride 4: a 16 x 16 layer).
        eps: the soft-AND's floor, > 0.
        peak: interior peaking of the pixel detectors (0: flat).
    """
    classes = dict(NMF_CLASSES if classes is None else classes)
    feats = planted_model(world_root, units=units, stride=stride, peak=peak).features
    return PlantedConjunctionClassifier(feats, [rule_units(r, list(units)) for r in classes.values()], eps=eps)
