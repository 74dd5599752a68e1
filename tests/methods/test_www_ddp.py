"""WWW under DDP (CPU, gloo, ddp_spawn): 1 and 2 processes write identical tables and metrics."""

from __future__ import annotations

import json

import pytest

from tests.methods.test_www import _method, _run


@pytest.mark.ddp
@pytest.mark.slow
def test_one_and_two_processes_agree(tmp_path):
    # 41 images: uneven shards (21 and 20); layer4-like 8x8 grid, so minor concepts (crops) are computed too
    runs = {}
    gt = tmp_path / "synonyms.txt"  # recall 1, 1, 1/2, 1/3: sums grouped by process would round differently
    gt.write_text("red\ngreen\nblue, navy\nyellow, gold, amber\n")
    for devices in (1, 2):
        m = _method(tmp_path, output_dir=str(tmp_path / f"out{devices}"), num_examples=8, ground_truth=str(gt))
        _run(m, devices=devices, n=41)
        out = tmp_path / f"out{devices}"
        runs[devices] = {name: (out / f"{name}.csv").read_text() for name in ("www_units", "www_classes", "www_images")}
        runs[devices]["metrics"] = json.loads((out / "www_metrics.json").read_text())
    for name in ("www_units", "www_classes", "www_images"):
        assert runs[1][name] == runs[2][name], name
    assert runs[1]["metrics"] == runs[2]["metrics"]
    assert runs[1]["metrics"]["results"]["hit_rate"] == 1.0
    assert runs[1]["metrics"]["results"]["recall"] == pytest.approx((1 + 1 + 1 / 2 + 1 / 3) / 4)
