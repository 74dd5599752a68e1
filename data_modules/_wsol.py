"""What the WSOL readers (ImageNet, CUB-200-2011, Pascal VOC) share: box records, the joint image + box
transform, clipping with counted skips, padded box batches, and the LightningDataModule shell.

A reader parses its dataset's files into :class:`BoxRecord` lists (boxes in the *original* image's continuous
pixel coordinates ``(x0, y0, x1, y1)``, x1/y1 exclusive; each reader documents how its file format maps to
that). Then:

* :func:`clip_records` clips boxes to the image (partial boxes are cut to the image edge) and drops boxes
  left with no area, counting both (``stats``), because a box outside the image is an annotation error that
  must not crash a 50k-image evaluation nor pass unnoticed;
* :class:`BoxDataset` resizes the image directly to ``image_size`` (no crop, as HINT: the whole object stays
  in view) and the boxes with it, through torchvision ``transforms.v2`` with ``tv_tensors.BoundingBoxes``, so
  the boxes are scaled by exactly the image's factors (x by W'/W, y by H'/H, also for non-square images);
* :func:`collate_boxes` pads boxes to (B, M, 4) with −1 rows.

A batch is a dict: ``image`` (B, 3, H', W') float normalised, ``label`` (B,) int64, ``index`` (B,) int64
(position in the split), ``boxes`` (B, M, 4) float32 in the transformed image's pixels (−1 padding),
``box_labels`` (B, M) int64 (−1 padding), ``num_boxes`` (B,) int64.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

log = logging.getLogger(__name__)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "BoxRecord", "clip_records", "BoxDataset", "collate_boxes",
           "WSOLDataModule", "image_size_of", "validate_common", "parse_voc_xml"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BoxRecord:
    """One image: its file, class, size and GT boxes.

    Attributes:
        path: the image file.
        label: class index.
        width, height: original image size in pixels.
        boxes: (M, 4) float64 ``x0, y0, x1, y1`` in original pixels.
        box_labels: (M,) int64 class of each box.
        source: where the boxes came from (a file, or file:line), for error messages.
    """

    path: Path
    label: int
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    box_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    source: str = ""


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) from the image header (PIL reads no pixels); a clear error for a missing/broken file."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"{path} is not a readable image ({exc}); re-download or remove it") from exc


def clip_records(records: Sequence[BoxRecord], what: str) -> dict[str, int]:
    """Clip every box to its image in place; drop boxes with no area left. Returns and logs the counts
    ``{"boxes", "clipped", "dropped"}`` (``what`` names the dataset in the log line)."""
    stats = {"boxes": 0, "clipped": 0, "dropped": 0}
    for r in records:
        if not len(r.boxes):
            continue
        b = np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4)
        lim = np.array([r.width, r.height, r.width, r.height], dtype=np.float64)
        c = np.clip(b, 0, lim)
        keep = (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])
        stats["boxes"] += len(b)
        stats["clipped"] += int(((c != b).any(1) & keep).sum())
        stats["dropped"] += int((~keep).sum())
        r.boxes, r.box_labels = c[keep], np.asarray(r.box_labels, dtype=np.int64)[keep]
    if stats["clipped"] or stats["dropped"]:
        log.warning("%s: %d of %d boxes reached outside their image: %d clipped to the image edge, %d with no area "
                    "inside it dropped", what, stats["clipped"] + stats["dropped"], stats["boxes"], stats["clipped"],
                    stats["dropped"])
    return stats


class BoxDataset(Dataset):
    """Images resized to ``image_size`` with their boxes (see the module docstring for the sample dict)."""

    def __init__(self, records: Sequence[BoxRecord], image_size: tuple[int, int],
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.records = list(records)
        self.transform = v2.Compose([v2.ToImage(), v2.Resize(tuple(image_size), antialias=True),
                                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __len__(self) -> int:
        return len(self.records)

    def image_paths(self) -> list[str]:
        """The image files in dataset order: with their sizes and times, what the activation cache keys on."""
        return [str(r.path) for r in self.records]

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        with Image.open(r.path) as im:
            img = im.convert("RGB")
        if img.size != (r.width, r.height):
            raise ValueError(f"{r.path}: the image is {img.size[0]}x{img.size[1]} but {r.source or 'its record'} "
                             f"says {r.width}x{r.height}; the boxes would be misplaced. Fix the size record")
        boxes = tv_tensors.BoundingBoxes(torch.as_tensor(r.boxes, dtype=torch.float32).reshape(-1, 4),
                                         format="XYXY", canvas_size=(r.height, r.width))
        img, boxes = self.transform(img, boxes)
        return {"image": img, "label": int(r.label), "index": i, "boxes": boxes.as_subclass(torch.Tensor),
                "box_labels": torch.as_tensor(r.box_labels, dtype=torch.int64).reshape(-1)}


def collate_boxes(samples: Sequence[dict]) -> dict:
    """Stack images and pad boxes to (B, M, 4) / box_labels to (B, M) with −1 (M = most boxes in the batch)."""
    m = max((len(s["boxes"]) for s in samples), default=0)
    boxes = torch.full((len(samples), m, 4), -1.0)
    labels = torch.full((len(samples), m), -1, dtype=torch.int64)
    for j, s in enumerate(samples):
        boxes[j, : len(s["boxes"])] = s["boxes"]
        labels[j, : len(s["box_labels"])] = s["box_labels"]
    return {"image": torch.stack([s["image"] for s in samples]),
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
            "boxes": boxes, "box_labels": labels,
            "num_boxes": torch.tensor([len(s["boxes"]) for s in samples], dtype=torch.int64)}


def validate_common(name: str, image_size, batch_size: int, num_workers: int, on_missing: str,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> tuple[int, int]:
    """Check the arguments every WSOL data module shares; returns image_size as (H, W)."""
    size = (int(image_size), int(image_size)) if isinstance(image_size, (int, np.integer)) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"{name}: image_size must be an int or (height, width), each >= 8, got {image_size}")
    if int(batch_size) < 1:
        raise ValueError(f"{name}: batch_size must be >= 1, got {batch_size}")
    if int(num_workers) < 0:
        raise ValueError(f"{name}: num_workers must be >= 0, got {num_workers}")
    if on_missing not in ("error", "skip"):
        raise ValueError(f"{name}: on_missing must be 'error' or 'skip', got {on_missing!r}")
    if len(tuple(mean)) != 3 or len(tuple(std)) != 3 or min(float(v) for v in std) <= 0:
        raise ValueError(f"{name}: mean and std must be 3 numbers (RGB) with std > 0, got mean={mean}, std={std}")
    return size


class WSOLDataModule(LightningDataModule):
    """Shell: subclasses implement ``read_split(split) -> list[BoxRecord]`` and set ``self.classes``.

    ``train_dataloader`` serves the training split (shuffled), ``val/test/predict_dataloader`` the evaluation
    split (:meth:`eval_dataset`), in file order. ``self.stats[split]`` holds the clipping counts and
    ``skipped_images`` (and, with ``eval_max_boxes``, ``left_out_by_box_count`` for the evaluation split).

    Args:
        root, image_size, batch_size, num_workers, on_missing, mean, std: see the readers.
        eval_max_boxes: None (default): every evaluation image. N >= 1: only evaluation images with 1 to N GT
            boxes (counted after clipping), the others left out and counted; 1 is single-object evaluation as
            on CUB-200-2011, where one predicted box per image cannot be blamed on a second object. Images with
            no box left are left out too (nothing to localise). The training split is never filtered.
    """

    train_split = "train"
    eval_split = "val"

    def __init__(self, root: str, image_size: int | tuple[int, int] = 224, batch_size: int = 32,
                 num_workers: int = 0, on_missing: str = "error", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, eval_max_boxes: int | None = None) -> None:
        super().__init__()
        self.image_size = validate_common(type(self).__name__, image_size, batch_size, num_workers, on_missing, mean,
                                          std)
        if eval_max_boxes is not None and (isinstance(eval_max_boxes, bool) or int(eval_max_boxes) != eval_max_boxes
                                           or int(eval_max_boxes) < 1):
            raise ValueError(f"{type(self).__name__}: eval_max_boxes must be an integer >= 1 (1: single-object "
                             f"images) or null (every image), got {eval_max_boxes!r}")
        self.eval_max_boxes = None if eval_max_boxes is None else int(eval_max_boxes)
        self.root = Path(root)
        self.check_root()
        self.batch_size, self.num_workers, self.on_missing = int(batch_size), int(num_workers), on_missing
        self.mean, self.std = tuple(mean), tuple(std)
        self.classes: list[str] = []
        self.stats: dict[str, dict[str, int]] = {}
        self._data: dict[str, BoxDataset] = {}

    def check_root(self) -> None:
        """Called by the constructor: the dataset folder must exist (a module that builds it overrides this)."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"{type(self).__name__}: root {self.root} is not a directory")

    def read_split(self, split: str) -> list[BoxRecord]:  # pragma: no cover - abstract
        raise NotImplementedError

    def table(self, path: Path, ncols: int, fix: str) -> list[tuple[int, list[str]]]:
        """(line number, fields) of a whitespace-separated file with ``ncols`` fields per non-empty line."""
        if not path.is_file():
            raise FileNotFoundError(f"{type(self).__name__}: {path} not found. {fix}")
        out = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            f = line.split(maxsplit=ncols - 1) if ncols == 2 else line.split()
            if len(f) != ncols:
                raise ValueError(f"{path}:{lineno}: expected {ncols} fields, got {len(f)}: {line!r}")
            out.append((lineno, f))
        return out

    def missing(self, split: str, what: list[str], fix: str) -> int:
        """Apply ``on_missing`` to missing files: raise naming them, or log and count them in
        ``stats[split]["skipped_images"]``; returns the count."""
        self.stats.setdefault(split, {})["skipped_images"] = len(what)
        if not what:
            return 0
        shown = ", ".join(what[:5]) + (" ..." if len(what) > 5 else "")
        if self.on_missing == "error":
            raise FileNotFoundError(f"{type(self).__name__}: {len(what)} missing file(s): {shown}. {fix} "
                                    "(or set on_missing='skip' to leave them out, counted)")
        log.warning("%s: skipping %d missing file(s): %s", type(self).__name__, len(what), shown)
        return len(what)

    def dataset(self, split: str) -> BoxDataset:
        if split not in self._data:
            records = self.read_split(split)
            skipped = self.stats.get(split, {}).get("skipped_images", 0)
            self.stats[split] = {**clip_records(records, f"{type(self).__name__} {split}"), "skipped_images": skipped}
            self._data[split] = BoxDataset(records, self.image_size, self.mean, self.std)
        return self._data[split]

    def eval_dataset(self) -> BoxDataset:
        """The evaluation split as the val/test/predict loaders serve it: :meth:`dataset` of ``eval_split``, with
        only the images of 1 to ``eval_max_boxes`` boxes when that is set (a dataset of its own, so a training
        split that is the same list stays whole)."""
        full = self.dataset(self.eval_split)
        if self.eval_max_boxes is None:
            return full
        key = f"{self.eval_split} (1-{self.eval_max_boxes} boxes)"
        if key not in self._data:
            kept = [r for r in full.records if 1 <= len(r.boxes) <= self.eval_max_boxes]
            left_out = len(full.records) - len(kept)
            self.stats[self.eval_split]["left_out_by_box_count"] = left_out
            log.info("%s %s: %d of %d images have 1 to %d boxes (eval_max_boxes); %d left out", type(self).__name__,
                     self.eval_split, len(kept), len(full.records), self.eval_max_boxes, left_out)
            self._data[key] = BoxDataset(kept, self.image_size, self.mean, self.std)
        return self._data[key]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.dataset(self.train_split)
        self.eval_dataset()

    def _loader(self, data: BoxDataset, shuffle: bool) -> DataLoader:
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_boxes)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(self.train_split), True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(), False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(), False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(), False)


def parse_voc_xml(path: Path) -> tuple[int, int, list[tuple[str, bool, float, float, float, float]]]:
    """Read a Pascal-VOC-style annotation (VOC and ILSVRC share it): ``annotation/size/{width,height}`` and
    ``annotation/object/{name, difficult, bndbox/{xmin,ymin,xmax,ymax}}``.

    Returns:
        (width, height, [(name, difficult, xmin, ymin, xmax, ymax) per object]) with the raw file numbers.

    Raises:
        ValueError naming the file and the missing element when the XML is broken or incomplete.
    """
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not valid XML ({exc}); re-extract the annotations") from exc

    def num(node, tag: str, where: str) -> float:
        el = node.find(tag)
        try:
            return float(el.text)
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"{path}: {where}/{tag} is missing or not a number") from None

    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: no <size> element (annotation/size/width, height)")
    width, height = int(num(size, "width", "size")), int(num(size, "height", "size"))
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise ValueError(f"{path}: object {k} has no <name>")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: object {k} ({name}) has no <bndbox>")
        where = f"object[{k}]/bndbox"
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append((name, difficult, num(box, "xmin", where), num(box, "ymin", where), num(box, "xmax", where),
                        num(box, "ymax", where)))
    return width, height, objects
