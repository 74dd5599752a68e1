"""The synthetic world exported as VG / COCO files and read back by the real-format data modules.

Expected values come from the world's own records (load_scene: shapes, colours, boxes, splits) and its
rasteriser (instance_masks), and from the rendered pixels (an instance's pixels have its colour's hue).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules.coco import CocoDataModule
from data_modules.synthetic_instances import SyntheticInstancesDataModule
from data_modules.visual_genome import VisualGenomeDataModule
from lit_explain.synth.concepts import COLORS
from lit_explain.synth.export import export_coco, export_vg, world_split
from lit_explain.synth.world import generate_world, instance_masks, load_scene

N = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("w") / "world", num_images=N, seed=3)


def _scenes(world):
    return [load_scene(world, i) for i in range(N)]


def _nearest_palette_colour(rgb: np.ndarray) -> str:
    """Palette colour whose direction (cosine) is closest to ``rgb`` after removing the grey component."""
    v = rgb - rgb.min()
    names = list(COLORS)
    pal = np.array([COLORS[n] for n in names])
    pal = pal - pal.min(1, keepdims=True)
    cos = pal @ v / (np.linalg.norm(pal, axis=1) * np.linalg.norm(v) + 1e-9)
    return names[int(cos.argmax())]


def test_vg_export_read_back(world, tmp_path):
    out = export_vg(world, tmp_path / "vg")
    scenes = _scenes(world)
    dm = VisualGenomeDataModule(str(out), merge_by="name", min_images=1, include_attributes=True, val_fraction=0.0,
                                seen_fraction=1.0, cache_dir=None)
    words = set()
    for s in scenes:
        for inst in s["instances"]:
            words |= {inst["name"], *inst["attributes"]}
    assert dm.label_names == sorted(words)
    # default reader (merge by synset): the shape names only
    plain = VisualGenomeDataModule(str(out), min_images=1, val_fraction=0.0, cache_dir=None)
    assert set(plain.label_names) == {i["name"] for s in scenes for i in s["instances"]}
    # each (image, category) unit's mask = the union of the world boxes of that category's instances,
    # and each box is the tight box of the instance's rendered pixels
    dm.setup("predict")
    ds = dm.image_dataset("all")
    names = dm.label_names
    size = 64
    for k in range(len(ds)):
        iid = int(ds.image_ids[k])
        scene = scenes[iid - 1]
        rows = ds._order[ds._ptr[k]:ds._ptr[k + 1]]
        _, masks = ds.renderer.load(int(ds.image_rows[k]), ds.units, rows)
        pix = instance_masks(world, iid - 1, size)
        for m, u in zip(masks, rows):
            word = names[int(ds.units.labels(int(u))[0])]
            expected = np.zeros((size, size), dtype=bool)
            for inst, p in zip(scene["instances"], pix):
                if word in (inst["name"], *inst["attributes"]):
                    x, y, w, h = inst["bbox"]
                    expected[y:y + h, x:x + w] = True
                    ys, xs = np.nonzero(p)
                    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            np.testing.assert_array_equal(m, expected)


def test_coco_export_masks_are_the_rendered_instances(world, tmp_path):
    out = export_coco(world, tmp_path / "coco")
    scenes = _scenes(world)
    dm = CocoDataModule(str(out), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert dm.label_names == ["circle", "square", "triangle", "ring", "cross", "diamond"]
    split = world_split(world)
    t = dm.tables
    assert [split[int(i)] for i in t.image_ids] == ["train" if s == 0 else "val" for s in t.image_split]
    assert len(t.obj_image) == sum(len(s["instances"]) for s in scenes)
    checked = 0
    for o in range(len(t.obj_image)):
        row = int(t.obj_image[o])
        iid = int(t.image_ids[row])
        h, w = (int(v) for v in t.image_sizes[row])
        mask = t.mask_source(o, h, w)
        pix = instance_masks(world, iid - 1, 64)
        insts = scenes[iid - 1]["instances"]
        j = [k for k in range(len(insts)) if np.array_equal(pix[k], mask)]
        assert len(j) == 1  # the mask is exactly one rendered instance
        inst = insts[j[0]]
        assert dm.label_names[int(t.obj_label_ids[t.obj_label_ptr[o]])] == inst["name"]
        # and the image pixels under it have that instance's colour
        img = np.asarray(Image.open(t.image_paths[row]).convert("RGB"), dtype=np.float64) / 255
        assert _nearest_palette_colour(img[mask].mean(0)) == inst["color"]
        checked += 1
    assert checked > N


def test_coco_colour_shape_words(world, tmp_path):
    out = export_coco(world, tmp_path / "coco_cs", categories="color_shape")
    dm = CocoDataModule(str(out), label_mode="token")
    assert set(dm.label_names) == set(COLORS) | {"circle", "square", "triangle", "ring", "cross", "diamond"}
    dm.setup("fit")
    ds = dm.instance_dataset("train")
    targets = torch.stack([ds[i]["target"] for i in range(len(ds))])
    assert torch.all(targets.sum(1) == 2)  # one colour word + one shape word


def test_export_reused_redone_and_guarded(tmp_path):
    w = generate_world(tmp_path / "world", num_images=6, seed=1)
    out = export_vg(w, tmp_path / "vg")
    stamp = (out / "export.json").stat().st_mtime_ns
    assert export_vg(w, tmp_path / "vg") == out
    assert (out / "export.json").stat().st_mtime_ns == stamp  # current: reused untouched
    generate_world(w, num_images=8, seed=1, overwrite=True)
    export_vg(w, tmp_path / "vg")
    assert len(json.loads((out / "image_data.json").read_text())) == 8  # regenerated world: re-exported
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="export.json"):
        export_vg(w, tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="world.json"):
        export_vg(tmp_path / "no_world", tmp_path / "vg2")


@pytest.mark.parametrize("fmt", ["vg", "coco"])
def test_synthetic_instances_data_module(tmp_path, fmt):
    dm = SyntheticInstancesDataModule(root=str(tmp_path / "world"), num_images=N, seed=3, format=fmt, batch_size=8,
                                      cache_dir=str(tmp_path / "cache"))
    names = dm.label_names  # generates and exports on first access
    assert (tmp_path / "world" / "world.json").is_file()
    assert (tmp_path / f"world_lavise_{fmt}" / "export.json").is_file()
    assert {"circle", "red"} <= set(names) or {"square", "blue"} <= set(names)
    seen = dm.seen
    assert int(seen.sum()) == round(0.7 * len(names))
    dm.setup("fit")
    dm.setup("predict")
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (8, 3, 64, 64) and b["mask"].shape == (8, 1, 64, 64)
    assert b["target"].shape == (8, len(names))
    train = dm.instance_dataset("train")
    targets = torch.stack([train[i]["target"] for i in range(len(train))])
    assert targets[:, ~seen].sum() == 0
    split = world_split(tmp_path / "world")
    val_ids = dm.image_dataset().image_ids.tolist()
    assert val_ids and all(split[i] == "val" for i in val_ids)
    p = next(iter(dm.predict_dataloader()))
    assert p["masks"].dtype == torch.bool and p["masks"].shape[-2:] == (64, 64)
