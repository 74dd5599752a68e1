"""DissectionMethod: the predict loop shared by every dissection-style method (NetDissect, CoEx, CCE).

It is a :class:`~lit_explain.methods.base.LayerMethod` (model, layer, activation store, units, thresholds, top
images, DDP helpers) plus what dissection adds: the concept vocabulary and the sparse concept index of the data
module. The loop, in Lightning's predict hooks:

1. ``setup``: load the network and get the vocabulary and concept index from the data module (one rank builds
   the index, cached atomically; the others load it).
2. ``predict_step`` (the base): unless cached, one forward pass per batch; the layer's activations go to the store.
3. ``on_predict_epoch_end``: the entry is committed, per-unit thresholds are computed exactly, and the subclass's
   :meth:`explain` turns activations + concept index into result rows (identical on every rank). The rows, the
   run metadata and the unit cards to draw are handed forward as :attr:`result`
   (:class:`~lit_explain.results.MethodResult`), which the CLI's result writer writes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from lit_explain.activations.bitmaps import unit_bitmaps
from lit_explain.activations.store import ActivationEntry
from lit_explain.concepts.index import ConceptIndex
from lit_explain.concepts.vocabulary import ConceptVocabulary
from lit_explain.methods.base import SILENT_REASON, LayerMethod
from lit_explain.results import MethodResult, Picture

__all__ = ["DissectionMethod", "NULL_COLUMNS", "SILENT_REASON", "summarize", "unlabel_silent"]

log = logging.getLogger(__name__)

#: Null-baseline IoU columns a method may add to its rows, and their names in the printed summary.
NULL_COLUMNS = {"null_shuffled_iou": "shuffled labels", "null_random_iou": "random model"}


class DissectionMethod(LayerMethod):
    """Base class of predict-loop dissection methods; subclasses implement :meth:`explain`.

    Arguments of :class:`~lit_explain.methods.base.LayerMethod` (model, layer, weights, model_kwargs, units,
    random_units, quantile, activation_dtype, cache_dir, top_images, seed; the CLI lists them), plus:

    Args:
        num_pictures: how many units get a card (the highest-IoU ones), >= 0.
        output_dir: where the results, pictures and the resolved configuration are written.
        **kwargs: see :class:`~lit_explain.methods.base.LayerMethod`.
    """

    def __init__(self, *args: Any, num_pictures: int = 16, output_dir: str = "outputs/dissection",
                 **kwargs: Any) -> None:
        super().__init__(*args, output_dir=output_dir, **kwargs)  # records every argument as hyper-parameters
        if int(num_pictures) < 0:
            raise ValueError(f"num_pictures must be >= 0, got {num_pictures}")

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "concept_index"):
            raise RuntimeError(f"{type(self).__name__} needs a data module with a concept index (e.g. "
                               "BrodenDataModule, SyntheticWorldDataModule)")
        self.network()
        dm.setup("predict")
        self.vocabulary: ConceptVocabulary = dm.vocabulary
        if not len(self.vocabulary.names):
            raise ValueError(f"{type(self).__name__}: the data module's selection leaves no concept to explain units "
                             "with; check its categories / concepts / min_image_count")
        # one rank builds the concept index (cached atomically), the others then load it
        if self.trainer.is_global_zero:
            self.concept_index: ConceptIndex = dm.concept_index()
        self._barrier("concept_index")
        if not self.trainer.is_global_zero:
            self.concept_index = dm.concept_index()

    # ------------------------------------------------------------------ the loop's end
    def on_predict_epoch_end(self) -> None:
        super().on_predict_epoch_end()
        self.selected_units = self.select_units(self.entry.shape[1])
        self.thresholds = self.unit_thresholds(self.selected_units)
        rows = self.explain(self.entry, self.local_indices, self.selected_units, self.thresholds)
        rows = unlabel_silent(rows, self.selected_units, self.silent_units(self.selected_units, self.thresholds))
        meta = {**self.run_meta(), "vocabulary": self.vocabulary.to_dict(),
                "mask_shape": list(self.concept_index.mask_shape)}
        thr = float(getattr(self.hparams, "iou_threshold", 0.04))
        ious = np.array([float(r["iou"]) for r in rows]) if rows else np.zeros(0)
        top = sorted(rows, key=lambda r: -float(r["iou"]))[:50]
        table = "| unit | range | label | category | IoU |\n|---|---|---|---|---|\n" + "\n".join(
            f"| {r['unit']} | {r.get('cluster', 0)} | {r['label']} | {r['category']} | {float(r['iou']):.4f} |"
            for r in top)
        self.result = MethodResult(
            tables={"explanations": rows},
            meta=meta,
            pictures=self.unit_pictures(rows),
            report="explanations",
            summary=summarize(rows, self.hparams.output_dir, thr),
            scalars={"dissection/interpretable_units": int((ious > thr).sum()),
                     "dissection/mean_iou": float(ious.mean()) if len(ious) else 0.0},
            markdown={"dissection/explanations": table},
        )

    # ------------------------------------------------------------------ shared pieces for subclasses
    def image_chunks(self, indices: torch.Tensor, units: int) -> list[torch.Tensor]:
        """Split image indices into chunks whose upsampled bitmaps stay around 2**25 values."""
        per_image = max(1, units * self.concept_index.pixel_size)
        size = max(1, min(256, (1 << 25) // per_image))
        return list(indices.split(size)) if len(indices) else []

    def label_mask(self, row: dict[str, Any], image_ids: torch.Tensor) -> torch.Tensor:
        """(B, sh, sw) bool mask of a row's label on the given images (a concept name; subclasses with formulas
        override this)."""
        if row["label"] not in self.vocabulary.names:
            return torch.zeros(len(image_ids), *self.concept_index.mask_shape, dtype=torch.bool)
        c = self.vocabulary.index_of(row["label"])
        return self.concept_index.dense_masks(image_ids, torch.tensor([c]))[:, 0]

    def unit_pictures(self, rows: list[dict[str, Any]]) -> list[Picture]:
        """Cards of the ``num_pictures`` highest-IoU rows: the unit's top images, its activation region in the
        row's range and its label's mask (drawn lazily by the writer)."""
        from lit_explain.viz.unit_cards import unit_card

        hp = self.hparams
        entry, index = self.entry, self.concept_index
        dataset = self.predict_dataset()
        ranked = sorted(rows, key=lambda r: -float(r["iou"]))[: hp.num_pictures]
        pictures = []
        for r in ranked:
            u = int(r["unit"])
            name = f"unit_{u:04d}" + (f"_r{int(r['cluster'])}" if int(r.get("cluster", 0)) else "")

            def draw(r=r, u=u):
                _, top = self.top_images(torch.tensor([u]), hp.top_images)
                top = top[0][top[0] >= 0]
                acts = entry.rows(top)[:, [u]]
                lo = torch.tensor([float(r["range_lo"])])
                hi = None if float(r["range_hi"]) == float("inf") else torch.tensor([float(r["range_hi"])])
                bm = unit_bitmaps(acts, index.mask_shape, lo, hi).view(len(top), *index.mask_shape).numpy()
                lm = self.label_mask(r, top).numpy()
                images = [_open_image(dataset.image_path(int(i))) for i in top]
                title = f"unit {u}" + (f" range {r['cluster']}" if int(r.get("cluster", 0)) else "") + \
                    f": {r['label']}  IoU {float(r['iou']):.3f}"
                return unit_card(images, list(bm), list(lm), title)

            pictures.append(Picture(f"units/{name}", draw))
        return pictures

    # ------------------------------------------------------------------ subclass hook
    def explain(self, entry: ActivationEntry, local_indices: torch.Tensor, units: torch.Tensor,
                thresholds: torch.Tensor) -> list[dict[str, Any]]:
        """Return the result rows (identical on every rank). ``local_indices`` are this rank's images."""
        raise NotImplementedError


def unlabel_silent(rows: list[dict[str, Any]], units: torch.Tensor, silent: torch.Tensor) -> list[dict[str, Any]]:
    """Rows of silent units (the top range of a unit with no activation above its threshold) get an empty label,
    empty per-category labels and a ``reason``, never the first concept at IoU 0."""
    dead = {int(u) for u, s in zip(units.tolist(), silent.tolist()) if s}
    if not dead:
        return rows
    out = []
    for r in rows:
        if int(r["unit"]) in dead and float(r.get("range_hi", float("inf"))) == float("inf"):
            r = {k: ("" if k == "label" or k == "category" or k.endswith("_label") else v) for k, v in r.items()}
            r.update(iou=0.0, length=0, reason=SILENT_REASON)
        out.append(r)
    return out


def _open_image(path: Any) -> Any:
    from PIL import Image

    return Image.open(path)


def summarize(rows: list[dict[str, Any]], out: Any, threshold: float, top: int = 12) -> str:
    """A short text summary of a dissection table: how many explanations beat the IoU threshold, per category,
    how they compare with the null baselines (when the method reported any), and the best ones."""
    good = [r for r in rows if float(r["iou"]) > threshold]
    silent = sum(1 for r in rows if r.get("reason"))
    cats: dict[str, int] = {}
    for r in good:
        cats[r["category"]] = cats.get(r["category"], 0) + 1
    lines = [f"\n{len(good)} of {len(rows)} explanations have IoU > {threshold:g}"
             + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(cats.items(), key=lambda kv: -kv[1]))})" if cats else "")]
    if silent:
        lines.append(f"{silent} unlabelled: {SILENT_REASON}")
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
