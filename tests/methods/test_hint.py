"""HINT end to end on a planted-unit classifier of the synthetic world (ground truth by construction), its bad-input
errors, and 1 vs 2 processes.

The world has four colour classes (red, orange, blue, green things); its hierarchy is colour > warm {red, orange},
cool {blue, green}. The planted layer has one detector per colour plus ``red OR orange`` (warm's own unit) and
``blue OR green`` (cool's own unit); each class logit reads its colour's unit through a ReLU, so the responsible
regions are the class objects (lit_explain.synth.planted_hint).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from callbacks import default_callbacks
from data_modules.synthetic_boxes import SyntheticBoxesDataModule
from lit_explain.concepts.hierarchy import HierarchyError
from lit_explain.methods.hint import HINT
from lit_explain.results import read_csv
from lit_explain.synth.planted_hint import HINT_CLASS_UNITS, HINT_UNITS
from lit_explain.synth.world import generate_world, load_classes

PLANTED = "python:lit_explain.synth.planted_hint:planted_hint_model"
OWN_UNIT = {"red": "red", "orange": "orange", "blue": "blue", "green": "green", "warm": "red OR orange",
            "cool": "blue OR green"}


def _trainer(**kw) -> Trainer:
    args = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False)
    args.update(kw)
    return Trainer(**args)


def _method(world, tmp, **kw) -> HINT:
    args = dict(model=PLANTED, model_kwargs={"world_root": str(world), "stride": 2}, layer="features",
                responsible_k=3, alpha=0.1, lr=0.05, wsol_concept="color", cam_classifier="head",
                output_dir=str(tmp / "out"), cache_dir=str(tmp / "cache"))
    args.update(kw)
    return HINT(**args)


def _dm(world, **kw):
    return SyntheticBoxesDataModule(str(world), **{"image_size": 32, "batch_size": 32, **kw})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("hint") / "world", num_images=120, seed=1,
                          classes=dict(HINT_CLASS_UNITS))


@pytest.fixture(scope="module")
def fitted(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hint_fit")
    m = _method(world, tmp)
    _trainer(max_epochs=5).fit(m, _dm(world, batch_size=8))
    return m, tmp


def test_data_module_class_names_follow_label_ids(world):
    """classes[label] is the image's class name in classes.csv (world.json's params sort the rules by name)."""
    dm = _dm(world)
    dm.setup("validate")
    names = {}
    for line in (world / "classes.csv").read_text().splitlines()[1:]:
        image, cid, name = line.split(",")
        names[int(cid)] = name
    assert dm.classes == [names[i] for i in range(4)] == list(HINT_CLASS_UNITS)
    assert set(load_classes(world).values()) == {0, 1, 2, 3}


def test_planted_units_rank_first_and_or_units_collaborate(world, fitted):
    m, tmp = fitted
    _trainer(callbacks=default_callbacks(m)).predict(m, _dm(world), return_predictions=False)
    rows = read_csv(tmp / "out" / "hint_neurons.csv")
    spec = lambda r: HINT_UNITS[int(r["unit"])]  # noqa: E731
    first = {r["concept"]: spec(r) for r in rows if r["rank"] == "0"}
    assert {c: first[c] for c in OWN_UNIT} == OWN_UNIT
    level = {r["concept"]: r["level"] for r in rows}
    assert level["red"] == level["orange"] == "warm" and level["warm"] == level["cool"] == "color"
    # the OR of two siblings is responsible for both, hence collaborative at their parent's level
    for unit, siblings in (("red OR orange", ("red", "orange")), ("blue OR green", ("blue", "green"))):
        got = [r for r in rows if spec(r) == unit and r["concept"] in siblings]
        assert len(got) == 2 and all(r["responsible"] == "True" and r["collaborative"] == "True" for r in got), got
    # and never responsible for the other family's colours
    assert not [r for r in rows if spec(r) == "red OR orange" and r["concept"] in ("blue", "green")
                and r["responsible"] == "True"]
    summary = {r["concept"]: r for r in read_csv(tmp / "out" / "hint_concepts.csv")}
    assert summary["warm"]["top_units"].split()[0] == str(HINT_UNITS.index("red OR orange"))
    assert int(summary["red"]["positive_pixels"]) > 0
    # report.html browses hint_neurons by unit and by concept (rendered in Chromium in test_report_...)
    text = (tmp / "out" / "report.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)[1])
    assert [(v["name"], v["group"], v["item"]) for v in data["views"]] == [("units", "unit", "concept"),
                                                                            ("concepts", "concept", "unit")]
    assert data["tables"]["hint_neurons"] == json.loads((tmp / "out" / "hint_neurons.json").read_text())["rows"]
    collab = len({r["unit"] for r in rows if r["collaborative"] == "True"})
    assert f"<div><b>{collab}</b><span>collaborative units</span></div>" in text and collab >= 2


def test_report_lists_the_concepts_of_the_planted_units(world, fitted, tmp_path):
    """The run's report.html in Chromium: the OR unit lists the two sibling colours it is responsible for, and the
    concept 'warm' lists that unit first."""
    from tests.viz.test_report import _browser, _check_loaded
    from tests.viz.test_view_report import _ViewPage

    m, _ = fitted
    out, before = tmp_path / "out", m.hparams.output_dir
    m.hparams.output_dir = str(out)
    try:
        _trainer(callbacks=default_callbacks(m)).predict(m, _dm(world), return_predictions=False)
    finally:
        m.hparams.output_dir = before
    rows = read_csv(out / "hint_neurons.csv")
    unit = str(HINT_UNITS.index("red OR orange"))
    page = _ViewPage(_browser(f"{(out / 'report.html').as_uri()}#v=units&g={unit}", tmp_path, "--dump-dom"))
    _check_loaded(page)
    listed = dict(page.listing())
    assert sorted(listed, key=int) == sorted({r["unit"] for r in rows if r["responsible"] == "True"}, key=int)
    want = [r["concept"] for r in sorted((r for r in rows if r["unit"] == unit and r["responsible"] == "True"),
                                         key=lambda r: -float(r["shapley"]))]
    assert listed[unit] == want and {"red", "orange"} <= set(want) and page.h2[0].strip() == f"unit {unit}"
    page = _ViewPage(_browser(f"{(out / 'report.html').as_uri()}#v=concepts&g=warm", tmp_path, "--dump-dom"))
    _check_loaded(page)
    assert dict(page.listing())["warm"][0] == unit and page.h2[0].strip().startswith("concept warm")


def test_wsol_localises_the_planted_objects(world, fitted):
    """The 'color' classifier fires exactly on the colour objects, whose boxes are the GT boxes."""
    m, tmp = fitted
    _trainer(callbacks=default_callbacks(m)).test(m, _dm(world), verbose=False)
    rows = {r["map"]: r for r in json.loads((tmp / "out" / "wsol.json").read_text())["rows"]}
    assert set(rows) == {"hint", "cam"} and rows["hint"]["concept"] == "color"
    n = len(_dm(world).dataset("val"))
    assert rows["hint"]["images"] == rows["cam"]["images"] == n
    assert rows["hint"]["gt_known_loc"] > 0.8 and rows["cam"]["gt_known_loc"] > 0.8
    for r in rows.values():
        assert 0 <= r["top1_loc"] <= r["gt_known_loc"] <= 1 and 0 <= r["maxboxacc_v2"] <= 1


# ---------------------------------------------------------------------------------------------- bad input
def _assert_nothing_written(tmp):
    assert not (tmp / "out").exists() or not any((tmp / "out").iterdir())


def test_hierarchy_with_a_cycle_or_unknown_node(world, tmp_path):
    tsv = tmp_path / "cycle.tsv"
    tsv.write_text("color\t-\nwarm\tcolor\nred\twarm\nwarm\tred\n")
    with pytest.raises(HierarchyError, match=r"cycle\.tsv: the hierarchy has a cycle: .*warm.*red"):
        _trainer(max_epochs=1).fit(_method(world, tmp_path, hierarchy=str(tsv)), _dm(world))
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("color\t-\nwarm\tcolour\n")
    with pytest.raises(HierarchyError, match=r"unknown\.tsv:2: unknown node 'colour'"):
        _trainer(max_epochs=1).fit(_method(world, tmp_path, hierarchy=str(unknown)), _dm(world))
    with pytest.raises(HierarchyError, match="unknown node 'violet'"):
        _trainer(max_epochs=1).fit(_method(world, tmp_path, concepts=["warm", "violet"]), _dm(world))
    with pytest.raises(ValueError, match="hierarchy must be a file ending in one of"):
        _method(world, tmp_path, hierarchy="tree.xml")
    _assert_nothing_written(tmp_path)


class _NoOrangeTraining(SyntheticBoxesDataModule):
    def read_split(self, split):
        records = super().read_split(split)
        return [r for r in records if split != "train" or self.classes[r.label] != "orange_thing"]


def test_class_with_no_images(world, tmp_path):
    dm = _NoOrangeTraining(str(world), image_size=32, batch_size=32)
    with pytest.raises(ValueError, match=r"concept 'orange' .*no training image.*'orange_thing'"):
        _trainer(max_epochs=1).fit(_method(world, tmp_path), dm)
    _assert_nothing_written(tmp_path)


class _Detached(nn.Module):
    """A classifier whose probed layer ``features`` does not reach the logits through autograd."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.relu(self.features(x)).detach().mean((2, 3)))


def detached_model() -> nn.Module:
    return _Detached()


def test_layer_without_gradient(world, tmp_path):
    m = _method(world, tmp_path, model="python:tests.methods.test_hint:detached_model", model_kwargs=None)
    with pytest.raises(ValueError, match="logits do not depend on layer 'features'"):
        _trainer(max_epochs=1).fit(m, _dm(world))
    _assert_nothing_written(tmp_path)


def test_layer_right_before_global_pooling(world, tmp_path):
    """features -> average pooling -> linear: the gradient is the same at every cell, so there is no region."""
    m = _method(world, tmp_path, model="python:lit_explain.synth.planted:planted_model", saliency="vanilla",
                model_kwargs={"world_root": str(world), "units": list(HINT_UNITS), "num_classes": 4, "stride": 2})
    with pytest.raises(ValueError, match="saliency at layer 'features' is the same at every cell"):
        _trainer(max_epochs=1).fit(m, _dm(world))
    _assert_nothing_written(tmp_path)


def test_arguments_are_validated():
    for kw, msg in ((dict(region_threshold=1.0), r"region_threshold must be in \[0, 1\)"),
                    (dict(background_per_positive=-1), "background_per_positive must be >= 0"),
                    (dict(shapley="xgb"), "shapley must be one of"), (dict(responsible_k=0), "responsible_k must be >= 1"),
                    (dict(cam_threshold=0), r"cam_threshold must be in \(0, 1\)"), (dict(lr=0), "lr must be > 0")):
        with pytest.raises(ValueError, match=msg):
            HINT(**kw)


def test_tree_surrogate_ranks_the_planted_units_first(world, fitted):
    """The tree option (gradient-boosted surrogate + TreeSHAP, a small one here) finds the same planted units."""
    m, tmp = fitted
    hp = m.hparams
    saved = dict(hp)
    hp.update(shapley="tree", tree_max_pixels=400, tree_max_depth=3, tree_rounds=10, output_dir=str(tmp / "tree"))
    try:
        _trainer(callbacks=default_callbacks(m)).predict(m, _dm(world), return_predictions=False)
    finally:
        hp.update(saved)
    rows = read_csv(tmp / "tree" / "hint_neurons.csv")
    first = {r["concept"]: HINT_UNITS[int(r["unit"])] for r in rows if r["rank"] == "0"}
    assert {c: first[c] for c in ("red", "orange", "blue", "green")} == {c: c for c in ("red", "orange", "blue", "green")}
    assert json.loads((tmp / "tree" / "hint_neurons.json").read_text())["shapley"] == "tree"


def test_checkpoints_keep_run_options_out(world, fitted, tmp_path):
    """A checkpoint's hyper-parameters override the CLI config on --ckpt_path: only what defines the classifiers
    may be stored, so `test --ckpt_path x --model.init_args.gt_mode union` is obeyed."""
    m, _ = fitted
    trainer = _trainer(max_epochs=0)
    trainer.strategy.connect(m)
    trainer.save_checkpoint(tmp_path / "h.ckpt")
    stored = torch.load(tmp_path / "h.ckpt", map_location="cpu", weights_only=False)
    hp = stored["hyper_parameters"]
    assert hp["layer"] == "features" and hp["alpha"] == 0.1
    assert not {"output_dir", "gt_mode", "box_mode", "shapley", "wsol_concept"} & set(hp)
    assert stored["state_dict"]["_extra_state"]["concepts"] == m.classifiers.concepts
    assert bool(stored["state_dict"]["fitted"])


def test_predict_and_test_need_trained_classifiers(world, tmp_path):
    with pytest.raises(ValueError, match="not trained; run `fit` first"):
        _trainer().predict(_method(world, tmp_path), _dm(world), return_predictions=False)


# ---------------------------------------------------------------------------------------------- DDP
class _OddVal(SyntheticBoxesDataModule):
    """The val split minus its last image: an odd count, so DDP's test sampler repeats one image (left out)."""

    def read_split(self, split):
        records = super().read_split(split)
        return records[:-1] if split == "val" and len(records) % 2 == 0 else records

@pytest.mark.ddp
@pytest.mark.slow
def test_one_and_two_processes_agree(world, fitted):
    m, tmp = fitted
    out = {}
    for devices in (1, 2):
        m.hparams.output_dir = str(tmp / f"p{devices}")
        kw = dict(devices=devices, callbacks=default_callbacks(m))
        if devices == 2:
            kw["strategy"] = "ddp_spawn"
        dm = _OddVal(str(world), image_size=32, batch_size=5)
        _trainer(**kw).predict(m, dm, return_predictions=False)
        _trainer(**kw).test(m, dm, verbose=False)
        out[devices] = ((tmp / f"p{devices}" / "hint_neurons.csv").read_text(),
                        json.loads((tmp / f"p{devices}" / "wsol.json").read_text())["rows"])
    assert out[1][0] == out[2][0]
    assert out[1][1] == out[2][1]
    n = len(_OddVal(str(world), image_size=32).dataset("val"))
    assert n % 2 == 1 and out[1][1][0]["images"] == n  # no image counted twice or left out
