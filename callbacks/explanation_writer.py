"""ExplanationWriter: writes a dissection method's results once the predict loop has finished.

In the run's ``output_dir`` (the method's argument):

* ``explanations.csv``: the unified table (:mod:`lit_explain.results`), one row per (unit, range);
* ``explanations.json``: the same rows plus the method, its arguments, the concept vocabulary, the activation
  cache used and the resolved CLI configuration (when the CLI saved one);
* ``units/unit_<u>[_r<k>].png``: cards of the highest-IoU units: top images, activation region and label mask;
* ``report.html``: a self-contained static page browsing every unit (:mod:`lit_explain.viz.report`);
* TensorBoard (when the trainer has a TensorBoardLogger): the table as text, the cards as images, and
  scalars (units above the interpretability threshold, mean IoU).

Only global rank 0 writes; every file is written atomically, so a killed run never leaves a readable half file.
It runs in ``on_predict_end``, after the module's ``on_predict_epoch_end`` has produced the rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from lit_explain.activations.bitmaps import unit_bitmaps
from lit_explain.atomic import atomic_write, atomic_write_text
from lit_explain.results import write_csv, write_json
from lit_explain.viz.report import write_report
from lit_explain.viz.unit_cards import unit_card

__all__ = ["ExplanationWriter"]

#: Null-baseline IoU columns a method may add to its rows, and their names in the printed summary.
NULL_COLUMNS = {"null_shuffled_iou": "shuffled labels", "null_random_iou": "random model"}

log = logging.getLogger(__name__)


class ExplanationWriter(Callback):
    """Writes results, pictures and TensorBoard entries of a :class:`DissectionMethod` (see module docstring).

    Args:
        pictures: whether to draw unit cards.
        report: whether to write ``report.html``, the static HTML report of all units (with the cards).
        summary: whether to print a short summary (explanations above the IoU threshold, the best ones).
    """

    def __init__(self, pictures: bool = True, report: bool = True, summary: bool = True) -> None:
        self.pictures = pictures
        self.report = report
        self.summary = summary

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = getattr(pl_module, "results", None)
        log_dir = trainer.log_dir  # a collective under DDP: every rank must evaluate it
        if rows is None or not trainer.is_global_zero:
            return
        out = Path(pl_module.hparams.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        config_text = None
        if log_dir and (Path(log_dir) / "config.yaml").is_file():
            config_text = (Path(log_dir) / "config.yaml").read_text()
            atomic_write_text(out / "config.yaml", config_text)
        write_csv(rows, out / "explanations.csv")
        write_json(rows, out / "explanations.json", **pl_module.result_meta, config=config_text)
        cards = self._draw(trainer, pl_module, rows, out) if self.pictures else []
        if self.report:
            write_report(out, rows, {**pl_module.result_meta, "config": config_text},
                         {name: Path("units") / f"{name}.png" for name, _ in cards})  # relative to out
        self._tensorboard(trainer, pl_module, rows, cards)
        log.info("wrote %d explanations to %s", len(rows), out)
        if self.summary:
            print(self.summarize(rows, out, float(getattr(pl_module.hparams, "iou_threshold", 0.04))))

    @staticmethod
    def summarize(rows: list[dict[str, Any]], out: Path, threshold: float, top: int = 12) -> str:
        """A short text summary: how many explanations beat the IoU threshold, per category, how they compare with
        the null baselines (when the method reported any), and the best ones."""
        good = [r for r in rows if float(r["iou"]) > threshold]
        cats: dict[str, int] = {}
        for r in good:
            cats[r["category"]] = cats.get(r["category"], 0) + 1
        lines = [f"\n{len(good)} of {len(rows)} explanations have IoU > {threshold:g}"
                 + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(cats.items(), key=lambda kv: -kv[1]))})" if cats else "")]
        nulls = [(c, name) for c, name in NULL_COLUMNS.items() if rows and all(c in r for r in rows)]
        if nulls:
            mean = sum(float(r["iou"]) for r in rows) / len(rows)
            means = ", ".join(f"{name} {sum(float(r[c]) for r in rows) / len(rows):.3f}" for c, name in nulls)
            beat = sum(all(float(r["iou"]) > float(r[c]) for c, _ in nulls) for r in rows)
            lines.append(f"mean IoU {mean:.3f}; null baselines (mean IoU): {means}; "
                         f"{beat} of {len(rows)} beat every baseline")
        header = f"{'unit':>6} {'range':>5}  {'label':<32} {'category':<10} {'IoU':>6}"
        lines.append(header + "".join(f" {name.split()[0] + ' IoU':>15}" for _, name in nulls))
        for r in sorted(rows, key=lambda r: -float(r["iou"]))[:top]:
            lines.append(f"{r['unit']:>6} {r.get('cluster', 0):>5}  {str(r['label'])[:32]:<32} {r['category']:<10} "
                         f"{float(r['iou']):6.3f}" + "".join(f" {float(r[c]):15.3f}" for c, _ in nulls))
        lines.append(f"results: {out}/explanations.csv, report: {out}/report.html")
        return "\n".join(lines)

    # ------------------------------------------------------------------ pictures
    def _draw(self, trainer: Trainer, pl_module: LightningModule, rows: list[dict[str, Any]],
              out: Path) -> list[tuple[str, Image.Image]]:
        hp = pl_module.hparams
        entry, index = pl_module.entry, pl_module.concept_index
        dataset = trainer.datamodule.dataset
        label_mask = getattr(pl_module, "label_mask", None)  # optional hook: (row, image_ids) -> (B, sh, sw) bool
        ranked = sorted(rows, key=lambda r: -float(r["iou"]))[: hp.num_pictures]
        cards = []
        for r in ranked:
            u = int(r["unit"])
            top = np.argsort(-np.asarray(entry.maxes[:, u]), kind="stable")[: hp.top_images]
            acts = entry.rows(top)[:, [u]]
            lo = torch.tensor([float(r["range_lo"])])
            hi = None if float(r["range_hi"]) == float("inf") else torch.tensor([float(r["range_hi"])])
            bm = unit_bitmaps(acts, index.mask_shape, lo, hi).view(len(top), *index.mask_shape).numpy()
            if label_mask is not None:
                lm = label_mask(r, torch.as_tensor(top)).numpy()
            elif r["label"] in pl_module.vocabulary.names:
                c = pl_module.vocabulary.index_of(r["label"])
                lm = index.dense_masks(torch.as_tensor(top), torch.tensor([c]))[:, 0].numpy()
            else:
                lm = np.zeros((len(top), 0), dtype=bool)
            images = [Image.open(dataset.image_path(int(i))) for i in top]
            title = f"unit {u}" + (f" range {r['cluster']}" if int(r.get("cluster", 0)) else "") + \
                f": {r['label']}  IoU {float(r['iou']):.3f}"
            card = unit_card(images, list(bm), list(lm) if lm.size else [np.zeros(0, bool)] * len(top), title)
            name = f"unit_{u:04d}" + (f"_r{int(r['cluster'])}" if int(r.get("cluster", 0)) else "")

            def save(f, card=card):
                card.save(f, format="PNG")

            atomic_write(out / "units" / f"{name}.png", save)
            cards.append((name, card))
        return cards

    # ------------------------------------------------------------------ tensorboard
    @staticmethod
    def _tensorboard(trainer: Trainer, pl_module: LightningModule, rows: list[dict[str, Any]],
                     cards: list[tuple[str, Image.Image]]) -> None:
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is None:
            return
        tb = logger.experiment
        thr = float(getattr(pl_module.hparams, "iou_threshold", 0.04))
        ious = np.array([float(r["iou"]) for r in rows]) if rows else np.zeros(0)
        tb.add_scalar("dissection/interpretable_units", int((ious > thr).sum()), 0)
        tb.add_scalar("dissection/mean_iou", float(ious.mean()) if len(ious) else 0.0, 0)
        top = sorted(rows, key=lambda r: -float(r["iou"]))[:50]
        table = "| unit | range | label | category | IoU |\n|---|---|---|---|---|\n" + "\n".join(
            f"| {r['unit']} | {r.get('cluster', 0)} | {r['label']} | {r['category']} | {float(r['iou']):.4f} |" for r in top)
        tb.add_text("dissection/explanations", table, 0)
        for name, card in cards:
            tb.add_image(f"units/{name}", np.asarray(card).transpose(2, 0, 1), 0)
        tb.flush()
