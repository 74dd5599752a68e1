"""The synthetic world's CLIP: retrieval AUROC against sklearn, caption batches against the world's records, a short
fit that learns, and the saved folder loaded by open_clip, OpenClipEncoder and load_clip (with clear errors)."""

from __future__ import annotations

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
from lit_explain.models.clip_trainer import ContrastiveClip
from lit_explain.synth.captions import caption_variants, present_concepts
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
    with pytest.raises(ValueError, match="lacks"):
        ContrastiveClip(model_config={"embed_dim": 8})
    with pytest.raises(ValueError, match="captions_per_image must be >= 1"):
        SyntheticCaptionsDataModule(captions_per_image=0)


def test_default_resnet_config_round_trips_through_open_clip(tmp_path):
    import open_clip

    from lit_explain.models.clip_files import TINY_CLIP_CONFIG

    torch.manual_seed(0)
    model = build_clip().eval()
    folder = save_clip(model, TINY_CLIP_CONFIG, tmp_path / "tiny")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model.encode_image(x)
        loaded, _, _ = load_clip(folder)
        assert torch.allclose(loaded.encode_image(x), want, atol=1e-6)
        oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        assert torch.allclose(oc.eval().encode_image(x), want, atol=1e-6)
