"""LaViSE under DDP (CPU, gloo, ddp_spawn): 1 and 2 processes give the same explanations and recall@k."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from callbacks import default_callbacks
from lit_explain.methods.lavise import LaViSE

from tests.methods.lavise_fakes import ColorSquares, HashEncoder

COLOR_NET = "python:tests.methods.lavise_fakes:color_net"


def _module(**kw):
    from lit_explain.methods.lavise import LaViSE

    args = dict(model=COLOR_NET, layer="layer1", layer_classifier="fc", text_encoder=HashEncoder(32),
                input_size=32, lr=3e-3, top_images=5, ks=[1, 5, 10])
    args.update(kw)
    return LaViSE(**args)


def _trainer(**kw) -> Trainer:
    args = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, accelerator="cpu")
    args.update(kw)
    args["callbacks"] = [*args.get("callbacks", []), *default_callbacks(LaViSE, args.get("callbacks", []))]
    return Trainer(**args)


def _read(out):
    with open(out / "filters.csv") as f:
        rows = list(csv.DictReader(f))
    with open(out / "pairs.csv") as f:
        pairs = list(csv.DictReader(f))
    return rows, pairs, json.loads((out / "recall.json").read_text())["results"]


@pytest.mark.ddp
@pytest.mark.slow
def test_one_and_two_processes_agree(tmp_path):
    seed_everything(0)
    # 41 reference images: the two ranks get 21 and 20 (uneven shards, as with any odd dataset)
    dm = ColorSquares(num_train=96, num_val=16, num_predict=41, unseen=[10, 11], batch_size=8)
    m = _module(output_dir=str(tmp_path / "one"))
    _trainer(max_epochs=6, devices=1).fit(m, dm)
    _trainer(devices=1).predict(m, dm, return_predictions=False)
    m.hparams.output_dir = str(tmp_path / "two")
    _trainer(devices=2, strategy="ddp_spawn").predict(m, dm, return_predictions=False)
    rows1, pairs1, rec1 = _read(tmp_path / "one")
    rows2, pairs2, rec2 = _read(tmp_path / "two")
    assert rows1 == rows2 and pairs1 == pairs2
    assert int(rec1["lavise"]["pairs"]) > 10
    for name in ("lavise", "frequency", "random"):
        for key, value in rec1[name].items():
            assert rec2[name][key] == pytest.approx(value, rel=1e-12, nan_ok=True), (name, key)


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_fit_runs_and_logs_recall(tmp_path):
    """Two-process training (DDP wraps only the head: the frozen backbone has no gradients)."""
    seed_everything(0)
    dm = ColorSquares(num_train=48, num_val=16, num_predict=8, batch_size=8)
    m = _module()
    trainer = _trainer(max_epochs=2, devices=2, strategy="ddp_spawn", default_root_dir=str(tmp_path),
                       enable_checkpointing=True)
    trainer.fit(m, dm)
    ckpt = trainer.checkpoint_callback.best_model_path
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["state_dict"]["_extra_state"]["label_names"] == [f"color{c}" for c in range(12)]
    assert m.label_names == [f"color{c}" for c in range(12)]  # restored in the parent process too
    assert "head.net.2.weight" in state["state_dict"]
