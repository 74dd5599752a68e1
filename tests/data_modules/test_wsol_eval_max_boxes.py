"""``eval_max_boxes`` of the WSOL data modules: the evaluation loaders serve only the images with 1 to N GT boxes
(counted after clipping), the training split stays whole, and bad values are refused (hand-built records)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_modules._wsol import BoxRecord, WSOLDataModule

# boxes per image, in 20x20 pixels: image 4's only box lies outside the image, so clipping drops it
BOXES = [
    [],
    [(2, 2, 8, 8)],
    [(2, 2, 8, 8), (10, 10, 18, 18)],
    [(0, 0, 5, 5), (5, 5, 10, 10), (10, 10, 15, 15)],
    [(25, 25, 30, 30)],
    [(15, 15, 25, 25)],  # clipped to (15, 15, 20, 20), still one box
]


class _Tiny(WSOLDataModule):
    """The same six images serve as training and evaluation split (as VOC's train_split = eval_split can)."""

    eval_split = "train"

    def read_split(self, split: str) -> list[BoxRecord]:
        self.classes = ["a", "b"]
        out = []
        for i, boxes in enumerate(BOXES):
            path = self.root / f"{i}.png"
            if not path.exists():
                Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(path)
            out.append(BoxRecord(path, i % 2, 20, 20, np.asarray(boxes, np.float64).reshape(-1, 4),
                                 np.zeros(len(boxes), np.int64)))
        return out


def _served(dm: WSOLDataModule) -> list[str]:
    batch = next(iter(dm.test_dataloader()))
    return [dm.eval_dataset().records[i].path.stem for i in batch["index"].tolist()], batch["num_boxes"].tolist()


@pytest.mark.parametrize("n,names,boxes,left_out", [
    (None, ["0", "1", "2", "3", "4", "5"], [0, 1, 2, 3, 0, 1], None),
    (1, ["1", "5"], [1, 1], 4),  # 0 and 4 have no box (4's was dropped by clipping), 2 and 3 have more
    (2, ["1", "2", "5"], [1, 2, 1], 3),
    (3, ["1", "2", "3", "5"], [1, 2, 3, 1], 2),
])
def test_evaluation_images_by_box_count(tmp_path, n, names, boxes, left_out):
    dm = _Tiny(str(tmp_path), image_size=20, batch_size=16, eval_max_boxes=n)
    dm.setup("fit")
    assert _served(dm) == (names, boxes)
    assert dm.stats["train"].get("left_out_by_box_count") == left_out
    assert dm.stats["train"]["dropped"] == 1 and dm.stats["train"]["clipped"] == 1
    # the training split (here the same list) is never filtered
    assert len(dm.train_dataloader().dataset) == len(dm.dataset("train")) == 6
    for loader in (dm.val_dataloader(), dm.predict_dataloader()):
        assert len(loader.dataset) == len(names)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1"])
def test_eval_max_boxes_is_validated(tmp_path, bad):
    with pytest.raises((ValueError, TypeError), match="eval_max_boxes must be an integer >= 1"):
        _Tiny(str(tmp_path), eval_max_boxes=bad)
