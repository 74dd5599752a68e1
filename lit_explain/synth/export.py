"""Write the synthetic concept world as Visual Genome- and COCO-style annotation files.

LaViSE's data modules read real VG and COCO files; rendering the world in those exact formats lets the
same readers run the LaViSE demo on the embedded default world (no download), and tests the readers on
data whose ground truth is known.

* :func:`export_vg`: ``image_data.json``, ``objects.json``, ``attributes.json`` and ``VG_100K/<id>.jpg``.
  Each object instance of the world becomes a VG object: ``names = [shape]``, ``synsets = ["<shape>.n.01"]``
  (so both ``merge_by="synset"`` and ``"name"`` read it), its box is the tight box of its rendered pixels,
  and ``attributes.json`` gives it its attribute words (colour, and material when it has one). Parts (rim,
  cap) are regions of objects, not objects, and are not exported.
* :func:`export_coco`: ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/<id>.jpg``,
  following the world's own train/val split. Each instance's pixel mask (the world's rasteriser at image
  resolution) is stored as compressed RLE (``pycocotools.mask.encode``); ``categories="shape"`` gives the 6
  shape categories, ``"color_shape"`` gives one category per (colour, shape) pair present, named
  "<colour> <shape>", so ``CocoDataModule(label_mode="token")`` learns colour and shape words.

Image ids are the world's image index + 1. Images are hard links to the world's JPEGs where the file
system allows (copies otherwise). An export is written into a temporary folder and moved into place with
one rename; ``export.json`` (written last) records the world it came from, so a regenerated world is
re-exported and a current export is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from lit_explain.synth.concepts import COLORS, SHAPES
from lit_explain.synth.world import instance_masks, load_scene, read_world

__all__ = ["export_coco", "export_vg", "world_split", "EXPORT_VERSION"]

#: Bumped whenever the exported bytes change for the same world.
EXPORT_VERSION = 1
_URL = "https://lit-explain.invalid/synthetic"


def _world_fingerprint(world_root: Path) -> str:
    return hashlib.sha1((world_root / "world.json").read_bytes()).hexdigest()


def _num_images(world: dict) -> int:
    return int(world["counts"]["images"])


def world_split(world_root: str | os.PathLike) -> dict[int, str]:
    """Exported image id (world index + 1) -> the world's split ("train" / "val")."""
    root = Path(world_root)
    world = read_world(root)
    return {i + 1: str(load_scene(root, i)["split"]) for i in range(_num_images(world))}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _export(world_root: str | os.PathLike, out_root: str | os.PathLike, kind: str, options: dict,
            write: Callable[[Path, Path, dict], None]) -> Path:
    """Reuse a current export at ``out_root`` or write a new one atomically with ``write(world, tmp, world_json)``."""
    world_root = Path(world_root).absolute()
    out_root = Path(out_root).absolute()
    world = read_world(world_root)  # raises a clear error when the world is missing
    marker = {"format": f"lit_explain.synthetic_export.{kind}", "version": EXPORT_VERSION,
              "world": str(world_root), "world_fingerprint": _world_fingerprint(world_root), "options": options}
    current = out_root / "export.json"
    if current.is_file():
        try:
            if json.loads(current.read_text()) == marker:
                return out_root
        except json.JSONDecodeError:
            pass
    if out_root.exists() and any(out_root.iterdir()) and not current.is_file():
        raise FileExistsError(f"{out_root} is not empty and is not a synthetic-world export (no export.json); "
                              "choose another export root or empty it")
    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.tmp-", dir=out_root.parent))
    try:
        write(world_root, tmp, world)
        (tmp / "export.json").write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(tmp, out_root)  # works when out_root is absent or empty
        except OSError:
            if current.is_file() and json.loads(current.read_text()) == marker:
                return out_root  # a concurrent exporter finished the same export first
            trash = out_root.with_name(f".{out_root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.rename(out_root, trash)
            os.rename(tmp, out_root)
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_root


# ---------------------------------------------------------------------------------------------- VG
def export_vg(world_root: str | os.PathLike, out_root: str | os.PathLike) -> Path:
    """Write the world as a Visual Genome root at ``out_root`` (see the module docstring); returns it."""

    def write(root: Path, tmp: Path, world: dict) -> None:
        size = int(world["params"]["image_size"])
        img_dir = tmp / "VG_100K"
        img_dir.mkdir()
        image_data, objects, attributes = [], [], []
        oid = 0
        for i in range(_num_images(world)):
            scene = load_scene(root, i)
            iid = i + 1
            fname = f"{iid}.jpg"
            _link_or_copy(root / "images" / scene["image"], img_dir / fname)
            image_data.append({"image_id": iid, "url": f"{_URL}/VG_100K/{fname}", "width": size, "height": size,
                               "coco_id": None, "flickr_id": None})
            objs, attrs = [], []
            for inst in scene["instances"]:
                oid += 1
                x, y, w, h = (int(v) for v in inst["bbox"])
                rec = {"object_id": oid, "x": x, "y": y, "w": w, "h": h, "names": [inst["name"]],
                       "synsets": [f"{inst['name']}.n.01"], "merged_object_ids": []}
                objs.append(rec)
                attrs.append(dict(rec, attributes=list(inst["attributes"])))
            objects.append({"image_id": iid, "objects": objs, "image_url": f"{_URL}/VG_100K/{fname}"})
            attributes.append({"image_id": iid, "attributes": attrs})
        for name, data in (("image_data.json", image_data), ("objects.json", objects),
                           ("attributes.json", attributes)):
            (tmp / name).write_text(json.dumps(data))

    return _export(world_root, out_root, "vg", {}, write)


# ---------------------------------------------------------------------------------------------- COCO
def _coco_categories(mode: str) -> list[dict]:
    if mode == "shape":
        return [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)]
    cats = []
    for c in COLORS:
        for s in SHAPES:
            cats.append({"id": len(cats) + 1, "name": f"{c} {s}", "supercategory": s})
    return cats


def export_coco(world_root: str | os.PathLike, out_root: str | os.PathLike,
                categories: Literal["shape", "color_shape"] = "shape") -> Path:
    """Write the world as a COCO 2017-style root at ``out_root`` (see the module docstring); returns it."""
    if categories not in ("shape", "color_shape"):
        raise ValueError(f"categories must be 'shape' or 'color_shape', got {categories!r}")
    from pycocotools import mask as mask_utils

    cats = _coco_categories(categories)

    def write(root: Path, tmp: Path, world: dict) -> None:
        size = int(world["params"]["image_size"])
        cat_id = {c["name"]: c["id"] for c in cats}
        (tmp / "annotations").mkdir()
        files = {s: {"info": {"description": f"lit_explain synthetic world {root}", "version": str(EXPORT_VERSION)},
                     "licenses": [], "images": [], "annotations": [], "categories": cats} for s in ("train", "val")}
        for s in files:
            (tmp / f"{s}2017").mkdir()
        ann_id = 0
        for i in range(_num_images(world)):
            scene = load_scene(root, i)
            split = "val" if scene["split"] == "val" else "train"
            iid = i + 1
            fname = f"{iid:012d}.jpg"
            _link_or_copy(root / "images" / scene["image"], tmp / f"{split}2017" / fname)
            files[split]["images"].append({"id": iid, "file_name": fname, "width": size, "height": size})
            masks = instance_masks(root, i, size)
            for inst, m in zip(scene["instances"], masks):
                ann_id += 1
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                name = inst["name"] if categories == "shape" else f"{inst['color']} {inst['name']}"
                files[split]["annotations"].append({
                    "id": ann_id, "image_id": iid, "category_id": cat_id[name], "iscrowd": 0,
                    "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                })
        for s, data in files.items():
            (tmp / "annotations" / f"instances_{s}2017.json").write_text(json.dumps(data))

    return _export(world_root, out_root, "coco", {"categories": categories}, write)
