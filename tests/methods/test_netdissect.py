"""NetDissect end to end on a miniature Broden written by the test, against a dense brute-force reference."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from callbacks import default_callbacks

from data_modules.broden import BrodenDataModule
from lit_explain.methods.netdissect import NetDissect
from lit_explain.results import read_csv
from tests.fixtures.broden_writer import make_miniature
from tests.methods.tiny_models import tiny_cnn

MODEL = "python:tests.methods.tiny_models:tiny_cnn"


def _run(tmp_path: Path, devices: int = 1, out: str = "out", **method_kwargs) -> Path:
    dm = BrodenDataModule(root=str(tmp_path / "broden"), batch_size=3, cache_dir=str(tmp_path / "cache"))
    method = NetDissect(model=MODEL, layer="features", output_dir=str(tmp_path / out),
                        cache_dir=str(tmp_path / "cache"), num_pictures=2, top_images=3, **method_kwargs)
    kw = dict(strategy="ddp_spawn") if devices > 1 else {}
    trainer = Trainer(accelerator="cpu", devices=devices, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=default_callbacks(method), **kw)
    trainer.predict(method, datamodule=dm, return_predictions=False)
    return tmp_path / out


def _dense_reference(dm: BrodenDataModule, q: float):
    ds = dm.dataset
    vocab = ds.vocabulary
    model = tiny_cnn().eval()
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    with torch.no_grad():
        acts = model.features(model.relu1(model.conv1(images))).half().float()  # the cache stores float16
    n, u = acts.shape[:2]
    sh, sw = ds.mask_shape
    thr = np.quantile(acts.double().numpy().transpose(1, 0, 2, 3).reshape(u, -1), q, axis=1)
    up = F.interpolate(acts, size=(sh, sw), mode="bilinear", align_corners=False)
    bitmaps = up > torch.tensor(thr, dtype=torch.float32)[None, :, None, None]
    masks = torch.zeros(n, len(vocab), sh, sw, dtype=torch.bool)
    for i in range(n):
        planes, image_labels = ds.annotations(i)
        for c, lab in enumerate(vocab.label_ids):
            masks[i, c] = torch.from_numpy((np.asarray(planes) == lab).any(0)) if len(planes) else False
            if lab in image_labels:
                masks[i, c] = True
    b, m = bitmaps.double(), masks.double()
    inter = torch.einsum("nuhw,nchw->uc", b, m)
    union = b.sum((0, 2, 3))[:, None] + m.sum((0, 2, 3))[None] - inter
    iou = torch.where(union > 0, inter / union, torch.zeros_like(inter))
    return iou, thr, vocab, inter


@pytest.fixture
def miniature(tmp_path):
    make_miniature(tmp_path / "broden")
    return tmp_path


@pytest.mark.parametrize("quantile", [0.005, 0.2])
def test_iou_equals_dense_bruteforce(miniature, quantile):
    out = _run(miniature, quantile=quantile)
    rows = read_csv(out / "explanations.csv")
    dm = BrodenDataModule(root=str(miniature / "broden"))
    dm.setup("predict")
    iou, thr, vocab, inter = _dense_reference(dm, 1 - quantile)
    assert [int(r["unit"]) for r in rows] == list(range(iou.shape[0]))
    for r in rows:
        u = int(r["unit"])
        assert float(r["threshold"]) == pytest.approx(thr[u], abs=1e-7)
        assert float(r["iou"]) == pytest.approx(float(iou[u].max()), abs=1e-7)
        c = vocab.index_of(r["label"])
        assert iou[u, c] == pytest.approx(float(iou[u].max()), abs=1e-12)
        assert int(r["intersection"]) == int(inter[u, c])
    if quantile > 0.1:  # big bitmaps: the reference is not trivially zero
        assert max(float(r["iou"]) for r in rows) > 0.05
    assert (out / "explanations.json").is_file()
    assert len(list((out / "units").glob("unit_*.png"))) == 2


def test_cached_rerun_is_byte_identical(miniature):
    first = (_run(miniature, out="a") / "explanations.csv").read_bytes()
    entries = [p for p in (miniature / "cache" / "activations").iterdir() if p.suffix != ".lock"]  # not the build lock
    assert len(entries) == 1
    second = (_run(miniature, out="b") / "explanations.csv").read_bytes()
    assert first == second


def test_predict_keeps_nothing_per_batch(miniature):
    """With return_predictions on (Lightning's default when a config leaves it out), Lightning keeps whatever
    predict_step returns for every batch; the method returns None, so nothing accumulates per image there."""
    dm = BrodenDataModule(root=str(miniature / "broden"), batch_size=3, cache_dir=str(miniature / "cache"))
    method = NetDissect(model=MODEL, layer="features", output_dir=str(miniature / "o"),
                        cache_dir=str(miniature / "cache"), num_pictures=0)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=default_callbacks(method))
    predictions = trainer.predict(method, datamodule=dm, return_predictions=True)
    assert len(predictions) == -(-len(dm.dataset) // 3) and all(p is None for p in predictions)
    assert method.result is not None and len(method.result.tables["explanations"]) > 0


def test_wrong_layer_name_lists_valid_names(miniature):
    with pytest.raises(ValueError, match="features"):
        dm = BrodenDataModule(root=str(miniature / "broden"), cache_dir=str(miniature / "cache"))
        method = NetDissect(model=MODEL, layer="featurs", output_dir=str(miniature / "o"), cache_dir=str(miniature / "cache"))
        Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                callbacks=default_callbacks(method)).predict(method, datamodule=dm, return_predictions=False)
    assert not list((miniature / "cache").glob("activations/*"))


@pytest.mark.ddp
def test_two_processes_give_the_same_file(miniature):
    kw = dict(category_restricted_union=True, quantile=0.2)
    one = (_run(miniature, out="one", **kw) / "explanations.csv").read_bytes()
    two = (_run(miniature, devices=2, out="two", **kw) / "explanations.csv").read_bytes()
    assert one == two


class _Crash(Exception):
    pass


class _CrashAfter:
    """A callback that kills the predict loop after a few batches, like a job hitting its time limit."""

    def __new__(cls, n):
        from lightning.pytorch import Callback

        class CrashAfter(Callback):
            def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
                if batch_idx == n:
                    raise _Crash()

        return CrashAfter()


def test_interrupted_run_resumes_to_the_same_table(miniature):
    clean = (_run(miniature, out="clean") / "explanations.csv").read_bytes()
    cache = miniature / "cache2"
    dm = BrodenDataModule(root=str(miniature / "broden"), batch_size=3, cache_dir=str(cache))
    method = NetDissect(model=MODEL, layer="features", output_dir=str(miniature / "x"), cache_dir=str(cache))
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, callbacks=[_CrashAfter(2), *default_callbacks(method)])
    with pytest.raises(_Crash):
        trainer.predict(method, datamodule=dm, return_predictions=False)
    assert not (miniature / "x" / "explanations.csv").exists()
    partial = list((cache / "activations").glob("*.partial"))
    assert len(partial) == 1 and not [p for p in (cache / "activations").iterdir()
                                      if not p.name.endswith((".partial", ".lock"))]  # the build lock may stay
    dm = BrodenDataModule(root=str(miniature / "broden"), batch_size=3, cache_dir=str(cache))
    method = NetDissect(model=MODEL, layer="features", output_dir=str(miniature / "x"), cache_dir=str(cache))
    Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
            callbacks=default_callbacks(method)).predict(method, datamodule=dm, return_predictions=False)
    assert (miniature / "x" / "explanations.csv").read_bytes() == clean
