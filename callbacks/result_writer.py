"""ResultWriter: writes the :class:`~lit_explain.results.MethodResult` a method handed forward, for every method.

In the method's ``output_dir``, on global rank 0 only, every file atomically:

* ``<table>.csv`` and ``<table>.json`` for each table of the result (one CSV/JSON format for all methods:
  :mod:`lit_explain.results`); the JSON also holds the result's metadata and the resolved CLI configuration;
* ``config.yaml``: the resolved configuration the CLI saved for this run (:func:`save_run_config`);
* the result's pictures as PNG files (``units/unit_0007.png``, ``filters/filter_0003.png``...);
* ``report.html`` when the result names a table to browse (:mod:`lit_explain.viz.report`): a table of one row
  per (unit, range) in the unit browser, or the result's views of grouped tables
  (:class:`~lit_explain.results.ReportView`: HINT's concepts per unit, NMF's components per class), whose item
  pictures are the ones drawn here;
* TensorBoard (:func:`tensorboard_of`): the result's Markdown text, scalars and pictures;
* the result's summary, printed.

It runs in ``on_predict_end`` (after the method's ``on_predict_epoch_end`` produced the result) and, for methods
that produce their result while fitting, in ``on_fit_end``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lit_explain.atomic import atomic_write, atomic_write_text
from lit_explain.results import MethodResult, write_csv, write_json
from lit_explain.viz.report import write_report, write_view_report

__all__ = ["ResultWriter", "save_run_config", "tensorboard_of"]

log = logging.getLogger(__name__)


def save_run_config(log_dir: str | None, out: Path) -> str | None:
    """Copy the resolved configuration the CLI saved in ``log_dir`` to ``out/config.yaml``; return its text."""
    if log_dir and (Path(log_dir) / "config.yaml").is_file():
        text = (Path(log_dir) / "config.yaml").read_text()
        atomic_write_text(out / "config.yaml", text)
        return text
    return None


def tensorboard_of(trainer: Trainer) -> Any | None:
    """The SummaryWriter of the trainer's TensorBoard logger, or None when it has none."""
    logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    return None if logger is None else logger.experiment


class ResultWriter(Callback):
    """Writes a method's result (see the module docstring).

    Args:
        pictures: whether to save (and log) the result's pictures.
        report: whether to write ``report.html`` for results that have one.
        summary: whether to print the result's summary.
    """

    def __init__(self, pictures: bool = True, report: bool = True, summary: bool = True) -> None:
        self.pictures = pictures
        self.report = report
        self.summary = summary

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module)

    def write(self, trainer: Trainer, pl_module: LightningModule) -> Path | None:
        result: MethodResult | None = getattr(pl_module, "result", None)
        log_dir = trainer.log_dir  # a collective under DDP: every rank must evaluate it
        if result is None or not trainer.is_global_zero:
            return None
        out = Path(pl_module.hparams.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        config_text = save_run_config(log_dir, out)
        for name, rows in result.tables.items():
            write_csv(rows, out / f"{name}.csv")
            write_json(rows, out / f"{name}.json", **result.meta, config=config_text)
        drawn = self._draw(result, out) if self.pictures else []
        if self.report and isinstance(result.report, str):  # one row per (unit, range): the unit browser
            names = {Path(n).name: Path(f"{n}.png") for n, _, _ in drawn}
            write_report(out, result.tables[result.report], {**result.meta, "config": config_text},
                         {k: v for k, v in names.items() if k.startswith("unit_")})
        elif self.report and result.report:  # grouped tables, browsed through the result's views
            write_view_report(out, result.tables, result.report, {**result.meta, "config": config_text},
                              [f"{n}.png" for n, _, _ in drawn])
        self._tensorboard(trainer, result, drawn)
        log.info("wrote %s to %s", ", ".join(f"{len(r)} {n}" for n, r in result.tables.items()), out)
        if self.summary and result.summary:
            print(result.summary)
        return out

    @staticmethod
    def _draw(result: MethodResult, out: Path) -> list[tuple[str, str, Any]]:
        drawn = []
        for pic in result.pictures:
            image = pic.draw()
            if image is None:
                continue
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            atomic_write(out / f"{pic.name}.png", lambda f, b=buf.getvalue(): f.write(b))
            drawn.append((pic.name, pic.tag or pic.name, image))
        return drawn

    @staticmethod
    def _tensorboard(trainer: Trainer, result: MethodResult, drawn: list[tuple[str, str, Any]]) -> None:
        tb = tensorboard_of(trainer)
        if tb is None:
            return
        for tag, value in result.scalars.items():
            tb.add_scalar(tag, value, 0)
        for tag, text in result.markdown.items():
            tb.add_text(tag, text, 0)
        for _, tag, image in drawn:
            tb.add_image(tag, np.asarray(image.convert("RGB")), 0, dataformats="HWC")
        tb.flush()
