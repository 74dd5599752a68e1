"""The command line: every shipped config parses, a run through ``main([...])`` writes its outputs, input errors are
one line, runs are quiet unless ``--verbose``, ``--print_layers`` lists a model's layers, config names resolve."""

import importlib
import logging
import sys
import warnings
from pathlib import Path

import pytest
import torchvision
import yaml
from lightning.pytorch import LightningDataModule, LightningModule

from lit_explain.cli import CONFIG_DIR, _import_plugins, _noise_policy, configure_logging, main
from lit_explain.errors import ConfigError, MissingFileError
from lit_explain.results import read_csv
from tests.fixtures.broden_writer import make_miniature

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
MINIATURE = ROOT / "tests/conf/netdissect_miniature.yaml"


def _subclasses(base: type) -> list[type]:
    out, todo = [], [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.append(sub)
            todo.append(sub)
    return out


def _resolve(class_path: str, base: type) -> type:
    """The class a config's ``class_path`` names: a dotted path, or a short name of an imported subclass of ``base``
    (as the CLI resolves it), so that a new method or data module needs no entry here."""
    if "." in class_path:
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
    else:
        _import_plugins()
        matches = {c for c in _subclasses(base) if c.__name__ == class_path}
        assert len(matches) == 1, f"{class_path}: {matches}"
        cls = matches.pop()
    assert issubclass(cls, base), cls
    return cls


def _subcommand(path: Path) -> str:
    """``fit`` for a method that trains (it defines ``training_step``), ``predict`` for one that only reads."""
    cfg = yaml.safe_load(path.read_text())
    cls = _resolve(str(cfg["model"]["class_path"]), LightningModule)
    return "fit" if cls.training_step is not LightningModule.training_step else "predict"


def test_subcommand_discovery_follows_the_class_not_its_name():
    from lit_explain.methods.classifier import ImageClassifier
    from lit_explain.methods.netdissect import NetDissect

    trains = type("AnyNewExplainer", (ImageClassifier,), {})  # a name that matches no known method
    assert trains.training_step is not LightningModule.training_step
    assert NetDissect.training_step is LightningModule.training_step
    assert _resolve("NetDissect", LightningModule) is NetDissect
    data_classes = {_resolve(yaml.safe_load(c.read_text())["data"]["class_path"], LightningDataModule) for c in CONFIGS}
    assert all(issubclass(c, LightningDataModule) for c in data_classes)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_config_prints(config, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exc:
        main([_subcommand(config), "--config", str(config), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]


def test_nested_class_argument_overrides_from_the_command_line(capsys, monkeypatch):
    """WWW's encoder is a class_path object inside the method: one of its init_args can be changed with a dotted
    option, and the rest of the object stays as the config wrote it (it used to be replaced by the raw words)."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--config", "configs/www_synthetic.yaml", "--model.init_args.encoder.init_args.path",
              "elsewhere/clip", "--print_config"])
    assert exc.value.code in (0, None)
    config = yaml.safe_load((ROOT / "configs/www_synthetic.yaml").read_text())["model"]["init_args"]["encoder"]
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["encoder"]
    assert printed["class_path"] == config["class_path"]
    assert printed["init_args"]["path"] == "elsewhere/clip"
    assert printed["init_args"]["batch_size"] == config["init_args"]["batch_size"]


def test_predict_through_the_cli(tmp_path, monkeypatch, caplog):
    make_miniature(tmp_path / "broden")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    main(["predict", "--config", str(MINIATURE),
          "--data.root", str(tmp_path / "broden"), "--data.cache_dir", str(tmp_path / "cache"),
          "--model.cache_dir", str(tmp_path / "cache"), "--model.output_dir", str(out)])
    rows = read_csv(out / "explanations.csv")
    assert len(rows) == 6 and {"unit", "label", "category", "iou", "threshold"} <= set(rows[0])
    saved = yaml.safe_load((out / "config.yaml").read_text())  # the resolved config travels with the results
    assert saved["model"]["init_args"]["layer"] == "features"
    assert list((tmp_path / "outputs/tb/tensorboard").rglob("events.out.tfevents.*"))
    # the project's INFO messages are shown by default (Python alone would drop them below WARNING)
    assert any(r.name.startswith("callbacks.") and "wrote 6 explanations" in r.getMessage()
               and str(out) in r.getMessage()
               for r in caplog.records)


def test_log_level_option(tmp_path, monkeypatch, caplog):
    make_miniature(tmp_path / "broden")
    monkeypatch.chdir(tmp_path)
    configure_logging("DEBUG")  # start verbose, so that an ignored --log_level would let INFO records through
    main(["predict", "--config", str(MINIATURE), "--log_level", "warning",
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
        [sys.executable, str(ROOT / "trainer_cli.py"), "predict", "--config", str(MINIATURE),
         "--data.root", str(tmp_path / "no_such_broden"), "--data.cache_dir", str(tmp_path / "cache"),
         "--model.cache_dir", str(tmp_path / "cache"), "--model.output_dir", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "no_such_broden" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no_such_broden" in errors[0] and "Traceback" not in proc.stderr  # one line
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
        main(["predict", "--config", str(MINIATURE),
              "--data.root", str(tmp_path / "broden"), "--data.cache_dir", str(tmp_path / "cache"),
              "--model.cache_dir", str(tmp_path / "cache"), "--model.output_dir", str(tmp_path / "out"), *args])
    assert not list((tmp_path / "cache").glob("activations/*/meta.json"))
    assert not (tmp_path / "out" / "explanations.csv").exists()


def _miniature_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["predict", "--config", str(MINIATURE), "--data.root", str(tmp_path / "broden"),
            "--data.cache_dir", str(tmp_path / "cache"), "--model.cache_dir", str(tmp_path / "cache"),
            "--model.output_dir", str(tmp_path / "out"), *extra]


# ---------------------------------------------------------------------------------------------------------------------
# Errors of a known cause: one line on the command line, the exception itself in-process
# ---------------------------------------------------------------------------------------------------------------------
LAVISE_OWN_MODEL = """
model:
  class_path: lit_explain.methods.lavise.LaViSE
  init_args:
    model: torchvision:resnet18
    weights: default
    text_encoder:
      class_path: tests.methods.lavise_fakes.HashEncoder
data:
  class_path: tests.methods.lavise_fakes.ColorSquares
  init_args: {num_train: 4, num_val: 2, num_predict: 2}
"""


def test_constructor_error_is_not_wrapped_in_the_parser_report(tmp_path, monkeypatch, capsys):
    """LaViSE builds its network in its constructor, which the argument parser calls: its error used to come out
    inside a 'Does not validate against any of the Union subtypes' dump."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lavise.yaml").write_text(LAVISE_OWN_MODEL)
    args = ["fit", "--config", "lavise.yaml"]
    with pytest.raises(MissingFileError) as info:  # in-process: the exception itself
        main(args)
    assert "resnet18-f37072fd.pth" in str(info.value) and "Union" not in str(info.value)
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["trainer_cli.py", *args])  # as the console script runs it
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("Seed set")]
    assert len(err) == 1 and err[0].startswith("error: ") and "resnet18-f37072fd.pth" in err[0], err
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in err[0]


def test_corrupt_checkpoint_through_the_command_line(tmp_path, monkeypatch, capsys):
    make_miniature(tmp_path / "broden")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.ckpt").write_bytes(b"\x00not a checkpoint" * 10)
    args = _miniature_args(tmp_path, "--model.weights", str(tmp_path / "broken.ckpt"))
    monkeypatch.setattr(sys, "argv", ["trainer_cli.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and "broken.ckpt" in err[0] and "file an issue" not in err[0].lower()
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(ConfigError, match="broken.ckpt"):
        main(args)  # in-process callers can still catch it


# ---------------------------------------------------------------------------------------------------------------------
# --print_layers
# ---------------------------------------------------------------------------------------------------------------------
def test_print_layers_lists_a_torchvision_model_without_running(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(_miniature_args(tmp_path, "--model.model", "torchvision:resnet18", "--model.weights", "none",
                             "--print_layers"))
    assert info.value.code in (0, None)
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    expected = [name for name, _ in torchvision.models.resnet18().named_modules() if name]
    assert [n for n in rows if n != "layer"] == expected  # every dotted path, in order
    # ResNet-18 on one 224x224 image (no image_size configured): strides 2, 4, 4, 8, 16, 32
    assert rows["conv1"] == ["Conv2d", "64x112x112"]
    assert rows["layer1"] == ["Sequential", "64x56x56"]
    assert rows["layer4"] == ["Sequential", "512x7x7"]
    assert rows["layer4.1.conv2"] == ["Conv2d", "512x7x7"]
    assert rows["fc"] == ["Linear", "1000"]
    assert "224x224" in out
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()  # the method did not run


# ---------------------------------------------------------------------------------------------------------------------
# Quiet runs
# ---------------------------------------------------------------------------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _run_collecting(args: list[str]) -> tuple[list[str], list[str]]:
    """(Lightning info lines, warning messages) of one in-process run."""
    import lightning_utilities.core.rank_zero as rank_zero

    handler = _Collect()  # on the emitting logger: it sees exactly what that logger's filters let through
    rank_zero.log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            main(args)
    finally:
        rank_zero.log.removeHandler(handler)
    return handler.messages, [f"{w.category.__name__}: {w.message}" for w in caught]


def test_quiet_by_default_verbose_brings_the_noise_back(tmp_path, monkeypatch, caplog):
    make_miniature(tmp_path / "broden")
    monkeypatch.chdir(tmp_path)
    info, warned = _run_collecting(_miniature_args(tmp_path))
    assert not [m for m in info if "Tip" in m], info
    assert not [w for w in warned if "predict returned None" in w or w.startswith(("FutureWarning", "Deprecation"))]
    assert any("wrote 6 explanations" in r.getMessage() and str(tmp_path / "out") in r.getMessage()
               for r in caplog.records)  # the project's own lines stay
    assert [m for m in info if "GPU available" in m]  # Lightning's own facts stay too

    info, warned = _run_collecting(_miniature_args(tmp_path, "--verbose"))
    assert [m for m in info if m.startswith("💡 Tip")], info
    assert [w for w in warned if "predict returned None" in w], warned
    (tmp_path / "verbose.yaml").write_text("verbose: true\n")  # the same from a config file
    info, warned = _run_collecting(_miniature_args(tmp_path, "--config", str(tmp_path / "verbose.yaml")))
    assert [m for m in info if m.startswith("💡 Tip")] and [w for w in warned if "predict returned None" in w]
    # nothing leaks into later in-process runs
    info, warned = _run_collecting(_miniature_args(tmp_path))
    assert not [m for m in info if "Tip" in m] and not [w for w in warned if "predict returned None" in w]


def test_dependency_deprecations_hidden_but_not_the_projects_own():
    def warn(module: str, category: type[Warning]) -> None:
        warnings.warn_explicit(f"old api in {module}", category, filename=f"{module}.py", lineno=1, module=module)

    for verbose, shown in ((False, {"lit_explain.methods.x", "data_modules.y"}),
                           (True, {"lightning.pytorch.z", "torch.utils._pytree", "lit_explain.methods.x",
                                   "data_modules.y"})):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _noise_policy(verbose):
                for module in ("lightning.pytorch.z", "torch.utils._pytree", "lit_explain.methods.x",
                               "data_modules.y"):
                    warn(module, FutureWarning if "torch" in module else DeprecationWarning)
                warnings.warn("a real problem", UserWarning)
        assert {str(w.message).split(" in ")[1] for w in caught if "old api" in str(w.message)} == shown
        assert [w for w in caught if "a real problem" in str(w.message)]  # other warnings are never hidden


# ---------------------------------------------------------------------------------------------------------------------
# Config names
# ---------------------------------------------------------------------------------------------------------------------
def test_bare_config_name_is_looked_up_in_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    for name in ("netdissect_synthetic.yaml", "netdissect_synthetic"):
        with pytest.raises(SystemExit):
            main(["predict", "--config", name, "--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["init_args"]["layer"] == "layer4"
        assert printed["model"]["init_args"]["model"] == "python:lit_explain.models.synthetic_cnn:synthetic_cnn"
    # a file of that name in the working directory wins
    (tmp_path / "netdissect_synthetic.yaml").write_text(MINIATURE.read_text())
    with pytest.raises(SystemExit):
        main(["predict", "--config=netdissect_synthetic.yaml", "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["layer"] == "features"
    with pytest.raises(ConfigError) as info:
        main(["predict", "--config", "netdisect_synthetic.yaml"])
    assert str(CONFIG_DIR) in str(info.value) and "netdissect_synthetic.yaml" in str(info.value)  # closest name
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "configs/ folder" in " ".join(capsys.readouterr().out.split())
