"""Every CCE explanation metric at once from the summed per-sample counts (dissection.md §4.1).

``sums[..., k]`` follows :data:`~lit_explain.metrics.functional.sample_counts.COUNT_FIELDS`; the result is exact,
so batch-wise and DDP-summed statistics give the same values as whole-dataset masks.
"""

from __future__ import annotations

import torch

from lit_explain.metrics.functional._ratio import ratio
from lit_explain.metrics.functional.sample_counts import COUNT_FIELDS, count_sums, sample_counts

__all__ = ["EXPLANATION_METRICS", "metrics_from_sums", "explanation_metrics", "explanation_metrics_from_counts"]

#: Metric names (CCE ``compute_metrics.py`` column names where they exist).
EXPLANATION_METRICS = (
    "iou",
    "activation_coverage",
    "label_coverage",
    "samples_coverage",
    "explanation_coverage",
    "avg_label_size",
    "avg_activation_size",
    "avg_overlap_size",
    "avg_overlapping_activation_size",
)


def metrics_from_sums(sums: torch.Tensor, pixels_per_sample: int) -> dict[str, torch.Tensor]:
    """All metrics from count sums (..., 8) int64; each value is float64 with shape ``sums.shape[:-1]``."""
    f = {name: sums[..., i] for i, name in enumerate(COUNT_FIELDS)}
    p = int(pixels_per_sample)
    return {
        "iou": ratio(f["overlap"], f["act"] + f["label"] - f["overlap"]),
        "activation_coverage": ratio(f["overlap"], f["act"]),
        "label_coverage": ratio(f["overlap"], f["label"]),
        "samples_coverage": ratio(f["n_overlap"], f["n_label"]),
        "explanation_coverage": ratio(f["n_overlap"], f["n_act"]),
        "avg_label_size": ratio(f["label"], f["n_label"] * p),
        "avg_activation_size": ratio(f["act"], f["n_act"] * p),
        "avg_overlap_size": ratio(f["overlap"], f["n_overlap"] * p),
        "avg_overlapping_activation_size": ratio(f["act_where_overlap"], f["n_overlap"] * p),
    }


def explanation_metrics_from_counts(act, label, overlap, pixels_per_sample: int) -> dict[str, torch.Tensor]:
    """All metrics from per-sample counts (N, ...) (e.g. from :func:`lit_explain.concepts.tally.formula_stats`)."""
    return metrics_from_sums(count_sums(act, label, overlap), pixels_per_sample)


def explanation_metrics(activation: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """All metrics of bool masks (N, ...) of a unit bitmap and an explanation."""
    a, m, o = sample_counts(activation, label)
    return explanation_metrics_from_counts(a, m, o, activation.reshape(activation.shape[0], -1).shape[1])
