"""LaViSE on the synthetic concept world: planted colour filters are named, and the shipped config runs.

The world is exported as Visual Genome files (shape names, colour and material attribute words: 17 categories,
70 % seen) and read by the real data modules; words are embedded with the offline all-MiniLM-L6-v2.
The network is a planted-unit model (:mod:`lit_explain.synth.planted`): its first 8 filters *are* the world's
8 colour detectors, so each one's correct name is known.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer, seed_everything

from callbacks import default_callbacks
from lit_explain.methods.lavise import LaViSE

ROOT = Path(__file__).resolve().parents[2]
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from data_modules.synthetic_instances import SyntheticInstancesDataModule

    base = tmp_path_factory.mktemp("lavise_world")
    dm = SyntheticInstancesDataModule(root=str(base / "world"), num_images=320, batch_size=32, cache_dir=None)
    dm.prepare_data()
    return dm, base


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from lit_explain.text.encoders import SentenceTransformerEncoder

    return SentenceTransformerEncoder(cache_dir=str(tmp_path_factory.mktemp("emb")))


def _trainer(**kw) -> Trainer:
    args = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, accelerator="cpu", devices=1)
    args.update(kw)
    args["callbacks"] = [*args.get("callbacks", []), *default_callbacks(LaViSE, args.get("callbacks", []))]
    return Trainer(**args)


def test_planted_colour_filters_are_named(world, encoder):
    from callbacks.recall import FilterRecall
    from lit_explain.methods.lavise import LaViSE
    from lit_explain.metrics.functional.recall import recall_at_k

    dm, base = world
    torch.set_num_threads(1)
    seed_everything(0)
    m = LaViSE(model="python:lit_explain.synth.planted:planted_model", layer="features",
               layer_classifier="fc", text_encoder=encoder, input_size=64, lr=3e-3, top_images=10, ks=[1, 5, 10],
               units=list(range(8)), output_dir=str(base / "out"))
    _trainer(max_epochs=8).fit(m, dm)
    trainer = _trainer()
    trainer.predict(m, dm, return_predictions=False)
    ex = m.explanations
    r = next(c for c in trainer.callbacks if isinstance(c, FilterRecall)).results
    names = [ex.vocabulary[int(w)] for w in ex.ranked.words[:, 0]]
    seen = {n for n, s in zip(ex.label_names, ex.seen.tolist()) if s}
    seen_colours = [i for i, c in enumerate(COLORS) if c in seen]
    assert len(seen_colours) >= 4
    correct = sum(names[i] == COLORS[i] for i in seen_colours)
    assert correct >= len(seen_colours) - 1, names
    # recall over every ground-truth word (shape, colour, material of the object under the filter's region):
    # far above naming random words or always the most frequent categories
    lav, rnd, frq = r["lavise"], r["random"], r["frequency"]
    assert lav["pairs"] >= 30
    assert lav["recall@5"] > rnd["recall@5"] + 0.15 and lav["recall@5"] > frq["recall@5"] + 0.15
    assert lav["recall@1"] > 3 * max(rnd["recall@1"], frq["recall@1"])
    # the concepts the planted filters detect: colour words, mostly at rank 1, nearly always in the top 5
    colour = torch.tensor([n in COLORS for n in ex.label_names])
    rc = recall_at_k(ex.topk_labels(5)[ex.valid], ex.ground_truth[ex.valid] & colour, ks=(1, 5), seen=ex.seen)
    assert rc["recall@1/seen"] >= 0.75 and rc["recall@5/seen"] >= 0.95, rc


def test_shipped_synthetic_config_fit_then_predict(world, tmp_path, monkeypatch):
    """configs/lavise_synthetic.yaml through the CLI, on a small world and an untrained CNN (speed)."""
    from lit_explain.cli import main

    dm, base = world
    monkeypatch.chdir(tmp_path)
    cfg = str(ROOT / "configs/lavise_synthetic.yaml")
    common = ["--config", cfg, "--data.root", dm.hparams.root, "--data.num_images", "320",
              "--data.cache_dir", str(tmp_path / "cache"), "--model.weights", "none",
              "--model.text_encoder.init_args.cache_dir", str(tmp_path / "emb")]
    # an optimizer given on the command line replaces the module's default Adam + ReduceLROnPlateau
    main(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4",
          "--trainer.limit_val_batches", "2", "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.05",
          "--optimizer.momentum", "0.9"])
    ckpt = tmp_path / "outputs/lavise_synthetic/checkpoints/last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["optimizer_states"][0]["param_groups"][0]["momentum"] == 0.9
    assert "units" not in state["hyper_parameters"]  # run options come from the predict command below
    main(["predict", *common, "--ckpt_path", str(ckpt), "--model.units", "[0, 5, 17]", "--model.top_images", "4"])
    out = tmp_path / "outputs/lavise_synthetic"
    with open(out / "filters.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["filter"] for r in rows} == {"0", "5", "17"}
    assert set(rows[0]) >= {"filter", "rank", "word", "score", "seen"}
    recall = json.loads((out / "recall.json").read_text())
    assert set(recall["results"]) == {"lavise", "frequency", "random"}
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["init_args"]["layer"] == "layer4"
    assert list((out / "filters").glob("filter_*.png"))
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
