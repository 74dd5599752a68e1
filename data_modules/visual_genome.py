"""Visual Genome for LaViSE: object boxes as masks, categories merged by synset, seen/unseen split.

Files read under ``root`` (the layout of the VG 1.2/1.4 download):

* ``image_data.json``: a list of ``{"image_id" (or "id"), "url", "width", "height", ...}``;
* ``objects.json``: a list of ``{"image_id", "objects": [{"object_id", "x", "y", "w", "h", "names": [...],
  "synsets": [...]}, ...]}`` (~700 MB; it is *streamed*, element by element, see
  :func:`~lit_explain.datasets.files.iter_json_array`);
* ``attributes.json`` (only with ``include_attributes=True``): the same objects with an ``"attributes"`` word
  list each;
* the images, in ``VG_100K/`` and ``VG_100K_2/``: an image's file is the last component of its ``url``, looked
  up in each folder in turn.

Category vocabulary. Each object is mapped to category words by ``merge_by``:

* ``"synset"`` (the paper): one category per WordNet synset, named by the synset's lemma with ``_`` read as a
  space (``traffic_light.n.01`` -> "traffic light"). Synsets whose readable names coincide (``bank.n.01`` and
  ``bank.n.09``) are merged into one category, since a word embedding could not tell them apart anyway.
  Objects without a synset are left out (counted in the log).
* ``"head_token"`` (the MLRC reproduction): the first ``_``-token of the synset lemma (``traffic_light.n.01``
  -> "traffic").
* ``"name"``: the object's own ``names`` (lower-cased, spaces normalised); for files without synsets.

An object with several synsets/names carries several categories. With ``include_attributes`` its attribute
words are added as categories too (so colour words can be learned). A category is kept when it occurs in at
least ``min_images`` distinct images (``min_count_by="images"``, the paper: >= 100 images, 1,208
categories) or instances (``"instances"``, the reproduction), counted over the annotation files. Categories
are ordered alphabetically, so their ids do not depend on file order.

Splits: images are split train/val with ``val_fraction`` (seeded permutation); categories seen/unseen with
``seen_fraction`` (default 0.7, the paper's 70/30; seeded, without replacement, unlike the original code).
Training uses the deterministic resize + centre crop by default (``augment=False``), as in the paper.

Parsing is done once per (file contents, parameters) and cached atomically as ``.npz`` in ``cache_dir``.
"""

from __future__ import annotations

import array
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from data_modules._instance_tables import (BoxMaskSource, InstanceTables, box_geometry, handle_missing, image_split,
                                           keep_images)
from data_modules._instances import InstanceDataModule
from lit_explain.datasets.checks import check_choice, check_int, check_path, check_real, check_strings
from lit_explain.datasets.files import atomic_save_npz, file_digest, iter_json_array, load_npz_cache

log = logging.getLogger(__name__)

__all__ = ["VisualGenomeDataModule", "normalise_name", "synset_name"]

_CACHE_VERSION = 2  # 2: boxes outside their image dropped and counted


def normalise_name(name: str) -> str:
    """Lower-case, ``_`` as space, whitespace collapsed: ``" Traffic_Light "`` -> ``"traffic light"``."""
    return " ".join(str(name).lower().replace("_", " ").split())


def synset_name(synset: str, head_token: bool = False) -> str:
    """Readable name of a WordNet synset id: ``"traffic_light.n.01"`` -> ``"traffic light"`` (or ``"traffic"``)."""
    parts = str(synset).rsplit(".", 2)
    lemma = parts[0] if len(parts) == 3 else str(synset)
    if head_token:
        lemma = lemma.split("_")[0]
    return normalise_name(lemma)


def _image_id(entry: dict, path: Path) -> int:
    for key in ("image_id", "id"):
        if key in entry:
            return int(entry[key])
    img = entry.get("image")
    if isinstance(img, dict):
        return _image_id(img, path)
    raise ValueError(f"{path}: an entry has no 'image_id' (keys: {sorted(entry)[:8]}); is this a Visual Genome file?")


def _object_id(obj: dict) -> int:
    return int(obj.get("object_id", obj.get("id", -1)))


class VisualGenomeDataModule(InstanceDataModule):
    """Visual Genome instance/image samples for LaViSE (see the module docstring for formats and choices).

    Args:
        root: folder holding the JSON files and the image folders.
        image_data_file: image list, relative to ``root`` (or absolute).
        objects_file: object annotations, relative to ``root`` (or absolute).
        attributes_file: attribute annotations (read only when ``include_attributes``).
        image_dirs: folders (relative to ``root``) searched in order for an image's file.
        merge_by: how objects map to categories: "synset" (paper), "head_token" (reproduction) or "name".
        min_images: minimum number of distinct images (or instances, see ``min_count_by``) of a category.
        min_count_by: "images" (paper) or "instances" (reproduction).
        include_attributes: add the objects' attribute words (attributes.json) as categories.
        on_missing_image: an image file absent from the image folders, or an annotated image absent from
            image_data.json: "error" (raise, naming the files) or "skip" (log them and leave them out).
        val_fraction: fraction of images held out for validation/prediction, in [0, 1) (seeded by
            ``split_seed``).
        seen_fraction: fraction of categories seen in training, in (0, 1] (paper: 0.7); the rest are unseen.
        cache_dir: folder of the parsed-annotation cache (keyed by file contents and parameters); None = off.
        **kwargs: the arguments every instance data module shares (image_size, resize_size, augment, scale_min,
            hflip, interpolation, mean, std, union_per_category, split_seed, val_include_unseen, predict_split,
            batch_size, predict_batch_size, num_workers, pin_memory, max_bad_annotation_fraction), documented on
            :class:`~data_modules._instances.InstanceDataModule`. VG keeps their defaults: no augmentation
            (as the paper trains VG), a training sample = all boxes of one category in one image.

    Boxes: a box partly outside its image (as image_data.json gives its size) is clipped to the image; a box
    wholly outside, or of negative width or height, is dropped and counted (``skipped_annotations``).
    """

    def __init__(
        self,
        root: str = "data/visual_genome",
        image_data_file: str = "image_data.json",
        objects_file: str = "objects.json",
        attributes_file: str = "attributes.json",
        image_dirs: list[str] = ["VG_100K", "VG_100K_2"],  # noqa: B006 - a CLI default, never mutated
        merge_by: Literal["synset", "head_token", "name"] = "synset",
        min_images: int = 100,
        min_count_by: Literal["images", "instances"] = "images",
        include_attributes: bool = False,
        on_missing_image: Literal["error", "skip"] = "error",
        val_fraction: float = 0.1,
        seen_fraction: float = 0.7,
        cache_dir: str | None = "cache/visual_genome",
        **kwargs,
    ) -> None:
        super().__init__(seen_fraction=seen_fraction, **kwargs)
        self.save_hyperparameters()
        owner = type(self).__name__
        for name, value in (("root", root), ("image_data_file", image_data_file), ("objects_file", objects_file),
                            ("attributes_file", attributes_file)):
            check_path(owner, name, value)
        check_path(owner, "cache_dir", cache_dir, optional=True)
        check_strings(owner, "image_dirs", image_dirs, unique=True)
        check_choice(owner, "merge_by", merge_by, ("synset", "head_token", "name"))
        check_choice(owner, "min_count_by", min_count_by, ("images", "instances"))
        check_choice(owner, "on_missing_image", on_missing_image, ("error", "skip"))
        self.root = Path(root)
        self.image_dirs = list(image_dirs)
        self.merge_by = merge_by
        self.min_images = check_int(owner, "min_images", min_images, low=0)
        self.min_count_by = min_count_by
        self.include_attributes = bool(include_attributes)
        self.on_missing_image = on_missing_image
        self.val_fraction = check_real(owner, "val_fraction", val_fraction, 0.0, 1.0, high_open=True)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._files = {
            "image_data": self._path(image_data_file),
            "objects": self._path(objects_file),
            "attributes": self._path(attributes_file),
        }

    def _path(self, p: str) -> Path:
        p = Path(p)
        return p if p.is_absolute() else self.root / p

    # ------------------------------------------------------------------ parsing
    def _input_files(self) -> list[Path]:
        files = [self._files["image_data"], self._files["objects"]]
        if self.include_attributes:
            files.append(self._files["attributes"])
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(
                    f"Visual Genome file not found: {f}. Download image_data.json, objects.json"
                    f"{' and attributes.json' if self.include_attributes else ''} from the Visual Genome site "
                    f"(https://homes.cs.washington.edu/~ranjay/visualgenome/api.html) into {self.root}, "
                    "or point root / *_file at them.")
        return files

    def _categories_of(self, obj: dict, memo: dict[str, str]) -> list[str]:
        """Category names of one object (``memo`` caches string -> name: VG repeats ~80k synsets 3.8M times)."""
        if self.merge_by == "name":
            raw = obj.get("names") or ([obj["name"]] if "name" in obj else [])
            conv = normalise_name
        else:
            raw = obj.get("synsets") or []
            head = self.merge_by == "head_token"

            def conv(x: str) -> str:
                return synset_name(x, head)
        out = []
        for x in raw:
            n = memo.get(x)
            if n is None:
                n = memo[x] = conv(x)
            if n:
                out.append(n)
        return out

    def _parse(self) -> tuple[dict, dict]:
        """Stream the JSON files into flat arrays (before the frequency filter is applied)."""
        files = self._files
        images: dict[int, tuple[str, int, int]] = {}
        entry_of: dict[int, int] = {}
        for k, e in enumerate(iter_json_array(files["image_data"])):
            iid = _image_id(e, files["image_data"])
            if iid in entry_of:
                raise ValueError(f"{files['image_data']}: image id {iid} is listed twice (entries {entry_of[iid]} and "
                                 f"{k}); each image must be listed once: re-download image_data.json")
            entry_of[iid] = k
            url = str(e.get("url") or f"{iid}.jpg")
            images[iid] = (url.rstrip("/").rsplit("/", 1)[-1], int(e["width"]), int(e["height"]))

        attrs: dict[int, list[str]] = {}
        if self.include_attributes:
            for e in iter_json_array(files["attributes"]):
                for a in e.get("attributes") or []:
                    words = [w for w in (normalise_name(x) for x in (a.get("attributes") or [])) if w]
                    if words:
                        attrs.setdefault(_object_id(a), []).extend(words)

        cat_id: dict[str, int] = {}
        order_ids: list[int] = []  # image ids in objects.json order (images that have kept objects)
        img_row: dict[int, int] = {}
        obj_image = array.array("q")
        boxes = array.array("f")
        pair_obj = array.array("q")
        pair_cat = array.array("q")
        not_in_image_data: list[int] = []
        n_objects = n_no_category = 0
        memo: dict[str, str] = {}
        for e in iter_json_array(files["objects"]):
            iid = _image_id(e, files["objects"])
            objs = e.get("objects") or []
            if iid not in images:
                if objs:
                    not_in_image_data.append(iid)
                continue
            for o in objs:
                n_objects += 1
                cats = self._categories_of(o, memo)
                oid = _object_id(o)
                if oid in attrs:
                    cats = cats + attrs[oid]
                if not cats:
                    n_no_category += 1
                    continue
                try:
                    box = (float(o["x"]), float(o["y"]), float(o["w"]), float(o["h"]))
                except KeyError as exc:
                    raise ValueError(f"{files['objects']}: object {oid} of image {iid} has no {exc} box field") from None
                row = img_row.get(iid)
                if row is None:
                    row = img_row[iid] = len(order_ids)
                    order_ids.append(iid)
                o_idx = len(obj_image)
                obj_image.append(row)
                boxes.extend(box)
                for c in dict.fromkeys(cats):  # unique, in order
                    pair_obj.append(o_idx)
                    pair_cat.append(cat_id.setdefault(c, len(cat_id)))
        raw = {
            "image_ids": np.array(order_ids, dtype=np.int64),
            "files": [images[i][0] for i in order_ids],
            "widths": np.array([images[i][1] for i in order_ids], dtype=np.int64),
            "heights": np.array([images[i][2] for i in order_ids], dtype=np.int64),
            "obj_image": np.frombuffer(obj_image, dtype=np.int64).copy(),
            "boxes": np.frombuffer(boxes, dtype=np.float32).reshape(-1, 4).copy(),
            "pair_obj": np.frombuffer(pair_obj, dtype=np.int64).copy(),
            "pair_cat": np.frombuffer(pair_cat, dtype=np.int64).copy(),
            "cat_names": list(cat_id),
        }
        info = {"objects": n_objects, "objects_without_category": n_no_category,
                "not_in_image_data": not_in_image_data}
        return raw, info

    def _build(self) -> tuple[dict[str, np.ndarray], dict]:
        """Parse, apply the frequency filter, and pack the arrays + meta stored in the cache."""
        raw, info = self._parse()
        names = raw["cat_names"]
        pair_obj, pair_cat = raw["pair_obj"], raw["pair_cat"]
        c = len(names)
        # geometry: boxes that cannot be drawn in their image leave before the frequency count
        img = raw["obj_image"]
        geo = box_geometry(raw["boxes"], raw["heights"][img], raw["widths"][img])
        drop = geo["negative_size"] | geo["outside_image"]
        info.update(annotations=int(len(img)), clipped_annotations=int(geo["clipped"].sum()),
                    skipped_annotations={k: int(geo[k].sum()) for k in ("outside_image", "negative_size")},
                    annotation_files=[str(self._files["objects"])])
        if drop.any():
            keep = ~drop[pair_obj]
            pair_obj, pair_cat = pair_obj[keep], pair_cat[keep]
        if self.min_count_by == "images":
            img_cat = np.unique(raw["obj_image"][pair_obj] * max(c, 1) + pair_cat)
            counts = np.bincount(img_cat % max(c, 1), minlength=c)
        else:
            counts = np.bincount(pair_cat, minlength=c)
        # at least one occurrence even with min_images=0: a category whose boxes were all dropped goes too
        kept = sorted(i for i in range(c) if counts[i] >= max(self.min_images, 1))
        kept_sorted = sorted(kept, key=lambda i: names[i])
        new_id = np.full(c, -1, dtype=np.int64)
        new_id[kept_sorted] = np.arange(len(kept_sorted))
        label_names = [names[i] for i in kept_sorted]

        keep_pair = new_id[pair_cat] >= 0 if c else np.zeros(0, dtype=bool)
        pair_obj, pair_lab = pair_obj[keep_pair], new_id[pair_cat[keep_pair]]
        objs = np.unique(pair_obj)  # objects with at least one kept category (pair_obj is sorted)
        obj_new = np.full(len(raw["obj_image"]), -1, dtype=np.int64)
        obj_new[objs] = np.arange(len(objs))
        counts_per_obj = np.bincount(obj_new[pair_obj], minlength=len(objs))
        obj_label_ptr = np.zeros(len(objs) + 1, dtype=np.int64)
        np.cumsum(counts_per_obj, out=obj_label_ptr[1:])
        obj_image = raw["obj_image"][objs]
        imgs = np.unique(obj_image)  # drop images left with no objects
        img_new = np.full(len(raw["image_ids"]), -1, dtype=np.int64)
        img_new[imgs] = np.arange(len(imgs))
        info.update(categories_before_filter=c, categories=len(label_names), images=int(len(imgs)),
                    kept_objects=int(len(objs)))
        arrays = {
            "image_ids": raw["image_ids"][imgs],
            "heights": raw["heights"][imgs],
            "widths": raw["widths"][imgs],
            "obj_image": img_new[obj_image],
            "boxes": raw["boxes"][objs],
            "obj_label_ptr": obj_label_ptr,
            "obj_label_ids": pair_lab,
        }
        meta = {"label_names": label_names, "files": [raw["files"][i] for i in imgs], "info": info}
        return arrays, meta

    def _cache_key(self, files: list[Path]) -> str:
        params = {"version": _CACHE_VERSION, "merge_by": self.merge_by, "min_images": self.min_images,
                  "min_count_by": self.min_count_by, "include_attributes": self.include_attributes}
        return file_digest(files, params)

    def _load_tables(self) -> InstanceTables:
        files = self._input_files()
        cached = None
        cache_path = None
        if self.cache_dir is not None:
            cache_path = self.cache_dir / f"vg_{self._cache_key(files)[:20]}.npz"
            cached = load_npz_cache(cache_path)
            if cached is not None:
                log.info("Visual Genome annotations read from cache %s", cache_path)
        if cached is None:
            arrays, meta = self._build()
            if cache_path is not None:
                atomic_save_npz(cache_path, meta=meta, **arrays)
        else:
            arrays, meta = cached
        info = dict(meta.get("info", {}))
        handle_missing(self.on_missing_image, info.pop("not_in_image_data", []),
                       f"annotated image ids of {self._files['objects']} missing from {self._files['image_data']}",
                       "Use the image_data.json of the same Visual Genome release as objects.json")
        paths, missing = self._resolve_images(meta["files"])
        n = len(paths)
        tables = InstanceTables(
            label_names=list(meta["label_names"]),
            image_paths=[p or "" for p in paths],
            image_ids=arrays["image_ids"],
            image_sizes=np.stack([arrays["heights"], arrays["widths"]], axis=1) if n else np.zeros((0, 2)),
            image_split=image_split(n, self.val_fraction, self.split_seed),
            obj_image=arrays["obj_image"],
            obj_label_ptr=arrays["obj_label_ptr"],
            obj_label_ids=arrays["obj_label_ids"],
            mask_source=BoxMaskSource(arrays["boxes"]),
            info=info,
        )
        if missing:
            tables.info["images_missing_on_disk"] = len(missing)
            boxes = arrays["boxes"]
            tables = keep_images(tables, np.array([p is not None for p in paths]),
                                 lambda objs: BoxMaskSource(boxes[objs]))
        if not tables.image_paths:
            raise ValueError(f"no annotated images left under {self.root} (min_images={self.min_images} may be "
                             "too high for these files)")
        return tables

    def _resolve_images(self, names: list[str]) -> tuple[list[str | None], list[str]]:
        """Absolute path of each image file (first image folder that has it); apply ``on_missing_image``."""
        listings = []
        for d in self.image_dirs:
            folder = self._path(d)
            listings.append((folder, set(os.listdir(folder)) if folder.is_dir() else set()))
        paths: list[str | None] = []
        missing: list[str] = []
        for name in names:
            for folder, files in listings:
                if name in files:
                    paths.append(str(folder / name))
                    break
            else:
                paths.append(None)
                missing.append(name)
        handle_missing(self.on_missing_image, missing,
                       f"image files not found in {[str(self._path(d)) for d in self.image_dirs]}",
                       "Download and unpack VG_100K and VG_100K_2 into root, or fix image_dirs")
        return paths, missing
