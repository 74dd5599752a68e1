"""Pascal VOC 2007 for weakly supervised localisation: every object box, the image's main class.

Layout under ``root`` (``VOCdevkit/VOC2007``, or a folder containing ``VOCdevkit/VOC2007``):
``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt`` (one image id per line), ``JPEGImages/<id>.jpg``.
The XML's ``bndbox`` uses 1-based inclusive pixels, so ``xmin..xmax`` becomes ``(xmin − 1, ymin − 1, xmax,
ymax)``. VOC images hold several classes; ``label`` is the class of the largest non-difficult object (the
single label a WSOL classifier is scored on), while ``boxes``/``box_labels`` keep every object. ``difficult``
objects are kept unless ``difficult="skip"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_modules._wsol import BoxRecord, WSOLDataModule, parse_voc_xml

__all__ = ["VOCDataModule", "VOC_CLASSES"]

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
_FIX = "Expected VOCdevkit/VOC2007 from VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar"


class VOCDataModule(WSOLDataModule):
    """Pascal VOC 2007 images with all their object boxes.

    Args:
        root: ``VOCdevkit/VOC2007`` (or its parent's parent).
        train_split: ImageSets/Main list for training (``train``, ``val``, ``trainval`` or ``test``).
        eval_split: list for val/test/predict (default ``test``).
        difficult: ``"keep"`` or ``"skip"`` boxes marked difficult.
        image_size, batch_size, num_workers, on_missing, mean, std: see :class:`data_modules._wsol.WSOLDataModule`.
    """

    def __init__(self, root: str, train_split: str = "trainval", eval_split: str = "test", difficult: str = "keep",
                 **kwargs) -> None:
        base = Path(root)
        if (base / "VOCdevkit" / "VOC2007").is_dir():
            base = base / "VOCdevkit" / "VOC2007"
        super().__init__(str(base), **kwargs)
        for name, v in (("train_split", train_split), ("eval_split", eval_split)):
            if v not in ("train", "val", "trainval", "test"):
                raise ValueError(f"VOCDataModule: {name} must be one of train, val, trainval, test; got {v!r}")
        if difficult not in ("keep", "skip"):
            raise ValueError(f"VOCDataModule: difficult must be 'keep' or 'skip', got {difficult!r}")
        self.train_split, self.eval_split, self.difficult = train_split, eval_split, difficult
        self.classes = list(VOC_CLASSES)

    def read_split(self, split: str) -> list[BoxRecord]:
        ids = [f[0] for _l, f in self.table(self.root / "ImageSets" / "Main" / f"{split}.txt", 1, _FIX)]
        index = {c: i for i, c in enumerate(VOC_CLASSES)}
        records, missing = [], []
        for img_id in ids:
            xml, jpg = self.root / "Annotations" / f"{img_id}.xml", self.root / "JPEGImages" / f"{img_id}.jpg"
            gone = [str(p) for p in (xml, jpg) if not p.is_file()]
            if gone:
                missing.extend(gone)
                continue
            w, h, objs = parse_voc_xml(xml)
            boxes, labels, areas = [], [], []
            for name, diff, x0, y0, x1, y1 in objs:
                if name not in index:
                    raise ValueError(f"{xml}: unknown class {name!r}; VOC classes are {', '.join(VOC_CLASSES)}")
                if diff and self.difficult == "skip":
                    continue
                boxes.append((x0 - 1, y0 - 1, x1, y1))
                labels.append(index[name])
                areas.append(-1.0 if diff else (x1 - x0 + 1) * (y1 - y0 + 1))
            if not boxes:
                raise ValueError(f"{xml}: no object left (all difficult and difficult='skip'); use difficult='keep'")
            label = labels[int(np.argmax(areas))]
            records.append(BoxRecord(jpg, label, w, h, np.asarray(boxes, dtype=np.float64),
                                     np.asarray(labels, dtype=np.int64), str(xml)))
        self.missing(split, missing, _FIX)
        return records
