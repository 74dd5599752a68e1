"""The NMF concept method end to end on a planted-unit classifier of the synthetic world.

The classifier (lit_explain/synth/planted_nmf.py) has one planted unit per colour and part; class c's logit is a
soft AND of the units of its rule (``red AND blue``), so its gradient reaches only those units. Each class's
components must then point along the planted units of its rule: the matching score (computed here from the
components by brute force: for each rule unit, the best cosine of any component with that unit's axis) must be
near 1, and no component may point along a colour outside the rule.
"""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Trainer

from callbacks import default_callbacks
from data_modules.broden import BrodenDataModule
from lit_explain.methods.nmf import NMFConcepts
from lit_explain.results import read_csv
from lit_explain.synth.planted_nmf import NMF_CLASSES, NMF_UNITS
from lit_explain.synth.world import generate_world

PLANTED = "python:lit_explain.synth.planted_nmf:planted_nmf_model"
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")


class WorldDM(BrodenDataModule):
    """The world's images as the image pool, with the world's class names."""

    def __init__(self, root: str, **kw):
        super().__init__(root=root, categories=None, batch_size=40, **kw)
        self.class_names = json.loads((__import__("pathlib").Path(root) / "world.json").read_text())["class_names"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("nmf") / "world", num_images=160, seed=2, classes=NMF_CLASSES)


def _method(world, tmp, **kw):
    args = dict(model=PLANTED, model_kwargs={"world_root": str(world), "stride": 4}, layer="features",
                components=4, images_per_class=30, prototypes=4, pairs=[["red_blue", "green_yellow"]],
                insertion_patch=[24, 24], shift_offsets=[0.0, 1.0, 5.0, 20.0], hyperplane_steps=50,
                output_dir=str(tmp / "out"), cache_dir=str(tmp / "cache"))
    args.update(kw)
    return NMFConcepts(**args)


def _fit(method, world, write=True, **kw):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, max_epochs=1, callbacks=default_callbacks(method) if write else [])
    args.update(kw)
    Trainer(**args).fit(method, datamodule=WorldDM(str(world), cache_dir=str(method.cache_dir)))
    return method


@pytest.fixture(scope="module")
def fitted(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nmf_fit")
    return _fit(_method(world, tmp), world), tmp


def test_components_load_on_the_planted_units_of_each_rule(fitted):
    m, tmp = fitted
    _assert_planted_match(m.components)  # (K, k, C)


def _assert_planted_match(H):
    for c, rule in enumerate(NMF_CLASSES.values()):
        own = [NMF_UNITS.index(n) for n in rule.split(" AND ")]
        other = [NMF_UNITS.index(n) for n in COLOURS if n not in rule.split(" AND ")]
        Hn = H[c] / H[c].norm(dim=1, keepdim=True).clamp(min=1e-12)  # cosine with unit axes = normalised loadings
        match = Hn[:, own].max(0).values  # best component per planted unit
        assert match.min() > 0.9, (rule, Hn)
        assert Hn[:, other].max() < 0.2, (rule, Hn)


@pytest.mark.slow
def test_deeplift_smoothgrad_weighting_finds_the_planted_units_too(world, tmp_path):
    m = _fit(_method(world, tmp_path, relevance="deeplift_smoothgrad", smoothgrad_samples=2, pairs=[]), world)
    _assert_planted_match(m.components)


def test_tables_pictures_and_tests(fitted):
    m, tmp = fitted
    out = tmp / "out"
    comps = read_csv(out / "components.csv")
    classes = read_csv(out / "classes.csv")
    assert len(comps) == 4 * len(NMF_CLASSES) and len(classes) == len(NMF_CLASSES)
    for r in comps:
        assert (out / r["prototype_picture"]).is_file()
        units = [int(u) for u in r["top_units"].split()]
        loads = [float(v) for v in r["loadings"].split()]
        h = m.components[int(r["class"]), int(r["component"])]
        assert units[0] == int(h.argmax()) and loads == sorted(loads, reverse=True)
        # the prototype crops excluding the class come from images predicted as another class
        preds = m.result.data["predictions"]
        assert all(int(preds[int(i)]) != int(r["class"]) for i in r["prototype_images_excl"].split())
    # the components' own cells, fed back as strips, predict the class (planted soft AND: every concept present)
    assert all(r["hit_all"] == "True" for r in classes), classes
    contrast = read_csv(out / "contrasts.csv")[0]
    assert contrast["status"] == "ok" and float(contrast["hyperplane_accuracy"]) > 0.9
    # moving red_blue's activations towards green_yellow raises p(green_yellow) to a swap
    assert float(contrast["p_b_max"]) > float(contrast["p_b_unshifted"]) and contrast["swap"] == "True"
    # inserting a green/yellow patch into red_blue images raises p(green_yellow) more than the blank control
    assert float(contrast["p_b_inserted"]) > float(contrast["p_b_control"])
    # "why red_blue rather than green_yellow": the main contrastive components load on red or blue
    rows = read_csv(out / "contrastive_components.csv")
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    # rows keyed by the pair's position among the configured pairs (one pair here)
    assert contrast["pair"] == "0" and contrast["pair_name"] == f"{contrast['name_a']} vs {contrast['name_b']}"
    assert all(r["pair"] == "0" and r["class_a"] == contrast["class_a"] for r in rows)
    main = sorted(rows, key=lambda r: -float(r["share"]))[:2]
    assert {NMF_UNITS[int(r["top_units"].split()[0])] for r in main} <= {"red", "blue"}


def test_report_shows_each_class_with_its_components_and_strips(fitted, tmp_path):
    """The fit's report.html in Chromium: every class with its components in order, the selected class's prototype
    strips drawn from disk and its prediction-from-components numbers."""
    from urllib.parse import quote

    from tests.viz.test_report import _browser, _check_loaded
    from tests.viz.test_view_report import _ViewPage

    _, tmp = fitted
    out = tmp / "out"
    comps, classes = read_csv(out / "components.csv"), read_csv(out / "classes.csv")
    pick = classes[1]
    page = _ViewPage(_browser(f"{(out / 'report.html').as_uri()}#v=classes&g={pick['class']}", tmp_path,
                              "--dump-dom"))
    _check_loaded(page)
    own = lambda c: sorted((r for r in comps if r["class"] == c), key=lambda r: int(r["component"]))  # noqa: E731
    assert page.listing() == [(c["class"], [r["component"] for r in own(c["class"])]) for c in classes]
    assert page.h2[0].strip() == f"class {pick['class']} {pick['class_name']}"
    imgs = page.find("img")
    assert [i["src"] for i in imgs] == [quote(r["prototype_picture"]) for r in own(pick["class"])]
    assert all(i["data-loaded"] == "1" for i in imgs) and len(imgs) == 4
    assert "hit_all\u2713" in {t for a, t in page.trs if not a}  # the class's prediction test, a hit


def test_interrupted_fit_resumes_per_class(world, tmp_path, monkeypatch, fitted):
    import lit_explain.methods.nmf as nmf_module

    real = nmf_module.batched_nmf
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return real(*a, **k)

    monkeypatch.setattr(nmf_module, "batched_nmf", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(_method(world, tmp_path, classes_per_pass=1, pairs=[]), world, write=False)
    monkeypatch.setattr(nmf_module, "batched_nmf", real)
    calls.clear()
    counted = []
    monkeypatch.setattr(nmf_module, "batched_nmf", lambda *a, **k: (counted.append(1), real(*a, **k))[1])
    m = _fit(_method(world, tmp_path, classes_per_pass=1, pairs=[]), world, write=False)
    assert m.resumed_classes == 2 and len(counted) == 2  # the two finished classes were read back, not refitted
    ref, _ = fitted  # one uninterrupted fit, all classes in one batch (float32: equal up to rounding)
    torch.testing.assert_close(m.components, ref.components, rtol=1e-4, atol=1e-6)
    # another version of the solver's code (a changed source digest) reuses none of the stored classes
    monkeypatch.setattr(nmf_module, "code_digest", lambda *modules: "another-version")
    counted.clear()
    m = _fit(_method(world, tmp_path, classes_per_pass=1, pairs=[]), world, write=False)
    assert m.resumed_classes == 0 and len(counted) == len(NMF_CLASSES)


def test_too_few_images_is_a_logged_skip(world, tmp_path, caplog):
    m = _method(world, tmp_path, images_per_class=3, pairs=[], min_images=4)
    with caplog.at_level("WARNING"):
        _fit(m, world, write=False)
    rows = m.result.tables["classes"]
    assert all("fewer than min_images=4" in r["status"] for r in rows)
    assert m.result.tables["components"] == []
    assert sum("skipped" in r.message for r in caplog.records) == len(NMF_CLASSES)


@pytest.mark.parametrize("bad", [{"components": 0}, {"images_per_class": 0}, {"relevance": "lrp"},
                                 {"shift_offsets": [1.0, 2.0]}, {"pairs": [["a", "a"]]}, {"insertion_patch": [0, 3]},
                                 {"hyperplane_fraction": 1.5}, {"tol": -1}, {"solver": "cd"}])
def test_bad_arguments_name_the_key(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        NMFConcepts(model=PLANTED, layer="features", **bad)


class TinyNet(torch.nn.Module):
    """conv (the probed layer, no ReLU: negative outputs) -> ReLU -> mean -> fc. ``zero`` zeroes the conv, so the
    layer's activations are all zero and every image is predicted as the class of the largest fc bias."""

    def __init__(self, zero: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.fc = torch.nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(4, 3, 3, 3, generator=g))
            self.conv.bias.copy_(torch.randn(4, generator=g))
            self.fc.weight.copy_(torch.randn(3, 4, generator=g))
            self.fc.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
            if zero:
                self.conv.weight.zero_()
                self.conv.bias.zero_()

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def tiny_net(zero: bool = False) -> TinyNet:
    return TinyNet(zero)


def test_all_zero_activations_are_a_logged_skip(world, tmp_path, caplog):
    m = _method(world, tmp_path, model="python:tests.methods.test_nmf:tiny_net", model_kwargs={"zero": True},
                layer="conv", pairs=[], components=2)
    with caplog.at_level("WARNING"):
        _fit(m, world, write=False)
    rows = {int(r["class"]): r["status"] for r in m.result.tables["classes"]}
    assert "all-zero activations" in rows[0]  # every image is predicted as class 0 (largest bias)
    assert "fewer than min_images" in rows[1] and "fewer than min_images" in rows[2]
    assert sum("skipped" in r.message for r in caplog.records) == 3
    assert m.result.tables["components"] == []


def test_negative_activations_raise_unless_shifted(world, tmp_path):
    kw = dict(model="python:tests.methods.test_nmf:tiny_net", model_kwargs={}, layer="conv", pairs=[], components=2,
              min_images=1)
    with pytest.raises(ValueError, match="negative: shift"):
        _fit(_method(world, tmp_path / "a", **kw), world, write=False)
    m = _fit(_method(world, tmp_path / "b", negative="shift", **kw), world, write=False)
    assert len(m.result.data["classes"]) >= 1 and bool((m.components >= 0).all())


@pytest.mark.ddp
@pytest.mark.slow
def test_one_and_two_processes_agree(world, tmp_path):
    kw = dict(classes_per_pass=1, insertion_patch=[16, 16])
    # Lightning gives each of the 2 processes cores / 2 = 1 intra-op thread; float32 CPU kernels sum in an order
    # that depends on the thread count, so the one-process run uses one thread too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fit(_method(world, tmp_path / "one", **kw), world)
    finally:
        torch.set_num_threads(threads)
    m = _method(world, tmp_path / "two", **kw)
    _fit(m, world, devices=2, strategy="ddp_spawn")
    for table in ("components", "classes", "contrasts"):
        one = (tmp_path / "one" / "out" / f"{table}.csv").read_text()
        two = (tmp_path / "two" / "out" / f"{table}.csv").read_text()
        assert one == two, table
    assert len(read_csv(tmp_path / "two" / "out" / "components.csv")) == 4 * len(NMF_CLASSES)


def test_prototype_cells_match_a_brute_force_ranking(fitted):
    """The streamed, chunk-merged top cells equal a sort of every pooled cell's cosine with each component."""
    import numpy as np

    m, tmp = fitted
    acts = torch.from_numpy(np.asarray(m.entry.acts, dtype=np.float32))
    cells = torch.nn.functional.avg_pool2d(acts, 2)  # (N, C, gh, gw)
    N, C, gh, gw = cells.shape
    vec = cells.permute(0, 2, 3, 1).reshape(-1, C)
    preds = m.result.data["predictions"]
    rows = read_csv(tmp / "out" / "components.csv")
    for r in rows:
        h = m.components[int(r["class"]), int(r["component"])].float()
        cos = (vec @ h) / (vec.norm(dim=1) * h.norm()).clamp(min=1e-12)
        for col, excl in (("prototype_images", False), ("prototype_images_excl", True)):
            score = cos.clone()
            if excl:
                own = (preds == int(r["class"]))[:, None].expand(N, gh * gw).reshape(-1)
                score[own] = -float("inf")
            # near-ties (pure single-unit cells have cosine 1 up to rounding) may order differently, so compare
            # scores: the listed images hold cells scoring within 1e-5 of the brute-force top 4, and the best
            # listed cosine is the brute-force maximum
            top4 = torch.sort(score, descending=True).values[:4]
            per_image = score.reshape(N, gh * gw).amax(1)
            listed = [int(v) for v in r[col].split()]
            assert len(listed) == 4 and all(float(per_image[i]) >= float(top4[-1]) - 1e-5 for i in listed)
            best = float(r["top_cosine_excl" if excl else "top_cosine"])
            assert abs(best - float(top4[0])) < 1e-5, (r["class"], col)
