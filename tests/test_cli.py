"""The command line: every shipped config parses, and a run through ``main([...])`` writes its outputs."""

import logging
from pathlib import Path

import pytest
import yaml

from lit_explain.cli import configure_logging, main
from lit_explain.results import read_csv
from tests.fixtures.broden_writer import make_miniature

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
PREDICT_METHODS = ("NetDissect", "Compositional", "Dissection")


def _subcommand(path: Path) -> str:
    cfg = yaml.safe_load(path.read_text())
    cls = str(cfg.get("model", {}).get("class_path", ""))
    return "predict" if any(m in cls for m in PREDICT_METHODS) else "fit"


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_config_prints(config, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exc:
        main([_subcommand(config), "--config", str(config), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]


def test_predict_through_the_cli(tmp_path, monkeypatch, caplog):
    make_miniature(tmp_path / "broden")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    main(["predict", "--config", str(ROOT / "tests/conf/netdissect_miniature.yaml"),
          "--data.root", str(tmp_path / "broden"), "--data.cache_dir", str(tmp_path / "cache"),
          "--model.cache_dir", str(tmp_path / "cache"), "--model.output_dir", str(out)])
    rows = read_csv(out / "explanations.csv")
    assert len(rows) == 6 and {"unit", "label", "category", "iou", "threshold"} <= set(rows[0])
    saved = yaml.safe_load((out / "config.yaml").read_text())  # the resolved config travels with the results
    assert saved["model"]["init_args"]["layer"] == "features"
    assert list((tmp_path / "outputs/tb/tensorboard").rglob("events.out.tfevents.*"))
    # the project's INFO messages are shown by default (Python alone would drop them below WARNING)
    assert any(r.name.startswith("callbacks.") and f"wrote 6 explanations to {out}" in r.getMessage()
               for r in caplog.records)


def test_log_level_option(tmp_path, monkeypatch, caplog):
    make_miniature(tmp_path / "broden")
    monkeypatch.chdir(tmp_path)
    configure_logging("DEBUG")  # start verbose, so that an ignored --log_level would let INFO records through
    main(["predict", "--config", str(ROOT / "tests/conf/netdissect_miniature.yaml"), "--log_level", "warning",
          "--data.root", str(tmp_path / "broden"), "--data.cache_dir", str(tmp_path / "cache"),
          "--model.cache_dir", str(tmp_path / "cache"), "--model.output_dir", str(tmp_path / "run")])
    assert (tmp_path / "run/explanations.csv").exists()
    assert not [r for r in caplog.records if r.name.split(".")[0] in ("lit_explain", "callbacks", "data_modules")
                and r.levelno < logging.WARNING]
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("chatty")


def test_malformed_config_fails_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: NetDissect\n  init_args:\n    layerz: 3\n")
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--config", str(bad)])
    assert exc.value.code != 0
    assert "layerz" in capsys.readouterr().err


def test_missing_dataset_exits_nonzero_without_cache(tmp_path):
    """Run as a user would (a subprocess): clear message naming the path, exit code != 0, no cache, no results."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "trainer_cli.py"), "predict", "--config", str(ROOT / "tests/conf/netdissect_miniature.yaml"),
         "--data.root", str(tmp_path / "no_such_broden"), "--data.cache_dir", str(tmp_path / "cache"),
         "--model.cache_dir", str(tmp_path / "cache"), "--model.output_dir", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "no_such_broden" in proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("override,exc,message", [
    (["--model.weights", "{tmp}/missing.ckpt"], FileNotFoundError, "missing.ckpt"),
    (["--model.weights", "default", "--model.model", "torchvision:resnet18", "--model.layer", "layer4"],
     FileNotFoundError, "resnet18"),
    (["--model.layer", "featurs"], ValueError, "features"),
])
def test_bad_model_input_fails_without_cache(tmp_path, monkeypatch, override, exc, message):
    make_miniature(tmp_path / "broden")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in override]
    with pytest.raises(exc, match=message):
        main(["predict", "--config", str(ROOT / "tests/conf/netdissect_miniature.yaml"),
              "--data.root", str(tmp_path / "broden"), "--data.cache_dir", str(tmp_path / "cache"),
              "--model.cache_dir", str(tmp_path / "cache"), "--model.output_dir", str(tmp_path / "out"), *args])
    assert not list((tmp_path / "cache").glob("activations/*/meta.json"))
    assert not (tmp_path / "out" / "explanations.csv").exists()
