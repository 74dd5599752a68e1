"""WWW end to end on planted truth: a planted-unit model (colour detectors) and an encoder pair whose geometry is
known (tests/methods/test_www_helpers.py); every number checked against a brute-force computation written here."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from sklearn.metrics import roc_auc_score

from callbacks import default_callbacks
from lit_explain.methods.www import WWW, load_ground_truth
from lit_explain.methods.www_encoders import OpenClipPair, load_vocabulary, read_vocabulary_file
from lit_explain.synth.planted import planted_model
from tests.methods.test_www_helpers import MEAN, MODEL, STD, UNITS, WORDS, ColourDiscs, HueEncoder, colour_images

N_IMAGES, N_EXAMPLES = 40, 6


def _files(tmp):
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (tmp / "gt.txt").write_text("\n".join(UNITS) + "\n")
    return tmp / "vocab.txt", tmp / "gt.txt"


def _method(tmp, **kw):
    vocab, gt = _files(tmp)
    args = dict(model=MODEL, model_kwargs={"units": UNITS, "stride": 4}, layer="features", heatmap_layer="features",
                encoder=HueEncoder(), vocabulary=str(vocab), ground_truth=str(gt), num_examples=N_EXAMPLES,
                cache_dir=str(tmp / "cache"), output_dir=str(tmp / "out"), num_pictures=1, batch_size=16)
    args.update(kw)
    return WWW(**args)


def _run(m, devices=1, n=N_IMAGES):
    kw = dict(strategy="ddp_spawn") if devices > 1 else {}
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                      devices=devices, callbacks=default_callbacks(m), **kw)
    trainer.predict(m, ColourDiscs(n=n), return_predictions=False)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def features_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("www_features")
    _run(_method(tmp))
    out = tmp / "out"
    return {"units": _csv(out / "www_units.csv"), "images": _csv(out / "www_images.csv"),
            "metrics": json.loads((out / "www_metrics.json").read_text())["results"], "out": out}


def _brute_force():
    """Per-image activations, logits and per-image gradient x activation of the planted model, by autograd."""
    x, y = colour_images(N_IMAGES)
    model = planted_model(units=UNITS, stride=4).eval()
    a = model.features(x).detach().requires_grad_(True)
    logits = model.fc(model.avgpool(a).flatten(1))
    grad = torch.stack([torch.autograd.grad(logits[i, y[i]], a, retain_graph=True)[0][i] for i in range(len(y))])
    phi = (grad * a).sum(dim=(2, 3)).detach()  # (N, U) Taylor scores for the true class
    return x, y, a.detach(), logits.detach(), phi, model


def test_planted_units_get_their_concept_with_brute_force_scores(features_run):
    rows = features_run["units"]
    assert [r["label"] for r in rows] == UNITS  # unit k detects colour k by construction
    x, y, a, _, _, _ = _brute_force()
    maxes = a.flatten(2).amax(2)  # (N, U)
    enc = HueEncoder()
    rgb = (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).clamp(0, 1)
    img = enc.encode_images(rgb)
    text = enc.encode_texts([f"a photo of a {w}" for w in WORDS])
    t0 = enc.encode_texts(["a photo of a"])[0]
    for k, row in enumerate(rows):
        top = sorted(range(N_IMAGES), key=lambda i: (-float(maxes[i, k]), i))[:N_EXAMPLES]
        assert row["top_examples"] == " ".join(map(str, top))
        # the full similarity matrix of the unit's examples, summed (what the authors' code materialises)
        scores = [sum(float(F.cosine_similarity(img[i], text[v], dim=0) - F.cosine_similarity(img[i], t0, dim=0))
                      for i in top) for v in range(len(WORDS))]
        best = max(scores)
        assert best > 0
        kept = sorted((v for v in range(len(WORDS)) if scores[v] >= 0.95 * best), key=lambda v: -scores[v])
        assert row["concepts"].split("; ") == [WORDS[v] for v in kept]
        got = [float(s) for s in row["concept_scores"].split("; ")]
        assert got == pytest.approx([scores[v] for v in kept], abs=1e-4)


def test_shapley_prior_and_reliability_against_autograd(features_run):
    x, y, a, logits, phi, model = _brute_force()
    rows = features_run["units"]
    for k, row in enumerate(rows):
        for c, name in enumerate(UNITS):
            expected = float(phi[y == c, k].mean())
            assert float(row[f"shapley_{name}"]) == pytest.approx(expected, abs=1e-6)
    # class and sample heatmaps of the top-3 neurons, upsampled one map at a time, and their cosine
    prior = torch.stack([phi[y == c].mean(0) for c in range(len(UNITS))])
    pred = logits.argmax(1)
    w = model.fc.weight
    rel = []
    for i in range(N_IMAGES):
        maps = [F.interpolate(a[i, k][None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
                for k in range(len(UNITS))]
        heat = []
        for weights in (prior[pred[i]], w[pred[i]] * a[i].mean(dim=(1, 2))):
            top = torch.topk(weights, 3).indices.tolist()
            total = sum(float(weights[k]) for k in top)
            heat.append(sum(float(weights[k]) / total * maps[k] for k in top) if total else torch.zeros(32, 32))
        rel.append(float(F.cosine_similarity(heat[0].flatten(), heat[1].flatten(), dim=0)))
    images = features_run["images"]
    assert [float(r["reliability"]) for r in images] == pytest.approx(rel, abs=1e-5)
    assert [int(r["prediction"]) for r in images] == pred.tolist()
    wrong = (pred != y).numpy()
    assert 0 < wrong.sum() < N_IMAGES
    m = features_run["metrics"]
    assert m["auroc_reliability"] == pytest.approx(roc_auc_score(wrong, -torch.tensor(rel).numpy()), abs=1e-9)
    msp = logits.softmax(1).amax(1)
    assert m["auroc_msp"] == pytest.approx(roc_auc_score(wrong, -msp.numpy()), abs=1e-9)
    assert m["error_rate"] == pytest.approx(wrong.mean())


def test_metrics_by_hand(features_run):
    rows, m = features_run["units"], features_run["metrics"]
    hits = [UNITS[k] in r["concepts"].split("; ") for k, r in enumerate(rows)]
    precision = [h / len(r["concepts"].split("; ")) for h, r in zip(hits, rows)]
    assert m["hit_rate"] == pytest.approx(sum(hits) / 4) and m["recall"] == pytest.approx(sum(hits) / 4)
    assert m["precision"] == pytest.approx(sum(precision) / 4)
    assert m["neurons"] == 4
    assert (features_run["out"] / "units" / "unit_0000.png").is_file()
    assert "unit_0000.png" in (features_run["out"] / "report.html").read_text()


def test_autograd_prior_equals_brute_force(tmp_path):
    """shapley='autograd' (the path of ViT / non-linear heads): one backward per batch, same numbers."""
    m = _method(tmp_path, shapley="autograd")
    _run(m)
    assert m.modes == {"features": "autograd"}
    _, y, _, _, phi, _ = _brute_force()
    rows = _csv(tmp_path / "out" / "www_units.csv")
    for k, row in enumerate(rows):
        for c, name in enumerate(UNITS):
            assert float(row[f"shapley_{name}"]) == pytest.approx(float(phi[y == c, k].mean()), abs=1e-6)


def test_class_logit_neurons_use_their_class_heatmap(tmp_path):
    """layer = fc (the logits): the Shapley prior is exact without gradients, Phi[c, k] = [c = k] mean logit_c."""
    m = _method(tmp_path, layer="fc", minor_concepts=True)
    _run(m)
    assert m.modes == {"fc": "output", "features": "linear"}
    rows = _csv(tmp_path / "out" / "www_units.csv")
    assert [r["label"] for r in rows] == UNITS
    assert all(r["minor_concepts"] == "" for r in rows)  # a 1x1 layer has no crops
    x, y, _, logits, _, _ = _brute_force()
    for k, row in enumerate(rows):
        for c, name in enumerate(UNITS):
            expected = float(logits[y == c, c].mean()) if c == k else 0.0
            assert float(row[f"shapley_{name}"]) == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------------- local files
def test_ground_truth_of_world_rules_and_label_lines(tmp_path):
    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text(json.dumps({"concepts": [{"name": "red"}, {"name": "blue"}], "classes": [
        {"id": 1, "name": "indoor_no_circle", "rule": "indoor AND NOT circle"},
        {"id": 0, "name": "warm", "rule": "(yellow OR orange) AND triangle"}]}))
    assert load_ground_truth(world, 3) == [["yellow", "orange", "triangle"], ["indoor"], None]
    lines = tmp_path / "labels.txt"
    lines.write_text("tench, Tinca tinca\n\ngoldfish\n")
    assert load_ground_truth(lines, 4) == [["tench", "Tinca tinca"], None, ["goldfish"], None]
    assert load_vocabulary(world) == ["red", "blue"]
    broden = tmp_path / "broden"
    broden.mkdir()
    (broden / "label.csv").write_text("number,name,category\n0,-,-\n1,sky-s,scene\n2,wall,object\n3,street-s,scene\n"
                                      "4,street,object\n5,stained_glass,object\n")
    assert load_vocabulary(broden) == ["sky", "wall", "street-s", "street", "stained glass"]


def test_vocabulary_file_errors_name_file_and_line(tmp_path):
    dup = tmp_path / "dup.txt"
    dup.write_text("red\nblue\nred\n")
    with pytest.raises(ValueError, match=r"dup.txt:3: 'red' is already listed on line 1"):
        _method(tmp_path / "a", vocabulary=str(dup))
    gap = tmp_path / "gap.txt"
    gap.write_text("red\n\nblue\n\n")
    with pytest.raises(ValueError, match=r"gap.txt:2: empty line"):
        read_vocabulary_file(gap)
    ok = tmp_path / "ok.txt"
    ok.write_text("# colours\nred\nblue\n\n")
    assert read_vocabulary_file(ok) == ["red", "blue"]
    syn = tmp_path / "imagenet.txt"
    syn.write_text("tench, Tinca tinca\ncrane\ncrane,  bird\n")
    assert read_vocabulary_file(syn, synonyms=True) == ["tench", "Tinca tinca", "crane", "bird"]
    assert _method(tmp_path / "c", vocabulary=str(syn), vocabulary_synonyms=True).vocabulary[:2] == ["tench",
                                                                                                   "Tinca tinca"]
    syn.write_text("tench,,Tinca tinca\n")
    with pytest.raises(ValueError, match=r"imagenet.txt:1: empty synonym"):
        read_vocabulary_file(syn, synonyms=True)
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        _method(tmp_path / "b", vocabulary=str(tmp_path / "nope.txt"))


def test_concept_without_tokens_is_refused(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("red\n...\nblue\n")
    m = _method(tmp_path, vocabulary=str(bad))
    with pytest.raises(ValueError, match=r"have no word tokens for the encoder: \['\.\.\.'\]"):
        m.check_vocabulary()


def test_heatmap_layer_without_a_grid_is_refused(tmp_path):
    m = _method(tmp_path, heatmap_layer="avgpool")
    with pytest.raises(ValueError, match="heatmap_layer 'avgpool' has 1x1 spatial positions; heatmaps need at least 2"):
        _run(m, n=8)


@pytest.mark.parametrize("kw, message", [
    (dict(encoder=None), "needs an image/text encoder pair"),
    (dict(encoder=object()), r"lacks \['encode_images', 'encode_texts', 'token_counts'\]"),
    (dict(alpha=0.0), r"alpha must be in \(0, 1\]"),
    (dict(minor_alpha=1.5), r"minor_alpha must be in \(0, 1\]"),
    (dict(num_examples=0), "num_examples must be >= 1"),
    (dict(top_neurons=0), "top_neurons must be >= 1"),
    (dict(template="a photo of a"), "template must contain one '{}'"),
    (dict(shapley="exact"), "shapley must be one of"),
    (dict(heatmap_percentile=1.0), r"heatmap_percentile must be in \[0, 1\)"),
    (dict(input_std=(1, 0, 1)), "input_std must be 3 per-channel values > 0"),
    (dict(vocabulary=""), "vocabulary must name a word-list file"),
])
def test_constructor_arguments_are_checked(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        _method(tmp_path, **kw)


def test_clip_file_of_another_architecture(tmp_path):
    from lit_explain.models.clip_files import TINY_CLIP_CONFIG, build_clip, save_clip

    folder = save_clip(build_clip(), TINY_CLIP_CONFIG, tmp_path / "clip")
    pair = OpenClipPair(str(folder))
    assert pair.encode_texts(["a photo of a red"]).shape == (1, TINY_CLIP_CONFIG["embed_dim"])
    assert pair.encode_images(torch.rand(2, 3, 80, 64)).shape == (2, TINY_CLIP_CONFIG["embed_dim"])
    assert pair.token_counts(["red", "stained glass"]) == [1, 2]
    cfg_file = folder / "open_clip_config.json"
    meta = json.loads(cfg_file.read_text())
    meta["model_cfg"]["vision_cfg"]["width"] = 32
    cfg_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds weights of another CLIP architecture"):
        OpenClipPair(str(folder)).encode_texts(["red"])
    with pytest.raises(FileNotFoundError, match="CLIP model not found"):
        OpenClipPair(str(tmp_path / "missing")).encode_texts(["red"])


def test_peak_crops_by_hand():
    from lit_explain.methods.www_crops import crop_resize, peak_cells, peak_crop_boxes

    maps = torch.zeros(3, 8, 8)
    maps[0, 0, 0] = 1
    maps[1, 3, 4] = maps[1, 5, 1] = 2  # tie: the first in row-major order
    maps[2, 7, 7] = 1
    cells = peak_cells(maps)
    assert cells.tolist() == [[0, 0], [3, 4], [7, 7]]
    boxes = peak_crop_boxes(cells, (8, 8), (32, 32), 0.5)
    # centres (2, 2), (14, 18), (30, 30) in pixels; side 16, shifted inside the 32 x 32 image
    assert boxes.tolist() == [[0, 0, 16, 16], [10, 6, 26, 22], [16, 16, 32, 32]]
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    crops = crop_resize(images, torch.tensor([1, 0, 1]), boxes, (32, 32))
    for j, (img, (x0, y0, x1, y1)) in enumerate(zip([1, 0, 1], boxes.long().tolist())):
        expected = F.interpolate(images[img:img + 1, :, y0:y1, x0:x1], size=(32, 32), mode="bilinear",
                                 align_corners=False)[0]
        # inside the crop, the sliced crop upsampled; its outer ring blends in the image pixels beyond the box
        assert torch.allclose(crops[j][:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-6)
