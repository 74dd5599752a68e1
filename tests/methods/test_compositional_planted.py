"""Compositional and clustered compositional explanations recover planted units of the synthetic world.

Planted units (:mod:`lit_explain.synth.planted`) compute known formulas of the world's concept detectors, so
the explanation of each (unit, range) is known by construction: ``red OR blue`` must be explained by exactly
that formula, and the graded unit ``1*red + 2*blue`` must be ``red`` in its low activation range and ``blue``
in its high one. As in the NetDissect planted test, near-binary detectors need a threshold quantile below
their pixel coverage, so each group runs at a quantile suited to it.
"""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Trainer

from callbacks import default_callbacks

from data_modules.broden import BrodenDataModule
from lit_explain.methods.compositional import CompositionalExplanations
from lit_explain.synth.world import generate_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("planted_cce") / "world", num_images=120, seed=3)


def _explain(world, tmp_path, units, **kw):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dm = BrodenDataModule(root=str(world), categories=None, batch_size=40, cache_dir=str(tmp_path / "cache"))
        method = CompositionalExplanations(
            model="python:lit_explain.synth.planted:planted_model",
            model_kwargs={"world_root": str(world), "units": units, "stride": 2}, layer="features",
            output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), num_pictures=0, **kw)
        Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                enable_model_summary=False, callbacks=default_callbacks(method)).predict(method, datamodule=dm, return_predictions=False)
    finally:
        torch.set_num_threads(n)
    return json.loads((tmp_path / "out" / "explanations.json").read_text())["rows"]


@pytest.mark.parametrize("units,quantile", [(["red OR blue", "green AND cap", "(purple OR pink) AND rim"], 0.05),
                                            (["yellow AND NOT rim"], 0.01)], ids=["or-and", "and-not"])
def test_compositional_units_are_recovered(world, tmp_path, units, quantile):
    rows = _explain(world, tmp_path, units, num_clusters=1, length=3, quantile=quantile)
    assert [r["label"] for r in rows] == units
    for r in rows:
        assert r["iou"] > 0.5
        assert r["iou"] > 5 * r["null_shuffled_iou"]  # far above what shuffled annotations reach


def test_clustered_ranges_recover_graded_units_per_range(world, tmp_path):
    rows = _explain(world, tmp_path, ["1*red + 2*blue", "1*sky + 2*yellow"], num_clusters=2, length=3)
    got = {(r["unit"], r["cluster"]): r["label"] for r in rows}
    assert got[(0, 0)] == "red" and got[(0, 1)] == "blue"
    # sky is image-level: its low range is the sky background where no yellow object sits (value 2 there)
    assert got[(1, 0)] == "sky AND NOT yellow" and got[(1, 1)] == "yellow"
    for r in rows:
        assert r["range_lo"] < r["range_hi"] and r["iou"] > 0.5
