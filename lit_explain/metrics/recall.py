"""RecallAtK: recall@k of word explanations as a torchmetrics Metric with sum states (exact under DDP).

See :mod:`lit_explain.metrics.functional.recall` for the definition (LaViSE's objective metric as the MLRC
reproduction computes it, with the 99.5th-percentile threshold). The same metric serves two uses:

* filter explanations: one row per (filter, top image) pair, ground truth from IoU > 0.04 with the
  thresholded activation (:func:`~lit_explain.metrics.functional.recall.iou_ground_truth`);
* the explainer's validation during fit: one row per annotated instance, ground truth = its category words,
  predictions = the nearest label embeddings of the explainer's output.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric

from lit_explain.metrics.functional.recall import DEFAULT_KS, recall_at_k_compute, recall_at_k_update

__all__ = ["RecallAtK"]

_GROUPS = ("all", "seen", "unseen")


class RecallAtK(Metric):
    """Mean recall@k over rows (pairs) with a non-empty ground truth, overall and for seen / unseen concepts.

    ``update`` inputs:

    * ``topk_labels`` (:class:`~torch.Tensor`): (P, k_max) int64 category ids of each row's ranked predicted
      words, -1 for words that are no category;
    * ``ground_truth`` (:class:`~torch.Tensor`): (P, K) bool;
    * ``seen`` (:class:`~torch.Tensor`, optional): (K,) bool, True for categories used in training. Without it
      only the overall group is counted.

    ``compute`` returns a dict ``{"recall@5": t, "recall@5/seen": t, "recall@5/unseen": t, ..., "pairs": n, ...}``
    of scalar tensors (NaN for a group without rows).

    States are per-group sums of recalls and row counts (``dist_reduce_fx="sum"``), so the value is the same for
    any number of processes. Under ``ddp_spawn`` call :meth:`reset` at epoch start (states arrive in shared memory).

    Args:
        ks: cut-offs, (5, 10, 20) by default.
        kwargs: torchmetrics ``Metric`` keyword arguments (``sync_on_compute``, ``process_group`` ...).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, ks: Sequence[int] = DEFAULT_KS, **kwargs) -> None:
        super().__init__(**kwargs)
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 1:
            raise ValueError(f"RecallAtK: ks must be positive integers, got {ks}")
        self.ks = ks
        for g in _GROUPS:
            self.add_state(f"sum_{g}", torch.zeros(len(ks), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"count_{g}", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, topk_labels: torch.Tensor, ground_truth: torch.Tensor, seen: torch.Tensor | None = None) -> None:
        if topk_labels.ndim != 2 or ground_truth.ndim != 2 or topk_labels.shape[0] != ground_truth.shape[0]:
            raise ValueError(
                f"RecallAtK.update: expected topk_labels (P, k) and ground_truth (P, K), got "
                f"{tuple(topk_labels.shape)} and {tuple(ground_truth.shape)}"
            )
        groups = {"all": None}
        if seen is not None:
            if seen.shape != (ground_truth.shape[1],):
                raise ValueError(f"RecallAtK.update: seen must be ({ground_truth.shape[1]},), got {tuple(seen.shape)}")
            seen = seen.bool().to(ground_truth.device)
            groups.update(seen=seen, unseen=~seen)
        for g, mask in groups.items():
            sums, count = recall_at_k_update(topk_labels, ground_truth, self.ks, mask)
            setattr(self, f"sum_{g}", getattr(self, f"sum_{g}") + sums.to(self.device))
            setattr(self, f"count_{g}", getattr(self, f"count_{g}") + count.to(self.device))

    def compute(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for g in _GROUPS:
            suffix = "" if g == "all" else f"/{g}"
            values = recall_at_k_compute(getattr(self, f"sum_{g}"), getattr(self, f"count_{g}"))
            for k, v in zip(self.ks, values):
                out[f"recall@{k}{suffix}"] = v
            out[f"pairs{suffix}"] = getattr(self, f"count_{g}").clone()
        return out
