"""The flat tables every instance dataset reduces to, and how objects group into samples.

Visual Genome (boxes), COCO (segmentations) and the synthetic world exported to either format are parsed by
their data modules into one :class:`InstanceTables`; this module holds the tables, the mask sources that draw
one object, and the vectorised grouping of objects into sample *units*. Nothing here knows a file format or
Lightning.

Vocabulary of the tables:

* **image**: one annotated picture, with the (H, W) of the frame its annotations are drawn in;
* **object**: one annotation (a VG box, a COCO segment); it carries one or more category ids (a VG object
  with two synsets, a COCO name split into words) and can render its own (H, W) mask;
* **unit**: what a sample is made of: a set of objects (OR-ed into one mask) and a set of category ids.
  With ``union_per_category=True`` (the paper's VG preprocessing) a training unit is *all objects of one
  category in one image*, one-hot; with ``False`` a training unit is one object with all its categories.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["TRAIN", "VAL", "BoxMaskSource", "InstanceTables", "MaskSource", "Units", "box_geometry", "build_units",
           "filter_unit_labels", "handle_missing", "image_split", "keep_images", "seen_split", "select_units"]

TRAIN, VAL = 0, 1


# ---------------------------------------------------------------------------------------------- policies
def handle_missing(policy: str, missing: Sequence[str], what: str, fix: str) -> None:
    """Apply an ``on_missing`` policy to a list of missing things: raise (``"error"``) or log and go on (``"skip"``)."""
    if not missing:
        return
    shown = ", ".join(str(m) for m in list(missing)[:10]) + (" ..." if len(missing) > 10 else "")
    msg = f"{len(missing)} {what}: {shown}"
    if policy == "error":
        raise FileNotFoundError(f"{msg}. {fix} (or set on_missing_image='skip' to leave them out).")
    if policy != "skip":
        raise ValueError(f"on_missing_image must be 'error' or 'skip', got {policy!r}")
    log.warning("skipping %s", msg)


# ---------------------------------------------------------------------------------------------- masks
class MaskSource(Protocol):
    """Renders the mask of one object: ``source(obj, height, width) -> (height, width) bool``.

    (height, width) is the frame the object's annotation is drawn in (the image size the annotation file
    records). Implementations must be picklable (they travel to DataLoader workers).
    """

    def __call__(self, obj: int, height: int, width: int) -> np.ndarray: ...


class BoxMaskSource:
    """Axis-aligned box masks from (O, 4) ``x, y, w, h`` boxes in pixels (Visual Genome).

    The mask is built as an ``(height, width)`` array and indexed ``[y0:y1, x0:x1]``: rows are y. Both
    original codebases allocated ``zeros(pil_image.size)``, i.e. (W, H), and then indexed [y, x], which
    transposes every non-square image; never again. Fractional boxes cover every pixel they
    touch (floor of the start, ceil of the end); a box of zero width or height still covers one pixel; boxes
    are clipped to the image (:func:`box_geometry` gives the same pixel ranges for all boxes at once, so a reader
    can drop the boxes that would be clipped to nothing before they get here).
    """

    def __init__(self, boxes: np.ndarray) -> None:
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)

    def __call__(self, obj: int, height: int, width: int) -> np.ndarray:
        x, y, w, h = (float(v) for v in self.boxes[obj])
        x0 = min(max(int(np.floor(x)), 0), width - 1)
        y0 = min(max(int(np.floor(y)), 0), height - 1)
        x1 = min(max(int(np.ceil(x + w)), x0 + 1), width)
        y1 = min(max(int(np.ceil(y + h)), y0 + 1), height)
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = True
        return mask


def box_geometry(boxes: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> dict[str, np.ndarray]:
    """Where (O, 4) ``x, y, w, h`` boxes fall relative to their (O,) image frames, vectorised.

    The pixel range of a box is the one :class:`BoxMaskSource` paints before clipping: columns
    ``floor(x) .. max(ceil(x + w), floor(x) + 1)`` (exclusive end), rows likewise.

    Returns:
        (O,) bool arrays: ``negative_size`` (w < 0 or h < 0, or a non-finite value: malformed),
        ``outside_image`` (a well-formed box whose pixel range misses the image: its mask would be empty),
        ``clipped`` (a well-formed box partly outside: its mask is cut at the image edge).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    heights, widths = np.asarray(heights, dtype=np.float64), np.asarray(widths, dtype=np.float64)
    x, y, w, h = b.T
    malformed = ~np.isfinite(b).all(1) | (w < 0) | (h < 0)
    with np.errstate(invalid="ignore"):
        x0, y0 = np.floor(x), np.floor(y)
        x1, y1 = np.maximum(np.ceil(x + w), x0 + 1), np.maximum(np.ceil(y + h), y0 + 1)
        outside = ~malformed & ((x1 <= 0) | (y1 <= 0) | (x0 >= widths) | (y0 >= heights))
        clipped = ~malformed & ~outside & ((x0 < 0) | (y0 < 0) | (x1 > widths) | (y1 > heights))
    return {"negative_size": malformed, "outside_image": outside, "clipped": clipped}


# ---------------------------------------------------------------------------------------------- tables
@dataclass
class InstanceTables:
    """Everything a subclass parses from its annotation files, as flat arrays (N images, O objects, K labels).

    Args:
        label_names: the K category words/phrases, unique.
        image_paths: N absolute image file paths.
        image_ids: (N,) int64 the dataset's own image ids (recorded in outputs).
        image_sizes: (N, 2) int64 (H, W) of the frame the annotations are drawn in.
        image_split: (N,) int8, 0 = train, 1 = val.
        obj_image: (O,) int64 row in the image arrays of each object.
        obj_label_ptr: (O+1,) int64 CSR pointers into ``obj_label_ids``.
        obj_label_ids: (L,) int64 category ids (0..K-1) of the objects.
        mask_source: renders one object's mask (see :class:`MaskSource`).
        obj_eval_only: (O,) bool objects used as ground truth in image samples but never as training samples
            (COCO crowd regions); default all False.
        seen: (K,) bool fixed seen categories, or None to let the base class draw the seeded split.
        info: free-form statistics (counts of skipped objects ...) logged at setup.
    """

    label_names: list[str]
    image_paths: list[str]
    image_ids: np.ndarray
    image_sizes: np.ndarray
    image_split: np.ndarray
    obj_image: np.ndarray
    obj_label_ptr: np.ndarray
    obj_label_ids: np.ndarray
    mask_source: Callable[[int, int, int], np.ndarray]
    obj_eval_only: np.ndarray | None = None
    seen: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64)
        self.image_sizes = np.asarray(self.image_sizes, dtype=np.int64).reshape(-1, 2)
        self.image_split = np.asarray(self.image_split, dtype=np.int8)
        self.obj_image = np.asarray(self.obj_image, dtype=np.int64)
        self.obj_label_ptr = np.asarray(self.obj_label_ptr, dtype=np.int64)
        self.obj_label_ids = np.asarray(self.obj_label_ids, dtype=np.int64)
        n, o, k = len(self.image_paths), len(self.obj_image), len(self.label_names)
        if self.obj_eval_only is None:
            self.obj_eval_only = np.zeros(o, dtype=bool)
        self.obj_eval_only = np.asarray(self.obj_eval_only, dtype=bool)
        if not (len(self.image_ids) == len(self.image_sizes) == len(self.image_split) == n):
            raise ValueError("InstanceTables: image arrays must all have length N")
        if len(self.obj_label_ptr) != o + 1 or int(self.obj_label_ptr[-1]) != len(self.obj_label_ids):
            raise ValueError("InstanceTables: obj_label_ptr must be a CSR pointer of length O+1 over obj_label_ids")
        if len(self.obj_eval_only) != o:
            raise ValueError("InstanceTables: obj_eval_only must have length O")
        if o and (self.obj_image.min() < 0 or self.obj_image.max() >= n):
            raise ValueError("InstanceTables: obj_image points outside the image list")
        if len(self.obj_label_ids) and (self.obj_label_ids.min() < 0 or self.obj_label_ids.max() >= k):
            raise ValueError("InstanceTables: a label id is outside 0..K-1")
        if len(set(self.label_names)) != k:
            raise ValueError("InstanceTables: label_names must be unique")


def keep_images(tables: InstanceTables, keep: np.ndarray, mask_source_subset: Callable | None = None) -> InstanceTables:
    """The tables restricted to images ``keep`` ((N,) bool) and their objects; object ids are renumbered.

    ``mask_source_subset(objects)`` must return a mask source for the kept objects (in order); by default the
    original source is wrapped with an index map.
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.all():
        return tables
    new_row = np.cumsum(keep) - 1
    objs = np.flatnonzero(keep[tables.obj_image])
    label_ptr, label_ids = _gather_csr(tables.obj_label_ptr, tables.obj_label_ids, objs)
    source = mask_source_subset(objs) if mask_source_subset else _RemappedSource(tables.mask_source, objs)
    rows = np.flatnonzero(keep)
    return InstanceTables(
        label_names=list(tables.label_names),
        image_paths=[tables.image_paths[i] for i in rows],
        image_ids=tables.image_ids[rows],
        image_sizes=tables.image_sizes[rows],
        image_split=tables.image_split[rows],
        obj_image=new_row[tables.obj_image[objs]],
        obj_label_ptr=label_ptr,
        obj_label_ids=label_ids,
        mask_source=source,
        obj_eval_only=tables.obj_eval_only[objs],
        seen=tables.seen,
        info=dict(tables.info),
    )


class _RemappedSource:
    """A mask source seen through an object-id map (after objects were dropped)."""

    def __init__(self, source: Callable, objs: np.ndarray) -> None:
        self.source, self.objs = source, np.asarray(objs, dtype=np.int64)

    def __call__(self, obj: int, height: int, width: int) -> np.ndarray:
        return self.source(int(self.objs[obj]), height, width)


@dataclass
class Units:
    """Samples as groups of objects: (U,) image rows, label CSR and object ("part") CSR."""

    image: np.ndarray  # (U,) int64
    label_ptr: np.ndarray  # (U+1,) int64
    label_ids: np.ndarray  # (L,) int64
    part_ptr: np.ndarray  # (U+1,) int64
    part_obj: np.ndarray  # (P,) int64

    def __len__(self) -> int:
        return len(self.image)

    def labels(self, u: int) -> np.ndarray:
        return self.label_ids[self.label_ptr[u]:self.label_ptr[u + 1]]

    def parts(self, u: int) -> np.ndarray:
        return self.part_obj[self.part_ptr[u]:self.part_ptr[u + 1]]


def _ptr(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _gather_csr(ptr: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR rows ``rows`` of (ptr, ids), vectorised."""
    counts = ptr[rows + 1] - ptr[rows]
    new_ptr = _ptr(counts)
    idx = np.repeat(ptr[rows] - new_ptr[:-1], counts) + np.arange(new_ptr[-1])
    return new_ptr, ids[idx]


def build_units(tables: InstanceTables, objects: np.ndarray, mode: Literal["object", "category", "pair"]) -> Units:
    """Group ``objects`` (indices into the tables) into sample units.

    * ``"object"``: one unit per object, with all its labels (per-instance training samples);
    * ``"category"``: one unit per (image, label) with every object of that label in the image OR-ed
      (the paper's "instances of the same category in one image combined"); one label per unit;
    * ``"pair"``: one unit per (object, label) pair; one label per unit (per-instance ground truth).
    """
    objects = np.asarray(objects, dtype=np.int64)
    k = len(tables.label_names)
    if mode == "object":
        label_ptr, label_ids = _gather_csr(tables.obj_label_ptr, tables.obj_label_ids, objects)
        return Units(tables.obj_image[objects], label_ptr, label_ids, np.arange(len(objects) + 1, dtype=np.int64), objects)
    counts = tables.obj_label_ptr[objects + 1] - tables.obj_label_ptr[objects]
    _, pair_label = _gather_csr(tables.obj_label_ptr, tables.obj_label_ids, objects)
    pair_obj = np.repeat(objects, counts)
    if mode == "pair":
        key = tables.obj_image[pair_obj] * k + pair_label
        order = np.lexsort((pair_label, pair_obj, key // k))  # by image, then object, then label
        u = len(order)
        ar = np.arange(u + 1, dtype=np.int64)
        return Units(tables.obj_image[pair_obj[order]], ar, pair_label[order], ar.copy(), pair_obj[order])
    if mode != "category":
        raise ValueError(f"unknown unit mode {mode!r}")
    key = tables.obj_image[pair_obj] * k + pair_label
    order = np.lexsort((pair_obj, key))
    key_s, obj_s = key[order], pair_obj[order]
    if len(key_s) == 0:
        z = np.zeros(1, dtype=np.int64)
        e = np.zeros(0, dtype=np.int64)
        return Units(e, z, e, z.copy(), e)
    starts = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]])
    ukey = key_s[starts]
    part_ptr = np.r_[starts, len(key_s)].astype(np.int64)
    ar = np.arange(len(ukey) + 1, dtype=np.int64)
    return Units(ukey // k, ar, ukey % k, part_ptr, obj_s)


def filter_unit_labels(units: Units, allowed: np.ndarray) -> Units:
    """Remove labels not in ``allowed`` ((K,) bool) and drop the units left with no label."""
    keep_label = allowed[units.label_ids]
    unit_of_label = np.repeat(np.arange(len(units)), np.diff(units.label_ptr))
    counts = np.bincount(unit_of_label[keep_label], minlength=len(units))
    keep_unit = np.flatnonzero(counts > 0)
    label_ptr = _ptr(counts[keep_unit])
    label_ids = units.label_ids[keep_label]  # a unit with a kept label is itself kept
    part_ptr, part_obj = _gather_csr(units.part_ptr, units.part_obj, keep_unit)
    return Units(units.image[keep_unit], label_ptr, label_ids, part_ptr, part_obj)


def select_units(units: Units, rows: np.ndarray) -> Units:
    """The units ``rows`` (in that order)."""
    rows = np.asarray(rows, dtype=np.int64)
    label_ptr, label_ids = _gather_csr(units.label_ptr, units.label_ids, rows)
    part_ptr, part_obj = _gather_csr(units.part_ptr, units.part_obj, rows)
    return Units(units.image[rows], label_ptr, label_ids, part_ptr, part_obj)


def seen_split(num_labels: int, seen_fraction: float, seed: int) -> np.ndarray:
    """(K,) bool: ``round(seen_fraction * K)`` categories drawn *without replacement* with ``seed``.

    The original LaViSE drew its label subset with ``np.random.choice`` *with* replacement (duplicates shrink
    the seen set below the requested fraction); a permutation cannot repeat.
    """
    n_seen = int(round(seen_fraction * num_labels))
    seen = np.zeros(num_labels, dtype=bool)
    if seen_fraction >= 1.0:
        seen[:] = True
        return seen
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 7001])).permutation(num_labels)
    seen[perm[:n_seen]] = True
    return seen


def image_split(num_images: int, val_fraction: float, seed: int) -> np.ndarray:
    """(N,) int8 0/1 train/val: ``round(val_fraction * N)`` images drawn without replacement with ``seed``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = np.zeros(num_images, dtype=np.int8)
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 7002])).permutation(num_images)
    out[perm[:int(round(val_fraction * num_images))]] = VAL
    return out
