"""The printed summary of a dissection table: counts, per-category split and the null-baseline comparison."""

from __future__ import annotations

from pathlib import Path

from lit_explain.methods.dissection import summarize


def _row(unit, label, cat, iou, **extra):
    return {"unit": unit, "cluster": 0, "label": label, "category": cat, "iou": iou, **extra}


def test_summary_counts_and_null_baselines_hand_worked():
    rows = [
        _row(0, "red", "color", 0.30, null_shuffled_iou=0.02, null_random_iou=0.10),
        _row(1, "disk", "object", 0.05, null_shuffled_iou=0.01, null_random_iou=0.06),  # loses to the random model
        _row(2, "", "", 0.00, null_shuffled_iou=0.00, null_random_iou=0.00),  # ties: does not beat
        _row(3, "sky", "scene", 0.07, null_shuffled_iou=0.03, null_random_iou=0.04),
    ]
    text = summarize(rows, Path("out"), threshold=0.04)
    lines = text.strip().splitlines()
    assert lines[0] == "3 of 4 explanations have IoU > 0.04 (color: 1, object: 1, scene: 1)"
    # means: IoU 0.42/4, shuffled 0.06/4, random 0.20/4; units 0 and 3 beat both baselines
    assert lines[1] == ("mean IoU 0.105; null baselines (mean IoU): shuffled labels 0.015, random model 0.050; "
                        "2 of 4 beat every baseline")
    assert lines[2].split() == ["unit", "range", "label", "category", "IoU", "shuffled", "IoU", "random", "IoU"]
    assert lines[3].split() == ["0", "0", "red", "color", "0.300", "0.020", "0.100"]  # best first
    assert lines[-1] == "results: out/explanations.csv, report: out/report.html"


def test_summary_without_baselines_has_no_baseline_line():
    rows = [_row(0, "red", "color", 0.30), _row(1, "disk", "object", 0.01)]
    lines = summarize(rows, Path("o"), threshold=0.04).strip().splitlines()
    assert lines[0] == "1 of 2 explanations have IoU > 0.04 (color: 1)"
    assert lines[1].split() == ["unit", "range", "label", "category", "IoU"]
    assert not any("baseline" in line for line in lines)
