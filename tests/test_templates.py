"""configs/templates: each template parses as shipped, marks exactly the keys a user must change, and runs through
the CLI once those are filled in (a tiny model on a miniature Broden, or on the synthetic world in VG format)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
import yaml

from lit_explain.cli import main
from tests.fixtures.broden_writer import make_miniature
from tests.test_cli import _subcommand

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "configs" / "templates").glob("*.yaml"))
TINY = "python:tests.methods.tiny_models:tiny_cnn"  # 16x16 input, layer `features` of 6 units, head `fc` (6 -> 3)


def changed_keys(path: Path) -> list[str]:
    """Dotted keys of the lines marked ``# CHANGE``, read from the file's indentation (independent of the CLI)."""
    stack: list[tuple[int, str]] = []
    keys = []
    for line in path.read_text().splitlines():
        match = re.match(r"^( *)(?:- )?([A-Za-z_][\w]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        if "# CHANGE" in line:
            keys.append(".".join(k for _, k in stack))
    return keys


def _override(tmp_path: Path, name: str, values: dict) -> str:
    """A config file nesting dotted ``values`` (a second --config: the template stays as shipped)."""
    tree: dict = {}
    for dotted, value in values.items():
        node = tree
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_every_template_is_here():
    assert {p.stem for p in TEMPLATES} == {"netdissect", "compositional", "lavise", "hint", "nmf", "www"}


@pytest.mark.parametrize("template", TEMPLATES, ids=[t.stem for t in TEMPLATES])
def test_template_parses_and_marks_what_to_change(template, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main([_subcommand(template), "--config", f"templates/{template.name}", "--print_config"])  # found in configs/
    assert info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    keys = changed_keys(template)
    # the model, its weights, the layer and the dataset are always the user's
    assert {"model.init_args.model", "model.init_args.weights", "model.init_args.layer",
            "data.init_args.root"} <= set(keys)
    for key in keys:  # every marked key is a real argument of the configured classes
        node = printed
        for part in key.split("."):
            assert part in node, (key, part)
            node = node[part]


def _tiny_checkpoint(tmp_path: Path) -> str:
    from tests.methods.tiny_models import tiny_cnn

    path = tmp_path / "my_model.pth"
    torch.save({"state_dict": tiny_cnn(seed=3).state_dict(), "epoch": 7}, path)  # a training script's checkpoint
    return str(path)


@pytest.mark.parametrize("name, rows", [("netdissect", 6), ("compositional", None)])
def test_dissection_template_runs_when_filled_in(name, rows, tmp_path, monkeypatch):
    template = ROOT / "configs" / "templates" / f"{name}.yaml"
    make_miniature(tmp_path / "my_broden")
    monkeypatch.chdir(tmp_path)  # the template's relative output and cache folders land here
    fills = {"model.init_args.model": TINY, "model.init_args.weights": _tiny_checkpoint(tmp_path),
             "model.init_args.layer": "features", "data.init_args.root": str(tmp_path / "my_broden")}
    assert set(changed_keys(template)) == set(fills)  # a new CHANGE key needs a value here
    speed = {"data.init_args.batch_size": 8}
    if name == "compositional":
        speed.update({"model.init_args.length": 2, "model.init_args.beam_size": 3, "model.init_args.num_clusters": 2})
    main(["predict", "--config", str(template), "--config", _override(tmp_path, "fills", {**fills, **speed})])
    out = tmp_path / "outputs" / f"my_{name}"
    with open(out / "explanations.csv") as f:
        table = list(csv.DictReader(f))
    units = {r["unit"] for r in table}
    assert units == {str(u) for u in range(6)}  # every unit of `features` (units: null)
    if rows is not None:
        assert len(table) == rows
    assert (out / "config.yaml").exists()


@pytest.mark.slow
def test_lavise_template_runs_when_filled_in(tmp_path, monkeypatch):
    """Fit then predict, on the synthetic world exported in Visual Genome format (64 images), with a word-hash
    encoder instead of the sentence model (speed)."""
    from data_modules.synthetic_instances import SyntheticInstancesDataModule

    template = ROOT / "configs" / "templates" / "lavise.yaml"
    world = SyntheticInstancesDataModule(root=str(tmp_path / "world"), num_images=64, cache_dir=None)
    world.prepare_data()
    monkeypatch.chdir(tmp_path)
    fills = {"model.init_args.model": TINY, "model.init_args.weights": _tiny_checkpoint(tmp_path),
             "model.init_args.layer": "features", "model.init_args.layer_classifier": "fc",
             "data.init_args.root": str(world.export_root)}
    assert set(changed_keys(template)) == set(fills)
    speed = {"model.init_args.text_encoder": {"class_path": "tests.methods.lavise_fakes.HashEncoder"},
             "model.init_args.input_size": 32, "data.init_args.image_size": 32,
             "data.init_args.image_dirs": ["VG_100K"],
             "data.init_args.min_images": 2, "data.init_args.batch_size": 16,
             "trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
             "model.init_args.top_images": 4}
    common = ["--config", str(template), "--config", _override(tmp_path, "fills", {**fills, **speed})]
    main(["fit", *common])
    ckpt = tmp_path / "outputs/my_lavise/checkpoints/last.ckpt"
    assert ckpt.exists()
    main(["predict", *common, "--ckpt_path", str(ckpt), "--model.units", "[0, 3]"])
    with open(tmp_path / "outputs/my_lavise/filters.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["filter"] for r in table} == {"0", "3"} and all(r["word"] for r in table)


def test_nmf_template_runs_when_filled_in(tmp_path, monkeypatch):
    """The NMF template on an ImageNet-layout miniature with a 3-class tiny CNN: every class the model predicts gets
    its components table."""
    from tests.fixtures.imagenet_writer import make_imagenet

    template = ROOT / "configs" / "templates" / "nmf.yaml"
    make_imagenet(tmp_path / "my_imagenet")
    monkeypatch.chdir(tmp_path)
    fills = {"model.init_args.model": TINY, "model.init_args.weights": _tiny_checkpoint(tmp_path),
             "model.init_args.layer": "features", "model.init_args.pairs": [],
             "data.init_args.root": str(tmp_path / "my_imagenet")}
    assert set(changed_keys(template)) == set(fills)  # a new CHANGE key needs a value here
    speed = {"model.init_args.relevance": "gradient_x_activation", "model.init_args.components": 2,
             "model.init_args.contrastive": False, "data.init_args.image_size": 32,
             "data.init_args.batch_size": 8, "data.init_args.num_workers": 0, "trainer.accelerator": "cpu"}
    main(["fit", "--config", str(template), "--config", _override(tmp_path, "fills", {**fills, **speed})])
    out = tmp_path / "outputs" / "my_nmf"
    with open(out / "components.csv") as f:
        table = list(csv.DictReader(f))
    assert table and (out / "config.yaml").exists()


def test_hint_template_runs_when_filled_in(tmp_path, monkeypatch):
    """fit, predict and test of the HINT template on an ImageNet-layout miniature with a two-level hierarchy TSV."""
    from tests.fixtures.imagenet_writer import WNIDS, make_imagenet

    template = ROOT / "configs" / "templates" / "hint.yaml"
    make_imagenet(tmp_path / "my_imagenet")
    tsv = tmp_path / "my_hierarchy.tsv"  # two fish under "fish", the shark under "shark", both under "animal"
    tsv.write_text("animal\t-\nfish\tanimal\nshark\tanimal\n"
                   f"{WNIDS[0]}\tfish\n{WNIDS[1]}\tfish\n{WNIDS[2]}\tshark\n")
    monkeypatch.chdir(tmp_path)
    fills = {"model.init_args.model": TINY, "model.init_args.weights": _tiny_checkpoint(tmp_path),
             "model.init_args.layer": "relu1", "model.init_args.hierarchy": str(tsv),
             "data.init_args.root": str(tmp_path / "my_imagenet")}
    assert set(changed_keys(template)) == set(fills)  # a new CHANGE key needs a value here
    speed = {"model.init_args.wsol_concept": "fish", "model.init_args.cam_layer": "features",
             "model.init_args.cam_classifier": "fc", "data.init_args.image_size": 32,
             "data.init_args.batch_size": 8, "data.init_args.num_workers": 0, "trainer.accelerator": "cpu"}
    common = ["--config", str(template), "--config", _override(tmp_path, "fills", {**fills, **speed})]
    main(["fit", *common])
    ckpt = tmp_path / "outputs/my_hint/checkpoints/last.ckpt"
    assert ckpt.exists()
    main(["predict", *common, "--ckpt_path", str(ckpt)])
    with open(tmp_path / "outputs/my_hint/hint_neurons.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["unit"] for r in table} == {str(u) for u in range(8)}  # every channel of relu1
    main(["test", *common, "--ckpt_path", str(ckpt)])
    assert list((tmp_path / "outputs/my_hint").glob("wsol*"))


def test_www_template_runs_when_filled_in(tmp_path, monkeypatch):
    """WWW's template on an ImageNet-layout miniature, with a randomly initialised tiny CLIP saved as an open_clip
    folder (no weights can be downloaded) and a word list: every neuron of the class layer gets a table row."""
    from lit_explain.models.clip_files import TINY_CLIP_CONFIG, build_clip, save_clip
    from tests.fixtures.imagenet_writer import make_imagenet

    template = ROOT / "configs" / "templates" / "www.yaml"
    make_imagenet(tmp_path / "my_imagenet")
    clip = save_clip(build_clip(), TINY_CLIP_CONFIG, tmp_path / "my_clip")
    words = tmp_path / "my_words.txt"
    words.write_text("fish\nshark\nwater\nsand\n")
    monkeypatch.chdir(tmp_path)
    fills = {"model.init_args.model": TINY, "model.init_args.weights": _tiny_checkpoint(tmp_path),
             "model.init_args.layer": "fc", "model.init_args.encoder.init_args.path": str(clip),
             "model.init_args.vocabulary": str(words), "data.init_args.root": str(tmp_path / "my_imagenet"),
             "data.init_args.class_index": None}
    assert set(changed_keys(template)) == set(fills)  # a new CHANGE key needs a value here
    speed = {"model.init_args.encoder.class_path": "lit_explain.methods.www_encoders.OpenClipPair",
             "model.init_args.encoder.init_args.model_name": None, "model.init_args.heatmap_layer": "features",
             "model.init_args.ground_truth": None, "model.init_args.num_examples": 4,
             "data.init_args.image_size": 32, "data.init_args.batch_size": 8, "data.init_args.num_workers": 0,
             "trainer.accelerator": "cpu"}
    main(["predict", "--config", str(template), "--config", _override(tmp_path, "fills", {**fills, **speed})])
    with open(tmp_path / "outputs/my_www/www_units.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["unit"] for r in table] == ["0", "1", "2"]  # the tiny CNN's three class logits
