"""ImageClassifier on the synthetic world: CLI smoke run, checkpoints the model loader reads, it learns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lit_explain.cli import main
from lit_explain.methods.classifier import ImageClassifier
from lit_explain.models.loading import load_model
from lit_explain.models.synthetic_cnn import synthetic_cnn

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "synthetic_classifier.yaml"


def _override(tmp_path: Path, **trainer) -> Path:
    """A config layered over the shipped one: a tiny world and every output under tmp_path."""
    cfg = {
        "trainer": {
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(tmp_path / "out"), "name": "tb"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(tmp_path / "ckpt"), "filename": "best", "monitor": "val/acc",
                                         "mode": "max", "save_last": True, "enable_version_counter": False}}],
            "enable_progress_bar": False,
            **trainer,
        },
        "data": {"init_args": {"root": str(tmp_path / "world"), "num_images": 40, "batch_size": 16,
                               "cache_dir": str(tmp_path / "cache")}},
    }
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_shipped_config_fast_dev_run(tmp_path):
    cli = main(["fit", "--config", str(CONFIG), "--config", str(_override(tmp_path)),
                "--trainer.fast_dev_run", "true"])
    assert isinstance(cli.model, ImageClassifier)
    assert (tmp_path / "world" / "world.json").is_file()  # prepare_data generated the world
    assert all(k.startswith(("model.", "train_acc", "val_acc")) for k in cli.model.state_dict())


def test_checkpoints_load_through_the_model_loader(tmp_path):
    cli = main(["fit", "--config", str(CONFIG), "--config", str(_override(tmp_path, max_epochs=1, limit_train_batches=2,
                                                                           limit_val_batches=1))])
    last, best = tmp_path / "ckpt" / "last.ckpt", tmp_path / "ckpt" / "best.ckpt"
    assert last.is_file() and best.is_file()
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert any(k.startswith("model.layer4.") for k in ckpt["state_dict"])
    hp = cli.model.hparams
    model = load_model(hp.backbone, weights=str(last), num_classes=hp.num_classes, **(hp.backbone_kwargs or {})).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), cli.model.model.eval()(x), atol=1e-6)


def test_classifier_learns_a_separable_task():
    """Colour classes (a whole image tinted red/green/blue) are learnt to 100% in a few steps."""
    torch.manual_seed(0)
    module = ImageClassifier(num_classes=3, backbone_kwargs={"width": 8}, lr=3e-3, schedule="none")
    opt = module.configure_optimizers()
    y = torch.arange(3).repeat(8)
    x = torch.randn(24, 3, 32, 32) * 0.3
    x[torch.arange(24), y] += 1.5
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(module(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    assert (module(x).argmax(1) == y).all()


def test_synthetic_cnn_layer_names_and_shapes():
    m = synthetic_cnn(num_classes=8, width=8)
    names = dict(m.named_modules())
    for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "layer4.0.conv2", "avgpool",
              "fc"):
        assert n in names
    feats = {}
    m.layer4.register_forward_hook(lambda mod, i, o: feats.setdefault("l4", o))
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 8)
    assert feats["l4"].shape == (2, 64, 8, 8)  # layer4 keeps an 8 x 8 grid at 64 px


def test_bad_schedule_is_rejected():
    with pytest.raises(ValueError, match="schedule"):
        ImageClassifier(schedule="linear")
