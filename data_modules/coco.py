"""COCO 2017 instances for LaViSE: segmentation masks as supervision, category names as words.

Files (the COCO 2017 download layout under ``root``): ``annotations/instances_train2017.json`` and
``annotations/instances_val2017.json`` read through ``pycocotools.coco.COCO``, images in ``train2017/`` and
``val2017/``. train2017 gives the training instances, val2017 the validation instances and the images that
predict/test explain.

* Mask of an annotation: ``COCO.annToMask`` (polygons or RLE rasterised at the image's recorded size), the
  segmentation itself, not its box (a box would label background pixels with the word).
* Words: ``label_mode="category"`` uses the 80 category names as they are ("traffic light" is one multi-word
  label; text encoders average or phrase-encode it); ``"token"`` splits names into words, the paper's label
  vocabulary ("traffic light" -> {traffic, light}, a multi-hot target).
* ``iscrowd=1`` annotations mark a *group* of objects with one loose RLE region. ``crowd="eval_only"``
  (default) keeps them out of training samples (the region is not one instance of the word) but includes them
  in image samples, where they are genuine pixels of the category and count as recall ground truth;
  ``"skip"`` drops them everywhere; ``"include"`` treats them like any annotation.
* Training transform: joint RandomResizedCrop + horizontal flip of image AND mask (``augment=True``, the
  paper's COCO setting; both codebases cropped the image randomly but the mask centrally). All categories
  are seen (``seen_fraction=1.0``) unless asked otherwise.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data_modules._instance_tables import VAL, InstanceTables, handle_missing, keep_images
from data_modules._instances import InstanceDataModule
from lit_explain.datasets.checks import check_choice, check_path, check_real

log = logging.getLogger(__name__)

__all__ = ["CocoDataModule", "CocoMaskSource", "load_coco", "segment_geometry"]


def load_coco(path: Path):
    """``pycocotools.coco.COCO(path)`` with its prints silenced and clear errors naming the file."""
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:  # pragma: no cover - pycocotools is a declared extra
        raise ImportError("CocoDataModule needs pycocotools: pip install 'lit_explain[coco]'") from exc
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"COCO annotation file not found: {path}. Download annotations_trainval2017.zip from "
            "https://cocodataset.org/#download and unzip it into root (annotations/instances_*2017.json), "
            "or set train_annotations / val_annotations.")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-download it") from exc
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a COCO instances file (missing {exc}); expected keys images, "
                         "annotations, categories") from exc
    if "categories" not in coco.dataset or "annotations" not in coco.dataset:
        raise ValueError(f"{path} is not a COCO instances file: it needs 'images', 'annotations' and 'categories'")
    return coco


def _refuse_repeated_ids(records: list[dict], path: Path, key: str) -> None:
    """Raise when two ``records`` (a COCO ``images`` or ``annotations`` list) share an ``id``.

    pycocotools indexes both by id and keeps the last record, so a repeated annotation id would silently draw
    one annotation's mask for another.
    """
    ids = np.array([int(r["id"]) for r in records], dtype=np.int64)
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        rid = int(uniq[counts > 1][0])
        where = np.flatnonzero(ids == rid)[:2].tolist()
        raise ValueError(f"{path}: {key}[{where[0]}] and {key}[{where[1]}] share the id {rid}; each of the "
                         f"{key} must have its own id: use an unmodified instances file")


def segment_geometry(segmentation: Any, height: int, width: int) -> str:
    """Where a COCO ``segmentation`` falls relative to its ``height`` x ``width`` image.

    Returns ``"inside"``; ``"clipped"`` (a polygon partly outside: ``annToMask`` cuts it at the image edge);
    ``"outside_image"`` (a polygon whose rasterised mask is empty because it lies outside the image);
    ``"empty_polygon"`` (no coordinates at all); or ``"rle_size_mismatch"`` (a crowd RLE whose ``size`` is not
    the image's, so its mask would be drawn on another frame). Polygons wholly inside are decided from their
    coordinates alone; only the rare partly-outside ones are rasterised (by pycocotools, as ``annToMask`` does)
    to tell a clipped mask from an empty one.
    """
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        return "inside" if size is None or [int(v) for v in size] == [height, width] else "rle_size_mismatch"
    polygons = [p for p in (segmentation or []) if len(p) >= 2]
    if not polygons:
        return "empty_polygon"
    x_min = min(min(p[0::2]) for p in polygons)
    x_max = max(max(p[0::2]) for p in polygons)
    y_min = min(min(p[1::2]) for p in polygons)
    y_max = max(max(p[1::2]) for p in polygons)
    if x_min >= 0 and y_min >= 0 and x_max <= width and y_max <= height:
        return "inside"
    if x_max <= 0 or y_max <= 0 or x_min >= width or y_min >= height:
        return "outside_image"
    from pycocotools import mask as mask_utils

    area = mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))
    return "clipped" if int(area) > 0 else "outside_image"


class CocoMaskSource:
    """Masks of COCO annotations via ``COCO.annToMask``.

    Args:
        cocos: the COCO objects (one per annotation file).
        obj_file: (O,) which COCO object each object comes from.
        obj_ann: (O,) its annotation id.
    """

    def __init__(self, cocos: list, obj_file: np.ndarray, obj_ann: np.ndarray) -> None:
        self.cocos = cocos
        self.obj_file = np.asarray(obj_file, dtype=np.int64)
        self.obj_ann = np.asarray(obj_ann, dtype=np.int64)

    def subset(self, objs: np.ndarray) -> "CocoMaskSource":
        return CocoMaskSource(self.cocos, self.obj_file[objs], self.obj_ann[objs])

    def __call__(self, obj: int, height: int, width: int) -> np.ndarray:
        coco = self.cocos[int(self.obj_file[obj])]
        ann = coco.anns[int(self.obj_ann[obj])]
        mask = coco.annToMask(ann).astype(bool)
        if mask.shape != (height, width):
            raise ValueError(f"annotation {ann['id']}: annToMask gave {mask.shape}, image record says "
                             f"{(height, width)}")
        return mask


class CocoDataModule(InstanceDataModule):
    """COCO 2017 instance/image samples for LaViSE (see the module docstring).

    Args:
        root: COCO folder.
        train_annotations: training instances JSON (relative to root, or absolute).
        val_annotations: validation instances JSON.
        train_images: folder of the training images (relative to root, or absolute).
        val_images: folder of the validation images.
        label_mode: "category" (80 names, multi-word kept) or "token" (names split into words, multi-hot).
        crowd: iscrowd=1 annotations: "eval_only" (ground truth in image samples, never trained on), "skip", or
            "include".
        min_area: annotations with a smaller ``area`` (pixels) are left out.
        on_missing_image: an image listed in the JSON but absent from its folder: "error" or "skip" (logged).
        augment: joint RandomResizedCrop + flip for training (paper: True for COCO).
        union_per_category: False (default, the paper's COCO samples) = one annotation per sample; True = the
            union of a category's annotations in an image.
        **kwargs: the arguments every instance data module shares (image_size, resize_size, scale_min, hflip,
            interpolation, mean, std, seen_fraction, split_seed, val_include_unseen, predict_split, batch_size,
            predict_batch_size, num_workers, pin_memory, max_bad_annotation_fraction), documented on
            :class:`~data_modules._instances.InstanceDataModule`. COCO keeps their defaults: every category
            seen (``seen_fraction=1.0``, the paper's COCO scenario).

    Geometry: a polygon partly outside its image is clipped by the rasterisation; one whose rasterised mask is
    empty because it lies outside the image, or a crowd RLE drawn on another frame than its image, is dropped and
    counted (``skipped_annotations``).
    """

    def __init__(
        self,
        root: str = "data/coco",
        train_annotations: str = "annotations/instances_train2017.json",
        val_annotations: str = "annotations/instances_val2017.json",
        train_images: str = "train2017",
        val_images: str = "val2017",
        label_mode: Literal["category", "token"] = "category",
        crowd: Literal["eval_only", "skip", "include"] = "eval_only",
        min_area: float = 0.0,
        on_missing_image: Literal["error", "skip"] = "error",
        augment: bool = True,
        union_per_category: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(augment=augment, union_per_category=union_per_category, **kwargs)
        self.save_hyperparameters()
        owner = type(self).__name__
        for name, value in (("root", root), ("train_annotations", train_annotations),
                            ("val_annotations", val_annotations), ("train_images", train_images),
                            ("val_images", val_images)):
            check_path(owner, name, value)
        self.root = Path(root)
        self.label_mode = check_choice(owner, "label_mode", label_mode, ("category", "token"))
        self.crowd = check_choice(owner, "crowd", crowd, ("eval_only", "skip", "include"))
        self.min_area = check_real(owner, "min_area", min_area, low=0.0)
        self.on_missing_image = check_choice(owner, "on_missing_image", on_missing_image, ("error", "skip"))
        self._splits = [
            (self._path(train_annotations), self._path(train_images)),
            (self._path(val_annotations), self._path(val_images)),
        ]

    def _path(self, p: str) -> Path:
        p = Path(p)
        return p if p.is_absolute() else self.root / p

    @staticmethod
    def _category_table(cocos: list, files: list[Path]) -> dict[int, str]:
        """Category id -> name, checked to agree between the files."""
        names: dict[int, str] = {}
        for coco, f in zip(cocos, files):
            at_id: dict[int, int] = {}
            at_name: dict[str, int] = {}
            for j, c in enumerate(coco.dataset["categories"]):
                cid, name = int(c["id"]), " ".join(str(c["name"]).split())
                for key, seen, what in ((cid, at_id, "id"), (name, at_name, "name")):
                    if key in seen:
                        raise ValueError(
                            f"{f}: categories[{j}] defines category {what} {key!r} again (first at categories[{seen[key]}]); "
                            "a vocabulary must define each id and each name once: use an unmodified instances file")
                    seen[key] = j
                if names.setdefault(cid, name) != name:
                    raise ValueError(f"{f}: category {cid} is {name!r} but another file calls it {names[cid]!r}")
        by_name: dict[str, int] = {}
        for cid, name in names.items():
            if by_name.setdefault(name, cid) != cid:
                raise ValueError(f"{files[0]} / {files[-1]}: category name {name!r} has two ids ({by_name[name]} and {cid}) "
                                 "across the annotation files; use the instances files of one COCO release")
        return dict(sorted(names.items()))

    def _load_tables(self) -> InstanceTables:
        cocos = [load_coco(a) for a, _ in self._splits]
        for coco, (ann_file, _) in zip(cocos, self._splits):
            for key in ("images", "annotations"):
                _refuse_repeated_ids(coco.dataset[key], ann_file, key)
        cats = self._category_table(cocos, [a for a, _ in self._splits])
        if self.label_mode == "category":
            label_names = list(cats.values())
            words_of = {cid: [i] for i, cid in enumerate(cats)}
        else:
            label_names = list(dict.fromkeys(w.lower() for n in cats.values() for w in n.split()))
            index = {w: i for i, w in enumerate(label_names)}
            words_of = {cid: list(dict.fromkeys(index[w.lower()] for w in n.split())) for cid, n in cats.items()}

        paths, ids, sizes, split = [], [], [], []
        obj_image, obj_file, obj_ann, obj_eval_only, label_ptr, label_ids = [], [], [], [], [0], []
        missing: list[str] = []
        n_crowd = n_small = n_checked = n_clipped = 0
        bad: dict[str, int] = {}
        for s, (coco, (ann_file, img_dir)) in enumerate(zip(cocos, self._splits)):
            orphans = sorted({int(a["image_id"]) for a in coco.dataset["annotations"]} - set(coco.imgs))
            handle_missing(self.on_missing_image, [f"image id {i}" for i in orphans],
                           f"annotated images missing from the 'images' list of {ann_file}",
                           "Use an unmodified instances file")
            listing = set(p.name for p in img_dir.iterdir()) if img_dir.is_dir() else set()
            for img_id in sorted(coco.imgs):
                anns = coco.imgToAnns.get(img_id, [])
                kept = []
                for a in anns:
                    if int(a["category_id"]) not in cats:
                        raise ValueError(f"{ann_file}: annotation {a.get('id')} has unknown category_id "
                                         f"{a['category_id']}")
                    crowd = bool(a.get("iscrowd", 0))
                    if crowd and self.crowd == "skip":
                        n_crowd += 1
                        continue
                    if float(a.get("area", np.inf)) < self.min_area:
                        n_small += 1
                        continue
                    rec = coco.imgs[img_id]
                    where = segment_geometry(a.get("segmentation"), int(rec["height"]), int(rec["width"]))
                    n_checked += 1
                    if where == "clipped":
                        n_clipped += 1
                    elif where != "inside":
                        bad[where] = bad.get(where, 0) + 1
                        continue
                    kept.append((a, crowd and self.crowd == "eval_only"))
                if not kept:
                    continue
                rec = coco.imgs[img_id]
                fname = rec["file_name"]
                if fname not in listing:
                    missing.append(str(img_dir / fname))
                row = len(paths)
                paths.append(str(img_dir / fname))
                ids.append(int(img_id))
                sizes.append((int(rec["height"]), int(rec["width"])))
                split.append(s)
                for a, eval_only in kept:
                    obj_image.append(row)
                    obj_file.append(s)
                    obj_ann.append(int(a["id"]))
                    obj_eval_only.append(eval_only)
                    label_ids.extend(words_of[int(a["category_id"])])
                    label_ptr.append(len(label_ids))
        handle_missing(self.on_missing_image, missing, "COCO images listed in the annotations but not on disk",
                       "Download train2017.zip / val2017.zip and unzip them into root, or fix train_images / "
                       "val_images")
        source = CocoMaskSource(cocos, np.array(obj_file), np.array(obj_ann))
        tables = InstanceTables(
            label_names=label_names,
            image_paths=paths,
            image_ids=np.array(ids, dtype=np.int64),
            image_sizes=np.array(sizes, dtype=np.int64).reshape(-1, 2),
            image_split=np.array(split, dtype=np.int8),
            obj_image=np.array(obj_image, dtype=np.int64),
            obj_label_ptr=np.array(label_ptr, dtype=np.int64),
            obj_label_ids=np.array(label_ids, dtype=np.int64),
            mask_source=source,
            obj_eval_only=np.array(obj_eval_only, dtype=bool),
            info={"crowd_skipped": n_crowd, "small_skipped": n_small, "images_missing_on_disk": len(missing),
                  "annotations": n_checked, "clipped_annotations": n_clipped, "skipped_annotations": bad,
                  "annotation_files": [str(a) for a, _ in self._splits]},
        )
        if missing:
            missing_set = set(missing)
            tables = keep_images(tables, np.array([p not in missing_set for p in paths]), source.subset)
        if not (tables.image_split == VAL).any():
            log.warning("CocoDataModule: no validation images with annotations in %s", self._splits[1][0])
        return tables
