"""NetDissect (Bau et al., CVPR 2017; NetDissect-Lite): label each unit with the concept of highest IoU.

Per unit u: threshold T_u = the upper-tail ``quantile`` (0.005) of all its raw activations; bitmap
``A_u(x) = upsample(a_u(x)) > T_u`` on the concept-mask grid; dataset-level
``IoU(u, c) = sum_x |A_u(x) & M_c(x)| / sum_x |A_u(x) | M_c(x)|``. The tally is one streaming pass over the
cached activations, vectorised over units and concepts (a sparse concept incidence times dense unit bitmaps),
accumulated in a torchmetrics :class:`~lit_explain.metrics.dissection_iou.DissectionIoU` whose sum states make
the result identical for any number of processes.

Options: NetDissect-Lite's category-restricted union (``category_restricted_union``) and its choice of one
winner per category then overall (the per-category columns ``<category>_label`` / ``<category>_iou``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lit_explain.activations.bitmaps import may_fire, unit_bitmaps
from lit_explain.activations.store import ActivationEntry
from lit_explain.concepts.index import ConceptIndex
from lit_explain.methods.dissection import DissectionMethod
from lit_explain.metrics.dissection_iou import DissectionIoU

__all__ = ["NetDissect", "tally_iou"]


class NetDissect(DissectionMethod):
    """Network Dissection as a predict loop. Arguments of :class:`DissectionMethod`, plus:

    Args:
        category_restricted_union: count a unit's activation in the union only on images where the concept's
            category occurs under it (NetDissect-Lite); False gives the plain dataset IoU (compexp, CCE).
        iou_threshold: a unit is reported ``interpretable`` when its best IoU exceeds this (NetDissect: 0.04).
        **kwargs: see :class:`DissectionMethod`.
    """

    def __init__(self, *args: Any, category_restricted_union: bool = False, iou_threshold: float = 0.04,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # save_hyperparameters in the base also records this class's args
        self.iou: torch.Tensor | None = None

    def tally(self, entry: ActivationEntry, local_indices: torch.Tensor, units: torch.Tensor,
              thresholds: torch.Tensor) -> DissectionIoU:
        """Accumulate the IoU states over this rank's images (see :func:`tally_iou`); unsynced metric."""
        cat = torch.tensor(self.vocabulary.category_codes()) if self.hparams.category_restricted_union else None
        return tally_iou(entry, local_indices, units, thresholds, self.concept_index, cat)

    def explain(self, entry: ActivationEntry, local_indices: torch.Tensor, units: torch.Tensor,
                thresholds: torch.Tensor) -> list[dict[str, Any]]:
        metric = self.tally(entry, local_indices, units, thresholds)
        iou = metric.compute()  # synced across ranks: (U, C)
        self.iou = iou
        with metric.sync_context():  # dataset totals, not this rank's share
            unit_area = metric.unit_area.clone()
            inter = metric.intersection.clone()
            concept_area = metric.concept_area.clone()
        vocab = self.vocabulary
        cats = vocab.category_names
        codes = torch.tensor(vocab.category_codes())
        rows = []
        for j, u in enumerate(units.tolist()):
            best = int(torch.argmax(iou[j])) if iou.shape[1] else -1
            row: dict[str, Any] = {
                "unit": u,
                "cluster": 0,
                "range_lo": float(thresholds[j]),
                "range_hi": float("inf"),
                "label": vocab.names[best] if best >= 0 else "",
                "category": vocab.categories[best] if best >= 0 else "",
                "length": 1,
                "iou": float(iou[j, best]) if best >= 0 else 0.0,
                "threshold": float(thresholds[j]),
                "interpretable": bool(best >= 0 and float(iou[j, best]) > self.hparams.iou_threshold),
                "unit_area": int(unit_area[j]),
                "label_area": int(concept_area[best]) if best >= 0 else 0,
                "intersection": int(inter[j, best]) if best >= 0 else 0,
            }
            for k, name in enumerate(cats):
                sel = torch.nonzero(codes == k).flatten()
                if len(sel) == 0:
                    continue
                b = int(sel[torch.argmax(iou[j, sel])])
                row[f"{name}_label"] = vocab.names[b]
                row[f"{name}_iou"] = float(iou[j, b])
            rows.append(row)
        return rows


def tally_iou(entry: ActivationEntry, image_ids: torch.Tensor, units: torch.Tensor, thresholds: torch.Tensor,
              index: ConceptIndex, concept_category: torch.Tensor | None = None,
              pairs_per_step: int = 4096, chunk_values: int = 1 << 23, step_pixels: int = 1 << 24) -> DissectionIoU:
    """The NetDissect tally of cached activations against a concept index, as a (unsynced) DissectionIoU.

    Only (image, unit) pairs whose stored per-image maximum reaches the threshold are upsampled and tallied:
    bilinear upsampling is a convex combination, so every other pair has an empty bitmap. At the 0.995
    quantile that is a small fraction of all pairs; the result is identical to tallying dense bitmaps.

    Memory does not grow with the number of images: images are tallied in chunks whose dense label planes hold
    about ``chunk_values`` values (laid out by :meth:`ConceptIndex.label_planes` in bounded groups), a chunk's
    active pairs are read from the cache ``pairs_per_step`` at a time (and at most ``step_pixels`` upsampled
    pixels), and concept areas are summed per chunk (:meth:`ConceptIndex.concept_areas`), never from an
    (N, C) table.

    Args:
        entry: the activation cache entry (N, U_all, h, w) with per-image maxima.
        image_ids: (B,) images to tally (this rank's share).
        units: (U,) unit indices into the entry.
        thresholds: (U,) thresholds; a unit is on where the upsampled activation is strictly above.
        index: the dataset's concept index.
        concept_category: optional (C,) category codes for NetDissect-Lite's category-restricted union.
        pairs_per_step: pairs upsampled at once (memory: pairs * mask pixels floats).
        chunk_values: label-plane values (int32) of one chunk of images: chunk size * depth * mask pixels.
        step_pixels: bound on pairs * mask pixels of one step (the float32 upsampled maps).
    """
    metric = DissectionIoU(len(units), index.num_concepts, concept_category=concept_category)
    thr = thresholds.to(torch.float32)
    units_np = torch.as_tensor(units).numpy()
    step = max(1, min(int(pairs_per_step), int(step_pixels) // max(1, index.pixel_size)))
    # images per chunk: their dense label planes (chunk x depth x H int32) stay around chunk_values values
    chunk_size = max(1, min(1024, int(chunk_values) // max(1, index.depth * index.pixel_size)))
    for chunk in torch.sort(torch.as_tensor(image_ids, dtype=torch.int64)).values.split(chunk_size):
        ids = chunk.numpy()
        planes = (chunk, index.label_planes(chunk))
        maxes = torch.from_numpy(np.array(entry.maxes[ids][:, units_np]))  # (B, U)
        img, unit = torch.nonzero(may_fire(maxes, thr), as_tuple=True)
        img_np, unit_np = img.numpy(), units_np[unit.numpy()]
        for s in range(0, max(len(img), 1), step):
            sl = slice(s, s + step)
            acts = torch.from_numpy(np.asarray(entry.acts[ids[img_np[sl]], unit_np[sl]], dtype=np.float32))
            bits = unit_bitmaps(acts, index.mask_shape, thr[unit[sl]])  # (P, H)
            metric.update(bits, chunk[img[sl]], index, pair_units=unit[sl],
                          new_images=chunk if s == 0 else None, planes=planes)
    return metric
