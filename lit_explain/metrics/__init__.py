"""Metrics: torchmetrics Metric classes (DDP-summable states) with functional twins in ``functional/``.

The metrics take counts or masks, never the concept index's types: callers that count on the sparse index pass
the counting object or the counts (the core layers import ``metrics``, never the other way round).
"""

from lit_explain.metrics.concept_masking import ConceptMaskingScore
from lit_explain.metrics.dissection_iou import DissectionIoU
from lit_explain.metrics.range_importance import RangeImportance
from lit_explain.metrics.recall import RecallAtK
from lit_explain.metrics.sample_counts import (
    ActivationCoverage,
    AverageMaskSize,
    DetectionAccuracy,
    ExplanationCoverage,
    ExplanationIoU,
    ExplanationMetrics,
    LabelCoverage,
    SampleCountMetric,
    SamplesCoverage,
)

__all__ = [
    "ActivationCoverage",
    "AverageMaskSize",
    "ConceptMaskingScore",
    "DetectionAccuracy",
    "DissectionIoU",
    "ExplanationCoverage",
    "ExplanationIoU",
    "ExplanationMetrics",
    "LabelCoverage",
    "RangeImportance",
    "RecallAtK",
    "SampleCountMetric",
    "SamplesCoverage",
]
