"""The CCE explanation metrics as torchmetrics Metrics: one family over one set of summed per-sample counts.

Every metric here accumulates the same :data:`~lit_explain.metrics.functional.sample_counts.COUNT_FIELDS` sums
(``dist_reduce_fx="sum"``, so the value is identical for any number of processes as long as each sample is
counted once) and differs only in which ratio ``compute`` returns; the definitions are in the functional twin
:mod:`lit_explain.metrics.functional.sample_counts`.

``update(activation, label)``: bool masks (B, P) for one explanation, or (B, J, P) for J explanations (P = pixels
per sample, i.e. flatten (sh, sw) first). ``update_counts(act, label, overlap)``: per-sample counts (B,) or
(B, J), e.g. from the sparse concept index without dense masks. ``compute`` returns a float64 scalar, or (J,)
with ``num_explanations=J`` (:class:`ExplanationMetrics`: a dict of all of them).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torchmetrics import Metric

from lit_explain.metrics.functional.sample_counts import COUNT_FIELDS, MASK_SIZE_KINDS, count_sums, metrics_from_sums

__all__ = [
    "SampleCountMetric",
    "ExplanationMetrics",
    "ExplanationIoU",
    "ActivationCoverage",
    "LabelCoverage",
    "SamplesCoverage",
    "DetectionAccuracy",
    "ExplanationCoverage",
    "AverageMaskSize",
]


class SampleCountMetric(Metric):
    """Summed per-sample counts of one or many explanations; ``compute`` returns the metric named by the class
    attribute ``metric`` (every metric, as a dict, when it is None).

    Args:
        num_explanations: J >= 1, the number of explanations tracked side by side; None for a single one.
        pixels_per_sample: P >= 1 (needed by the size metrics when only counts are given; inferred from masks).
        kwargs: torchmetrics ``Metric`` keyword arguments.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    #: the name in :data:`~lit_explain.metrics.functional.sample_counts.EXPLANATION_METRICS` ``compute`` returns
    metric: ClassVar[str | None] = None

    def __init__(self, num_explanations: int | None = None, pixels_per_sample: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_explanations is not None and int(num_explanations) < 1:
            raise ValueError(f"{type(self).__name__}: num_explanations must be None or >= 1, got {num_explanations}")
        if pixels_per_sample is not None and int(pixels_per_sample) < 1:
            raise ValueError(f"{type(self).__name__}: pixels_per_sample must be None or >= 1, got {pixels_per_sample}")
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

    def compute(self):
        metrics = self.all_metrics()
        return metrics if self.metric is None else metrics[self.metric]


class ExplanationMetrics(SampleCountMetric):
    """Every CCE metric at once: ``compute`` returns a dict name -> float64 tensor."""


class ExplanationIoU(SampleCountMetric):
    """Dataset-level IoU of the explanation with the unit bitmap (CCE ``iou``)."""

    metric = "iou"


class ActivationCoverage(SampleCountMetric):
    """``Σ|A ∧ L| / Σ|A|`` (CCE ``activation_coverage``)."""

    metric = "activation_coverage"


class LabelCoverage(SampleCountMetric):
    """``Σ|A ∧ L| / Σ|L|`` (CCE's ``detection_accuracy`` function, reported as ``label_coverage``)."""

    metric = "label_coverage"


class SamplesCoverage(SampleCountMetric):
    """``#{i: A_i ∧ L_i ≠ ∅} / #{i: L_i ≠ ∅}`` (CCE; equals Makinwa et al.'s Detection Accuracy)."""

    metric = "samples_coverage"


class DetectionAccuracy(SamplesCoverage):
    """Makinwa et al.'s Detection Accuracy: :class:`SamplesCoverage` under the name detacc-compexp uses."""


class ExplanationCoverage(SampleCountMetric):
    """``#{i: A_i ∧ L_i ≠ ∅} / #{i: A_i ≠ ∅}`` (CCE ``explanation_coverage``)."""

    metric = "explanation_coverage"


class AverageMaskSize(SampleCountMetric):
    """Mean of ``|M_i| / P`` over the samples where M is non-empty.

    Args:
        kind: which mask M, one of ``label`` (CCE avg_segmentation_size), ``activation``, ``overlap`` (A ∧ L) or
            ``overlapping_activation`` (A on the samples where A ∧ L ≠ ∅).
        num_explanations, pixels_per_sample, kwargs: as :class:`SampleCountMetric`.
    """

    def __init__(self, kind: str = "label", num_explanations: int | None = None,
                 pixels_per_sample: int | None = None, **kwargs) -> None:
        if kind not in MASK_SIZE_KINDS:
            raise ValueError(f"AverageMaskSize: kind must be one of {MASK_SIZE_KINDS}, got {kind!r}")
        super().__init__(num_explanations, pixels_per_sample, **kwargs)
        self.kind = kind
        self.metric = f"avg_{kind}_size"
