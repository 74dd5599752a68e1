"""Common base of the LaViSE-style data modules: object instances with masks and category words.

LaViSE trains on *instance samples* (one object region of one image, its mask and its
category words) and explains filters on *image samples* (one image with all its annotated regions, the
ground truth of recall@k). Visual Genome (boxes), COCO (segmentations) and the synthetic world exported to
either format all reduce to the same flat tables, :class:`InstanceTables`, which a subclass parses from its
files; everything else (seen/unseen split, grouping of objects into samples, joint image+mask transforms,
collation) lives here once.

Vocabulary of the tables:

* **image**: one annotated picture, with the (H, W) of the frame its annotations are drawn in;
* **object**: one annotation (a VG box, a COCO segment); it carries one or more category ids (a VG object
  with two synsets, a COCO name split into words) and can render its own (H, W) mask;
* **unit**: what a sample is made of: a set of objects (OR-ed into one mask) and a set of category ids.
  With ``union_per_category=True`` (the paper's VG preprocessing) a training unit is *all objects of one
  category in one image*, one-hot; with ``False`` a training unit is one object with all its categories.

Batches (the LaViSE data contract, which ``lit_explain.methods.lavise`` consumes):

* train/val: ``{"image": (B,3,S,S) float normalised, "mask": (B,1,S,S) float in {0,1}, "target": (B,K) float
  multi-hot, "index": (B,) int64}``, image and mask transformed by ONE sampled parameter set (the
  reproduction cropped the image randomly and the mask centrally; here both go through the same
  ``torchvision.transforms.v2`` call, which applies identical geometry to an ``Image`` and a ``Mask``);
* predict/test: ``{"image": (B,3,S,S), "masks": (B,M,S,S) bool, "mask_labels": (B,M) int64 (-1 = padding),
  "index": (B,) int64}``, deterministic resize + centre crop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from lit_explain.datasets.checks import check_choice, check_int, check_real, check_triple
from lit_explain.datasets.files import atomic_save_npz, file_digest, iter_json_array, load_npz_cache, load_rgb

log = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BoxMaskSource",
    "box_geometry",
    "InstanceDataModule",
    "InstanceTables",
    "JointTransform",
    "Units",
    "atomic_save_npz",
    "collate_images",
    "collate_instances",
    "file_digest",
    "iter_json_array",
    "load_npz_cache",
    "load_rgb",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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


# ---------------------------------------------------------------------------------------------- transforms
_INTERP = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


class JointTransform:
    """One transform for an image and its masks, sharing every sampled parameter.

    ``torchvision.transforms.v2`` transforms a ``(tv_tensors.Image, tv_tensors.Mask)`` pair with one draw of
    the random parameters (crop box, flip) and always resizes a ``Mask`` with nearest neighbour, so the masks
    stay aligned with the pixels whatever the augmentation.

    Args:
        image_size: side S of the square output.
        resize_size: short side before the centre crop (deterministic mode); default ``round(S * 256 / 224)``.
        augment: True = RandomResizedCrop(S, scale=(scale_min, 1)) + horizontal flip (COCO training in the
            paper); False = Resize(resize_size) + CenterCrop(S) (VG training and all evaluation in the paper).
        scale_min: lower bound of the RandomResizedCrop area fraction.
        hflip: whether augmentation includes a random horizontal flip.
        interpolation: image interpolation ("bilinear", "bicubic", "nearest"); masks always use nearest.
        mean, std: per-channel normalisation of the [0, 1] image.
    """

    def __init__(
        self,
        image_size: int = 224,
        resize_size: int | None = None,
        augment: bool = False,
        scale_min: float = 0.08,
        hflip: bool = True,
        interpolation: str = "bilinear",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if interpolation not in _INTERP:
            raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, got {interpolation!r}")
        interp = _INTERP[interpolation]
        self.augment = bool(augment)
        resize_size = resize_size or int(round(image_size * 256 / 224))
        if self.augment:
            ops: list = [v2.RandomResizedCrop(image_size, scale=(scale_min, 1.0), interpolation=interp, antialias=True)]
            if hflip:
                ops.append(v2.RandomHorizontalFlip())
        else:
            ops = [v2.Resize(resize_size, interpolation=interp, antialias=True), v2.CenterCrop(image_size)]
        self.geometry = v2.Compose(ops)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform an (H, W, 3) uint8 image and (M, H, W) bool masks.

        Returns:
            image (3, S, S) float normalised, masks (M, S, S) bool.
        """
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)))
        img, msk = self.geometry(img, msk)
        out = (img.as_subclass(torch.Tensor).float() / 255.0 - self.mean) / self.std
        return out, msk.as_subclass(torch.Tensor).bool()


# ---------------------------------------------------------------------------------------------- datasets
class _UnitRenderer:
    """Loads an image and renders unit masks in its pixel frame (shared by the two dataset kinds)."""

    def __init__(self, tables: InstanceTables) -> None:
        self.tables = tables
        self._warned_size = False

    def load(self, image_row: int, units: Units, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        t = self.tables
        image = load_rgb(t.image_paths[image_row])
        h, w = image.shape[:2]
        ah, aw = (int(v) for v in t.image_sizes[image_row])
        masks = np.zeros((len(rows), ah, aw), dtype=bool)
        for j, u in enumerate(rows):
            for obj in units.parts(int(u)):
                masks[j] |= t.mask_source(int(obj), ah, aw)
        if (ah, aw) != (h, w):
            if not self._warned_size:
                log.warning("image %s is %dx%d (HxW) but its annotations say %dx%d; masks are rescaled "
                            "(nearest) to the image (further mismatches are not logged)", t.image_paths[image_row],
                            h, w, ah, aw)
                self._warned_size = True
            m = torch.from_numpy(masks).unsqueeze(0).float()
            masks = torch.nn.functional.interpolate(m, size=(h, w), mode="nearest")[0].bool().numpy()
        return image, masks


class InstanceSampleDataset(Dataset):
    """Instance samples: one unit (an object, or a category's objects in one image) per item.

    Items: ``{"image": (3,S,S) float, "mask": (1,S,S) float, "target": (K,) float multi-hot, "index": int}``.
    """

    def __init__(self, tables: InstanceTables, units: Units, transform: JointTransform) -> None:
        self.units = units
        self.transform = transform
        self.num_labels = len(tables.label_names)
        self.renderer = _UnitRenderer(tables)

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, masks = self.renderer.load(int(self.units.image[i]), self.units, [i])
        img, msk = self.transform(image, masks)
        target = torch.zeros(self.num_labels, dtype=torch.float32)
        target[torch.from_numpy(self.units.labels(i))] = 1.0
        return {"image": img, "mask": msk.float(), "target": target, "index": i}


class ImageSampleDataset(Dataset):
    """Image samples: one image with the masks of all its ground-truth units (one label each).

    Items: ``{"image": (3,S,S) float, "masks": (M,S,S) bool, "mask_labels": (M,) int64, "index": int}``.
    ``image_rows[i]`` is the row of item i in the tables (``image_paths``, ``image_ids``).
    """

    def __init__(self, tables: InstanceTables, units: Units, transform: JointTransform) -> None:
        self.tables = tables
        self.units = units
        self.transform = transform
        order = np.argsort(units.image, kind="stable")
        self._order = order
        self.image_rows, starts = np.unique(units.image[order], return_index=True)
        self._ptr = np.r_[starts, len(order)].astype(np.int64)
        self.renderer = _UnitRenderer(tables)

    def __len__(self) -> int:
        return len(self.image_rows)

    @property
    def image_paths(self) -> list[str]:
        """File of each item, in item order."""
        return [self.tables.image_paths[int(r)] for r in self.image_rows]

    @property
    def image_ids(self) -> np.ndarray:
        """The dataset's image id of each item, (len,) int64."""
        return self.tables.image_ids[self.image_rows]

    def __getitem__(self, i: int) -> dict[str, Any]:
        rows = self._order[self._ptr[i]:self._ptr[i + 1]]
        image, masks = self.renderer.load(int(self.image_rows[i]), self.units, rows)
        img, msk = self.transform(image, masks)
        labels = torch.from_numpy(np.array([self.units.labels(int(u))[0] for u in rows], dtype=np.int64))
        return {"image": img, "masks": msk, "mask_labels": labels, "index": i}


def collate_instances(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack instance items into the train/val batch of the data contract."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "target": torch.stack([it["target"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
    }


def collate_images(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack image items, padding masks to M = the most units of an image in the batch (labels -1 = padding)."""
    b = len(items)
    m = max((len(it["mask_labels"]) for it in items), default=0)
    s = items[0]["image"].shape[-2:]
    masks = torch.zeros((b, m, *s), dtype=torch.bool)
    labels = torch.full((b, m), -1, dtype=torch.int64)
    for i, it in enumerate(items):
        n = len(it["mask_labels"])
        masks[i, :n] = it["masks"]
        labels[i, :n] = it["mask_labels"]
    return {
        "image": torch.stack([it["image"] for it in items]),
        "masks": masks,
        "mask_labels": labels,
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
    }


# ---------------------------------------------------------------------------------------------- data module
class InstanceDataModule(LightningDataModule):
    """Base of the LaViSE data modules; subclasses implement :meth:`_load_tables`.

    ``label_names``, ``seen`` and ``vocabulary`` are available right after construction (they parse the
    annotations, cached, on first access), so a CLI link ``apply_on="instantiate"`` or the model's ``setup``
    can read them.

    Args:
        image_size: side S of the square images and masks in batches.
        resize_size: short side before the centre crop of deterministic transforms; default ``round(S*256/224)``.
        augment: training transform: True = joint RandomResizedCrop + flip; False = the deterministic resize +
            centre crop (the paper trains VG without augmentation, COCO with).
        scale_min: lower bound of RandomResizedCrop's area fraction.
        hflip: include random horizontal flips in augmentation.
        interpolation: image resampling ("bilinear", "bicubic", "nearest"); masks always use nearest.
        mean: per-channel mean of normalisation (ImageNet by default).
        std: per-channel std of normalisation.
        union_per_category: True = a training sample is the union of all objects of one category in one image
            (the paper's VG preprocessing), and image samples hold one mask per category present; False = one
            object per sample (the reproduction), image samples hold one mask per (object, label).
        seen_fraction: fraction of categories drawn (seeded, without replacement) as *seen*; the others are
            *unseen*: dropped from training targets and samples, kept in val and predict. 1.0 = all seen.
        split_seed: seed of the seen/unseen draw (and of subclasses' image splits).
        val_include_unseen: keep unseen categories in val instance samples (to measure generalisation to
            words never trained on); False restricts val to seen categories like train.
        predict_split: images used by predict/test dataloaders: "val", "train" or "all".
        batch_size: instance samples per train/val batch.
        predict_batch_size: images per predict/test batch (default ``batch_size``).
        num_workers: DataLoader workers.
        pin_memory: DataLoader pin_memory.
        max_bad_annotation_fraction: largest share of annotations (boxes, polygons) that may be dropped for lying
            wholly outside their image (or being malformed) before setup fails; default 0.01. Dropped and
            clipped annotations are counted in the log and in :attr:`skipped_annotations` /
            :attr:`clipped_annotations` whatever the share. A release with consistent files drops almost none
            (a few stray boxes); a share of a percent or more means the annotation file does not belong to the
            image list (another release, swapped width/height), whose masks would all be wrong.
    """

    def __init__(
        self,
        image_size: int = 224,
        resize_size: int | None = None,
        augment: bool = False,
        scale_min: float = 0.08,
        hflip: bool = True,
        interpolation: str = "bilinear",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        union_per_category: bool = True,
        seen_fraction: float = 1.0,
        split_seed: int = 0,
        val_include_unseen: bool = True,
        predict_split: Literal["val", "train", "all"] = "val",
        batch_size: int = 32,
        predict_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        max_bad_annotation_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        image_size = check_int(owner, "image_size", image_size, low=1)
        resize_size = check_int(owner, "resize_size", resize_size, low=1, optional=True)
        scale_min = check_real(owner, "scale_min", scale_min, 0.0, 1.0, low_open=True)
        check_choice(owner, "interpolation", interpolation, sorted(_INTERP))
        mean, std = check_triple(owner, "mean", mean), check_triple(owner, "std", std, positive=True)
        check_real(owner, "seen_fraction", seen_fraction, 0.0, 1.0, low_open=True)
        check_int(owner, "split_seed", split_seed, low=0)
        check_choice(owner, "predict_split", predict_split, ("val", "train", "all"))
        check_int(owner, "batch_size", batch_size, low=1)
        check_int(owner, "predict_batch_size", predict_batch_size, low=1, optional=True)
        check_int(owner, "num_workers", num_workers, low=0)
        self.image_size = int(image_size)
        self._augment = bool(augment)
        common = dict(image_size=image_size, resize_size=resize_size, interpolation=interpolation, mean=mean, std=std)
        self.train_transform = JointTransform(augment=augment, scale_min=scale_min, hflip=hflip, **common)
        self.eval_transform = JointTransform(augment=False, **common)
        self.union_per_category = bool(union_per_category)
        self.seen_fraction = float(seen_fraction)
        self.split_seed = int(split_seed)
        self.val_include_unseen = bool(val_include_unseen)
        self.predict_split = predict_split
        self.batch_size = int(batch_size)
        self.predict_batch_size = int(predict_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.max_bad_annotation_fraction = check_real(owner, "max_bad_annotation_fraction",
                                                      max_bad_annotation_fraction, 0.0, 1.0)
        self._tables: InstanceTables | None = None
        self._seen: np.ndarray | None = None
        self._datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ subclass hook
    def _load_tables(self) -> InstanceTables:
        """Parse (or read from cache) the annotation files into :class:`InstanceTables`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ vocabulary
    @property
    def tables(self) -> InstanceTables:
        """The parsed annotations (parsed on first access)."""
        if self._tables is None:
            t = self._load_tables()
            log.info("%s: %d images, %d objects, %d categories %s", type(self).__name__, len(t.image_paths),
                     len(t.obj_image), len(t.label_names), t.info or "")
            self._check_annotation_geometry(t.info)
            self._tables = t
        return self._tables

    @property
    def skipped_annotations(self) -> dict[str, int]:
        """Annotations dropped for their geometry, by reason (``outside_image``: the box or polygon lies wholly
        outside its image; ``negative_size``: a box of negative width or height; ``rle_size_mismatch``: a
        crowd RLE drawn on another frame than its image). Parses the annotations on first access."""
        return dict(self.tables.info.get("skipped_annotations", {}))

    @property
    def clipped_annotations(self) -> int:
        """Number of annotations partly outside their image, kept with their mask clipped to the image."""
        return int(self.tables.info.get("clipped_annotations", 0))

    def _check_annotation_geometry(self, info: dict) -> None:
        """Log the dropped and clipped annotations; fail when more than ``max_bad_annotation_fraction`` were dropped.

        ``info`` holds ``annotations`` (how many had their geometry checked), ``skipped_annotations`` (reason ->
        count), ``clipped_annotations`` and ``annotation_files`` (named in the messages).
        """
        skipped = {k: int(v) for k, v in info.get("skipped_annotations", {}).items() if v}
        total, clipped = int(info.get("annotations", 0)), int(info.get("clipped_annotations", 0))
        files = ", ".join(str(f) for f in info.get("annotation_files", [])) or "the annotation files"
        bad = sum(skipped.values())
        if clipped:
            log.info("%s: %d of %d annotations of %s lie partly outside their image; their masks are clipped to it",
                     type(self).__name__, clipped, total, files)
        if not bad:
            return
        share = bad / max(total, 1)
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
        if share > self.max_bad_annotation_fraction:
            raise ValueError(
                f"{type(self).__name__}: {bad} of {total} annotations of {files} ({share:.2%}) cannot be drawn in their "
                f"image ({reasons}), more than max_bad_annotation_fraction={self.max_bad_annotation_fraction}. The "
                "annotations probably do not belong to these images (another release, swapped width/height): use "
                "matching files, or raise max_bad_annotation_fraction to accept dropping them.")
        log.warning("%s: skipped %d of %d annotations of %s that cannot be drawn in their image (%s)",
                    type(self).__name__, bad, total, files, reasons)

    @property
    def label_names(self) -> list[str]:
        """The K category words/phrases (multi-word allowed)."""
        return list(self.tables.label_names)

    @property
    def num_labels(self) -> int:
        return len(self.tables.label_names)

    @property
    def seen(self) -> torch.Tensor:
        """(K,) bool: True for categories used in training."""
        if self._seen is None:
            t = self.tables
            if t.seen is not None:
                self._seen = np.asarray(t.seen, dtype=bool)
            else:
                self._seen = seen_split(len(t.label_names), self.seen_fraction, self.split_seed)
        return torch.from_numpy(self._seen.copy())

    @property
    def vocabulary(self):
        """The categories as a :class:`~lit_explain.concepts.vocabulary.ConceptVocabulary` (category "object")."""
        from lit_explain.concepts.vocabulary import ConceptVocabulary

        k = self.num_labels
        return ConceptVocabulary(tuple(range(k)), tuple(self.label_names), ("object",) * k)

    @property
    def augment(self) -> bool:
        """False when training transforms are deterministic (a frozen backbone's features may then be cached)."""
        return self._augment

    # ------------------------------------------------------------------ datasets
    def _image_mask(self, split: str) -> np.ndarray:
        s = self.tables.image_split
        if split == "train":
            return s == TRAIN
        if split == "val":
            return s == VAL
        return np.ones(len(s), dtype=bool)

    def instance_dataset(self, split: Literal["train", "val"]) -> InstanceSampleDataset:
        """Instance samples of a split (train: seen categories only; see ``val_include_unseen``)."""
        key = f"inst_{split}"
        if key not in self._datasets:
            t = self.tables
            objs = np.flatnonzero(self._image_mask(split)[t.obj_image] & ~t.obj_eval_only)
            units = build_units(t, objs, "category" if self.union_per_category else "object")
            seen = self.seen.numpy()
            allowed = seen if (split == "train" or not self.val_include_unseen) else np.ones_like(seen)
            units = filter_unit_labels(units, allowed)
            transform = self.train_transform if split == "train" else self.eval_transform
            self._datasets[key] = InstanceSampleDataset(t, units, transform)
        return self._datasets[key]  # type: ignore[return-value]

    def image_dataset(self, split: Literal["train", "val", "all"] | None = None) -> ImageSampleDataset:
        """Image samples (all categories, seen and unseen) of ``split`` (default ``predict_split``)."""
        split = split or self.predict_split
        key = f"img_{split}"
        if key not in self._datasets:
            t = self.tables
            objs = np.flatnonzero(self._image_mask(split)[t.obj_image])
            units = build_units(t, objs, "category" if self.union_per_category else "pair")
            self._datasets[key] = ImageSampleDataset(t, units, self.eval_transform)
        return self._datasets[key]  # type: ignore[return-value]

    def setup(self, stage: str | None = None) -> None:
        """Parse the annotations (cached) and build the datasets the stage needs."""
        _ = self.seen
        if stage in (None, "fit"):
            self.instance_dataset("train")
            self.instance_dataset("val")
        if stage == "validate":
            self.instance_dataset("val")
        if stage in (None, "predict", "test"):
            self.image_dataset()

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool, collate: Callable) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.instance_dataset("train"), self.batch_size, True, collate_instances)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.instance_dataset("val"), self.batch_size, False, collate_instances)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.image_dataset(), self.predict_batch_size, False, collate_images)

    def test_dataloader(self) -> DataLoader:
        return self.predict_dataloader()


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
