"""The synthetic world's CLIP: retrieval AUROC against sklearn, the multi-positive loss against hand values and
open_clip's ClipLoss, caption batches (K captions per image) against the world's records, a short fit that learns,
and the saved folder loaded by open_clip, OpenClipEncoder and load_clip (with clear errors)."""

from __future__ import annotations

import itertools
import json
import math

import lightning
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from data_modules.synthetic_captions import SyntheticCaptionsDataModule
from lit_explain.metrics.functional.concept_retrieval import concept_retrieval_auroc
from lit_explain.models.clip_files import CONFIG_FILE, build_clip, load_clip, save_clip
from lit_explain.models.clip_trainer import ContrastiveClip, caption_positives, multi_positive_loss
from lit_explain.synth.captions import caption_variants, named_concepts, present_concepts
from lit_explain.synth.world import load_scene

#: a very small open_clip config for tests (the tokenizer's 49,408 words are fixed by open_clip)
SMALL = {"embed_dim": 16,
         "vision_cfg": {"image_size": 64, "layers": 1, "width": 16, "patch_size": 16, "head_width": 8,
                        "mlp_ratio": 2.0},
         "text_cfg": {"context_length": 56, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1,
                      "mlp_ratio": 2.0}}


def test_concept_retrieval_auroc_hand_example():
    image = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    text = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    present = torch.tensor([[1, 0, 1], [1, 0, 1], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    per, mean = concept_retrieval_auroc(image, text, present)
    # concept 0: cosines 1, .8, 0, -1; positives {1, .8} above both negatives -> 1
    # concept 1: cosines 0, .6, 1, 0; the positive (1) above all three -> 1 ... check against sklearn too
    sims = torch.nn.functional.normalize(image, dim=1) @ torch.nn.functional.normalize(text, dim=1).T
    for c in range(2):
        assert per[c].item() == pytest.approx(roc_auc_score(present[:, c].numpy(), sims[:, c].numpy()))
    assert per[0].item() == pytest.approx(1.0)
    assert math.isnan(per[2].item())  # present everywhere: undefined, left out of the mean
    assert mean.item() == pytest.approx((per[0].item() + per[1].item()) / 2)
    # a wrong concept-image assignment lowers it: concept 0 marked on images 2 and 3 instead -> 0
    per2, _ = concept_retrieval_auroc(image, text[:1], torch.tensor([[0], [0], [1], [1]], dtype=torch.bool))
    assert per2[0].item() == pytest.approx(0.0)


def test_caption_positives_hand_example():
    # concepts: red, rim, striped. image 0 holds red+rim, image 1 red+striped, image 2 nothing of them
    present = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=torch.bool)
    # captions: "red" (of image 0), "rim" (of 0), "red striped" (of 1), "" (of 2: names none of these concepts)
    named = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=torch.bool)
    owner = torch.tensor([0, 0, 1, 2])
    want = [[True, True, False, True],   # image 0: red and rim are true of it, "red striped" is not
            [True, False, True, True],   # image 1: red, red striped
            [False, False, False, True]]  # image 2: only its own (empty) caption
    assert caption_positives(present, named, owner).tolist() == want
    # its own caption is a positive even if the concept sets disagree (a caption naming a concept it lacks)
    assert caption_positives(present[2:], named[:1], torch.tensor([0])).tolist() == [[True]]


def test_multi_positive_loss_hand_value_and_clip_loss():
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1)
    scale = torch.tensor(7.0)
    # one positive per image (its own caption): open_clip's InfoNCE
    want = ClipLoss()(img, txt, scale)
    assert multi_positive_loss(img, txt, torch.eye(5, dtype=torch.bool), scale).item() == pytest.approx(want.item())
    # by hand: 2 images, 3 captions; image 0's positives are captions 0 and 1, image 1's caption 1 and 2
    img2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt2 = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    pos = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    s = 2.0
    sims = [[1.0, 0.6, 0.0], [0.0, 0.8, 1.0]]

    def lse(xs):
        return math.log(sum(math.exp(s * x) for x in xs))
    to_text = (-(0.5 * (s * 1.0 - lse(sims[0])) + 0.5 * (s * 0.6 - lse(sims[0])))
               - (0.5 * (s * 0.8 - lse(sims[1])) + 0.5 * (s * 1.0 - lse(sims[1])))) / 2
    cols = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]  # caption j's cosines with images 0 and 1
    to_image = (-(s * 1.0 - lse(cols[0])) - (0.5 * (s * 0.6 - lse(cols[1])) + 0.5 * (s * 0.8 - lse(cols[1])))
                - (s * 1.0 - lse(cols[2]))) / 3
    got = multi_positive_loss(img2, txt2, pos, torch.tensor(s))
    assert got.item() == pytest.approx(0.5 * (to_text + to_image), rel=1e-6)
    with pytest.raises(ValueError, match="at least one positive"):
        multi_positive_loss(img2, txt2, torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.bool), torch.tensor(s))


@pytest.fixture(scope="module")
def captions_dm(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipworld") / "world"
    dm = SyntheticCaptionsDataModule(root=str(root), num_images=64, seed=3, batch_size=16, captions_per_image=4,
                                     caption_seed=1, context_length=56, cache_dir=str(root.parent / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_caption_batches_match_the_world_records(captions_dm):
    from open_clip.tokenizer import SimpleTokenizer

    dm = captions_dm
    ds = dm._captioned_split("val")
    batch = next(iter(dm.val_dataloader()))
    assert batch["tokens"].shape == (len(batch["image"]), 4, 56)
    out = dm.on_after_batch_transfer(dict(batch), 0)  # no trainer: validation behaviour, the full caption
    assert out["tokens"].shape == (len(batch["image"]), 56)
    tok = SimpleTokenizer(context_length=56)
    for b in range(3):
        j = ds.world_indices[b]
        rec = load_scene(dm.root, j)
        assert rec["image"] == ds.base.dataset.image_names[b]
        assert torch.equal(out["tokens"][b], tok([caption_variants(rec, j, seed=1, count=4)[0]])[0])
        row = {c for c, on in zip(dm.concept_names, batch["concepts"][b].tolist()) if on}
        assert row == present_concepts(rec)
        named = {c for c, on in zip(dm.concept_names, out["caption_concepts"][b].tolist()) if on}
        assert named == named_concepts(caption_variants(rec, j, seed=1, count=4)[0], dm.concept_names) == row


def test_training_batches_carry_k_distinct_captions_per_image(captions_dm):
    from types import SimpleNamespace

    from open_clip.tokenizer import SimpleTokenizer

    dm = captions_dm
    ds = dm._captioned_split("train")
    batch = next(iter(dm.train_dataloader()))
    n = len(batch["image"])
    dm.captions_per_step = 3
    dm.trainer = SimpleNamespace(training=True)
    try:
        torch.manual_seed(0)
        out = dm.on_after_batch_transfer({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}, 0)
    finally:
        dm.captions_per_step, dm.trainer = 1, None
    assert out["tokens"].shape == (3 * n, 56) and out["caption_concepts"].shape == (3 * n, len(dm.concept_names))
    tok = SimpleTokenizer(context_length=56)
    for b in range(n):
        j = ds.world_indices[int(batch["index"][b])]
        rec = load_scene(dm.root, j)
        caps = caption_variants(rec, j, seed=1, count=4)
        rows = [out["tokens"][3 * b + k] for k in range(3)]  # image-major: caption k of image b is row 3b + k
        which = [[i for i, c in enumerate(caps) if torch.equal(r, tok([c])[0])] for r in rows]
        assert all(which), (b, caps)
        for k in range(3):
            named = {c for c, on in zip(dm.concept_names, out["caption_concepts"][3 * b + k].tolist()) if on}
            assert named == named_concepts(caps[which[k][0]], dm.concept_names) and named <= present_concepts(rec)
        # three distinct captions of the four: some injective choice of positions explains the rows (two
        # captions may be the same string, so a row may match several positions)
        assert any(all(p[k] in which[k] for k in range(3)) for p in itertools.permutations(range(4), 3)), which


def test_short_fit_learns_and_saves_a_loadable_model(captions_dm, tmp_path):
    import open_clip

    lightning.seed_everything(0)
    out_dir = tmp_path / "clip"
    model = ContrastiveClip(model_config=SMALL, lr=5e-3, warmup_fraction=0.0, output_dir=str(out_dir))
    trainer = lightning.Trainer(accelerator="cpu", devices=1, max_epochs=6, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    first = None

    class Track(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            nonlocal first
            if first is None:
                first = float(outputs["loss"])
    trainer.callbacks.append(Track())
    trainer.fit(model, datamodule=captions_dm)
    assert float(trainer.callback_metrics["train/loss"]) < first  # the contrastive loss went down
    assert model.retrieval is not None and 0.0 <= model.retrieval["mean_auroc"] <= 1.0
    assert model.retrieval["images"] == len(captions_dm._captioned_split("val"))
    # the folder: open_clip's own local-dir loader, OpenClipEncoder and load_clip all give the trained model
    meta = json.loads((out_dir / CONFIG_FILE).read_text())
    assert meta["model_cfg"] == SMALL and meta["lit_explain"]["zero_shot_retrieval"] == model.retrieval
    tokens = model.tokenize(["a photo of a red", "a photo of a striped desert scene"])
    with torch.no_grad():
        expected = model.clip.encode_text(tokens)
        oc = open_clip.create_model(f"local-dir:{out_dir}").eval()
        assert torch.allclose(oc.encode_text(tokens), expected, atol=1e-6)
        loaded, tokenizer, pre = load_clip(out_dir)
        assert torch.allclose(loaded.encode_text(tokenizer(["a photo of a red", "a photo of a striped desert scene"])),
                              expected, atol=1e-6)
        assert pre["size"] == 64 and pre["mean"] == pytest.approx([0.485, 0.456, 0.406])
    from lit_explain.text.encoders import OpenClipEncoder

    enc = OpenClipEncoder(model_name="synth-clip", pretrained_path=str(out_dir / "open_clip_pytorch_model.bin"),
                          model_config_path=str(out_dir / "synth-clip.json"), template="a photo of a {}",
                          cache_dir=None)
    got = enc.encode(["red"])
    want = torch.nn.functional.normalize(expected[:1], dim=1).numpy()
    assert np.allclose(got, want, atol=1e-5)


def test_load_clip_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="clip_synthetic.yaml"):
        load_clip(tmp_path / "absent")
    folder = save_clip(build_clip(SMALL), SMALL, tmp_path / "m")
    other = json.loads(json.dumps(SMALL))
    other["vision_cfg"]["width"] = 32
    meta = json.loads((folder / CONFIG_FILE).read_text())
    meta["model_cfg"] = other
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="another CLIP architecture"):
        load_clip(folder)
    with pytest.raises(ValueError, match="model_name"):
        load_clip(folder / "open_clip_pytorch_model.bin")


def test_constructor_validation():
    with pytest.raises(ValueError, match="lr must be > 0"):
        ContrastiveClip(model_config=SMALL, lr=0)
    with pytest.raises(ValueError, match="template must contain"):
        ContrastiveClip(model_config=SMALL, template="a photo")
    with pytest.raises(ValueError, match="loss must be one of"):
        ContrastiveClip(model_config=SMALL, loss="infonce")
    with pytest.raises(ValueError, match="captions_per_step must be in"):
        SyntheticCaptionsDataModule(captions_per_image=2, captions_per_step=3)
    with pytest.raises(ValueError, match="lacks"):
        ContrastiveClip(model_config={"embed_dim": 8})
    with pytest.raises(ValueError, match="captions_per_image must be >= 1"):
        SyntheticCaptionsDataModule(captions_per_image=0)


def test_default_resnet_config_round_trips_through_open_clip(tmp_path, caplog):
    import logging

    import open_clip

    from lit_explain.models.clip_files import TINY_CLIP_CONFIG

    torch.manual_seed(0)
    model = build_clip().eval()
    folder = save_clip(model, TINY_CLIP_CONFIG, tmp_path / "tiny")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model.encode_image(x)
        with caplog.at_level(logging.INFO):
            loaded, _, _ = load_clip(folder)
        # open_clip's "initialized randomly" notice is false here: the weights are loaded right after
        assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
        assert torch.allclose(loaded.encode_image(x), want, atol=1e-6)
        oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        assert torch.allclose(oc.eval().encode_image(x), want, atol=1e-6)


def _mp_batch():
    """8 images, 2 captions each, 5 concepts; random features and concept sets (fixed seed)."""
    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(8, 6, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(16, 6, generator=g), dim=1)
    present = torch.rand(8, 5, generator=g) < 0.5
    named = (torch.rand(16, 5, generator=g) < 0.3) & present.repeat_interleave(2, 0)  # captions true of their image
    return img, txt, present, named


def _ddp_multi_positive(rank, world):
    from types import SimpleNamespace

    img, txt, present, named = _mp_batch()
    model = ContrastiveClip(model_config=SMALL, concepts=[f"c{i}" for i in range(5)], output_dir=None)
    model._trainer = SimpleNamespace(world_size=world, global_rank=rank)
    n = 8 // world
    mine_i = img[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    mine_t = txt[2 * rank * n:2 * (rank + 1) * n].clone().requires_grad_(True)
    batch = {"image": torch.zeros(n, 3, 64, 64), "concepts": present[rank * n:(rank + 1) * n],
             "caption_concepts": named[2 * rank * n:2 * (rank + 1) * n]}
    loss = model._multi_positive(batch, {"image_features": mine_i, "text_features": mine_t,
                                         "logit_scale": torch.tensor(10.0)})
    loss.backward()
    return float(loss), mine_i.grad, mine_t.grad


@pytest.mark.ddp
def test_multi_positive_loss_two_processes_is_the_global_batch_loss():
    img, txt, present, named = _mp_batch()
    img, txt = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    owner = torch.arange(16) // 2
    full = multi_positive_loss(img, txt, caption_positives(present, named, owner), torch.tensor(10.0))
    full.backward()
    from tests.helpers.ddp import run_distributed

    for rank, (loss, gi, gt) in enumerate(run_distributed(_ddp_multi_positive, 2)):
        assert loss == pytest.approx(float(full), rel=1e-6)
        # all_gather's backward sums every rank's (identical) loss gradient: W x the global gradient of own rows,
        # which DDP's gradient averaging turns back into the global gradient
        assert torch.allclose(gi, 2 * img.grad[4 * rank:4 * (rank + 1)], atol=1e-6)
        assert torch.allclose(gt, 2 * txt.grad[8 * rank:8 * (rank + 1)], atol=1e-6)
