"""SyntheticBoxesDataModule: one box per object instance, equal to the tight box of the instance's rasterised
mask (an independent computation), rescaled with the image; labels from classes.csv."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_modules.synthetic_boxes import SyntheticBoxesDataModule
from lit_explain.synth.concepts import SHAPES
from lit_explain.synth.world import instance_masks, load_classes, load_scene


def test_boxes_are_the_instances_tight_boxes(tmp_path):
    root = tmp_path / "world"
    dm = SyntheticBoxesDataModule(str(root), num_images=12, world_seed=2, image_size=32, batch_size=16)
    dm.prepare_data()
    dm.setup("validate")
    b = next(iter(dm.val_dataloader()))
    classes = load_classes(root)
    recs = dm.dataset("val").records
    assert len(recs) == b["image"].shape[0] > 0 and b["image"].shape[2:] == (32, 32)
    for j, r in enumerate(recs):
        rel = str(r.path.relative_to(root / "images"))
        i = next(k for k in range(12) if load_scene(root, k)["image"] == rel)
        assert b["label"][j] == classes[rel]
        masks = instance_masks(root, i)  # (K, 64, 64)
        assert b["num_boxes"][j] == len(masks)
        for k, m in enumerate(masks):
            ys, xs = np.nonzero(m)
            want = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32) / 2
            torch.testing.assert_close(b["boxes"][j, k], want, atol=0, rtol=0)
            assert SHAPES[int(b["box_labels"][j, k])] == load_scene(root, i)["instances"][k]["name"]


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="num_images must be >= 1"):
        SyntheticBoxesDataModule(str(tmp_path / "w"), num_images=0)
    with pytest.raises(FileNotFoundError, match="no complete synthetic world"):
        SyntheticBoxesDataModule(str(tmp_path / "w")).setup("validate")


def test_single_object_evaluation(tmp_path):
    """eval_max_boxes=1: the val loader serves exactly the val scenes with one instance, in file order."""
    root = tmp_path / "world"
    dm = SyntheticBoxesDataModule(str(root), num_images=40, world_seed=3, image_size=32, batch_size=64,
                                  eval_max_boxes=1)
    dm.prepare_data()
    dm.setup("validate")
    scenes = [load_scene(root, i) for i in range(40)]
    val = [s for s in scenes if s["split"] == "val"]
    single = [s["image"] for s in val if len(s["instances"]) == 1]
    assert 0 < len(single) < len(val)  # the world mixes single- and multi-object images
    b = next(iter(dm.val_dataloader()))
    served = [str(dm.eval_dataset().records[i].path.relative_to(root / "images")) for i in b["index"].tolist()]
    assert served == single and b["num_boxes"].tolist() == [1] * len(single) and b["boxes"].shape[1] == 1
    assert dm.stats["val"]["left_out_by_box_count"] == len(val) - len(single)
    assert len(dm.dataset("val")) == len(val)
