"""Planted units are detectors of the world's concepts: checked against the label PNGs decoded here.

For each unit, the ``features`` output is upsampled bilinearly (align_corners=False) to the mask grid,
thresholded, and compared with the ground-truth mask built from the written files (PNG planes decoded as
R + 256 G, image-level scene labels from index.csv): dataset-level IoU >= 0.8.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lit_explain.models.loading import load_model
from lit_explain.synth import generate_world
from lit_explain.synth.formula import FormulaError
from lit_explain.synth.planted import planted_model

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
COLORS = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]
SCENES = ["sky", "grass", "water", "indoor", "desert", "night"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(world root, normalised images (N,3,64,64), gt(name) -> (N,32,32) bool) from the files alone."""
    root = generate_world(tmp_path_factory.mktemp("planted") / "world", num_images=96, seed=11)
    with open(root / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(root / "label.csv", newline="") as f:
        number = {r["name"]: int(r["number"]) for r in csv.DictReader(f)}
    imgs = np.stack([np.asarray(Image.open(root / "images" / r["image"]).convert("RGB")) for r in rows])
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0 - MEAN) / STD
    planes = []
    for r in rows:
        ps = []
        for cat in ("color", "object", "part", "material"):
            for name in filter(None, r[cat].split(";")):
                a = np.asarray(Image.open(root / "images" / name).convert("RGB")).astype(np.int64)
                ps.append(a[..., 0] + 256 * a[..., 1])
        planes.append((np.stack(ps), {int(r[c]) for c in ("scene", "texture") if r[c]}))

    def gt(name: str) -> np.ndarray:
        n = number[name]
        return np.stack([(p == n).any(0) | (n in lv) for p, lv in planes])

    return root, x, gt


def _maps(model, x, size=32):
    with torch.no_grad():
        f = model.features(x)
    return F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False).numpy()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_features_layer_shape_and_specs(data):
    root, x, _ = data
    m = planted_model(str(root), units=["red", "red OR blue", "1*red + 2*blue"])
    assert m.unit_specs == ["red", "red OR blue", "1*red + 2*blue"]
    out = m.features(x[:2])
    assert out.shape == (2, 3, 16, 16)  # stride 4 on 64 px images: mask_size / 2
    assert m(x[:2]).shape == (2, 3)
    assert not any(p.requires_grad for p in m.parameters())


def test_single_concept_units_match_ground_truth(data):
    _, x, gt = data
    names = COLORS + ["rim", "cap"] + SCENES
    fine = _maps(planted_model(units=names, stride=2), x)  # 32 x 32 features: thin parts resolved
    coarse = _maps(planted_model(units=COLORS + SCENES), x)  # default stride 4 (16 x 16 features)
    for u, name in enumerate(names):
        g = gt(name)
        assert g.sum() > 0, name
        assert _iou(fine[:, u] > 0.5, g) >= 0.8, (name, _iou(fine[:, u] > 0.5, g))
    for u, name in enumerate(COLORS + SCENES):
        assert _iou(coarse[:, u] > 0.5, gt(name)) >= 0.8, name
    # a detector is specific: its mask does not match other concepts of its category
    for u, name in enumerate(COLORS):
        others = [_iou(fine[:, u] > 0.5, gt(o)) for o in COLORS if o != name]
        assert max(others) < 0.05, name


def test_top_quantile_of_a_unit_lies_inside_its_concept(data):
    """Pixel detectors peak inside regions, so NetDissect's 99.5th-percentile threshold selects a non-empty
    bitmap of that concept (a flat plateau would give an empty ``a > thr``)."""
    _, x, gt = data
    names = COLORS + ["rim", "cap"]
    with torch.no_grad():
        f = planted_model(units=names).features(x)  # default stride 4
    up = F.interpolate(f, size=(32, 32), mode="bilinear", align_corners=False).numpy()
    for u, name in enumerate(names):
        thr = np.quantile(f[:, u].numpy(), 994 / 999)
        bitmap = up[:, u] > thr
        assert bitmap.sum() > 0, name
        assert (bitmap & gt(name)).sum() / bitmap.sum() >= 0.9, name


def test_composed_and_graded_units(data):
    _, x, gt = data
    units = ["red OR blue", "yellow AND NOT rim", "(purple OR pink) AND rim", "1*red + 2*blue", "1*sky + 2*yellow"]
    a = _maps(planted_model(units=units, stride=2), x)
    red, blue, yellow, rim, sky = gt("red"), gt("blue"), gt("yellow"), gt("rim"), gt("sky")
    assert _iou(a[:, 0] > 0.5, red | blue) >= 0.8
    assert _iou(a[:, 1] > 0.5, yellow & ~rim) >= 0.8
    assert _iou(a[:, 2] > 0.5, (gt("purple") | gt("pink")) & rim) >= 0.7  # thin rims of two colours
    # graded: each concept in its own activation range
    assert _iou((a[:, 3] > 0.5) & (a[:, 3] < 1.5), red) >= 0.7
    assert _iou(a[:, 3] > 1.5, blue) >= 0.8
    assert _iou((a[:, 4] > 0.5) & (a[:, 4] < 1.5), sky & ~yellow) >= 0.8
    assert _iou(a[:, 4] > 1.5, yellow) >= 0.8


def test_loadable_through_the_model_loader(data):
    root, x, _ = data
    spec = "python:lit_explain.synth.planted:planted_model"
    m = load_model(spec, weights="none", units=["red", "cap"], stride=2, world_root=str(root))
    direct = planted_model(units=["red", "cap"], stride=2)
    assert m.unit_specs == ["red", "cap"]
    assert torch.equal(m.features(x[:4]), direct.features(x[:4]))
    # the unit formulas are part of the state dict, so weight hashes tell planted models apart
    sd_a, sd_b = m.state_dict(), planted_model(units=["red", "blue"], stride=2).state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert any(sd_a[k].shape != sd_b[k].shape or not torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_bad_units_are_reported(tmp_path):
    with pytest.raises(FormulaError, match="circle"):
        planted_model(units=["red AND circle"])  # shapes are not pixel-detectable: not a planted leaf
    with pytest.raises(FileNotFoundError, match="world.json"):
        planted_model(world_root=str(tmp_path), units=["red"])
