"""CUB-200-2011 for weakly supervised localisation: one class and one bird box per image.

Files under ``root`` (the ``CUB_200_2011/`` folder of the download), all space-separated and 1-indexed:
``images.txt`` (``<img_id> <rel_path>``, relative to ``images/``), ``bounding_boxes.txt``
(``<img_id> <x> <y> <width> <height>``, float pixels, top-left origin), ``image_class_labels.txt``
(``<img_id> <class_id>``), ``train_test_split.txt`` (``<img_id> <is_train>``), ``classes.txt``
(``<class_id> <name>``). Box ``x y w h`` becomes ``(x, y, x + w, y + h)`` (kept as floats; HINT truncated them
to int). Labels are 0-based positions in ``classes.txt``. Splits: ``train`` (is_train = 1), ``test``.
"""

from __future__ import annotations

import numpy as np

from data_modules._wsol import BoxRecord, WSOLDataModule, image_size_of

__all__ = ["CUBDataModule"]

_FIX = "Expected the CUB_200_2011 folder of CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/)"


class CUBDataModule(WSOLDataModule):
    """CUB-200-2011 images with their bird box; evaluation split ``test``.

    Args:
        root: the ``CUB_200_2011`` folder.
        image_size, batch_size, num_workers, on_missing, mean, std: see :class:`data_modules._wsol.WSOLDataModule`
            (image_size int or (H, W) >= 8; batch_size >= 1; num_workers >= 0; on_missing 'error' or 'skip').
    """

    eval_split = "test"

    def read_split(self, split: str) -> list[BoxRecord]:
        if split not in ("train", "test"):
            raise ValueError(f"CUBDataModule: split must be 'train' or 'test', got {split!r}")
        root = self.root
        classes = self.table(root / "classes.txt", 2, _FIX)
        class_ids = {int(f[0]): i for i, (_l, f) in enumerate(classes)}
        self.classes = [f[1] for _l, f in classes]
        images = {int(f[0]): (l, f[1]) for l, f in self.table(root / "images.txt", 2, _FIX)}
        labels = {}
        lab_path = root / "image_class_labels.txt"
        for lineno, f in self.table(lab_path, 2, _FIX):
            if int(f[1]) not in class_ids:
                raise ValueError(f"{lab_path}:{lineno}: unknown class id {f[1]} for image {f[0]}; classes.txt defines "
                                 f"ids {min(class_ids)}..{max(class_ids)}")
            labels[int(f[0])] = class_ids[int(f[1])]
        boxes: dict[int, list[tuple[float, ...]]] = {}
        for _lineno, f in self.table(root / "bounding_boxes.txt", 5, _FIX):
            x, y, w, h = (float(v) for v in f[1:])
            boxes.setdefault(int(f[0]), []).append((x, y, x + w, y + h))
        want = "1" if split == "train" else "0"
        ids = [int(f[0]) for _l, f in self.table(root / "train_test_split.txt", 2, _FIX) if f[1].strip() == want]
        records, missing = [], []
        for i in ids:
            for table, name in ((images, "images.txt"), (labels, "image_class_labels.txt"), (boxes, "bounding_boxes.txt")):
                if i not in table:
                    raise ValueError(f"{root / 'train_test_split.txt'}: image id {i} has no line in {root / name}")
            path = root / "images" / images[i][1]
            if not path.is_file():
                missing.append(f"{path} (images.txt:{images[i][0]})")
                continue
            w, h = image_size_of(path)
            b = np.asarray(boxes[i], dtype=np.float64).reshape(-1, 4)
            records.append(BoxRecord(path, labels[i], w, h, b, np.full(len(b), labels[i], dtype=np.int64),
                                     f"bounding_boxes.txt id {i}"))
        self.missing(split, missing, _FIX)
        return records
