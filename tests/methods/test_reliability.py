"""Nothing silently wrong in the shared layer-method base: bad activations, stale caches, concurrent runs, empty work.

Each test fails on the code before the base checked for it: NaN activations and float16 overflow used to be cached
and labelled, a dead unit got the first concept at IoU 0, a changed ``model_kwargs`` reused another architecture's
activations, 0.995 was accepted as NetDissect's tail fraction, and two runs on one cache folder crashed at commit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch import Trainer

from callbacks import default_callbacks
from data_modules.broden import BrodenDataModule
from lit_explain.methods.base import SILENT_REASON
from lit_explain.methods.netdissect import NetDissect
from lit_explain.results import read_csv
from tests.fixtures.broden_writer import make_miniature

ROOT = Path(__file__).resolve().parents[2]
MODEL = "python:tests.methods.tiny_models:faulty_cnn"


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel") / "broden"
    make_miniature(root)
    return root


def _run(broden: Path, tmp_path: Path, out: str = "out", **kw) -> Path:
    dm = BrodenDataModule(root=str(broden), batch_size=4, cache_dir=str(tmp_path / "cache"))
    kw.setdefault("quantile", 0.2)
    method = NetDissect(model=MODEL, layer="features", output_dir=str(tmp_path / out),
                        cache_dir=str(tmp_path / "cache"), num_pictures=0, **kw)
    Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=default_callbacks(method)).predict(method, datamodule=dm, return_predictions=False)
    return tmp_path / out


def _committed(tmp_path: Path) -> list[Path]:
    root = tmp_path / "cache" / "activations"
    return [p for p in root.glob("*") if (p / "meta.json").is_file()] if root.is_dir() else []


def test_nan_activations_fail_naming_the_layer_and_cache_nothing(broden, tmp_path):
    with pytest.raises(ValueError, match=r"layer 'features' produced \d+ non-finite"):
        _run(broden, tmp_path, model_kwargs={"fault": "nan"})
    assert not _committed(tmp_path) and not (tmp_path / "out" / "explanations.csv").exists()


def test_float16_overflow_is_refused_with_the_fix_and_float32_works(broden, tmp_path):
    with pytest.raises(ValueError, match="beyond float16's range.*activation_dtype: float32"):
        _run(broden, tmp_path, model_kwargs={"fault": "huge"})
    rows = read_csv(_run(broden, tmp_path, out="f32", model_kwargs={"fault": "huge"}, activation_dtype="float32",
                         quantile=0.01) / "explanations.csv")
    assert 65504 < float(rows[0]["threshold"]) < float("inf")  # stored exactly, not as inf


def test_dead_unit_is_unlabelled_with_a_reason(broden, tmp_path):
    rows = read_csv(_run(broden, tmp_path, model_kwargs={"fault": "dead"}) / "explanations.csv")
    dead = next(r for r in rows if r["unit"] == "0")
    assert dead["label"] == "" and dead["category"] == "" and float(dead["iou"]) == 0.0
    assert dead["reason"] == SILENT_REASON
    assert all(dead[k] == "" for k in dead if k.endswith("_label"))
    alive = [r for r in rows if r["unit"] != "0"]
    assert alive and all(r["reason"] == "" and r["label"] for r in alive)


def test_changed_model_kwargs_never_reuse_the_cache(broden, tmp_path):
    """stride changes the activations but no parameter name or shape: the weights hash alone cannot see it."""
    a = read_csv(_run(broden, tmp_path, out="s2", model_kwargs={"stride": 2}) / "explanations.csv")
    b = read_csv(_run(broden, tmp_path, out="s1", model_kwargs={"stride": 1}) / "explanations.csv")
    assert len(_committed(tmp_path)) == 2
    assert [r["threshold"] for r in a] != [r["threshold"] for r in b]


@pytest.mark.parametrize("value", [0.995, 0.9])
def test_the_other_threshold_convention_is_refused_with_the_fix(value):
    with pytest.raises(ValueError, match=f"looks like a quantile level.*use {1 - value:g}"):
        NetDissect(model=MODEL, layer="features", quantile=value)


@pytest.mark.parametrize("kw,match", [({"random_units": -1}, "random_units"), ({"top_images": 0}, "top_images"),
                                      ({"activation_dtype": "bfloat16"}, "activation_dtype"),
                                      ({"units": [1, 1]}, "distinct"), ({"units": []}, "units is empty"),
                                      ({"num_pictures": -2}, "num_pictures")])
def test_settings_are_validated_in_the_constructor(kw, match):
    with pytest.raises(ValueError, match=match):
        NetDissect(model=MODEL, layer="features", **kw)


def test_no_images_is_an_error(broden, tmp_path):
    from torch.utils.data import DataLoader, Subset

    class NoImages(BrodenDataModule):  # a selection that leaves nothing, whatever the reason
        def predict_dataloader(self):
            return DataLoader(Subset(self.dataset, []), batch_size=2)

    dm = NoImages(root=str(broden), batch_size=4, cache_dir=str(tmp_path / "cache"))
    method = NetDissect(model=MODEL, layer="features", output_dir=str(tmp_path / "out"),
                        cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="no images"):
        trainer.predict(method, datamodule=dm, return_predictions=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.ddp
def test_two_concurrent_runs_on_one_cache_both_finish_with_the_single_run_table(broden, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cmd(out: str, cache: str = "cache") -> list[str]:
        return [sys.executable, str(ROOT / "trainer_cli.py"), "predict", "--config",
                str(ROOT / "tests/conf/netdissect_miniature.yaml"), "--data.root", str(broden),
                "--data.cache_dir", str(tmp_path / cache), "--model.cache_dir", str(tmp_path / cache),
                "--model.output_dir", str(tmp_path / out), "--trainer.logger", "false"]

    procs = [subprocess.Popen(cmd(f"run{i}"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    proc = subprocess.run(cmd("single", cache="single_cache"), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    ref = (tmp_path / "single" / "explanations.csv").read_bytes()
    assert (tmp_path / "run0" / "explanations.csv").read_bytes() == ref
    assert (tmp_path / "run1" / "explanations.csv").read_bytes() == ref
    assert len(_committed(tmp_path)) == 1


def test_random_model_baseline_of_a_parameter_free_layer_is_skipped_with_a_reason(broden, tmp_path, caplog):
    from lit_explain.methods.compositional import CompositionalExplanations

    dm = BrodenDataModule(root=str(broden), batch_size=4, cache_dir=str(tmp_path / "cache"))
    method = CompositionalExplanations(model="python:tests.methods.tiny_models:pooled_input_cnn", layer="0",
                                       output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                                       num_clusters=1, length=1, quantile=0.2, num_pictures=0,
                                       null_baselines=["shuffled_labels", "random_model"])
    with caplog.at_level("WARNING", logger="lit_explain"):
        Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                callbacks=default_callbacks(method)).predict(method, datamodule=dm, return_predictions=False)
    assert any("no parameters upstream" in r.getMessage() for r in caplog.records)
    rows = read_csv(tmp_path / "out" / "explanations.csv")
    assert rows and all("null_random_iou" not in r and r["null_shuffled_iou"] != "" for r in rows)
    assert len(_committed(tmp_path)) == 1  # no second capture of an identical copy


def test_a_selection_without_concepts_is_an_error(broden, tmp_path):
    dm = BrodenDataModule(root=str(broden), batch_size=4, cache_dir=str(tmp_path / "cache"), min_image_count=10**6)
    method = NetDissect(model=MODEL, layer="features", output_dir=str(tmp_path / "out"),
                        cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="no concept"):
        Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                callbacks=default_callbacks(method)).predict(method, datamodule=dm, return_predictions=False)
    assert not (tmp_path / "out").exists()
