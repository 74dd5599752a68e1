"""DissectionIoU: the NetDissect unit x concept IoU tally as a torchmetrics Metric (DDP-summable states).

The metric does the bookkeeping (which states, how they are summed, the IoU); the counting of bitmap pixels
per concept is done by the ``index`` passed to ``update``, any object with the counting methods of
:class:`lit_explain.concepts.index.ConceptIndex` (``concept_areas``, ``intersections``, ``category_hits``,
``pair_intersections``, ``pair_category_hits``). The metrics layer never imports the concepts layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from lit_explain.activations.bitmaps import set_pixels
from lit_explain.metrics.functional.dissection_iou import dissection_iou

__all__ = ["DissectionIoU"]


class DissectionIoU(Metric):
    """Accumulates intersections and areas of unit bitmaps with every concept; ``compute`` gives (U, C) IoU.

    Every state is a sum, so the result is the same for any number of processes, as long as each image is
    seen exactly once (the predict loop's unpadded sampler guarantees it).

    Args:
        num_units: U.
        num_concepts: C.
        concept_category: optional (C,) category codes; enables NetDissect-Lite's category-restricted union.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_units: int, num_concepts: int, concept_category: torch.Tensor | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_units, self.num_concepts = num_units, num_concepts
        self.concept_category = None if concept_category is None else torch.as_tensor(concept_category, dtype=torch.int64)
        k = 0 if self.concept_category is None else int(self.concept_category.max()) + 1
        self.num_categories = k
        self.add_state("intersection", torch.zeros(num_units, num_concepts, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("unit_area", torch.zeros(num_units, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("concept_area", torch.zeros(num_concepts, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("unit_category_area", torch.zeros(num_units, max(k, 1), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_images", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, bitmaps: torch.Tensor, image_ids: torch.Tensor, index: Any,
               pair_units: torch.Tensor | None = None, new_images: torch.Tensor | None = None,
               planes: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Add a batch, as dense bitmaps of every unit or as sparse (image, unit) pairs.

        Args:
            bitmaps: dense: (B, U, H) or (B, U, sh, sw) bool unit bitmaps on the index's mask grid;
                pairs: (P, H) bool, one bitmap per (image, unit) pair (pairs left out must be empty).
            image_ids: dense: (B,) dataset indices; pairs: (P,) the image of each pair.
            index: the dataset's concept index (the object that counts concept pixels under the bitmaps).
            pair_units: pairs only: (P,) unit position of each pair.
            new_images: pairs only: the images whose concept areas this call counts (each image of the dataset
                must be counted exactly once over all calls, whether or not any of its pairs is active).
            planes: pairs only, optional: ``(sorted image ids, index.label_planes(them))`` covering the pairs'
                images, so that many calls over the same images lay their labels out once.
        """
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64).cpu()
        if pair_units is None:
            flat = bitmaps.reshape(bitmaps.shape[0], bitmaps.shape[1], -1)
            self._add_images(image_ids, index)
            areas = flat.sum(-1).to(torch.int64)  # (B, U)
            self.intersection += index.intersections(flat, image_ids).to(self.intersection.device)
            self.unit_area += areas.sum(0).to(self.unit_area.device)
            if self.concept_category is not None:
                hits = index.category_hits(flat, image_ids, self.concept_category, self.num_categories)  # (B,U,K)
                self.unit_category_area += (hits.to(torch.int64) * areas[:, :, None]).sum(0).to(
                    self.unit_category_area.device)
            return
        if new_images is not None:
            self._add_images(torch.as_tensor(new_images, dtype=torch.int64).cpu(), index)
        bitmaps = bitmaps.flatten(1)  # (P, H); also for P = 0 (a chunk with no active pair)
        pair_units = torch.as_tensor(pair_units, dtype=torch.int64).cpu()
        if len(pair_units) == 0:
            return
        on = set_pixels(bitmaps)  # shared by every count below
        areas = torch.bincount(on[0], minlength=len(pair_units))  # (P,); cheaper than reducing the bool bitmaps
        self.intersection += index.pair_intersections(bitmaps, image_ids, pair_units, self.num_units,
                                                      planes=planes, on=on).to(self.intersection.device)
        self.unit_area.index_add_(0, pair_units.to(self.unit_area.device), areas.to(self.unit_area.device))
        if self.concept_category is not None:
            hits = index.pair_category_hits(bitmaps, image_ids, self.concept_category, self.num_categories, planes,
                                            on)
            self.unit_category_area.index_add_(0, pair_units.to(self.unit_category_area.device),
                                               (hits.to(torch.int64) * areas[:, None]).to(self.unit_category_area.device))

    def _add_images(self, image_ids: torch.Tensor, index: Any) -> None:
        """Count the concept areas of images (each image exactly once), whatever the units do on them; summed by
        the index over just these images (no per-(image, concept) table of the whole dataset)."""
        self.concept_area += index.concept_areas(image_ids).to(torch.int64).to(self.concept_area.device)
        self.num_images += len(image_ids)

    def compute(self) -> torch.Tensor:
        """(U, C) float64 dataset-level IoU."""
        if self.concept_category is not None:
            return dissection_iou(self.intersection, self.unit_area, self.concept_area, self.unit_category_area,
                                  self.concept_category)
        return dissection_iou(self.intersection, self.unit_area, self.concept_area)
