"""WWWMetrics: the neuron-concept metrics of a WWW run against its ground truth (torchmetrics sum states).

After the predict loop (``on_predict_end``, once :class:`~lit_explain.methods.www.WWW` has handed forward its
result, whose ``data`` is the :class:`~lit_explain.methods.www.WWWExplanations`, identical on every process), the
units that have ground-truth words are scored and ``compute()`` sums the metrics' states across processes. Every
process holds every unit's concepts and the per-unit scores are cheap, so process 0 adds all units and the others
add none: a float sum split across processes would be grouped differently and could differ from the one-process
number in its last bit, while a sum with zeros is exact, so 1 and N processes report identical numbers:

* hit rate, precision, recall, F1 of the exact-string concept sets
  (:class:`~lit_explain.metrics.www.ConceptSetMetrics`);
* the CLIP text cosine (``clip_cos``): the run's own encoder pair's text tower on the raw words, pairs clipped at 1;
* optionally the sentence-embedding cosine with the offline all-MiniLM-L6-v2 (``minilm_cos``; the paper's MPNet
  cosine with another encoder, so not comparable to its numbers).

Each is the mean over units with its standard error. Results, with the run's misprediction AUROCs, go to
``<output_dir>/www_metrics.json`` (rank 0, atomic), to TensorBoard and to :attr:`WWWMetrics.results`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks import register_default_callbacks
from callbacks.result_writer import tensorboard_of
from lit_explain.atomic import atomic_write_json
from lit_explain.methods.www import WWW
from lit_explain.metrics.www import ConceptEmbeddingCosine, ConceptSetMetrics, minilm_cosine_metric

__all__ = ["WWWMetrics"]

log = logging.getLogger(__name__)


class WWWMetrics(Callback):
    """Hit rate, P/R/F1 and embedding cosines of WWW's concepts (see the module docstring).

    Args:
        clip_cosine: compute the CLIP text cosine with the run's encoder pair.
        minilm_cosine: compute the MiniLM sentence-embedding cosine (needs the offline sentence-transformers model).
        output_dir: folder of ``www_metrics.json``; None = the module's ``output_dir``.
    """

    def __init__(self, clip_cosine: bool = True, minilm_cosine: bool = False, output_dir: str | None = None) -> None:
        self.clip_cosine, self.minilm_cosine = bool(clip_cosine), bool(minilm_cosine)
        self.output_dir = output_dir
        self.results: dict[str, float] = {}

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.results = {}

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ex = getattr(getattr(pl_module, "result", None), "data", None)
        if ex is None or not hasattr(ex, "ground_truth"):
            return
        scored = [k for k, g in enumerate(ex.ground_truth) if g]
        self.results = {}
        if scored:
            # new metric objects per run: under ddp_spawn, states created before the spawn live in shared memory
            metrics = [ConceptSetMetrics()]
            if self.clip_cosine and ex.encode_words is not None:
                metrics.append(ConceptEmbeddingCosine(ex.encode_words, name="clip", clip_max=1.0))
            if self.minilm_cosine:
                metrics.append(minilm_cosine_metric())
            mine = scored if trainer.global_rank == 0 else []  # exact sums (see the module docstring)
            preds = [ex.concepts[k] for k in mine]
            gts = [ex.ground_truth[k] for k in mine]
            for metric in metrics:
                metric.update(preds, gts)
                self.results.update({k: float(v) for k, v in metric.compute().items()})  # syncs across ranks
        self.results.update({k: float(v) for k, v in ex.auroc.items()})
        if not trainer.is_global_zero:
            return
        tb = tensorboard_of(trainer)
        if tb is not None:
            for key, value in self.results.items():
                if not math.isnan(value):
                    tb.add_scalar(f"www/{key}", value, 0)
        out = Path(self.output_dir or pl_module.hparams.output_dir)
        atomic_write_json(out / "www_metrics.json", {
            "units_scored": len(scored), "units": len(ex.units),
            "results": {k: (None if math.isnan(v) else v) for k, v in self.results.items()}})
        if scored:
            log.info("WWW concepts of %d units with ground truth: hit rate %.3f, F1 %.3f", len(scored),
                     self.results["hit_rate"], self.results["f1"])


register_default_callbacks(WWW, WWWMetrics)
