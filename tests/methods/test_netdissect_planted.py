"""NetDissect names planted units of the synthetic concept world (ground truth by construction).

Planted detectors are near-binary, so the threshold quantile must be below the concept's pixel coverage:
at NetDissect's 0.005 a saturated detector's 99.5th percentile equals its plateau and ``a > thr`` is empty
(NetDissect-Lite behaves the same). Each group of concepts is therefore dissected at a quantile suited to its
coverage: colours ~2-10 % of pixels, parts more, scenes (image-level) about 1/6 of the images.
"""

import pytest
from lightning.pytorch import Trainer

from callbacks import default_callbacks

from data_modules.broden import BrodenDataModule
from lit_explain.methods.netdissect import NetDissect
from lit_explain.results import read_csv
from lit_explain.synth.concepts import COLORS, PARTS, SCENES
from lit_explain.synth.world import generate_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("planted") / "world", num_images=120, seed=3)


@pytest.mark.parametrize("units,quantile,stride", [(list(COLORS), 0.02, 2), (list(PARTS), 0.05, 2), (list(SCENES), 0.15, 4)],
                         ids=["colors", "parts", "scenes"])
def test_planted_units_are_named(world, tmp_path, units, quantile, stride):
    dm = BrodenDataModule(root=str(world), categories=None, batch_size=40, cache_dir=str(tmp_path / "cache"))
    method = NetDissect(model="python:lit_explain.synth.planted:planted_model",
                        model_kwargs={"world_root": str(world), "units": units, "stride": stride}, layer="features",
                        quantile=quantile, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                        num_pictures=0)
    Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=default_callbacks(method)).predict(method, datamodule=dm, return_predictions=False)
    rows = read_csv(tmp_path / "out" / "explanations.csv")
    assert [r["label"] for r in rows] == units
    assert all(float(r["iou"]) > 0.3 for r in rows)
