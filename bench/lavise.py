"""Speed of LaViSE on the synthetic world: training images/s with the feature cache off and on, seconds per
explained filter, and the data loader alone as the bound the cache cannot beat.

    python bench/lavise.py                      # 1000-image world, synthetic CNN layer4, 3 epochs
    python bench/lavise.py --num-images 3000 --epochs 4 --weights outputs/synthetic_classifier/checkpoints/last.ckpt

Training samples are LaViSE instance samples (one category's objects in one image). "epoch 1" pays the backbone
in both modes; with the cache on, later epochs read the frozen features from memory instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_modules.synthetic_instances import SyntheticInstancesDataModule  # noqa: E402
from lit_explain.methods.lavise import LaViSE  # noqa: E402
from lit_explain.text.encoders import SentenceTransformerEncoder  # noqa: E402


class EpochTimer(Callback):
    """Wall time and number of training samples of every epoch."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, int]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t, self._n = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._n += int(batch["image"].shape[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append((time.perf_counter() - self._t, self._n))


def _trainer(**kw) -> Trainer:
    args = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, accelerator="cpu", devices=1)
    args.update(kw)
    return Trainer(**args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="world folder (default: a temporary folder)")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--model", default="python:lit_explain.models.synthetic_cnn:synthetic_cnn")
    p.add_argument("--weights", default="none")
    p.add_argument("--layer", default="layer4")
    p.add_argument("--top-images", type=int, default=15)
    p.add_argument("--attention", default="attention_code")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="bench_lavise_")
    root = Path(args.root or tmp.name) / "world"
    t = time.perf_counter()
    dm = SyntheticInstancesDataModule(root=str(root), num_images=args.num_images, batch_size=args.batch_size,
                                      cache_dir=None, augment=False)
    dm.prepare_data()
    dm.setup("fit")
    t_world = time.perf_counter() - t
    n_train = len(dm.train_dataloader().dataset)
    encoder = SentenceTransformerEncoder(cache_dir=str(Path(tmp.name) / "emb"))
    kwargs = dict(model=args.model, weights=args.weights, model_kwargs={"num_classes": 8, "width": 16}
                  if "synthetic_cnn" in args.model else None, layer_target=args.layer, layer_classifier="fc",
                  text_encoder=encoder, input_size=64, top_images=args.top_images, attention=args.attention,
                  output_dir=str(Path(tmp.name) / "out"))

    # data loader alone: the floor of an epoch when every feature comes from the cache
    t = time.perf_counter()
    n = sum(int(b["image"].shape[0]) for b in dm.train_dataloader())
    loader_rate = n / (time.perf_counter() - t)

    rows = []
    for cache in (False, True):
        seed_everything(0)
        module = LaViSE(cache_features=cache, **kwargs)
        timer = EpochTimer()
        _trainer(max_epochs=args.epochs, limit_val_batches=0, callbacks=[timer]).fit(module, dm)
        first = timer.epochs[0][1] / timer.epochs[0][0]
        later = [n / s for s, n in timer.epochs[1:]]
        rows.append((f"fit, cache {'on ' if cache else 'off'}", first, sum(later) / max(len(later), 1)))
    # explaining every filter of the layer
    trainer = _trainer()
    t = time.perf_counter()
    trainer.predict(module, dm, return_predictions=False)
    t_predict = time.perf_counter() - t
    ex = module.explanations

    print(f"\nLaViSE on the synthetic world: {args.num_images} images ({n_train} training samples, "
          f"{ex.num_images} reference images), {args.model.split(':')[-1]} {args.layer}, "
          f"{torch.get_num_threads()} torch threads; world generation + export {t_world:.1f} s\n")
    print(f"| {'training':<16} | {'epoch 1 samples/s':>17} | {'later epochs samples/s':>22} |")
    print(f"|{'-' * 18}|{'-' * 19}|{'-' * 24}|")
    for name, a, b in rows:
        print(f"| {name:<16} | {a:>17.0f} | {b:>22.0f} |")
    print(f"| {'data loader only':<16} | {loader_rate:>17.0f} | {loader_rate:>22.0f} |")
    speedup = rows[1][2] / rows[0][2]
    print(f"\ncache speed-up on later epochs: {speedup:.2f}x")
    print(f"\n| {'explaining filters':<32} | {'value':>10} |")
    print(f"|{'-' * 34}|{'-' * 12}|")
    print(f"| {'filters':<32} | {len(ex.units):>10d} |")
    print(f"| {'predict wall time (s)':<32} | {t_predict:>10.2f} |")
    print(f"| {'seconds per filter':<32} | {t_predict / len(ex.units):>10.3f} |")
    print(f"| {'(filter, image) pairs explained':<32} | {int(ex.valid.sum()):>10d} |")
    tmp.cleanup()


if __name__ == "__main__":
    main()
