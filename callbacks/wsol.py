"""WSOLMetrics: weakly supervised localisation scores of HINT's concept maps and of the CAM baseline.

During ``trainer.test`` the method hands, per batch, each map's binary mask and [0, 1] scores at image size
(:meth:`lit_explain.methods.hint.HINT.test_step`); this callback feeds them, for every map (``hint``, ``cam``),
into :class:`~lit_explain.metrics.wsol.WSOLLocalization` (GT-known Loc, Top-1 Loc with the model's prediction,
mean IoU) and :class:`~lit_explain.metrics.wsol.MaxBoxAccV2`. Both hold integer sum states, so ``compute()``
(summed over processes) gives the same numbers with 1 or N processes; images that DDP's sampler repeats are left
out (the method's ``keep``). At the end of the test epoch rank 0 writes ``<output_dir>/wsol.csv`` and
``wsol.json`` (one row per map), logs the numbers to TensorBoard, and the rows stay in :attr:`WSOLMetrics.rows`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks import register_default_callbacks
from callbacks.result_writer import tensorboard_of
from lit_explain.methods.hint import HINT
from lit_explain.metrics.wsol import MaxBoxAccV2, WSOLLocalization
from lit_explain.results import write_csv, write_json

__all__ = ["WSOLMetrics"]

log = logging.getLogger(__name__)


class WSOLMetrics(Callback):
    """Localisation metrics of every map a method's ``test_step`` returns (see the module docstring).

    Args:
        num_thresholds: MaxBoxAccV2 score-threshold grid size, >= 1 (100: steps of 0.01).
        iou_thresholds: MaxBoxAccV2 IoU thresholds, each in (0, 1].
        output_dir: folder of ``wsol.csv`` / ``wsol.json``; None = the method's ``output_dir``.
    """

    def __init__(self, num_thresholds: int = 100, iou_thresholds: tuple[float, ...] = (0.3, 0.5, 0.7),
                 output_dir: str | None = None) -> None:
        if int(num_thresholds) < 1:
            raise ValueError(f"WSOLMetrics: num_thresholds must be >= 1, got {num_thresholds}")
        if not iou_thresholds or not all(0.0 < float(d) <= 1.0 for d in iou_thresholds):
            raise ValueError(f"WSOLMetrics: iou_thresholds must be a non-empty list in (0, 1], got {iou_thresholds}")
        self.num_thresholds = int(num_thresholds)
        self.iou_thresholds = tuple(float(d) for d in iou_thresholds)
        self.output_dir = output_dir
        self.loc: dict[str, WSOLLocalization] = {}
        self.box: dict[str, MaxBoxAccV2] = {}
        self.rows: list[dict[str, Any]] = []

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # new metric objects every run (under ddp_spawn, states made before the spawn would be shared)
        self.loc, self.box, self.rows = {}, {}, []

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or "maps" not in outputs:
            return
        hp = pl_module.hparams
        keep = outputs["keep"].cpu()
        boxes = outputs["boxes"].cpu()[keep]
        preds, target = outputs["preds"].cpu()[keep], outputs["target"].cpu()[keep]
        for name, (mask, scores) in outputs["maps"].items():
            if name not in self.loc:
                self.loc[name] = WSOLLocalization(hp.iou_threshold, hp.box_mode, hp.gt_mode)
                self.box[name] = MaxBoxAccV2(self.iou_thresholds, self.num_thresholds)
            self.loc[name].update(mask.cpu()[keep], boxes, preds, target)
            self.box[name].update(scores.cpu()[keep], boxes)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        concept = None
        if hasattr(pl_module, "classifiers") and getattr(pl_module, "_wsol_k", None) is not None:
            concept = pl_module.classifiers.concepts[pl_module._wsol_k]
        rows = []
        for name in sorted(self.loc):  # the same order on every rank: compute() is a collective
            loc = {k: v.item() for k, v in self.loc[name].compute().items()}
            box = {k: float(v) for k, v in self.box[name].compute().items()}
            rows.append({"map": name, "concept": concept if name == "hint" else "ground-truth class",
                         "gt_known_loc": loc["gt_known_loc"], "top1_loc": loc["top1_loc"], "mean_iou": loc["mean_iou"],
                         **box, "images": int(loc["images"])})
        self.rows = rows
        if not trainer.is_global_zero or not rows:
            return
        hp = pl_module.hparams
        out = Path(self.output_dir or hp.output_dir)
        write_csv(rows, out / "wsol.csv")
        write_json(rows, out / "wsol.json", method=type(pl_module).__name__, layer=hp.layer,
                   box_mode=hp.box_mode, gt_mode=hp.gt_mode, iou_threshold=hp.iou_threshold,
                   cam_threshold=hp.cam_threshold, world_size=trainer.world_size)
        tb = tensorboard_of(trainer)
        if tb is not None:
            for r in rows:
                for key in ("gt_known_loc", "top1_loc", "maxboxacc_v2"):
                    if not math.isnan(r[key]):
                        tb.add_scalar(f"wsol/{r['map']}/{key}", r[key], 0)
            tb.flush()
        log.info("WSOL: %s", "; ".join(f"{r['map']} GT-known Loc {r['gt_known_loc']:.3f}, Top-1 Loc "
                                       f"{r['top1_loc']:.3f}, MaxBoxAccV2 {r['maxboxacc_v2']:.3f}" for r in rows))


register_default_callbacks(HINT, WSOLMetrics)
