"""FilterRecall: recall@k of LaViSE filter explanations, with a frequency and a random-word baseline.

After the predict loop (``on_predict_end``, once :class:`~lit_explain.methods.lavise.LaViSE` has handed forward its
result, whose ``data`` is the :class:`~lit_explain.methods.lavise_filters.FilterExplanations`), each rank feeds the (filter, image) pairs it
computed into three :class:`~lit_explain.metrics.recall.RecallAtK` metrics and ``compute()`` sums them over ranks,
so 1 and N processes report the same numbers:

* ``lavise``: the explainer's top-k words of each pair;
* ``frequency``: always the k categories present in the most reference images (the reproduction's naive
  baseline; counted on the reference set itself, which favours the baseline);
* ``random``: k words drawn uniformly without replacement from the same word vocabulary, per pair, with
  ``seed`` (identical on every rank).

Definition of recall@k (IoU > 0.04 with the 99.5th-percentile region, micro-average over pairs with a
ground truth, seen / unseen): :mod:`lit_explain.metrics.functional.recall`. Results go to
``<output_dir>/recall.json`` (rank 0, atomic), to TensorBoard scalars, and to :attr:`FilterRecall.results`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks import register_default_callbacks
from callbacks.result_writer import tensorboard_of
from lit_explain.atomic import atomic_write_json
from lit_explain.methods.lavise import LaViSE
from lit_explain.metrics.recall import RecallAtK

__all__ = ["FilterRecall", "random_word_labels"]

log = logging.getLogger(__name__)


def random_word_labels(word_labels: torch.Tensor, pairs: int, k: int, seed: int) -> torch.Tensor:
    """(pairs, k) category ids of k random distinct words per pair (-1 for words naming no category).

    Words are drawn uniformly without replacement from the V words of ``word_labels`` (V,) with a seeded
    generator, in chunks so that a 400K-word vocabulary needs little memory.
    """
    v = len(word_labels)
    k = min(k, v)
    g = torch.Generator().manual_seed(int(seed))
    out = torch.empty(pairs, k, dtype=torch.int64)
    rows = max(1, (1 << 22) // max(v, 1))
    for s in range(0, pairs, rows):
        n = min(rows, pairs - s)
        out[s : s + n] = torch.rand(n, v, generator=g).topk(k, dim=1).indices
    return word_labels[out]


class FilterRecall(Callback):
    """Recall@k of filter explanations and its baselines (see the module docstring).

    Args:
        ks: cut-offs; None = the module's ``ks`` (5, 10, 20).
        baselines: also compute the frequency and random-word baselines.
        seed: seed of the random-word baseline.
        output_dir: folder of ``recall.json``; None = the module's ``output_dir``.
    """

    def __init__(self, ks: list[int] | None = None, baselines: bool = True, seed: int = 0,
                 output_dir: str | None = None) -> None:
        self.ks = None if ks is None else [int(k) for k in ks]
        self.baselines = baselines
        self.seed = seed
        self.output_dir = output_dir
        self.metrics: dict[str, RecallAtK] = {}
        self.results: dict[str, dict[str, float]] = {}

    def _ks(self, pl_module: LightningModule) -> list[int]:
        return self.ks or [int(k) for k in pl_module.hparams.ks]

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        names = ["lavise"] + (["frequency", "random"] if self.baselines else [])
        # new metric objects every run: under ddp_spawn, states created before the spawn live in shared memory
        self.metrics = {n: RecallAtK(self._ks(pl_module)) for n in names}
        self.results = {}

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        result = getattr(pl_module, "result", None)
        ex = getattr(result, "data", None)
        if ex is None:
            return
        ks = self._ks(pl_module)
        # a vocabulary smaller than k: all its words are "predicted" (missing ranks count as misses)
        k_max = min(max(ks), ex.words.shape[-1])
        n_units, p = ex.valid.shape
        mine = ex.valid & (ex.owner == trainer.global_rank)
        gt = ex.ground_truth[mine]
        preds = {"lavise": ex.topk_labels(k_max)[mine]}
        if self.baselines:
            freq = torch.argsort(-ex.label_images, stable=True)[:k_max]
            preds["frequency"] = freq[None, :].expand(int(mine.sum()), -1)
            # drawn for every pair on every rank (same seed), then each rank keeps its own pairs
            rand = random_word_labels(ex.word_labels, n_units * p, k_max, self.seed).view(n_units, p, -1)
            preds["random"] = rand[mine]
        self.results = {}
        for name, metric in self.metrics.items():
            metric.update(preds[name], gt, ex.seen)
            self.results[name] = {k: float(v) for k, v in metric.compute().items()}  # syncs across ranks
        if not trainer.is_global_zero:
            return
        self._log(trainer)
        out = Path(self.output_dir or pl_module.hparams.output_dir)
        atomic_write_json(out / "recall.json", {
            "ks": ks, "attention": ex.attention, "quantile": ex.quantile, "iou_threshold": pl_module.hparams.iou_threshold,
            "filters": len(ex.units), "top_images": p, "num_images": ex.num_images,
            "word_vocabulary_size": len(ex.vocabulary),
            "results": {n: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                        for n, r in self.results.items()},
        })
        summary = ", ".join(f"{n} R@{ks[0]}={r[f'recall@{ks[0]}']:.3f}" for n, r in self.results.items())
        log.info("recall@k over %d pairs: %s", int(self.results["lavise"]["pairs"]), summary)

    def _log(self, trainer: Trainer) -> None:
        tb = tensorboard_of(trainer)
        if tb is None:
            return
        for name, r in self.results.items():
            for key, value in r.items():
                if key.startswith("recall") and not math.isnan(value):
                    tb.add_scalar(f"recall/{name}/{key}", value, 0)


register_default_callbacks(LaViSE, FilterRecall)
