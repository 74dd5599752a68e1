"""CompositionalExplanations end to end on the miniature Broden, against dense brute-force references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from callbacks import default_callbacks

from data_modules.broden import BrodenDataModule
from lit_explain.activations.clusters import activation_ranges
from lit_explain.concepts.formulas import parse
from lit_explain.methods.compositional import CompositionalExplanations
from lit_explain.methods.netdissect import NetDissect
from lit_explain.results import read_csv
from tests.concepts.test_search import dense_eval, dense_iou, reference_beam_search
from tests.fixtures.broden_writer import make_miniature
from tests.methods.tiny_models import tiny_cnn

MODEL = "python:tests.methods.tiny_models:tiny_cnn"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def miniature(tmp_path):
    make_miniature(tmp_path / "broden")
    return tmp_path


def _run(root: Path, out: str = "out", devices: int = 1, cls=CompositionalExplanations, callbacks=(), **kw) -> Path:
    dm = BrodenDataModule(root=str(root / "broden"), batch_size=4, cache_dir=str(root / "cache"))
    kw.setdefault("num_pictures", 0)
    method = cls(model=MODEL, layer="features", output_dir=str(root / out), cache_dir=str(root / "cache"), **kw)
    extra = dict(strategy="ddp_spawn") if devices > 1 else {}
    Trainer(accelerator="cpu", devices=devices, logger=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[*callbacks, *default_callbacks(method, callbacks)], **extra).predict(method, datamodule=dm, return_predictions=False)
    return root / out


def _rows(out: Path) -> list[dict]:
    """Result rows with full float precision (the JSON; the CSV rounds to 8 digits)."""
    rows = json.loads((out / "explanations.json").read_text())["rows"]
    for r in rows:
        for k in ("range_lo", "range_hi", "threshold"):
            if isinstance(r.get(k), str):
                r[k] = float(r[k])
    return rows


def _dense(root: Path, model: torch.nn.Module | None = None):
    """Activations straight from the model, dense concept masks straight from the annotations."""
    dm = BrodenDataModule(root=str(root / "broden"))
    dm.setup("predict")
    ds = dm.dataset
    vocab = ds.vocabulary
    model = (model or tiny_cnn()).eval()
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    with torch.no_grad():
        acts = model.features(model.relu1(model.conv1(images))).half()  # the cache stores float16
    n = acts.shape[0]
    sh, sw = ds.mask_shape
    masks = torch.zeros(n, len(vocab), sh * sw, dtype=torch.bool)
    for i in range(n):
        planes, image_labels = ds.annotations(i)
        for c, lab in enumerate(vocab.label_ids):
            if len(planes):
                masks[i, c] = torch.from_numpy((np.asarray(planes) == lab).any(0).reshape(-1))
            if lab in image_labels:
                masks[i, c] = True
    up = F.interpolate(acts.float(), size=(sh, sw), mode="bilinear", align_corners=False).flatten(2)
    return acts, up, masks, vocab


def test_one_cluster_length_one_is_netdissect(miniature):
    q = 0.2
    nd = _rows(_run(miniature, out="nd", cls=NetDissect, quantile=q))
    ce = _rows(_run(miniature, out="ce", num_clusters=1, length=1, quantile=q))
    assert [r["unit"] for r in nd] == [r["unit"] for r in ce]
    for a, b in zip(nd, ce):
        assert float(a["iou"]) == pytest.approx(float(b["iou"]), abs=1e-12)
        if float(a["iou"]) > 0:
            assert a["label"] == b["label"]
        assert float(a["threshold"]) == float(b["range_lo"]) and b["range_hi"] == math.inf


@pytest.mark.parametrize("clusters,length", [(1, 3), (3, 2)])
def test_every_unit_range_matches_a_dense_reference_search(miniature, clusters, length):
    rows = _rows(_run(miniature, num_clusters=clusters, length=length, quantile=0.2))
    acts, up, masks, vocab = _dense(miniature)
    u_count = acts.shape[1]
    seen = set()
    for r in rows:
        u, k = int(r["unit"]), int(r["cluster"])
        seen.add(u)
        if clusters == 1:
            thr = float(np.quantile(acts[:, u].double().numpy().reshape(-1), 0.8))
            assert float(r["range_lo"]) == pytest.approx(thr, abs=1e-7)
            lo, hi = torch.tensor(float(r["range_lo"]), dtype=torch.float32), math.inf
        else:  # independent clustering of the unit's values, then the k-th range
            ranges = activation_ranges(acts[:, u].double(), k=clusters)
            assert (float(r["range_lo"]), float(r["range_hi"])) == ranges[k]
            lo, hi = torch.tensor(ranges[k][0], dtype=torch.float32), torch.tensor(ranges[k][1], dtype=torch.float32)
        a = (up[:, u] > lo) & (up[:, u] < hi)
        ref_f, ref_iou = reference_beam_search(masks, a, length=length, beam=5)
        assert float(r["iou"]) == pytest.approx(ref_iou, abs=1e-12), r
        if ref_f is not None:
            f = parse(r["label"], vocab)
            assert f.key == ref_f.key
            # metric columns against dense masks
            fm = dense_eval(f, masks)
            inter = (fm & a).sum(1)
            assert float(r["activation_coverage"]) == pytest.approx(float(inter.sum() / a.sum()))
            assert float(r["label_coverage"]) == pytest.approx(float(inter.sum() / fm.sum()))
            det = float((inter > 0).sum()) / float((fm.sum(1) > 0).sum())
            assert float(r["samples_coverage"]) == pytest.approx(det)
            assert float(r["null_shuffled_iou"]) >= 0.0
        else:
            assert r["label"] == ""
    assert seen == set(range(u_count))
    if clusters > 1:
        assert sum(int(r["unit"]) == 0 for r in rows) >= 2  # several ranges per unit


class _Interrupted(Exception):
    pass


def test_resume_reuses_finished_jobs_and_gives_the_same_table(miniature, monkeypatch):
    import lit_explain.methods.compositional as mod
    import lit_explain.methods.null_baselines as nulls

    clean = (_run(miniature, out="clean", num_clusters=2, length=2, quantile=0.2) / "explanations.csv").read_bytes()
    calls = {"n": 0}
    real = mod.beam_search

    def crashing(*a, **kw):  # an interruption in the middle of the job list
        calls["n"] += 1
        if calls["n"] > 5:
            raise _Interrupted()
        return real(*a, **kw)

    monkeypatch.setattr(mod, "beam_search", crashing)
    monkeypatch.setattr(nulls, "beam_search", crashing)  # the shuffled-labels baseline searches too
    with pytest.raises(_Interrupted):
        _run(miniature, out="x", num_clusters=2, length=2, quantile=0.2)
    assert not (miniature / "x" / "explanations.csv").exists()
    finished = list((miniature / "x" / "jobs").glob("*.json"))
    assert 1 <= len(finished) < 12  # searches and null baselines interleave: 2 calls per job
    calls["n"] = -10**9  # no more interruptions; count the searches of the resumed run
    counting = lambda *a, **kw: (calls.__setitem__("r", calls.get("r", 0) + 1), real(*a, **kw))[1]  # noqa: E731
    monkeypatch.setattr(mod, "beam_search", counting)
    monkeypatch.setattr(nulls, "beam_search", counting)
    resumed = (_run(miniature, out="x", num_clusters=2, length=2, quantile=0.2) / "explanations.csv").read_bytes()
    assert resumed == clean
    total_jobs = len(read_csv(miniature / "x" / "explanations.csv"))
    assert calls["r"] == 2 * (total_jobs - len(finished))  # finished jobs were not searched again
    # another version of the search code (a changed source digest) reuses none of the stored jobs
    monkeypatch.setattr(mod, "code_digest", lambda *modules: "another-version")
    calls["r"] = 0
    _run(miniature, out="x", num_clusters=2, length=2, quantile=0.2)
    assert calls["r"] == 2 * total_jobs


@pytest.mark.ddp
@pytest.mark.slow
def test_two_processes_give_the_same_table(miniature):
    kw = dict(num_clusters=3, length=2, quantile=0.2, null_baselines=["shuffled_labels", "random_model"])
    one = (_run(miniature, out="one", **kw) / "explanations.csv").read_bytes()
    two = (_run(miniature, out="two", devices=2, **kw) / "explanations.csv").read_bytes()
    assert one == two


def test_random_model_baseline_equals_a_dense_search_on_the_random_copy(miniature):
    from lit_explain.models.random_copy import random_init_copy

    rows = _rows(_run(miniature, num_clusters=2, length=2, quantile=0.2, null_baselines=["random_model"], seed=5))
    random_net = random_init_copy(tiny_cnn(), MODEL, seed=5)
    acts, up, masks, _ = _dense(miniature, random_net)
    trained_acts = _dense(miniature)[0]
    assert not torch.equal(acts, trained_acts)
    checked = 0
    for r in rows:
        if not r["label"]:
            continue
        u, k = int(r["unit"]), int(r["cluster"])
        ranges = activation_ranges(acts[:, u].double(), k=2)  # the random unit's own clusters
        if k >= len(ranges):
            assert r["null_random_iou"] == 0.0 and r["null_random_label"] == ""
            continue
        lo, hi = (torch.tensor(v, dtype=torch.float32) for v in ranges[k])
        _, ref_iou = reference_beam_search(masks, (up[:, u] > lo) & (up[:, u] < hi), length=2, beam=5)
        assert r["null_random_iou"] == pytest.approx(ref_iou, abs=1e-12), r
        checked += 1
    assert checked >= 4
    assert any(abs(r["null_random_iou"] - r["iou"]) > 1e-6 for r in rows)


def test_bad_arguments_raise(miniature):
    with pytest.raises(ValueError, match="scorer"):
        CompositionalExplanations(model=MODEL, layer="features", scorer="fastest")
    with pytest.raises(ValueError, match="null baselines"):
        CompositionalExplanations(model=MODEL, layer="features", null_baselines=["random_labels"])
    with pytest.raises(ValueError, match="num_clusters"):
        CompositionalExplanations(model=MODEL, layer="features", num_clusters=0)
    for kwargs, accepted in [(dict(first_beam_size=0), "first_beam_size must be an integer >= 1 or None"),
                             (dict(beam_size=0), "beam_size must be an integer >= 1"),
                             (dict(candidate_limit=-2), "candidate_limit must be an integer >= 0 or None"),
                             (dict(length=0), "length must be an integer >= 1"),
                             (dict(complexity_penalty=-1.0), "complexity_penalty must be a finite number > 0"),
                             (dict(cluster_method="kmeans"), "cluster_method must be one of"),
                             (dict(drop_zeros="yes"), "drop_zeros must be 'auto', true or false"),
                             (dict(detacc_length=True, max_detacc_length=2), "max_detacc_length must be >= length"),
                             (dict(masking_batch_size=0), "masking_batch_size must be >= 1")]:
        with pytest.raises(ValueError, match=accepted):
            CompositionalExplanations(model=MODEL, layer="features", **kwargs)


def test_detacc_optimal_length_columns(miniature):
    rows = _rows(_run(miniature, num_clusters=1, length=2, quantile=0.2, detacc_length=True, max_detacc_length=4,
                      null_baselines=[]))
    for r in rows:
        if not r["label"]:
            continue
        assert 2 <= r["detacc_length"] <= 4 or r["detacc_label"] == r["label"]
        # it starts from the fixed-length answer and only moves to a formula with a higher DetAcc
        assert r["detacc"] >= r["samples_coverage"] - 1e-12
        assert "null_shuffled_iou" not in r


def test_range_importance_and_concept_masking_match_direct_computation(miniature):
    from lit_explain.metrics.functional.concept_masking import concept_masking_inputs

    out = _run(miniature, num_clusters=2, length=2, quantile=0.2, null_baselines=[], range_importance=True,
               concept_masking=True, masking_batch_size=4)
    rows = _rows(out)
    acts, up, masks, vocab = _dense(miniature)
    dm = BrodenDataModule(root=str(miniature / "broden"))
    dm.setup("predict")
    images = torch.stack([dm.dataset[i]["image"] for i in range(len(dm.dataset))])
    model = tiny_cnn().eval()
    # range importance: zero the k-th range of every unit inside the network, count changed predictions
    with torch.no_grad():
        base = model(images).argmax(1)
        feats = model.features(model.relu1(model.conv1(images)))
        for k in range(2):
            lo = torch.tensor([next(r["range_lo"] for r in rows if r["unit"] == u and r["cluster"] == k)
                               for u in range(acts.shape[1])]).view(1, -1, 1, 1).float()
            hi = torch.tensor([next(r["range_hi"] for r in rows if r["unit"] == u and r["cluster"] == k)
                               for u in range(acts.shape[1])]).view(1, -1, 1, 1).float()
            masked = torch.where((feats > lo) & (feats < hi), torch.zeros(()), feats)
            changed = (model.fc(model.flatten(model.pool(masked))).argmax(1) != base).float().mean()
            for r in rows:
                if r["cluster"] == k:
                    assert r["range_importance"] == pytest.approx(float(changed))
    # concept masking of one explanation, recomputed from the documented seed
    r = next(r for r in rows if r["label"])
    f = parse(r["label"], vocab)
    u, k = r["unit"], r["cluster"]
    present = torch.nonzero(dense_eval(f, masks).any(1)).flatten()
    g = torch.Generator().manual_seed(0 * 1000003 + u * 101 + k)
    cos = []
    for chunk in present.split(4):
        m = dense_eval(f, masks)[chunk].view(len(chunk), 1, *dm.dataset.mask_shape)
        x = concept_masking_inputs(images[chunk], m, g)
        with torch.no_grad():
            after = model.features(model.relu1(model.conv1(x)))[:, u].flatten(1).double()
        before = acts[chunk, u].float().flatten(1).double()
        b = (before > r["range_lo"]) & (before < r["range_hi"])
        cos += F.cosine_similarity(before * b, after * b, dim=1, eps=1e-8).tolist()
    assert r["concept_masking"] == pytest.approx(sum(cos) / len(cos), abs=1e-6)
