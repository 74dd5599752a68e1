"""Null baselines of a compositional explanation: what the same search finds without a trained unit behind it.

An IoU of 0.04 means little on its own. Each baseline repeats the job's search on a bitmap that keeps what
chance could exploit and removes what the unit learned, and reports its IoU and formula beside the
explanation's:

* ``shuffled_labels``: the unit's bitmap with its images permuted (one permutation per run, seeded), i.e. the
  annotations shuffled across images: what chance alignment achieves with these masks and this bitmap
  (columns ``null_shuffled_iou``, ``null_shuffled_label``);
* ``random_model``: the same unit and range index of a randomly initialised copy of the model (its activations
  are cached and clustered like the model's): what the architecture and the concept masks give without
  training (columns ``null_random_iou``, ``null_random_label``; 0 and '' where that unit has fewer ranges).

:data:`NULL_BASELINES` is the registry; a method asks each selected baseline for its columns with a
:class:`NullJob` describing the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from lit_explain.concepts.search import SearchContext, SearchSettings, beam_search
from lit_explain.concepts.tally import UnitTally

__all__ = ["NullJob", "NullBaseline", "NULL_BASELINES"]


@dataclass
class NullJob:
    """One (unit, range) job as the baselines see it.

    Attributes:
        ctx: the search context of the concept index.
        bitmap: (N, H) bool, the unit's dataset bitmap for the range.
        settings: the job's search settings.
        vocabulary: names of the concepts (formula strings).
        permutation: (N,) the run's image permutation (``shuffled_labels``).
        random_bitmap: () -> (N, H) bool bitmap of the same unit and range index of the random model, or None
            when that unit has no such range (``random_model``).
    """

    ctx: SearchContext
    bitmap: torch.Tensor
    settings: SearchSettings
    vocabulary: Any
    permutation: torch.Tensor | None = None
    random_bitmap: Callable[[], torch.Tensor | None] | None = None


@dataclass(frozen=True)
class NullBaseline:
    """A registered baseline: its columns, whether it needs the random copy of the model, and how to compute
    the columns of one job."""

    columns: tuple[str, str]
    needs_random_copy: bool
    compute: Callable[[NullJob], dict[str, Any]]


def _search_columns(job: NullJob, bitmap: torch.Tensor | None, columns: tuple[str, str]) -> dict[str, Any]:
    iou_col, label_col = columns
    if bitmap is None:
        return {iou_col: 0.0, label_col: ""}
    res = beam_search(job.ctx, UnitTally.build(job.ctx, bitmap), job.settings)
    return {iou_col: float(res.iou), label_col: res.to_str(job.vocabulary)}


_SHUFFLED = ("null_shuffled_iou", "null_shuffled_label")
_RANDOM = ("null_random_iou", "null_random_label")

#: Registry of the null baselines, by the name the method's ``null_baselines`` argument uses.
NULL_BASELINES: dict[str, NullBaseline] = {
    "shuffled_labels": NullBaseline(_SHUFFLED, False,
                                    lambda job: _search_columns(job, job.bitmap[job.permutation], _SHUFFLED)),
    "random_model": NullBaseline(_RANDOM, True, lambda job: _search_columns(job, job.random_bitmap(), _RANDOM)),
}
