"""CCE explanation metrics: a hand-worked example, identities, batch/DDP summability, masking and range importance."""

from __future__ import annotations

import pytest
import torch

from lit_explain.metrics import (
    ActivationCoverage,
    AverageMaskSize,
    ConceptMaskingScore,
    DetectionAccuracy,
    ExplanationCoverage,
    ExplanationIoU,
    ExplanationMetrics,
    LabelCoverage,
    RangeImportance,
    SamplesCoverage,
)
from lit_explain.metrics.functional.concept_masking import (
    concept_masking_inputs,
    concept_masking_score,
    cosine_concept_masking_score,
)
from lit_explain.ratios import iou_from_counts
from lit_explain.metrics.functional.range_importance import mask_activation_ranges, prediction_changes
from lit_explain.metrics.functional.sample_counts import (
    activation_coverage,
    avg_mask_size,
    avg_sizes,
    detection_accuracy,
    detection_accuracy_from_counts,
    explanation_coverage,
    explanation_iou,
    explanation_metrics,
    label_coverage,
    samples_coverage,
)
from tests.helpers.ddp import run_distributed

# 3 samples of 4 pixels. act = [2, 0, 2], label = [1, 2, 0], overlap = [1, 0, 0]
A = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
L = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
HAND = {
    "iou": 1 / 6,  # 1 / (4 + 3 - 1)
    "activation_coverage": 1 / 4,
    "label_coverage": 1 / 3,
    "samples_coverage": 1 / 2,  # 1 overlapping sample / 2 samples with the label
    "explanation_coverage": 1 / 2,  # 1 overlapping sample / 2 firing samples
    "avg_label_size": (1 / 4 + 2 / 4) / 2,
    "avg_activation_size": (2 / 4 + 2 / 4) / 2,
    "avg_overlap_size": 1 / 4,
    "avg_overlapping_activation_size": 2 / 4,
}


def test_hand_worked_example_functional():
    got = explanation_metrics(A, L)
    for k, v in HAND.items():
        assert float(got[k]) == pytest.approx(v, abs=1e-15), k
    assert float(explanation_iou(A, L)) == pytest.approx(HAND["iou"])
    assert float(activation_coverage(A, L)) == pytest.approx(HAND["activation_coverage"])
    assert float(label_coverage(A, L)) == pytest.approx(HAND["label_coverage"])
    assert float(samples_coverage(A, L)) == pytest.approx(HAND["samples_coverage"])
    assert float(explanation_coverage(A, L)) == pytest.approx(HAND["explanation_coverage"])
    assert float(detection_accuracy(A, L)) == pytest.approx(HAND["samples_coverage"])
    assert float(avg_mask_size(L)) == pytest.approx(HAND["avg_label_size"])
    assert float(avg_mask_size(A & L)) == pytest.approx(HAND["avg_overlap_size"])
    sizes = avg_sizes(A, L)
    assert float(sizes["overlapping_activation"]) == pytest.approx(HAND["avg_overlapping_activation_size"])


def test_hand_worked_example_metric_classes():
    for cls, key in [(ExplanationIoU, "iou"), (ActivationCoverage, "activation_coverage"),
                     (LabelCoverage, "label_coverage"), (SamplesCoverage, "samples_coverage"),
                     (DetectionAccuracy, "samples_coverage"), (ExplanationCoverage, "explanation_coverage")]:
        m = cls()
        m.update(A[:2], L[:2])
        m.update(A[2:], L[2:])
        assert float(m.compute()) == pytest.approx(HAND[key]), cls
    for kind in ("label", "activation", "overlap", "overlapping_activation"):
        m = AverageMaskSize(kind)
        m.update(A, L)
        assert float(m.compute()) == pytest.approx(HAND[f"avg_{kind}_size"])
    with pytest.raises(ValueError, match="kind"):
        AverageMaskSize("bogus")


def test_empty_inputs_give_zero_not_nan():
    z = torch.zeros(2, 4, dtype=torch.bool)
    for v in explanation_metrics(z, z).values():
        assert float(v) == 0.0


def test_identities_on_random_masks():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n, p = 12, 20
        a = torch.rand(n, p, generator=g) < torch.rand(1, generator=g)
        lab = torch.rand(n, p, generator=g) < torch.rand(1, generator=g)
        lab[: int(torch.randint(0, 4, (1,), generator=g))] = False
        m = explanation_metrics(a, lab)
        assert float(m["iou"]) <= min(float(m["activation_coverage"]), float(m["label_coverage"])) + 1e-15
        # Detection accuracy by an independent per-image loop
        present = [bool(lab[i].any()) for i in range(n)]
        hit = [bool((a[i] & lab[i]).any()) for i in range(n)]
        det = sum(h for h in hit) / sum(present) if any(present) else 0.0
        assert float(m["samples_coverage"]) == pytest.approx(det)
        assert float(detection_accuracy_from_counts((a & lab).sum(1), lab.sum(1))) == pytest.approx(det)


def test_many_explanations_at_once_and_counts_path():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(10, 3, 16, generator=g) < 0.3
    lab = torch.rand(10, 3, 16, generator=g) < 0.4
    m = ExplanationMetrics(num_explanations=3)
    m.update(a[:4], lab[:4])
    m.update_counts(a[4:].sum(-1), lab[4:].sum(-1), (a[4:] & lab[4:]).sum(-1))
    got = m.compute()
    for j in range(3):
        ref = explanation_metrics(a[:, j], lab[:, j])
        for k in ref:
            assert float(got[k][j]) == pytest.approx(float(ref[k])), (j, k)
    with pytest.raises(ValueError, match="expected"):
        m.update_counts(torch.ones(4), torch.ones(4), torch.ones(4))


def _ddp_metrics(rank, world):
    g = torch.Generator().manual_seed(7)
    a = torch.rand(12, 2, 9, generator=g) < 0.3
    lab = torch.rand(12, 2, 9, generator=g) < 0.3
    m = ExplanationMetrics(num_explanations=2)
    m.update(a[rank::world], lab[rank::world])
    return {k: v.tolist() for k, v in m.compute().items()}


@pytest.mark.ddp
@pytest.mark.slow
def test_two_processes_give_the_single_process_values():
    g = torch.Generator().manual_seed(7)
    a = torch.rand(12, 2, 9, generator=g) < 0.3
    lab = torch.rand(12, 2, 9, generator=g) < 0.3
    m = ExplanationMetrics(num_explanations=2)
    m.update(a, lab)
    single = {k: v.tolist() for k, v in m.compute().items()}
    for res in run_distributed(_ddp_metrics, 2):
        assert res == single


def test_cosine_concept_masking_hand_example():
    before = torch.tensor([[[1.0, 2.0, 3.0, 0.0]], [[1.0, 2.0, 3.0, 0.0]], [[5.0, 5.0, 5.0, 5.0]]])  # (N=3, J=1, 4)
    after = torch.tensor([[[2.0, 4.0, 9.0, 9.0]], [[2.0, -1.0, 9.0, 9.0]], [[1.0, 1.0, 1.0, 1.0]]])
    lo, hi = torch.tensor([0.5]), torch.tensor([2.5])  # in range: values 1 and 2 (positions 0, 1)
    cos = cosine_concept_masking_score(before, after, lo, hi)[:, 0]
    assert cos.tolist() == pytest.approx([1.0, 0.0, 0.0])  # parallel; orthogonal (1*2 + 2*-1 = 0); empty range
    present = torch.tensor([[True], [True], [False]])
    assert float(concept_masking_score(before, after, present, lo, hi)[0]) == pytest.approx(0.5)
    m = ConceptMaskingScore(1)
    m.update(before[:1], after[:1], present[:1], lo, hi)
    m.update(before[1:], after[1:], present[1:], lo, hi)
    assert float(m.compute().reshape(-1)[0]) == pytest.approx(0.5)


def test_concept_masking_inputs_keep_label_pixels_and_are_seeded():
    images = torch.randn(2, 3, 16, 16)
    masks = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    masks[:, 0, :2, :2] = True  # explanation 0: top-left quarter
    out = concept_masking_inputs(images, masks, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 16, 16)
    # deep inside the label region the bilinear weight is exactly 1: pixels unchanged
    assert torch.equal(out[0, :, :6, :6], images[0, :, :6, :6])
    assert torch.equal(out[2, :, :6, :6], images[1, :, :6, :6])
    # elsewhere attenuated by weights in [0, 1]
    assert bool((out[1].abs() <= images[0].abs() + 1e-6).all())
    again = concept_masking_inputs(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_range_importance_masks_strictly_inside_each_range():
    acts = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]], [[4.0, 5.0], [6.0, 7.0]]]])  # (B=1, U=2, 2, 2)
    lo = torch.tensor([[0.5, 2.0], [float("inf"), 4.0]])  # unit 1 not masked in range 0
    hi = torch.tensor([[2.5, 9.0], [float("inf"), 6.5]])
    out = mask_activation_ranges(acts, lo, hi)  # (K=2, 1, 2, 2, 2)
    assert out[0, 0, 0].tolist() == [[0.0, 0.0], [0.0, 3.0]]  # 1 and 2 inside (0.5, 2.5)
    assert out[0, 0, 1].tolist() == [[4.0, 5.0], [6.0, 7.0]]
    assert out[1, 0, 0].tolist() == [[0.0, 1.0], [2.0, 0.0]]  # 2 is not strictly inside (2, 9)
    assert out[1, 0, 1].tolist() == [[4.0, 0.0], [0.0, 7.0]]
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0]])
    masked = torch.stack([logits, torch.tensor([[0.0, 1.0], [0.0, 1.0], [3.0, 2.0]])])
    assert prediction_changes(logits, masked).tolist() == [[False, False, False], [True, False, True]]
    m = RangeImportance(2)
    m.update(logits, masked)
    assert m.compute().tolist() == pytest.approx([0.0, 2 / 3])


def test_iou_from_counts_matches_brute_force_masks_and_is_zero_for_an_empty_union():
    g = torch.Generator().manual_seed(7)
    a = torch.rand(6, 50, generator=g) < 0.3
    b = torch.rand(6, 50, generator=g) < 0.5
    b[0] = False
    a[0] = False  # both empty: union 0
    got = iou_from_counts((a & b).sum(1), a.sum(1), b.sum(1))
    for i in range(6):
        union = int((a[i] | b[i]).sum())
        want = int((a[i] & b[i]).sum()) / union if union else 0.0
        assert float(got[i]) == want
    assert got.dtype == torch.float64
    # broadcasting: one A against several B
    assert iou_from_counts(torch.tensor([[1, 2]]), torch.tensor([[3], [4]]), torch.tensor([2, 5])).tolist() == [
        [1 / 4, 2 / 6], [1 / 5, 2 / 7]]


@pytest.mark.parametrize("kwargs,match", [(dict(num_explanations=0), "num_explanations must be None or >= 1"),
                                          (dict(pixels_per_sample=0), "pixels_per_sample must be None or >= 1")])
def test_sample_count_metrics_validate_their_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExplanationIoU(**kwargs)
    with pytest.raises(ValueError, match="kind must be one of"):
        AverageMaskSize(kind="area")
