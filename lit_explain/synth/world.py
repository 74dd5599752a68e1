"""The synthetic concept world: a deterministic generator that writes Broden-format datasets.

:func:`generate_world` renders scenes of 1-3 coloured shapes with parts and materials over textured
backgrounds (the concepts are listed in :mod:`lit_explain.synth.concepts`) and writes them in the exact
Broden on-disk format (``index.csv``, ``category.csv``, ``label.csv``, ``c_<category>.csv``,
``images/synth/*.jpg`` and RGB label PNGs whose label id is ``R + 256 * G``), so every reader of
real Broden reads it unchanged. Beside the Broden files:

* ``classes.csv`` (``image,class,class_name``): each image's class. Classes are defined by rules over the
  concepts present in an image (e.g. ``red AND circle``); every image satisfies exactly its own class's
  rule and no other (checked on the rendered masks), so a classifier has to learn concept detectors.
* ``instances.jsonl``: one JSON line per image (index.csv order) with its scene, texture, class and object
  instances (shape, attributes, bbox, geometry); read it with :func:`load_instances`, :func:`load_scene`
  and rasterise masks with :func:`instance_masks`.
* ``world.json``: generator parameters, concepts with their pixel semantics, class names and rules. It is
  written last and the whole world is moved into place with one ``os.rename``, so a folder with a
  ``world.json`` is always a complete world.

Determinism: image ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` alone, so it is the same
whatever ``num_images`` is, and two generations with the same arguments are byte-identical. Image ``i``
has class ``i % num_classes`` (balanced); images are split into train/val by blocks of ``num_classes``
consecutive images (class balanced, independent of ``num_images``).

Reuse policy: an existing complete world with the same parameters is reused as is; one with different
parameters raises :class:`WorldMismatchError` naming the differences, unless ``overwrite=True``, which
replaces it atomically (a new world is generated beside it and swapped in).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import struct
import tempfile
import uuid
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

from .concepts import (BRIGHTNESS_RANGE, CATEGORIES, COLORS, DEFAULT_CLASSES, IMAGE_LEVEL_CATEGORIES, MATERIALS,
                       PARTS, SCENES, SHAPES, TEXTURES, world_concepts)
from .formula import evaluate_bool, parse, to_dnf
from .render import BOUND_RADIUS, rasterize, render_image, shape_extent

__all__ = ["generate_world", "read_world", "is_complete_world", "load_instances", "load_scene",
           "instance_masks", "load_classes", "WorldMismatchError", "GENERATOR_VERSION", "SUBSET"]

#: Bumped whenever the rendering or sampling changes the bytes written for the same parameters.
GENERATOR_VERSION = 1
#: First path component of every image in index.csv (a Broden "subset" such as ``ade20k``).
SUBSET = "synth"

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_RADIUS_RANGE = (0.14, 0.21)  # object size r, normalised units
_P_RIM, _P_CAP, _P_MATERIAL, _P_TEXTURE = 0.5, 0.5, 0.75, 0.8
_MAX_TRIES = 200
_COLOR_NAMES = tuple(COLORS)
_SCENE_NAMES = tuple(SCENES)


class WorldMismatchError(FileExistsError):
    """The target folder holds a different world (or other files) and ``overwrite`` is False."""


# ---------------------------------------------------------------------------------------------- params
def world_params(num_images: int, image_size: int, mask_size: int, seed: int, val_fraction: float,
                 noise: float, classes: Mapping[str, str]) -> dict:
    """The parameter record stored in ``world.json`` and compared on reuse."""
    return {
        "generator_version": GENERATOR_VERSION,
        "definition": _definition_hash(),
        "num_images": int(num_images),
        "image_size": int(image_size),
        "mask_size": int(mask_size),
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "noise": float(noise),
        "classes": {str(k): str(v) for k, v in classes.items()},
    }


def _definition_hash() -> str:
    """Short hash of the concept definitions and rendering constants (a change invalidates old worlds)."""
    from . import concepts as C

    consts = {k: getattr(C, k) for k in sorted(dir(C)) if k.isupper()}
    blob = json.dumps({"concepts": [c.to_dict() for c in world_concepts()], "constants": consts,
                       "radius": _RADIUS_RANGE, "p": [_P_RIM, _P_CAP, _P_MATERIAL, _P_TEXTURE]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _validate(num_images, image_size, mask_size, val_fraction, noise, classes) -> None:
    if int(num_images) < 1:
        raise ValueError(f"generate_world: num_images must be >= 1, got {num_images}")
    if int(image_size) < 16:
        raise ValueError(f"generate_world: image_size must be >= 16 pixels, got {image_size}")
    if not 4 <= int(mask_size) <= int(image_size):
        raise ValueError(f"generate_world: mask_size must be in [4, image_size={image_size}], got {mask_size}")
    if not 0.0 <= float(val_fraction) <= 1.0:
        raise ValueError(f"generate_world: val_fraction must be in [0, 1], got {val_fraction}")
    if float(noise) < 0:
        raise ValueError(f"generate_world: noise must be >= 0, got {noise}")
    if len(classes) < 2:
        raise ValueError("generate_world: at least two classes are needed")


# ---------------------------------------------------------------------------------------------- sampling
class _SceneSampler:
    """Samples scenes (attributes and geometry) that satisfy exactly one class rule."""

    def __init__(self, classes: Mapping[str, str]) -> None:
        concepts = world_concepts()
        self.category = {c.name: c.category for c in concepts}
        self.names = list(classes)
        self.rules = [parse(r, known=self.category) for r in classes.values()]
        self.dnf = [to_dnf(r) for r in self.rules]

    # -- attributes -------------------------------------------------------------------------------
    @staticmethod
    def _random_object(rng: np.random.Generator) -> dict:
        u = rng.random(7)  # one draw for all attributes
        lo, hi = BRIGHTNESS_RANGE
        return {
            "shape": SHAPES[int(u[0] * len(SHAPES))],
            "color": _COLOR_NAMES[int(u[1] * len(_COLOR_NAMES))],
            "material": MATERIALS[int(u[3] * len(MATERIALS))] if u[2] < _P_MATERIAL else None,
            "rim": bool(u[4] < _P_RIM),
            "cap": bool(u[5] < _P_CAP),
            "brightness": float(lo + (hi - lo) * u[6]),
        }

    def present(self, scene: dict) -> set[str]:
        """Concepts present according to the attributes."""
        out = {scene["scene"]}
        if scene["texture"]:
            out.add(scene["texture"])
        for ob in scene["objects"]:
            out.update((ob["shape"], ob["color"]))
            if ob["material"]:
                out.add(ob["material"])
            out.update(p for p in PARTS if ob[p])
        return out

    def true_rules(self, present: set[str]) -> list[int]:
        return [k for k, r in enumerate(self.rules) if evaluate_bool(r, present)]

    def _force(self, scene: dict, clause, rng: np.random.Generator) -> bool:
        """Make the clause's positive literals true and its negative ones false; False if impossible."""
        pos, neg = clause
        forced: dict[tuple[int, str], bool] = {}  # (object, attribute) -> fixed
        forced_img: set[str] = set()
        objs = scene["objects"]
        for name in sorted(pos, key=lambda n: (CATEGORIES.index(self.category[n]), n)):  # name breaks ties: set order varies per process
            cat = self.category[name]
            if cat in IMAGE_LEVEL_CATEGORIES:
                if cat in forced_img and scene[cat] != name:
                    return False
                scene[cat] = name
                forced_img.add(cat)
                continue
            key = {"color": "color", "object": "shape", "material": "material"}.get(cat, name)
            is_part = cat == "part"
            have = [k for k, ob in enumerate(objs) if (ob[key] if is_part else ob[key] == name)]
            if have:
                forced[(have[0], key)] = True
                continue
            free = [k for k in range(len(objs)) if (k, key) not in forced]
            if not free:
                if len(objs) >= 3:
                    return False
                objs.append(self._random_object(rng))
                free = [len(objs) - 1]
            k = free[rng.integers(len(free))]
            objs[k][key] = True if is_part else name
            forced[(k, key)] = True
        for name in sorted(neg):
            cat = self.category[name]
            if cat in IMAGE_LEVEL_CATEGORIES:
                if scene[cat] == name:
                    if cat in forced_img:
                        return False
                    pool = [v for v in (SCENES if cat == "scene" else TEXTURES) if v != name]
                    scene[cat] = pool[rng.integers(len(pool))]
                continue
            key = {"color": "color", "object": "shape", "material": "material"}.get(cat, name)
            for k, ob in enumerate(objs):
                if (ob[key] if cat == "part" else ob[key] == name):
                    if forced.get((k, key)):
                        return False
                    if cat == "part":
                        ob[key] = False
                    elif cat == "material":
                        ob[key] = None
                    else:
                        pool = [v for v in (COLORS if cat == "color" else SHAPES) if v != name]
                        ob[key] = pool[rng.integers(len(pool))]
        return True

    def _place(self, objs: list[dict], rng: np.random.Generator) -> bool:
        """Give objects non-overlapping positions inside the image; False if no room was found."""
        placed: list[tuple[float, float, float]] = []
        for ob in objs:
            r = float(rng.uniform(*_RADIUS_RANGE))
            for _ in range(40):
                left, top, right, bottom = shape_extent(ob["shape"], r)
                cx = float(rng.uniform(0.02 - left, 0.98 - right))
                cy = float(rng.uniform(0.02 - top, 0.98 - bottom))
                if all(math.hypot(cx - x, cy - y) > BOUND_RADIUS * (r + q) + 0.02 for x, y, q in placed):
                    break
                r = max(r * 0.97, _RADIUS_RANGE[0] * 0.8)  # shrink a little when crowded, never to a speck
            else:
                return False
            ob.update(cx=cx, cy=cy, r=r)
            placed.append((cx, cy, r))
        return True

    def sample(self, k: int, rng: np.random.Generator) -> dict:
        """A scene whose attribute-level concepts satisfy rule ``k`` and no other rule."""
        for _ in range(_MAX_TRIES):
            u = rng.random(7)  # one draw for the image-level choices
            scene = {
                "scene": _SCENE_NAMES[int(u[0] * len(_SCENE_NAMES))],
                "texture": TEXTURES[int(u[2] * len(TEXTURES))] if u[1] < _P_TEXTURE else None,
                "texture_phase": [float(u[3]), float(u[4])],
                "objects": [self._random_object(rng) for _ in range(1 + int(u[5] * 3))],
            }
            clause = self.dnf[k][int(u[6] * len(self.dnf[k]))]
            if not self._force(scene, clause, rng):
                continue
            if self.true_rules(self.present(scene)) != [k] or not self._place(scene["objects"], rng):
                continue
            return scene
        raise RuntimeError(f"class rule {self.names[k]!r} could not be satisfied alone in {_MAX_TRIES} draws; "
                           "make the class rules less overlapping")


# ---------------------------------------------------------------------------------------------- writing
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=8)
def _png_head(h: int, w: int) -> bytes:
    """PNG signature and IHDR of an h x w 8-bit RGB image."""
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))


_PNG_END = _png_chunk(b"IEND", b"")


def _png_bytes(plane: np.ndarray) -> bytes:
    """Encode an int label plane as a Broden RGB PNG (R = id % 256, G = id // 256, B = 0).

    A minimal, standard PNG writer (8-bit RGB, no filtering, zlib level 1): about 10x faster than PIL for
    the small planes written here, and byte-deterministic.
    """
    h, w = plane.shape
    raw = np.zeros((h, 1 + 3 * w), np.uint8)  # each scanline: filter byte 0, then RGB triplets
    px = raw[:, 1:].reshape(h, w, 3)
    px[..., 0] = plane & 0xFF
    px[..., 1] = (plane >> 8) & 0xFF
    return _png_head(h, w) + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + _PNG_END


def _write_bytes(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _jpeg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def _bbox(objid: np.ndarray, k: int, window: tuple[int, int, int, int]) -> list[int]:
    """[x, y, w, h] of the pixels of object ``k`` (searched inside its raster window y0, y1, x0, x1)."""
    y0, y1, x0, x1 = window
    ys, xs = np.nonzero(objid[y0:y1, x0:x1] == k)
    if ys.size == 0:
        return [0, 0, 0, 0]
    return [int(x0 + xs.min()), int(y0 + ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _split_of(i: int, num_classes: int, val_fraction: float) -> str:
    return "val" if ((i // num_classes) * _GOLDEN) % 1.0 < val_fraction else "train"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


_INDEX_CATEGORIES = ("color", "object", "part", "material", "scene", "texture")  # index.csv column order


class _LabelStats:
    """Per category and label number: images where present and total mask pixels."""

    def __init__(self) -> None:
        self.images: dict[str, dict[int, int]] = {c: {} for c in CATEGORIES}
        self.pixels: dict[str, dict[int, int]] = {c: {} for c in CATEGORIES}
        self.cat_images = dict.fromkeys(CATEGORIES, 0)

    def merge(self, other: "_LabelStats") -> None:
        """Add another range's statistics (integer sums: the merge order does not matter)."""
        for cat in CATEGORIES:
            self.cat_images[cat] += other.cat_images[cat]
            for mine, theirs in ((self.images[cat], other.images[cat]), (self.pixels[cat], other.pixels[cat])):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v

    def add(self, cat: str, counts: dict[int, int]) -> None:
        """Record one image's label -> pixel counts in category ``cat`` (labels with 0 pixels ignored)."""
        counts = {k: v for k, v in counts.items() if v > 0}
        if not counts:
            return
        self.cat_images[cat] += 1
        for k, v in counts.items():
            self.images[cat][k] = self.images[cat].get(k, 0) + 1
            self.pixels[cat][k] = self.pixels[cat].get(k, 0) + int(v)


def _write_label_planes(prefix: str, stem: str, objs: list[dict], ras: dict, num: dict[str, int],
                        stats: _LabelStats) -> dict[str, str]:
    """Write one image's pixel label PNGs (color, object, part_1[, part_2], material) and record statistics.

    Returns:
        index.csv cells of the pixel categories (``;``-joined paths under images/, empty when no label).
    """
    objid, rim, cap = ras["objid"], ras["rim"], ras["cap"]
    area = np.bincount(objid.ravel(), minlength=len(objs) + 1)
    lut = np.zeros((3, len(objs) + 1), np.int32)  # color, object, material label of each object id
    counts: dict[str, dict[int, int]] = {"color": {}, "object": {}, "material": {}, "part": {}}
    for j, ob in enumerate(objs):
        for row, (cat, name) in enumerate((("color", ob["color"]), ("object", ob["shape"]),
                                           ("material", ob["material"]))):
            if name:
                lut[row, j + 1] = num[name]
                counts[cat][num[name]] = counts[cat].get(num[name], 0) + int(area[j + 1])
    planes: dict[str, list[np.ndarray]] = {"color": [lut[0][objid]], "object": [lut[1][objid]], "part": [],
                                           "material": [lut[2][objid]] if counts["material"] else []}
    n_rim, n_cap = int(np.count_nonzero(rim)), int(np.count_nonzero(cap))
    if n_rim or n_cap:  # plane 1: rim, else cap; plane 2: cap where it lies under a rim
        part_lut = np.array([0, num["cap"], num["rim"], num["rim"]], np.int32)
        planes["part"].append(part_lut[rim.view(np.uint8) * 2 + cap.view(np.uint8)])
        both = rim & cap
        if both.any():
            planes["part"].append(np.where(both, np.int32(num["cap"]), np.int32(0)))
        counts["part"] = {num["rim"]: n_rim, num["cap"]: n_cap}
    cells = {}
    for cat, ps in planes.items():
        names = []
        for q, plane in enumerate(ps):
            fname = f"{stem}_{cat}_{q + 1}.png" if cat == "part" else f"{stem}_{cat}.png"
            _write_bytes(prefix + fname, _png_bytes(plane))
            names.append(f"{SUBSET}/{fname}")
        cells[cat] = ";".join(names)
        stats.add(cat, counts[cat])
    return cells


def _render_range(out: str, params: dict, start: int, stop: int) -> tuple[list, list, list, _LabelStats]:
    """Render images ``start .. stop-1`` into ``out`` and return their rows and statistics.

    Writes each image's JPEG and label PNGs; returns (index rows, class rows, instance lines, label statistics).
    Image i depends only on (params, i), so ranges may run in any process and the merged result is identical
    to one serial pass.
    """
    n, size, msize = params["num_images"], params["image_size"], params["mask_size"]
    seed, val_fraction, noise = params["seed"], params["val_fraction"], params["noise"]
    classes = params["classes"]
    sampler = _SceneSampler(classes)
    num = {c.name: c.number for c in world_concepts()}
    num_classes = len(classes)
    class_names = list(classes)
    prefix = os.path.join(out, "images", SUBSET, "")  # plain strings: pathlib costs ~20 us per file here
    width = max(6, len(str(n - 1)))
    stats = _LabelStats()  # per category and label: images and pixels, for label.csv, c_*.csv, category.csv
    index_rows, class_rows = [], []
    inst_lines: list[str] = []
    # pixel noise: windows of one seeded bank of normals (drawing fresh normals per image costs 4x more)
    noise_bank = np.random.default_rng([seed, 0x5EED, 1]).standard_normal(1 << 20, dtype=np.float32)

    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        k = i % num_classes
        for _ in range(_MAX_TRIES):
            scene = sampler.sample(k, rng)
            objs = scene["objects"]
            ras = rasterize(objs, msize)
            visible = np.bincount(ras["objid"].ravel(), minlength=len(objs) + 1)[1:] > 0
            # the rendered masks must show exactly the sampled concepts (tiny objects could vanish)
            if visible.all() and \
                    all(ras[p].any() == any(ob[p] for ob in objs) for p in PARTS):
                break
        else:  # pragma: no cover - geometry keeps objects large enough
            raise RuntimeError(f"image {i}: could not render a scene whose masks show every sampled concept")
        img, iras = render_image(scene, size, rng, noise, noise_bank)

        stem = f"{i:0{width}d}"
        rel = f"{SUBSET}/{stem}.jpg"
        _write_bytes(f"{prefix}{stem}.jpg", _jpeg_bytes(img))
        cells = _write_label_planes(prefix, stem, objs, ras, num, stats)
        for cat in IMAGE_LEVEL_CATEGORIES:
            val = scene[cat]
            cells[cat] = str(num[val]) if val else ""
            if val:
                stats.add(cat, {num[val]: msize * msize})
        split = _split_of(i, num_classes, val_fraction)
        index_rows.append([rel, split, size, size, msize, msize] + [cells[c] for c in _INDEX_CATEGORIES])
        class_rows.append([rel, k, class_names[k]])
        instances = []
        for j, ob in enumerate(objs):
            attrs = [ob["color"]] + ([ob["material"]] if ob["material"] else [])
            instances.append({
                "id": j + 1, "name": ob["shape"], "color": ob["color"], "material": ob["material"],
                "parts": [p for p in PARTS if ob[p]], "attributes": attrs,
                "bbox": _bbox(iras["objid"], j + 1, iras["windows"][j]),
                "geometry": {"shape": ob["shape"], "cx": ob["cx"], "cy": ob["cy"], "r": ob["r"],
                             "rim": ob["rim"], "cap": ob["cap"]},
                "brightness": ob["brightness"],
            })
        inst_lines.append(json.dumps({"image": rel, "split": split, "class": k, "class_name": class_names[k],
                                      "scene": scene["scene"], "texture": scene["texture"],
                                      "instances": instances}, sort_keys=True))

    return index_rows, class_rows, inst_lines, stats


def _render_range_job(args: tuple) -> tuple[list, list, list, _LabelStats]:
    return _render_range(*args)


def _generate_into(out: Path, params: dict, workers: int = 1) -> None:
    """Render every image and write the complete world into the (new, empty) folder ``out``."""
    n, msize = params["num_images"], params["mask_size"]
    concepts = world_concepts()
    class_names = list(params["classes"])
    (out / "images" / SUBSET).mkdir(parents=True)
    mpix = float(msize * msize)
    workers = max(1, min(int(workers), n // 64 or 1))
    if workers == 1:
        parts = [_render_range(str(out), params, 0, n)]
    else:
        import multiprocessing as mp

        bounds = np.linspace(0, n, 4 * workers + 1).astype(int)
        jobs = [(str(out), params, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_range_job, jobs)
    index_rows = [r for p in parts for r in p[0]]
    class_rows = [r for p in parts for r in p[1]]
    inst_lines = [r for p in parts for r in p[2]]
    stats = _LabelStats()
    for p in parts:
        stats.merge(p[3])

    _write_csv(out / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", "color", "object", "part",
                                   "material", "scene", "texture"], index_rows)
    _write_csv(out / "classes.csv", ["image", "class", "class_name"], class_rows)
    with open(out / "instances.jsonl", "w") as f:
        f.write("\n".join(inst_lines) + "\n")
    label_rows, cat_rows = [], []
    for cat in CATEGORIES:
        members = [c for c in concepts if c.category == cat]
        cat_rows.append([cat, members[0].number, members[-1].number, len(members), stats.cat_images[cat]])
        rows = []
        for code, c in enumerate(members, start=1):
            freq, cover = stats.images[cat].get(c.number, 0), stats.pixels[cat].get(c.number, 0) / mpix
            rows.append([code, c.number, c.name, freq, f"{cover:.6f}"])
            label_rows.append([c.number, c.name, f"{cat}({freq})", freq, f"{cover:.6f}", c.name])
        _write_csv(out / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"], rows)
    _write_csv(out / "category.csv", ["name", "first", "last", "count", "frequency"], cat_rows)
    _write_csv(out / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"], label_rows)

    n_val = sum(r[1] == "val" for r in index_rows)
    info = {
        "format": "lit_explain.synthetic_world",
        "params": params,
        "subset": SUBSET,
        "categories": list(CATEGORIES),
        "image_level_categories": list(IMAGE_LEVEL_CATEGORIES),
        "concepts": [c.to_dict() for c in concepts],
        "class_names": class_names,
        "classes": [{"id": j, "name": name, "rule": rule} for j, (name, rule) in enumerate(params["classes"].items())],
        "counts": {"images": n, "train": n - n_val, "val": n_val},
        "files": {"broden": ["index.csv", "category.csv", "label.csv"] + [f"c_{c}.csv" for c in CATEGORIES],
                  "classes": "classes.csv", "instances": "instances.jsonl"},
    }
    (out / "world.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------- public API
def _stored_params(root: Path) -> dict | None:
    try:
        return json.loads((root / "world.json").read_text())["params"]
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, KeyError) as e:
        raise WorldMismatchError(f"{root / 'world.json'} is unreadable ({e}); delete {root} to regenerate") from e


def _describe_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def is_complete_world(root: str | os.PathLike, params: dict | None = None) -> bool:
    """True when ``root`` holds a complete world (a ``world.json``), with ``params`` when given."""
    stored = _stored_params(Path(root))
    return stored is not None and (params is None or stored == json.loads(json.dumps(params)))


def generate_world(root: str | os.PathLike, num_images: int = 2000, image_size: int = 64, mask_size: int = 32,
                   seed: int = 0, val_fraction: float = 0.2, noise: float = 0.015,
                   classes: Mapping[str, str] | None = None, overwrite: bool = False, workers: int = 1) -> Path:
    """Generate (or reuse) a synthetic world in Broden format at ``root``.

    Args:
        root: target folder. Created with its parents; written atomically (see the module docstring).
        num_images: number of images N.
        image_size: image side in pixels (``ih = iw``).
        mask_size: label mask side in pixels (``sh = sw``); Broden uses image_size / 2.
        seed: world seed; image i uses ``default_rng([seed, i])``.
        val_fraction: fraction of images (class-balanced blocks) in split ``val``.
        noise: standard deviation of the Gaussian pixel noise (intensities in [0, 1]).
        classes: class name -> rule over concept names (grammar of :mod:`lit_explain.synth.formula`);
            default :data:`lit_explain.synth.concepts.DEFAULT_CLASSES`.
        overwrite: replace an existing different world (or other content) at ``root`` instead of raising.
        workers: processes rendering disjoint ranges of images (the files are byte-identical to ``workers=1``;
            not part of the world's parameters).

    Returns:
        The world's root folder.

    Raises:
        WorldMismatchError: ``root`` holds another world or other files and ``overwrite`` is False.
        ValueError: invalid arguments or class rules.
    """
    classes = dict(DEFAULT_CLASSES if classes is None else classes)
    _validate(num_images, image_size, mask_size, val_fraction, noise, classes)
    _SceneSampler(classes)  # validates the rules before any work
    params = json.loads(json.dumps(world_params(num_images, image_size, mask_size, seed, val_fraction, noise,
                                                classes)))
    root = Path(root).absolute()
    stored = _stored_params(root) if root.is_dir() else None
    if stored == params:
        return root
    _check_replaceable(root, stored, params, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _generate_into(tmp, params, workers=workers)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the world gets the usual folder permissions
        _swap_in(tmp, root, params, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _check_replaceable(root: Path, stored: dict | None, params: dict, overwrite: bool) -> None:
    if overwrite or not root.exists():
        return
    if not root.is_dir():
        raise WorldMismatchError(f"{root} exists and is not a folder; remove it or choose another world root")
    if stored is not None:
        raise WorldMismatchError(
            f"{root} holds a synthetic world generated with other parameters ({_describe_diff(stored, params)}); "
            f"delete {root}, choose another root, or pass overwrite=True to regenerate it")
    if any(root.iterdir()):
        raise WorldMismatchError(f"{root} is not empty and holds no world.json; choose another root, empty it, "
                                 "or pass overwrite=True to replace its content")


def _swap_in(tmp: Path, root: Path, params: dict, overwrite: bool) -> None:
    """Move the finished world ``tmp`` to ``root`` atomically, handling a concurrent generator."""
    try:
        os.rename(tmp, root)  # succeeds when root is absent or an empty folder
        return
    except OSError:
        pass
    if _stored_params(root) == params:  # another process finished the same world first
        return
    _check_replaceable(root, _stored_params(root), params, overwrite)
    trash = root.with_name(f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(root, trash)
    os.rename(tmp, root)
    shutil.rmtree(trash, ignore_errors=True)


def read_world(root: str | os.PathLike) -> dict:
    """The parsed ``world.json`` of a complete world (params, concepts, class names and rules).

    Raises:
        FileNotFoundError: ``root`` is not a complete world; generate it with :func:`generate_world`.
    """
    path = Path(root) / "world.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {root} is not a complete synthetic world; "
                                "run lit_explain.synth.generate_world(root, ...) or the data module's prepare_data")
    return json.loads(path.read_text())


@lru_cache(maxsize=4)
def _records(path: str, mtime_ns: int) -> tuple[dict, ...]:
    with open(path) as f:
        return tuple(json.loads(line) for line in f if line.strip())


def _load_records(root: str | os.PathLike) -> tuple[dict, ...]:
    path = Path(root) / "instances.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {root} is not a complete synthetic world")
    return _records(str(path.absolute()), path.stat().st_mtime_ns)


def load_scene(root: str | os.PathLike, index: int) -> dict:
    """The full record of image ``index`` (its row in index.csv).

    Returns:
        dict with ``image`` (path under images/, as in index.csv), ``split``, ``class`` (int),
        ``class_name``, ``scene``, ``texture`` (or None) and ``instances`` (see :func:`load_instances`).
    """
    recs = _load_records(root)
    if not 0 <= index < len(recs):
        raise IndexError(f"image index {index} out of range for the {len(recs)} images of {root}")
    return recs[index]


def load_instances(root: str | os.PathLike, index: int) -> list[dict]:
    """The object instances of image ``index`` (its row in index.csv), in painting order.

    Each instance is a dict:

    * ``id``: 1-based instance id (the value of :func:`instance_masks` order + 1);
    * ``name``: the object concept (shape), e.g. ``"circle"``;
    * ``color``, ``material`` (or None): attribute concepts; ``attributes``: their list;
    * ``parts``: part concepts the object has (``"rim"``, ``"cap"``);
    * ``bbox``: ``[x, y, w, h]`` in image pixels, the tight box of the instance's rendered pixels;
    * ``geometry``: ``shape``, ``cx``, ``cy``, ``r`` (normalised units: the image is the unit square),
      ``rim``, ``cap``; :func:`instance_masks` rasterises it at any resolution;
    * ``brightness``: its brightness factor.
    """
    return load_scene(root, index)["instances"]


def instance_masks(root: str | os.PathLike, index: int, size: int | None = None) -> np.ndarray:
    """Boolean masks (K, size, size) of the K instances of image ``index``.

    ``size`` defaults to the image size; pass the world's ``mask_size`` for masks that match the label PNGs
    exactly (the PNGs are rasterised by the same function).
    """
    if size is None:
        size = int(read_world(root)["params"]["image_size"])
    objs = [inst["geometry"] for inst in load_instances(root, index)]
    objid = rasterize(objs, int(size))["objid"]
    return objid[None] == np.arange(1, len(objs) + 1, dtype=objid.dtype)[:, None, None]


def load_classes(root: str | os.PathLike) -> dict[str, int]:
    """Image path (as in index.csv) -> class id, from ``classes.csv``."""
    path = Path(root) / "classes.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {root} is not a complete synthetic world")
    with open(path, newline="") as f:
        return {row["image"]: int(row["class"]) for row in csv.DictReader(f)}
