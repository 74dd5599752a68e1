"""Planted-unit models: fixed-weight networks whose units detect known concepts of the synthetic world.

They are the ground truth for testing dissection methods: a planted unit ``"red"`` *is* a red detector by
construction, so NetDissect must label it ``red``; ``"red OR blue"`` must be explained by that formula, and
a graded unit ``"1*red + 2*blue"`` puts red and blue in different activation ranges (what Clustered
Compositional Explanations recover). No training is involved; the detectors are computed from pixel values
using the world's pixel signatures (:mod:`lit_explain.synth.concepts`):

* colour ``c`` (pixel): the pixel is an object pixel (chroma = max - min above ~0.22; backgrounds have at
  most 0.15, objects at least 0.25) and its hue is within ~12 degrees of the palette hue of ``c`` (parts
  and materials keep the hue);
* ``rim`` (pixel): object pixel with brightness (max channel) below ~0.65 (rims are 0.5x, bodies >= 0.79);
* ``cap`` (pixel): object pixel with saturation (chroma / max) below ~0.77 (caps are 0.65, bodies ~1);
* scene ``s`` (image-level): the mean colour of the image's background pixels is close to
  ``a * base_s - b``, ``a`` in [0.88, 1] (the scene's low-frequency pattern), ``b`` in [0, 0.08] (a texture's
  mean darkening); the unit is a constant map of ``1 - distance / 0.05`` (clamped at 0).

Unit grammar (:mod:`lit_explain.synth.formula`): a concept name (the leaves above), ``a OR b`` (max),
``a AND b`` (min), ``a AND NOT b`` (relu(a - b)), parentheses, and weighted sums ``w1*a + w2*b``. Leaves
are combined at image resolution, then average-pooled by ``stride`` to the output of the layer named
``features``: (B, U, H / stride, W / stride). Leaf values are in [0, 1] (pixel leaves are ~0.9-1 inside
their concept, highest in region interiors, 0 outside), so a unit without weights is in [0, 1] and
thresholding at 0.5 recovers its concept mask.

Load it like any user model: ``python:lit_explain.synth.planted:planted_model`` (keyword arguments pass
through).
"""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .concepts import COLORS, PARTS, SCENES
from .formula import evaluate_maps, parse

__all__ = ["planted_model", "PlantedModel", "PlantedFeatures", "DEFAULT_UNITS", "detectable_concepts"]

#: Default units: every single-concept detector, then compositions and graded units.
DEFAULT_UNITS: tuple[str, ...] = (
    *COLORS, *PARTS, *SCENES,
    "red OR blue",
    "green AND cap",
    "yellow AND NOT rim",
    "(purple OR pink) AND rim",
    "1*red + 2*blue",
    "1*sky + 2*yellow",
)

_CHROMA_LO, _CHROMA_HI = 0.19, 0.25  # object-pixel ramp on chroma
_HUE_FULL, _HUE_ZERO = 9.0, 15.0  # colour ramp on hue distance (degrees)
_RIM_LO, _RIM_HI = 0.6, 0.7  # rim ramp on brightness (1 below LO, 0 above HI)
_CAP_LO, _CAP_HI = 0.72, 0.82  # cap ramp on saturation
_SCENE_SCALE = (0.88, 1.0)  # mean brightness factor of a scene's low-frequency pattern
_SCENE_OFFSETS = tuple(0.01 * k for k in range(9))  # mean darkening by a texture (0 .. depth 0.12 x 2/3)
_SCENE_TAU = 0.05  # scene distance at which the score reaches 0


def detectable_concepts() -> list[str]:
    """Concept names usable as leaves in unit formulas."""
    return [*COLORS, *PARTS, *SCENES]


def _ramp_up(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)


def _hue(rgb: torch.Tensor) -> torch.Tensor:
    """Circular hue in degrees of (3, ...) RGB: atan2(sqrt(3) (g - b), 2r - g - b) (within 1.5 deg of HSV)."""
    r, g, b = rgb[0], rgb[1], rgb[2]
    return torch.rad2deg(torch.atan2(math.sqrt(3.0) * (g - b), 2 * r - g - b)) % 360.0


_TORCH_OPS = types.SimpleNamespace(maximum=torch.maximum, minimum=torch.minimum, relu=torch.relu)


class PlantedFeatures(nn.Module):
    """The probed layer: normalised images (B, 3, H, W) -> unit maps (B, U, H // stride, W // stride).

    Args:
        unit_specs: one formula string per unit (see the module docstring).
        stride: average-pooling factor from image to feature resolution.
        mean, std: the normalisation the input images carry (undone before measuring colours).
        colors: palette name -> RGB in [0, 1] (defaults to the world palette).
        scenes: scene name -> background base RGB (defaults to the world's).
        peak: pixel detectors are scaled by ``1 - peak + peak * (13x13 tent-weighted local mean of the
            detector)``, so they peak in the interior of a region instead of forming a flat plateau at 1 (a
            plateau makes a top-quantile threshold such as NetDissect's 0.005 equal the plateau, and
            ``a > thr`` empty).
    """

    def __init__(self, unit_specs: Sequence[str], stride: int = 4, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225), colors: dict | None = None,
                 scenes: dict | None = None, peak: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= float(peak) < 0.5:
            raise ValueError(f"planted model: peak must be in [0, 0.5), got {peak}")
        self.peak = float(peak)
        colors = dict(COLORS if colors is None else colors)
        scenes = dict(SCENES if scenes is None else scenes)
        self.color_names = list(colors)
        self.scene_names = list(scenes)
        known = [*self.color_names, *PARTS, *self.scene_names]
        if not unit_specs:
            raise ValueError("planted model: give at least one unit formula")
        self.unit_specs = [str(s) for s in unit_specs]
        self._trees = [parse(s, known=known) for s in self.unit_specs]
        if int(stride) < 1:
            raise ValueError(f"planted model: stride must be >= 1, got {stride}")
        self.stride = int(stride)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("color_hues", _hue(torch.tensor(list(colors.values()), dtype=torch.float32).T))
        self.register_buffer("scene_bases", torch.tensor(list(scenes.values()), dtype=torch.float32))
        # the unit formulas are part of the model's identity: keep them in the state dict (activation caches
        # key on a hash of the weights)
        code = ("\n".join(self.unit_specs) + f"\nstride={self.stride}\npeak={self.peak}").encode()
        self.register_buffer("unit_code", torch.tensor(list(code), dtype=torch.uint8))

    def leaves(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pixel detector maps (B, H, W) in [0, 1] for every detectable concept."""
        rgb = (x * self.std + self.mean).clamp(0.0, 1.0)
        mx, _ = rgb.max(1)
        mn, _ = rgb.min(1)
        chroma = mx - mn
        obj = _ramp_up(chroma, _CHROMA_LO, _CHROMA_HI)
        hue = _hue(rgb.movedim(1, 0))  # (B, H, W)
        dist = (hue[:, None] - self.color_hues.view(1, -1, 1, 1)).abs()
        dist = torch.minimum(dist, 360.0 - dist)
        col = obj[:, None] * _ramp_up(-dist, -_HUE_ZERO, -_HUE_FULL)  # (B, K, H, W)
        sat = chroma / mx.clamp_min(1e-6)
        rim = obj * _ramp_up(-mx, -_RIM_HI, -_RIM_LO)
        cap = obj * _ramp_up(-sat, -_CAP_HI, -_CAP_LO)
        pix = torch.cat([col, rim[:, None], cap[:, None]], 1)  # (B, K + 2, H, W)
        if self.peak > 0:  # highest in the interior of a region, so top quantiles are not a flat plateau
            local = F.avg_pool2d(pix, 5, 1, 2, count_include_pad=False)
            local = F.avg_pool2d(local, 9, 1, 4, count_include_pad=False)  # 13 x 13 tent: one peak per region
            pix = pix * ((1.0 - self.peak) + self.peak * local)
        out = {name: pix[:, k] for k, name in enumerate([*self.color_names, "rim", "cap"])}
        # scenes: mean background colour m ~ a * base - b, a in _SCENE_SCALE (scene pattern), b in
        # _SCENE_OFFSETS (texture); distance of m to that set, minimised over b, closed form in a
        w = (1.0 - obj)[:, None]
        mean_bg = (rgb * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1.0)  # (B, 3)
        base = self.scene_bases  # (S, 3)
        off = torch.tensor(_SCENE_OFFSETS, dtype=rgb.dtype, device=rgb.device)  # (G,)
        t = mean_bg[:, None, :] + off[:, None]  # (B, G, 3): m + b
        a = (torch.einsum("bgc,sc->bgs", t, base) / (base * base).sum(1)).clamp(*_SCENE_SCALE)  # (B, G, S)
        d = (t[:, :, None, :] - a[..., None] * base[None, None]).norm(dim=-1).amin(1)  # (B, S)
        score = (1.0 - d / _SCENE_TAU).clamp_min(0.0)
        ones = torch.ones_like(obj)
        for s, name in enumerate(self.scene_names):
            out[name] = ones * score[:, s, None, None]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leaves = self.leaves(x.float())
        units = torch.stack([evaluate_maps(t, leaves.__getitem__, _TORCH_OPS) for t in self._trees], 1)
        if self.stride > 1:
            units = F.avg_pool2d(units, self.stride, self.stride, ceil_mode=True)
        return units


class PlantedModel(nn.Module):
    """A classifier-shaped wrapper: ``features`` (the probed layer), then ``avgpool`` and a fixed ``fc``.

    The logits are fixed linear read-outs of the pooled unit maps (identity when ``num_classes`` equals
    the number of units), so the model also works where a classifier is expected.
    """

    def __init__(self, features: PlantedFeatures, num_classes: int | None = None) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        u = len(features.unit_specs)
        k = u if num_classes is None else int(num_classes)
        self.fc = nn.Linear(u, k, bias=False)
        with torch.no_grad():
            self.fc.weight.zero_()
            idx = torch.arange(min(u, k))
            self.fc.weight[idx, idx] = 1.0
        self.requires_grad_(False)

    @property
    def unit_specs(self) -> list[str]:
        """The formula of each unit of ``features``, in channel order."""
        return self.features.unit_specs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(self.features(x)).flatten(1))


def planted_model(world_root: str | None = None, units: Sequence[str] = DEFAULT_UNITS, stride: int = 4,
                  mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                  num_classes: int | None = None, peak: float = 0.1) -> PlantedModel:
    """Build a planted-unit model.

    Args:
        world_root: a generated world; when given, its ``world.json`` supplies the palette and scene colours
            (and must contain every concept the units name). None uses the built-in world definition.
        units: unit formulas (grammar in the module docstring), one per channel of ``features``.
        stride: pooling factor from image to feature resolution (64 px images, stride 4 -> 16 x 16).
        mean, std: input normalisation to undo (the Broden data modules' ImageNet default).
        num_classes: size of the fixed ``fc`` read-out (default: one logit per unit).
        peak: interior peaking of pixel detectors (see :class:`PlantedFeatures`); 0 gives flat plateaus.

    Returns:
        :class:`PlantedModel` with ``.features`` (the layer to probe) and ``.unit_specs``.
    """
    colors = scenes = None
    if world_root is not None:
        import json

        path = Path(world_root) / "world.json"
        if not path.is_file():
            raise FileNotFoundError(f"planted_model: {path} not found; generate the world first "
                                    "(lit_explain.synth.generate_world) or pass world_root=None")
        concepts = json.loads(path.read_text())["concepts"]
        colors = {c["name"]: tuple(c["rgb"]) for c in concepts if c["category"] == "color"}
        scenes = {c["name"]: tuple(c["rgb"]) for c in concepts if c["category"] == "scene"}
    feats = PlantedFeatures(list(units), stride=stride, mean=mean, std=std, colors=colors, scenes=scenes, peak=peak)
    return PlantedModel(feats, num_classes=num_classes)
