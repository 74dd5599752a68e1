"""LaViSE explainer: network cut, training step, feature cache, filter explanation, outputs, bad inputs.

Uses the planted colour world of :mod:`tests.methods.lavise_fakes`: channel c of ``layer1`` detects colour c, so
every filter's correct name is known. Reference values are computed independently (dense loops, numpy).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything

from callbacks import default_callbacks
from callbacks.recall import FilterRecall
from lit_explain.methods.lavise import LaViSE
from lit_explain.models.explainer_head import CutBackbone
from tests.methods.lavise_fakes import ColorSquares, HashEncoder, color_net

COLOR_NET = "python:tests.methods.lavise_fakes:color_net"


pytestmark = pytest.mark.usefixtures("one_thread")


def make_module(**kw) -> LaViSE:
    args = dict(model=COLOR_NET, layer="layer1", layer_classifier="fc", text_encoder=HashEncoder(32),
                input_size=32, lr=3e-3, top_images=6, ks=[1, 5, 10])
    args.update(kw)
    return LaViSE(**args)


def make_trainer(tmp_path=None, **kw) -> Trainer:
    args = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)
    args.update(kw)
    args["callbacks"] = [*args.get("callbacks", []), *default_callbacks(LaViSE, args.get("callbacks", []))]
    return Trainer(**args)


# ---------------------------------------------------------------------------------------------- network cut
def test_cut_backbone_resnet_layer3_and_layer4():
    import torchvision

    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    for layer, channels in (("layer3", 256), ("layer4", 512)):
        cut = CutBackbone(net, layer, "fc")
        assert cut.pool_names == ("avgpool",)  # layer4 (for layer3) is skipped, avgpool kept
        (c, h, w), d = cut.shapes(64)
        assert (c, d) == (channels, channels)  # d from the dummy forward, not fc.in_features (512)
        with torch.no_grad():
            ref = net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
            ref = net.layer2(ref)
            ref = net.layer3(ref) if layer == "layer3" else net.layer4(net.layer3(ref))
            torch.testing.assert_close(cut.features(x), ref)
            torch.testing.assert_close(cut.pool(ref), ref.mean((2, 3)))
    assert not any(p.requires_grad for p in net.parameters())
    assert not net._forward_hooks and not net.layer3._forward_hooks  # no hook left behind (picklable)


def test_cut_backbone_bad_names():
    net = color_net()
    with pytest.raises(ValueError, match="layer1"):
        CutBackbone(net, "layr1", "fc")
    with pytest.raises(ValueError, match="must come before"):
        CutBackbone(net, "layer2", "conv1")
    with pytest.raises(ValueError, match="top-level"):
        CutBackbone(net, "layer1", "layer1.0")


def test_head_width_for_a_layer_wider_than_the_classifier_input():
    m = make_module(layer="layer1")  # 12 channels
    assert m.head.net[0].num_features == 12 and m.head.net[-1].out_features == 32
    m2 = make_module(layer="layer2")  # 24 channels
    assert m2.head.net[0].num_features == 24


# ---------------------------------------------------------------------------------------------- fit
def test_training_step_loss_matches_independent_computation():
    seed_everything(0)
    dm = ColorSquares(num_train=16, num_val=4, num_predict=4, unseen=[10, 11])
    m = make_module(mask_resize="area")
    trainer = make_trainer(max_epochs=0)
    trainer.fit(m, dm)  # runs setup: label embeddings from the data module
    batch = next(iter(dm.train_dataloader()))
    m.eval()  # no dropout, so the head is deterministic
    with torch.no_grad():
        loss, pred = m._step(batch, "train")
        net = m.backbone.model
        feats = net.layer1(batch["image"])
        mask = F.adaptive_avg_pool2d(batch["mask"], feats.shape[-2:])
        ref_pred = m.head((feats * mask).mean((2, 3)))
    torch.testing.assert_close(pred, ref_pred)
    emb = torch.as_tensor(HashEncoder(32).encode([f"color{c}" for c in range(10)]))  # seen labels only
    rows = []
    for i in range(len(pred)):
        s = F.cosine_similarity(pred[i][None], emb).tolist()
        t = batch["target"][i, :10]
        pos = [s[c] for c in range(10) if t[c] > 0]
        if pos:
            p = sum(pos) / len(pos)
            rows.append(sum(max(0.0, 1.0 - p + s[c]) for c in range(10) if t[c] == 0))
    assert loss.item() == pytest.approx(sum(rows) / len(rows), rel=1e-5)


def test_frozen_backbone_and_bn_modes():
    m = make_module(head_bn_eval=True)
    m.train()
    assert not m.backbone.training and not m.backbone.model.training
    assert [b.training for b in m.head.net if isinstance(b, torch.nn.BatchNorm1d)] == [False, False]
    assert [d.training for d in m.head.net if isinstance(d, torch.nn.Dropout)] == [True, True]
    m2 = make_module(head_bn_eval=False)
    m2.train()
    assert all(b.training for b in m2.head.net if isinstance(b, torch.nn.BatchNorm1d))


class _Counting:
    """Counts images passed through the backbone."""

    def __init__(self, module):
        self.n = 0
        orig = module.backbone.features

        def features(x):
            self.n += x.shape[0]
            return orig(x)

        module.backbone.features = features


def test_feature_cache_skips_the_backbone_and_matches_uncached_training():
    dm = ColorSquares(num_train=24, num_val=8, num_predict=4, unseen=[])
    heads, counts = {}, {}
    for cache in (False, True):
        seed_everything(1)
        m = make_module(cache_features=cache)
        counter = _Counting(m)
        make_trainer(max_epochs=3).fit(m, dm)
        heads[cache] = torch.cat([p.detach().flatten() for p in m.head.parameters()])
        counts[cache] = counter.n
    n_train, n_val = len(dm.train_set), len(dm.val_set)
    assert counts[False] == 3 * (n_train + n_val)
    assert counts[True] == n_train + n_val  # each sample once
    # float16 storage of the features is the only difference
    torch.testing.assert_close(heads[True], heads[False], atol=2e-3, rtol=1e-2)


def test_cache_refused_with_augmentation():
    dm = ColorSquares(num_train=8, num_val=4, num_predict=4, augment=True)
    with pytest.raises(ValueError, match="augment"):
        make_trainer(max_epochs=1).fit(make_module(cache_features=True), dm)
    m = make_module(cache_features=None)  # auto: off with augmentation
    counter = _Counting(m)
    make_trainer(max_epochs=2, limit_val_batches=0).fit(m, dm)
    assert counter.n == 2 * len(dm.train_set)


# ---------------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LaViSE explainer trained on the planted colour world (10 seen, 2 unseen colours), and its predict run."""
    torch.set_num_threads(1)
    seed_everything(0)
    out = tmp_path_factory.mktemp("lavise_out")
    dm = ColorSquares(num_train=160, num_val=32, num_predict=60, unseen=[10, 11], batch_size=32)
    m = make_module(output_dir=str(out), attention="attention_paper")
    trainer = make_trainer(max_epochs=12, enable_checkpointing=True, default_root_dir=str(out / "fit"))
    trainer.fit(m, dm)
    ptrainer = make_trainer()
    ptrainer.predict(m, dm, return_predictions=False)
    recall = next(c for c in ptrainer.callbacks if isinstance(c, FilterRecall)).results
    # no monitor: the checkpoint callback keeps the last epoch, i.e. the weights of the in-memory module
    return {"module": m, "dm": dm, "out": out, "recall": recall, "ckpt": trainer.checkpoint_callback.best_model_path,
            "val": {k: float(v) for k, v in trainer.callback_metrics.items()}}


def _dense_activations(module, dm):
    acts = []
    with torch.no_grad():
        for batch in dm.predict_dataloader():
            acts.append(module.backbone.model.layer1(batch["image"]))
    return torch.cat(acts)  # (N, U, h, w)


def test_thresholds_and_top_images_equal_dense_computation(trained):
    m, dm = trained["module"], trained["dm"]
    ex = m.explanations
    acts = _dense_activations(m, dm)
    n, u = acts.shape[:2]
    ref_thr = np.quantile(acts.permute(1, 0, 2, 3).reshape(u, -1).double().numpy(), 0.995, axis=1)
    np.testing.assert_allclose(ex.thresholds.numpy(), ref_thr, rtol=0, atol=1e-6)
    maxes = acts.flatten(2).amax(-1)  # (N, U)
    for unit in range(u):
        order = sorted(range(n), key=lambda i: (-maxes[i, unit].item(), i))[: ex.top_index.shape[1]]
        assert ex.top_index[unit].tolist() == order
    assert ex.num_images == n


def test_ground_truth_of_pairs_equals_dense_loop(trained):
    m, dm = trained["module"], trained["dm"]
    ex = m.explanations
    acts = _dense_activations(m, dm)
    checked = 0
    for unit in range(len(ex.units)):
        for j in range(ex.top_index.shape[1]):
            if not ex.valid[unit, j]:
                continue
            item = dm.predict_set[int(ex.top_index[unit, j])]
            up = F.interpolate(acts[int(ex.top_index[unit, j]), unit][None, None], size=item["image"].shape[-2:],
                               mode="bilinear", align_corners=False)[0, 0]
            region = up > ex.thresholds[unit]
            ref = set()
            for mask, lab in zip(item["masks"], item["mask_labels"].tolist()):
                inter, union = (region & mask).sum().item(), (region | mask).sum().item()
                if union and inter / union > 0.04:
                    ref.add(lab)
            assert set(torch.nonzero(ex.ground_truth[unit, j]).flatten().tolist()) == ref
            checked += 1
    assert checked > 20


def test_trained_explainer_names_the_planted_filters(trained):
    """Proof on planted units: the explanation of filter c is colour c, recall far above the baselines."""
    ex = trained["module"].explanations
    first = ex.ranked.words[:, 0].tolist()
    named = [ex.vocabulary[w] for w in first]
    correct = sum(named[c] == f"color{c}" for c in range(10))  # the seen colours
    assert correct >= 9, named
    r = trained["recall"]
    assert r["lavise"]["pairs/seen"] >= 20
    assert r["lavise"]["recall@1/seen"] >= 0.85
    assert r["lavise"]["recall@1/seen"] > r["random"]["recall@1/seen"] + 0.5
    assert r["lavise"]["recall@5/seen"] > r["random"]["recall@5/seen"] + 0.3
    assert r["lavise"]["recall@1"] > r["frequency"]["recall@1"] + 0.4
    # hash embeddings carry no meaning, so unseen colours cannot be named: the test would catch a leak
    assert r["lavise"]["recall@1/unseen"] <= 0.2
    assert trained["val"]["val/recall@1/seen"] >= 0.8


def test_outputs_written(trained):
    out = trained["out"]
    ex = trained["module"].explanations
    with open(out / "filters.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["filter", "rank", "word", "score", "seen"]
    assert {int(r["filter"]) for r in rows} == set(range(12))
    first = {int(r["filter"]): r for r in rows if r["rank"] == "1"}
    assert first[3]["word"] == ex.vocabulary[int(ex.ranked.words[3, 0])]
    assert first[3]["seen"] == "seen" and first[3]["category"] == first[3]["word"]
    meta = json.loads((out / "filters.json").read_text())
    assert meta["attention"] == "attention_paper" and len(meta["rows"]) == len(rows)
    assert [lab["seen"] for lab in meta["labels"]] == [True] * 10 + [False] * 2
    rec = json.loads((out / "recall.json").read_text())
    assert rec["results"]["lavise"]["recall@5"] == pytest.approx(trained["recall"]["lavise"]["recall@5"])
    assert len(list((out / "filters").glob("filter_*.png"))) == 12
    assert (out / "pairs.csv").is_file()


def test_predict_from_checkpoint_matches_and_is_deterministic(trained, tmp_path):
    m0, dm = trained["module"], trained["dm"]
    hparams = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["layer"] == "layer1" and "units" not in hparams and "attention" not in hparams
    m = LaViSE.load_from_checkpoint(trained["ckpt"], text_encoder=HashEncoder(32), output_dir=str(tmp_path),
                                    attention="attention_paper", top_images=6, ks=[1, 5, 10])
    assert m.label_names == [f"color{c}" for c in range(12)]
    trainer = make_trainer()
    trainer.predict(m, dm, return_predictions=False)
    a, b = m.explanations, m0.explanations
    assert torch.equal(a.words, b.words) and torch.equal(a.ground_truth, b.ground_truth)
    assert torch.equal(a.ranked.words, b.ranked.words) and torch.equal(a.thresholds, b.thresholds)


def test_attention_modes_and_relevance_weighting(trained, tmp_path):
    m, dm = trained["module"], trained["dm"]
    results = {}
    for mode in ("attention_code", "activation", "image", "original"):
        m.hparams.attention = mode
        m.hparams.output_dir = str(tmp_path / mode)
        trainer = make_trainer()
        trainer.predict(m, dm, return_predictions=False)
        results[mode] = next(c for c in trainer.callbacks if isinstance(c, FilterRecall)).results["lavise"]
        assert m.explanations.attention == mode
    m.hparams.attention = "attention_paper"
    m.hparams.relevance_weighting = True
    m.hparams.output_dir = str(tmp_path / "weighted")
    make_trainer().predict(m, dm, return_predictions=False)
    m.hparams.relevance_weighting = False
    ex = m.explanations
    assert ex.ranked.scores[:, 0].max() <= 1.0 + 1e-9
    # every mode isolates colour channels well enough on planted units to beat chance by far
    for mode, r in results.items():
        assert r["recall@5/seen"] > 0.5, (mode, r)


def test_word_list_vocabulary_with_unknown_words(trained, tmp_path):
    m, dm = trained["module"], trained["dm"]
    words = tmp_path / "words.txt"
    words.write_text("# colours and distractors\n" + "\n".join([f"color{c}" for c in range(12)] +
                                                              [f"distractor{i}" for i in range(30)] + ["xyzzy"]))
    m.text_encoder.missing = {"xyzzy"}
    m.hparams.word_source = str(words)
    m.hparams.output_dir = str(tmp_path / "out")
    with pytest.warns(UserWarning, match="xyzzy"):
        trainer = make_trainer()
        trainer.predict(m, dm, return_predictions=False)
    m.hparams.word_source = "labels"
    ex = m.explanations
    assert len(ex.vocabulary) == 42 and "xyzzy" not in ex.vocabulary
    assert (ex.word_labels[12:] == -1).all() and ex.word_labels[:12].tolist() == list(range(12))
    r = next(c for c in trainer.callbacks if isinstance(c, FilterRecall)).results
    # 42 words: chance is ~5/42 per ground-truth word; the explainer still finds the planted colours
    assert r["random"]["recall@5/seen"] < 0.3 < 0.8 < r["lavise"]["recall@5/seen"]


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="looks like a quantile level.*use 0.005"):
        make_module(quantile=0.995)  # the other convention: would mark almost every location active
    with pytest.raises(ValueError, match="attention"):
        make_module(attention="projection")
    with pytest.raises(ValueError, match="channels"):
        make_module(units=[0, 99])
    with pytest.raises(ValueError, match="text_encoder"):
        make_module(text_encoder=None)
    from lit_explain.text.encoders import GloveEncoder

    with pytest.raises(FileNotFoundError, match="glove"):
        make_module(text_encoder=GloveEncoder(path=str(tmp_path / "glove.6B.300d.txt")))
    # a label without embedding: the error names it
    dm = ColorSquares(num_train=8, num_val=4, num_predict=4)
    m = make_module(text_encoder=HashEncoder(32, missing=["color3"]))
    with pytest.raises(KeyError, match="color3"):
        make_trainer().fit(m, dm)
    m = make_module(word_source=str(tmp_path / "nope.txt"))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        make_trainer().predict(m, dm, return_predictions=False)
