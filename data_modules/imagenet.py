"""ImageNet (ILSVRC2012) for weakly supervised localisation: the folder layout with ILSVRC XML boxes.

Layout under ``root``:

* ``train/<wnid>/*.JPEG``: training images; the class is the folder. A ``<stem>.xml`` beside an image (the
  ILSVRC train boxes, when unpacked there) gives its boxes; otherwise it has none.
* ``val/``: validation images, flat (``ILSVRC2012_val_XXXXXXXX.JPEG``, as HINT keeps them, with the XML of
  ``bbox_val`` beside each image) or in ``val/<wnid>/`` folders. The boxes come from ``<stem>.xml`` beside
  the image or in ``val_boxes_dir``. The class is the folder when it is a class, otherwise the XML objects'
  ``name`` (a WNID; every object of an ILSVRC val image has the image's class).

Class order (the label index): the WNIDs of ``class_index`` (a file with one ``<wnid> [words]`` line per class,
e.g. ``LOC_synset_mapping.txt``), else the sorted ``train/`` folders (torchvision's ``ImageFolder`` order, the
order of torchvision's pretrained classifiers). ILSVRC XML boxes are taken as ``(xmin, ymin, xmax, ymax)``
(width = xmax − xmin, as HINT computes it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_modules._wsol import BoxRecord, WSOLDataModule, image_size_of, parse_voc_xml

__all__ = ["ImageNetDataModule", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_FIX = ("Expected ILSVRC2012 as train/<wnid>/*.JPEG and val/*.JPEG with the bbox_val XML files beside them "
        "(or val_boxes_dir)")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageNetDataModule(WSOLDataModule):
    """ILSVRC2012 images with their boxes; evaluation split ``val``.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        class_index: optional file of ``<wnid> [words]`` lines fixing the class order.
        val_boxes_dir: optional folder of the val XML files (default: beside each image).
        image_size, batch_size, num_workers, on_missing, mean, std: see :class:`data_modules._wsol.WSOLDataModule`.
    """

    def __init__(self, root: str, class_index: str | None = None, val_boxes_dir: str | None = None, **kwargs) -> None:
        super().__init__(root, **kwargs)
        self.class_index = Path(class_index) if class_index else None
        if self.class_index is not None and not self.class_index.is_file():
            raise FileNotFoundError(f"ImageNetDataModule: class_index {self.class_index} not found (one '<wnid> "
                                    "[words]' line per class, e.g. LOC_synset_mapping.txt)")
        self.val_boxes_dir = Path(val_boxes_dir) if val_boxes_dir else None
        if self.val_boxes_dir is not None and not self.val_boxes_dir.is_dir():
            raise FileNotFoundError(f"ImageNetDataModule: val_boxes_dir {self.val_boxes_dir} is not a directory")
        self.classes = self._read_classes()
        self.index = {w: i for i, w in enumerate(self.classes)}

    def _read_classes(self) -> list[str]:
        if self.class_index is not None:
            wnids = [line.split()[0] for line in self.class_index.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not wnids:
                raise ValueError(f"{self.class_index}: no class lines ('<wnid> [words]')")
            dup = sorted({w for w in wnids if wnids.count(w) > 1})
            if dup:
                raise ValueError(f"{self.class_index}: WNIDs listed twice: {dup[:5]}")
            return wnids
        train = self.root / "train"
        if not train.is_dir():
            raise FileNotFoundError(f"ImageNetDataModule: {train} not found, so the class order is unknown; give "
                                    f"class_index (a '<wnid> [words]' file). {_FIX}")
        wnids = sorted(p.name for p in train.iterdir() if p.is_dir())
        if not wnids:
            raise ValueError(f"ImageNetDataModule: {train} has no class folders (train/<wnid>/*.JPEG)")
        return wnids

    def _boxes(self, xml: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray, set[str]]:
        w, h, objs = parse_voc_xml(xml)
        if (w, h) != (width, height):
            raise ValueError(f"{xml}: records size {w}x{h} but the image is {width}x{height}; the boxes would be "
                             "misplaced. Use the XML that belongs to this image")
        names = set()
        boxes, labels = [], []
        for name, _diff, x0, y0, x1, y1 in objs:
            if name not in self.index:
                raise ValueError(f"{xml}: unknown class {name!r} (not among the {len(self.classes)} classes of "
                                 f"{self.class_index or self.root / 'train'})")
            names.add(name)
            boxes.append((x0, y0, x1, y1))
            labels.append(self.index[name])
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64), names

    def read_split(self, split: str) -> list[BoxRecord]:
        if split == "train":
            return self._read_train()
        if split == "val":
            return self._read_val()
        raise ValueError(f"ImageNetDataModule: split must be 'train' or 'val', got {split!r}")

    def _read_train(self) -> list[BoxRecord]:
        records = []
        for wnid in self.classes:
            folder = self.root / "train" / wnid
            files = _images(folder) if folder.is_dir() else []
            if not files:
                raise ValueError(f"ImageNetDataModule: class {wnid} has no training images in {folder}; add them or "
                                 "drop the class (from train/ or class_index)")
            for path in files:
                w, h = image_size_of(path)
                xml = path.with_suffix(".xml")
                boxes, labels, _ = self._boxes(xml, w, h) if xml.is_file() else (np.zeros((0, 4)), np.zeros(0, np.int64), set())
                records.append(BoxRecord(path, self.index[wnid], w, h, boxes, labels, str(xml)))
        self.missing("train", [], _FIX)
        return records

    def _read_val(self) -> list[BoxRecord]:
        val = self.root / "val"
        if not val.is_dir():
            raise FileNotFoundError(f"ImageNetDataModule: {val} not found. {_FIX}")
        records, missing = [], []
        for path in _images(val):
            xml = (self.val_boxes_dir or path.parent) / f"{path.stem}.xml"
            if not xml.is_file():
                missing.append(f"{xml} (boxes of {path.name})")
                continue
            w, h = image_size_of(path)
            boxes, labels, names = self._boxes(xml, w, h)
            folder = path.parent.name if path.parent != val else None
            if folder is not None and folder in self.index:
                label = self.index[folder]
            elif len(names) == 1:
                label = self.index[names.pop()]
            else:
                raise ValueError(f"{xml}: cannot tell the image's class: objects name {sorted(names) or 'nothing'}; an "
                                 "ILSVRC val XML names exactly one WNID (or put the image in val/<wnid>/)")
            records.append(BoxRecord(path, label, w, h, boxes, labels, str(xml)))
        if not records and not missing:
            raise ValueError(f"ImageNetDataModule: {val} holds no images. {_FIX}")
        self.missing("val", missing, _FIX)
        return records
