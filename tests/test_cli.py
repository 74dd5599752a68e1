"""The command line: every shipped config parses, and a run through ``main([...])`` writes its outputs."""

from pathlib import Path

import pytest
import yaml

from lit_explain.cli import main
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


def test_predict_through_the_cli(tmp_path, monkeypatch):
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


def test_malformed_config_fails_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: NetDissect\n  init_args:\n    layerz: 3\n")
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--config", str(bad)])
    assert exc.value.code != 0
    assert "layerz" in capsys.readouterr().err
