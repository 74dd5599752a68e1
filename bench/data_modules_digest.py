"""Digest what every data module hands to the methods, to prove a data-module refactor changes nothing.

Writes the miniature fixtures (Broden, Visual Genome, COCO in their exact on-disk formats, a 48-image synthetic
world) once, then hashes, per data module and setting: the vocabulary, the concept index, every predict / train
/ val batch, every instance and image sample. Run it on two checkouts with the same ``--inputs`` and compare:

    git archive <old-commit> data_modules lit_explain | tar -x -C /tmp/old
    python bench/data_modules_digest.py --inputs /tmp/dig/inputs --out /tmp/dig/new.json
    PYTHONPATH=/tmp/old:. python bench/data_modules_digest.py --inputs /tmp/dig/inputs --out /tmp/dig/old.json
    cmp /tmp/dig/old.json /tmp/dig/new.json

(the fixtures come from this checkout's ``tests/fixtures``; ``data_modules`` / ``lit_explain`` from whichever
comes first on the path). Runs in about a minute on two busy cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # after any PYTHONPATH checkout under test: only tests/ is taken from here


def digest(x) -> str:
    """SHA-256 (16 hex) of nested tensors / arrays / dicts / lists / scalars, dtype included."""
    m = hashlib.sha256()

    def feed(v):
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().contiguous().numpy()
        if isinstance(v, np.ndarray):
            m.update(str(v.dtype).encode() + str(v.shape).encode())
            m.update(np.ascontiguousarray(v).tobytes())
        elif isinstance(v, dict):
            for k in sorted(v):
                m.update(str(k).encode())
                feed(v[k])
        elif isinstance(v, (list, tuple)):
            for e in v:
                feed(e)
        else:
            m.update(repr(v).encode())

    feed(x)
    return m.hexdigest()[:16]


def write_inputs(inputs: Path) -> None:
    """The fixtures the digests read (written once, shared by both checkouts)."""
    from lit_explain.synth.world import generate_world
    from tests.data_modules.test_coco import _images as coco_images
    from tests.data_modules.test_visual_genome import _vocab_images
    from tests.fixtures.broden_writer import make_miniature
    from tests.fixtures.coco_writer import write_coco
    from tests.fixtures.vg_writer import write_vg

    make_miniature(inputs / "broden")
    write_vg(inputs / "vg", _vocab_images())
    write_coco(inputs / "coco", "train", coco_images("train"))
    write_coco(inputs / "coco", "val", coco_images("val"))
    generate_world(inputs / "world", num_images=48, seed=3)


def broden_digest(dm) -> dict:
    ci = dm.concept_index()
    return {"vocabulary": digest(dm.vocabulary.to_dict()), "mask_shape": list(dm.mask_shape),
            "index": digest([ci.pixel_offsets, ci.pixel_concepts, ci.image_concepts]),
            "predict": digest(list(dm.predict_dataloader()))}


def instance_digest(dm) -> dict:
    dm.setup(None)
    torch.manual_seed(0)
    out = {"labels": dm.label_names, "seen": digest(dm.seen)}
    for split in ("train", "val"):
        ds = dm.instance_dataset(split)
        out[split] = digest([ds[i] for i in range(len(ds))])
    for split in ("train", "val", "all"):
        ds = dm.image_dataset(split)
        out[f"images_{split}"] = digest([ds[i] for i in range(len(ds))] + [ds.image_ids])
    out["predict"] = digest(list(dm.predict_dataloader()))
    return out


def run(inputs: Path, work: Path) -> dict:
    from data_modules.broden import BrodenDataModule
    from data_modules.coco import CocoDataModule
    from data_modules.synthetic import SyntheticWorldDataModule
    from data_modules.synthetic_instances import SyntheticInstancesDataModule
    from data_modules.visual_genome import VisualGenomeDataModule

    out = {}
    broden = {"default": {}, "all_min2": {"categories": None, "min_image_count": 2},
              "explicit": {"concepts": ["wall", "car", "head", "street-s"]},
              "pascal_val": {"subset": "pascal", "split": "val"}}
    for name, kw in broden.items():
        out[f"broden_{name}"] = broden_digest(
            BrodenDataModule(str(inputs / "broden"), batch_size=4, cache_dir=str(work / f"broden_{name}"), **kw))
    torch.manual_seed(0)
    world = SyntheticWorldDataModule(root=str(inputs / "world"), num_images=48, seed=3, batch_size=8,
                                     cache_dir=str(work / "world"))
    out["world"] = broden_digest(world)
    out["world"].update(train=digest(list(world.train_dataloader())), val=digest(list(world.val_dataloader())))
    out["vg"] = instance_digest(VisualGenomeDataModule(
        str(inputs / "vg"), min_images=2, cache_dir=str(work / "vg"), image_size=24, val_fraction=0.4,
        seen_fraction=0.6, split_seed=2))
    out["vg_objects"] = instance_digest(VisualGenomeDataModule(
        str(inputs / "vg"), min_images=1, include_attributes=True, union_per_category=False, cache_dir=None,
        image_size=24, val_fraction=0.4, augment=True, scale_min=0.3))
    out["coco"] = instance_digest(CocoDataModule(str(inputs / "coco"), image_size=24, seen_fraction=0.5))
    out["coco_tokens"] = instance_digest(CocoDataModule(
        str(inputs / "coco"), image_size=24, label_mode="token", crowd="include", union_per_category=True,
        augment=False))
    for fmt in ("vg", "coco"):
        out[f"synthetic_instances_{fmt}"] = instance_digest(SyntheticInstancesDataModule(
            root=str(inputs / "world"), num_images=48, seed=3, format=fmt, export_root=str(work / f"export_{fmt}"),
            cache_dir=str(work / "synthetic_instances")))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=Path, required=True, help="folder of the fixtures (written when absent)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file of the digests")
    args = ap.parse_args(argv)
    if not (args.inputs / "world").is_dir():
        write_inputs(args.inputs)
    with tempfile.TemporaryDirectory() as work:
        result = run(args.inputs, Path(work))
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"{len(result)} data-module settings digested into {args.out}")


if __name__ == "__main__":
    main()
