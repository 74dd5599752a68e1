"""SyntheticWorldDataModule: generation on prepare_data, Broden view, class targets, seeded shuffling, flips."""

from __future__ import annotations

import csv
import types

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules.broden import BrodenDataset
from data_modules.synthetic import SyntheticWorldDataModule
from lit_explain.synth.concepts import DEFAULT_CLASSES


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm") / "world"
    m = SyntheticWorldDataModule(root=str(root), num_images=24, seed=5, batch_size=8,
                                 cache_dir=str(root.parent / "cache"))
    m.prepare_data()
    m.setup("fit")
    return m


def _rows(root):
    with open(f"{root}/index.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_prepare_generates_and_classes_are_known(dm):
    assert (dm.root and _rows(dm.root))
    assert dm.num_classes == len(DEFAULT_CLASSES) and dm.class_names == list(DEFAULT_CLASSES)
    assert len(dm.vocabulary) == 29  # every world concept, material included
    assert {"metal", "striped", "sky", "rim", "red", "circle"} <= set(dm.vocabulary.names)
    assert dm.mask_shape == (32, 32)


def test_train_and_val_batches_carry_the_classes_csv_targets(dm):
    with open(f"{dm.root}/classes.csv", newline="") as f:
        cls = {r["image"]: int(r["class"]) for r in csv.DictReader(f)}
    rows = _rows(dm.root)
    seen = {}
    for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
        ds = loader.dataset.dataset
        for batch in loader:
            assert batch["image"].shape[1:] == (3, 64, 64) and batch["target"].dtype == torch.int64
            for i, t in zip(batch["index"].tolist(), batch["target"].tolist()):
                name = ds.image_names[i]
                assert cls[name] == t
                seen[name] = split
    assert seen == {r["image"]: r["split"] for r in rows}  # every image once, in its own split


@pytest.mark.parametrize("cache_images", [True, False])
def test_images_are_the_jpegs_normalised(dm, cache_images):
    m = SyntheticWorldDataModule(root=dm.root, num_images=24, seed=5, batch_size=8, cache_images=cache_images)
    loader = m.val_dataloader()
    for _ in range(2):  # the second pass reads the cache when there is one
        batch = next(iter(loader))
        i = int(batch["index"][0])
        path = loader.dataset.dataset.image_path(i)
        want = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float() / 255
        want = (want - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        assert torch.allclose(batch["image"][0], want, atol=1e-6)
    assert bool(loader.dataset._cache) == cache_images


def test_shuffle_is_seeded(dm, tmp_path):
    def first_order(seed):
        m = SyntheticWorldDataModule(root=dm.root, num_images=24, seed=5, batch_size=8)
        m._epoch_generator.manual_seed(seed)
        return [int(i) for b in m.train_dataloader() for i in b["index"]]

    a, b = first_order(1), first_order(1)
    assert a == b and sorted(a) == list(range(len(a)))
    assert first_order(2) != a


def test_flip_augmentation_only_while_training(dm):
    img = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    dm.trainer = types.SimpleNamespace(training=True)
    torch.manual_seed(0)
    out = dm.on_after_batch_transfer({"image": img.clone(), "target": torch.zeros(2)}, 0)["image"]
    for k in range(2):
        assert torch.equal(out[k], img[k]) or torch.equal(out[k], img[k].flip(-1))
    flips = []
    for s in range(8):
        torch.manual_seed(s)
        o = dm.on_after_batch_transfer({"image": img.clone()}, 0)["image"]
        flips += [not torch.equal(o[k], img[k]) for k in range(2)]
    assert any(flips) and not all(flips)
    dm.trainer = types.SimpleNamespace(training=False)
    assert torch.equal(dm.on_after_batch_transfer({"image": img.clone()}, 0)["image"], img)
    dm.trainer = None


def test_broden_reader_reads_the_world(dm):
    """The team's BrodenDataset reads the world's planes exactly as decoded here with PIL."""
    ds = BrodenDataset(dm.root, categories=("color", "object", "part", "material", "scene", "texture"))
    rows = _rows(dm.root)
    assert len(ds) == len(rows) and ds.image_names == [r["image"] for r in rows]
    for i in (0, 5, len(rows) - 1):
        planes, labels = ds.annotations(i)
        want = []
        for cat in ("color", "object", "part", "material"):
            for f in filter(None, rows[i][cat].split(";")):
                a = np.asarray(Image.open(f"{dm.root}/images/{f}").convert("RGB")).astype(np.int64)
                want.append(a[..., 0] + 256 * a[..., 1])
        assert np.array_equal(np.asarray(planes), np.stack(want))
        assert sorted(labels) == sorted(int(rows[i][c]) for c in ("scene", "texture") if rows[i][c])


def test_mismatching_world_is_reported(dm):
    other = SyntheticWorldDataModule(root=dm.root, num_images=25, seed=5)
    with pytest.raises(FileExistsError, match="num_images: 24 -> 25"):
        other.prepare_data()
