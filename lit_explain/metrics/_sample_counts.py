"""Shared base of the explanation metrics: summed per-sample counts as DDP-summable torchmetrics states."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from lit_explain.metrics.functional.explanation_metrics import metrics_from_sums
from lit_explain.metrics.functional.sample_counts import COUNT_FIELDS, count_sums

__all__ = ["SampleCountMetric"]


class SampleCountMetric(Metric):
    """Accumulates the :data:`~lit_explain.metrics.functional.sample_counts.COUNT_FIELDS` sums of one or many
    explanations; subclasses pick which metric ``compute`` returns.

    ``update(activation, label)``: bool masks (B, P) for one explanation, or (B, J, P) for J explanations
    (P = pixels per sample, i.e. flatten (sh, sw) first). ``update_counts(act, label, overlap)``: per-sample
    counts (B,) or (B, J), e.g. from the sparse concept index without dense masks. Every state is a sum
    (``dist_reduce_fx="sum"``), so the value is identical for any number of processes as long as each sample is
    counted once.

    Args:
        num_explanations: J, the number of explanations tracked side by side; None for a single one.
        pixels_per_sample: P (needed by the size metrics when only counts are given; inferred from masks).
        kwargs: torchmetrics ``Metric`` keyword arguments.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_explanations: int | None = None, pixels_per_sample: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        shape = () if num_explanations is None else (int(num_explanations),)
        self.num_explanations = num_explanations
        self.pixels_per_sample = pixels_per_sample
        self.add_state("sums", torch.zeros(*shape, len(COUNT_FIELDS), dtype=torch.int64), dist_reduce_fx="sum")

    def _check(self, t: torch.Tensor, what: str) -> None:
        expect = 1 if self.num_explanations is None else 2
        if t.ndim != expect or (self.num_explanations is not None and t.shape[1] != self.num_explanations):
            want = "(B,)" if self.num_explanations is None else f"(B, {self.num_explanations})"
            raise ValueError(f"{type(self).__name__}: {what} has shape {tuple(t.shape)}, expected {want} per-sample values")

    def update(self, activation: torch.Tensor, label: torch.Tensor) -> None:
        if activation.shape != label.shape:
            raise ValueError(f"activation {tuple(activation.shape)} and label {tuple(label.shape)} differ in shape")
        a, m = activation.bool(), label.bool()
        if self.pixels_per_sample is None:
            self.pixels_per_sample = int(a.shape[-1])
        self.update_counts(a.sum(-1, dtype=torch.int64), m.sum(-1, dtype=torch.int64), (a & m).sum(-1, dtype=torch.int64))

    def update_counts(self, act: torch.Tensor, label: torch.Tensor, overlap: torch.Tensor) -> None:
        for t, what in ((act, "act"), (label, "label"), (overlap, "overlap")):
            self._check(torch.as_tensor(t), what)
        self.sums += count_sums(act, label, overlap).to(self.sums.device)

    def all_metrics(self) -> dict[str, torch.Tensor]:
        """Every metric from the current (synced by ``compute``) states."""
        return metrics_from_sums(self.sums, self.pixels_per_sample or 1)
