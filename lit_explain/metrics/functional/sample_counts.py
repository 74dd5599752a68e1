"""The CCE explanation metrics as functions of per-sample counts (the functional twin of
:mod:`lit_explain.metrics.sample_counts`).

Every explanation metric of CCE and detacc-compexp is a ratio of sums of three per-sample counts of the unit
bitmap A and the explanation's mask L, both bool (N, P) with P = sh·sw pixels per sample:

* ``act[i] = |A_i|``, ``label[i] = |L_i|``, ``overlap[i] = |A_i ∧ L_i|``.

Their dataset sums and the numbers of samples where each is non-zero (:data:`COUNT_FIELDS`, :func:`count_sums`)
are plain sums, so every metric is exact under DDP (sum-reduced states) and can be computed batch by batch.
The metrics (:data:`EXPLANATION_METRICS`, CCE's ``compute_metrics.py`` column names where they exist):

* ``iou``: ``Σ|A_i ∧ L_i| / Σ|A_i ∨ L_i|`` (a dataset ratio, not a mean of per-sample IoUs);
* ``activation_coverage``: ``Σ|A_i ∧ L_i| / Σ|A_i|``, the share of firing pixels inside L;
* ``label_coverage``: ``Σ|A_i ∧ L_i| / Σ|L_i|``, the pixel recall of L by the unit (CCE's function of this is
  named ``detection_accuracy``; it is not the Detection Accuracy below);
* ``samples_coverage``: ``#{i: A_i ∧ L_i ≠ ∅} / #{i: L_i ≠ ∅}``; this is exactly the image-level Detection
  Accuracy of Makinwa et al. (detacc-compexp, which rounds it to 4 decimals; here it is exact);
* ``explanation_coverage``: ``#{i: A_i ∧ L_i ≠ ∅} / #{i: A_i ≠ ∅}``, the share of firing samples L touches;
* ``avg_<M>_size``: mean of ``|M_i| / P`` over the samples where M is non-empty, for M = label (CCE
  ``avg_segmentation_size``), activation, overlap (A ∧ L) and overlapping_activation (A, on the samples where
  A ∧ L ≠ ∅).

Every ratio is 0 where its denominator is 0.
"""

from __future__ import annotations

import torch

from lit_explain.ratios import iou_from_counts, ratio

__all__ = [
    "COUNT_FIELDS",
    "EXPLANATION_METRICS",
    "MASK_SIZE_KINDS",
    "sample_counts",
    "count_sums",
    "metrics_from_sums",
    "explanation_metrics_from_counts",
    "explanation_metrics",
    "explanation_iou",
    "activation_coverage",
    "label_coverage",
    "samples_coverage",
    "explanation_coverage",
    "detection_accuracy",
    "detection_accuracy_from_counts",
    "avg_mask_size",
    "avg_sizes",
]

#: Names of the summed statistics, in the order of :func:`count_sums`'s last dimension.
COUNT_FIELDS = ("act", "label", "overlap", "act_where_overlap", "n_act", "n_label", "n_overlap", "n_samples")

#: Metric names returned by :func:`metrics_from_sums`.
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

#: The masks whose average size is reported (``avg_<kind>_size``).
MASK_SIZE_KINDS = ("label", "activation", "overlap", "overlapping_activation")


def sample_counts(activation: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (|A_i|, |L_i|, |A_i ∧ L_i|).

    Args:
        activation: (N, ...) bool unit bitmap; every dimension after the first is a pixel dimension.
        label: (N, ...) bool explanation mask, same shape.

    Returns:
        act, label, overlap: (N,) int64 each.
    """
    if activation.shape != label.shape:
        raise ValueError(f"activation {tuple(activation.shape)} and label {tuple(label.shape)} masks differ in shape")
    a = activation.reshape(activation.shape[0], -1).bool()
    m = label.reshape(label.shape[0], -1).bool()
    return a.sum(1, dtype=torch.int64), m.sum(1, dtype=torch.int64), (a & m).sum(1, dtype=torch.int64)


def count_sums(act: torch.Tensor, label: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
    """Reduce per-sample counts (N, ...) over samples to the :data:`COUNT_FIELDS` sums (..., 8) int64."""
    act, label, overlap = (torch.as_tensor(t, dtype=torch.int64) for t in (act, label, overlap))
    hit = overlap > 0
    return torch.stack(
        [
            act.sum(0),
            label.sum(0),
            overlap.sum(0),
            (act * hit).sum(0),
            (act > 0).sum(0),
            (label > 0).sum(0),
            hit.sum(0),
            torch.full_like(act.sum(0), act.shape[0]),
        ],
        -1,
    )


def metrics_from_sums(sums: torch.Tensor, pixels_per_sample: int) -> dict[str, torch.Tensor]:
    """All :data:`EXPLANATION_METRICS` from count sums (..., 8) int64; each value is float64 of shape
    ``sums.shape[:-1]``."""
    f = {name: sums[..., i] for i, name in enumerate(COUNT_FIELDS)}
    p = int(pixels_per_sample)
    return {
        "iou": iou_from_counts(f["overlap"], f["act"], f["label"]),
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


def _metric(name: str, activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return explanation_metrics(activation, label)[name]


def explanation_iou(activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Dataset-level IoU of bool masks (N, ...) ``activation`` (unit bitmap) and ``label`` (explanation)."""
    return _metric("iou", activation, label)


def activation_coverage(activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``Σ|A_i ∧ L_i| / Σ|A_i|`` of bool masks (N, ...); 0 when the unit never fires."""
    return _metric("activation_coverage", activation, label)


def label_coverage(activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``Σ|A_i ∧ L_i| / Σ|L_i|`` of bool masks (N, ...); 0 when the explanation never occurs."""
    return _metric("label_coverage", activation, label)


def samples_coverage(activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``#{i: A_i ∧ L_i ≠ ∅} / #{i: L_i ≠ ∅}`` of bool masks (N, ...); 0 when the explanation never occurs."""
    return _metric("samples_coverage", activation, label)


def explanation_coverage(activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``#{i: A_i ∧ L_i ≠ ∅} / #{i: A_i ≠ ∅}`` of bool masks (N, ...); 0 when the unit never fires."""
    return _metric("explanation_coverage", activation, label)


def detection_accuracy(activation: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Detection Accuracy (Makinwa et al.) of bool masks (N, ...): the samples coverage under its other name."""
    return samples_coverage(activation, label)


def detection_accuracy_from_counts(overlap: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Detection Accuracy from per-sample (N,) ``|F_i ∧ A_i|`` and ``|F_i|``; 0 when F never occurs."""
    overlap, label = torch.as_tensor(overlap), torch.as_tensor(label)
    return ratio((overlap > 0).sum(), (label > 0).sum())


def avg_mask_size(mask: torch.Tensor) -> torch.Tensor:
    """Mean relative size ``|M_i| / P`` of the non-empty masks of a bool (N, ...) tensor; 0 when all are empty."""
    flat = mask.reshape(mask.shape[0], -1).bool()
    sizes = flat.sum(1, dtype=torch.int64)
    return ratio(sizes.sum(), (sizes > 0).sum() * flat.shape[1])


def avg_sizes(activation: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """All four average sizes of bool masks (N, ...) (keys: :data:`MASK_SIZE_KINDS`)."""
    m = explanation_metrics(activation, label)
    return {kind: m[f"avg_{kind}_size"] for kind in MASK_SIZE_KINDS}
