"""BrodenDataset / BrodenDataModule against ground truth computed from the fixture's own description.

The expected planes, labels, vocabularies and dense concept masks are derived here from the arrays handed to
``tests.fixtures.broden_writer`` (never from the reader), then compared with what the reader gets from disk.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules.broden import BrodenDataModule, BrodenDataset, BrodenFormatError
from lit_explain.concepts import ConceptIndex
from tests.helpers.maps import mapped_file
from tests.fixtures.broden_writer import (
    MINIATURE_LABELS,
    MINIATURE_PRIMARY,
    FixtureImage,
    FixtureLabel,
    encode_ids,
    make_miniature,
    miniature_images,
    write_broden,
)

ORDER = ("color", "object", "part", "material", "scene", "texture")  # category.csv / index column order
DEFAULT = ("object", "part", "scene", "texture", "color")
NAMES = {lab.number: lab.name for lab in MINIATURE_LABELS}
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


# ---------------------------------------------------------------------------------------------- ground truth
def truth_rows(images, categories=DEFAULT, subset=None, split=None):
    """[(FixtureImage, planes list, image-level ids)] the reader must keep, in index order."""
    out = []
    for img in images:
        if subset is not None and img.image.split("/")[0] != subset:
            continue
        if split is not None and img.split != split:
            continue
        planes = [p for c in ORDER if c in categories for p in img.planes.get(c, [])]
        labels = list(dict.fromkeys(x for c in ORDER if c in categories for x in img.image_labels.get(c, []) if x))
        if planes or labels:
            out.append((img, planes, labels))
    return out


def truth_dense(rows, label_ids):
    """(N, C, sh, sw) bool: OR over planes of (plane == id), or the whole image for image-level ids."""
    sh, sw = rows[0][0].mask_shape
    out = np.zeros((len(rows), len(label_ids), sh, sw), dtype=bool)
    for i, (_, planes, labels) in enumerate(rows):
        for c, lab in enumerate(label_ids):
            for p in planes:
                out[i, c] |= p == lab
            if lab in labels:
                out[i, c] = True
    return out


def truth_vocab_ids(categories, rows=None, min_count=0):
    ids = sorted(n for n, c in MINIATURE_PRIMARY.items() if c in categories)
    if min_count:
        counts = truth_dense(rows, ids).any((2, 3)).sum(0)
        ids = [n for n, k in zip(ids, counts) if k >= min_count]
    return ids


# ---------------------------------------------------------------------------------------------- reader
@pytest.mark.parametrize(
    "kw",
    [{}, {"categories": ("object", "part")}, {"categories": ("scene", "texture")}, {"subset": "pascal"},
     {"split": "val"}, {"subset": "ade20k", "split": "train", "categories": ("color", "part", "scene")}],
)
def test_rows_planes_and_image_labels_match_ground_truth(broden_miniature, kw):
    ds = BrodenDataset(broden_miniature.root, **kw)
    rows = truth_rows(broden_miniature.images, kw.get("categories", DEFAULT), kw.get("subset"), kw.get("split"))
    assert ds.image_names == [img.image for img, _, _ in rows]
    assert len(ds) == len(rows) and ds.mask_shape == (8, 8) and ds.image_shape == (16, 16)
    for i, (img, planes, labels) in enumerate(rows):
        got_planes, got_labels = ds.annotations(i)
        assert got_planes.dtype == np.int32 and got_planes.shape == (len(planes), 8, 8)
        np.testing.assert_array_equal(got_planes, np.stack(planes) if planes else np.zeros((0, 8, 8)))
        assert got_labels == labels
        assert ds.image_path(i) == broden_miniature.root / "images" / img.image
        assert ds.splits[i] == img.split


def test_row_dropping_scene_zero_and_unselected_categories(broden_miniature):
    names = BrodenDataset(broden_miniature.root).image_names
    assert "ade20k/ADE_train_99999999.jpg" not in names  # only "scene 0": no data
    assert len(names) == 20
    no_texture = BrodenDataset(broden_miniature.root, categories=("object", "part", "scene", "color")).image_names
    assert [n for n in names if n not in no_texture] == ["dtd/banded_0000.jpg", "dtd/banded_0002.jpg"]  # texture only


def test_ids_above_255_are_decoded_from_green(broden_miniature):
    ds = BrodenDataset(broden_miniature.root)
    seen = set()
    for i in range(len(ds)):
        seen |= set(np.unique(ds.annotations(i)[0]).tolist())
    assert {300, 513, 600} <= seen and max(seen) == 600
    assert (encode_ids(np.array([[513]]), np.random.default_rng(0))[0, 0, :2] == [1, 2]).all()


def test_image_tensor_is_the_stored_jpeg_normalised(broden_miniature):
    ds = BrodenDataset(broden_miniature.root, subset="pascal")
    rows = truth_rows(broden_miniature.images, subset="pascal")
    for i in (0, len(ds) - 1):
        item = ds[i]
        assert item["index"] == i and item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 16)
        back = item["image"].numpy().transpose(1, 2, 0) * STD + MEAN
        err = np.abs(back - rows[i][0].rgb / 255.0)
        assert err.mean() < 0.02 and err.max() < 0.15  # JPEG q95 of flat 4x4 blocks
    resized = BrodenDataset(broden_miniature.root, subset="pascal", image_size=12, mean=(0, 0, 0), std=(1, 1, 1))
    assert resized.image_shape == (12, 12) and resized[0]["image"].shape == (3, 12, 12)
    assert 0.0 <= float(resized[0]["image"].min()) and float(resized[0]["image"].max()) <= 1.0


def test_primary_category_coverage_ties_and_label_csv_fallback(broden_miniature):
    ds = BrodenDataset(broden_miniature.root)
    assert {n: ds.primary_category(n) for n in MINIATURE_PRIMARY} == MINIATURE_PRIMARY
    assert ds.primary_category(6) is None  # the gap
    assert ds.primary_category(0) is None


@pytest.mark.parametrize("categories", [DEFAULT, ("object",), ("part", "scene"), ("texture",)])
def test_derived_vocabulary(broden_miniature, categories):
    vocab = BrodenDataset(broden_miniature.root, categories=categories).vocabulary
    ids = truth_vocab_ids(categories)
    assert list(vocab.label_ids) == ids
    assert list(vocab.names) == [NAMES[n] for n in ids]
    assert list(vocab.categories) == [MINIATURE_PRIMARY[n] for n in ids]
    assert list(vocab.image_level) == [MINIATURE_PRIMARY[n] in ("scene", "texture") for n in ids]
    assert 6 not in vocab.label_ids and 0 not in vocab.label_ids


def test_object_vocabulary_by_hand(broden_miniature):
    vocab = BrodenDataset(broden_miniature.root, categories=["object"]).vocabulary
    # wheel (tie object/part) and pole (label.csv tie) go to part; ghost is kept with min_image_count=0 (CCE)
    assert vocab.names == ("wall", "floor", "person", "car", "rare-thing", "ghost")


@pytest.mark.parametrize("m", [1, 2, 5])
def test_min_image_count_vocabulary(broden_miniature, m):
    ds = BrodenDataset(broden_miniature.root, min_image_count=m)
    assert ds.vocabulary_needs_pass
    rows = truth_rows(broden_miniature.images)
    ids = truth_vocab_ids(DEFAULT, rows, m)
    assert list(ds.vocabulary.label_ids) == ids
    if m == 1:
        assert 600 in ids and 700 not in ids  # rare-thing once, ghost never
    if m == 2:
        assert 600 not in ids
    idx = ds.build_concept_index()  # kept from the vocabulary pass
    np.testing.assert_array_equal(idx.dense_masks(torch.arange(len(ds))).numpy(), truth_dense(rows, ids))


def test_explicit_concepts(broden_miniature):
    ds = BrodenDataset(broden_miniature.root, concepts=["car", "street-s", "head", "dotted"])
    v = ds.vocabulary
    assert v.label_ids == (300, 10, 8, 13)
    assert v.categories == ("object", "scene", "part", "texture")
    assert v.image_level == (False, True, False, True)
    # a label also annotated in a selected non-primary category: its masks come from that category only
    ds = BrodenDataset(broden_miniature.root, categories=("part",), concepts=["person"])
    assert ds.vocabulary.categories == ("part",)
    rows = truth_rows(broden_miniature.images, ("part",))
    np.testing.assert_array_equal(ds.build_concept_index().dense_masks(torch.arange(len(ds))).numpy(), truth_dense(rows, [7]))


def test_unknown_concept_and_conflicting_arguments(broden_miniature):
    with pytest.raises(ValueError, match=r"unknown Broden concept 'carr'.*'car'"):
        _ = BrodenDataset(broden_miniature.root, concepts=["wall", "carr"]).vocabulary
    with pytest.raises(ValueError, match="none of which is selected"):
        _ = BrodenDataset(broden_miniature.root, categories=("object",), concepts=["street-s"]).vocabulary
    with pytest.raises(ValueError, match="either `concepts`"):
        BrodenDataset(broden_miniature.root, concepts=["wall"], min_image_count=5)


def test_subset_from_an_existing_index_file(tmp_path):
    mini = make_miniature(tmp_path / "b")
    lines = (mini.root / "index.csv").read_text().splitlines()
    chosen = [lines[0]] + [ln for ln in lines if ln.startswith("dtd/")][:3] + [lines[1]]
    (mini.root / "index_mine.csv").write_text("\n".join(chosen) + "\n")
    ds = BrodenDataset(mini.root, subset="mine")
    assert ds.index_file.name == "index_mine.csv"
    assert ds.image_names == ["dtd/banded_0000.jpg", "dtd/banded_0001.jpg", "dtd/banded_0002.jpg", "ade20k/ADE_train_00000000.jpg"]
    with pytest.raises(ValueError, match=r"no Broden rows.*Subsets present: \['ade20k', 'dtd', 'pascal'\]"):
        BrodenDataset(mini.root, subset="coco")
    with pytest.raises(ValueError, match=r"splits: \['train', 'val'\]"):
        BrodenDataset(mini.root, split="test")


# ---------------------------------------------------------------------------------------------- categories
def test_missing_optional_category_unrequested_works_requested_errors(broden_miniature):
    root = broden_miniature.root
    assert not (root / "c_material.csv").exists() and not (root / "c_texture.csv").exists()
    assert "material" not in BrodenDataset(root).categories
    # texture is requested by default and absent from the pascal rows: fine
    assert len(BrodenDataset(root, subset="pascal").vocabulary) == len(truth_vocab_ids(DEFAULT))
    with pytest.raises(ValueError, match=r"\['material'\].*no labels.*Available categories"):
        BrodenDataset(root, categories=("object", "material"))
    with pytest.raises(ValueError, match=r"'objects' is not a column"):
        BrodenDataset(root, categories=("objects",))
    assert BrodenDataset(root, categories=None).categories == ("color", "object", "part", "scene", "texture")


def test_absent_column_and_missing_c_files_and_category_csv(tmp_path):
    images = miniature_images()
    for img in images:
        img.image_labels.pop("texture", None)
    root = write_broden(tmp_path / "b", MINIATURE_LABELS, images, c_file_categories=(), category_csv=False,
                        columns=("color", "object", "part", "scene"))
    ds = BrodenDataset(root, categories=("object", "part", "scene", "color"))  # texture not requested: fine
    # without any c_ file, the primary category comes from label.csv's counts (1 each, ties -> later):
    assert ds.primary_category(7) == "part" and ds.primary_category(4) == "object"
    with pytest.raises(ValueError, match=r"'texture' is not a column of index.csv"):
        BrodenDataset(root)


# ---------------------------------------------------------------------------------------------- concept index
@pytest.mark.parametrize("kw", [{}, {"categories": ("part",)}, {"subset": "dtd"}, {"split": "val", "categories": None}])
def test_concept_index_equals_dense_bruteforce(broden_miniature, kw):
    ds = BrodenDataset(broden_miniature.root, **kw)
    rows = truth_rows(broden_miniature.images, ds.categories, kw.get("subset"), kw.get("split"))
    ids = truth_vocab_ids(ds.categories)
    dense = truth_dense(rows, ids)
    idx = ds.build_concept_index(chunk_size=3)
    assert isinstance(idx, ConceptIndex) and idx.num_images == len(rows) and idx.num_concepts == len(ids)
    assert idx.mask_shape == (8, 8)
    np.testing.assert_array_equal(idx.dense_masks(torch.arange(len(rows))).numpy(), dense)
    np.testing.assert_array_equal(idx.concept_areas().numpy(), dense.sum((0, 2, 3)))
    np.testing.assert_array_equal(idx.image_areas().numpy(), dense.sum((2, 3)))
    np.testing.assert_array_equal(idx.concept_image_counts().numpy(), dense.any((2, 3)).sum(0))
    img_level = np.array([[lab in labels for lab in ids] for _, _, labels in rows])
    np.testing.assert_array_equal(idx.image_concepts.numpy(), img_level)
    bitmaps = torch.rand(len(rows), 4, 64, generator=torch.Generator().manual_seed(0)) > 0.6
    want = np.einsum("buh,bch->uc", bitmaps.numpy().astype(np.int64), dense.reshape(len(rows), len(ids), 64).astype(np.int64))
    np.testing.assert_array_equal(idx.intersections(bitmaps, torch.arange(len(rows))).numpy(), want)


def test_overlapping_part_planes_count_once(broden_miniature):
    ds = BrodenDataset(broden_miniature.root, categories=("part",), concepts=["head"])
    i = ds.image_names.index("ade20k/ADE_train_00000001.jpg")
    assert int(ds.build_concept_index().image_areas()[i, 0]) == 16 + 16 - 4  # two 4x4 squares overlapping 2x2


def test_build_is_independent_of_chunking_and_workers(broden_miniature):
    ds = BrodenDataset(broden_miniature.root)
    a = ds.build_concept_index(chunk_size=1)
    b = ds.build_concept_index(chunk_size=1000)
    c = ds.build_concept_index(chunk_size=4, num_workers=2)
    for x in (b, c):
        assert torch.equal(a.pixel_offsets, x.pixel_offsets) and torch.equal(a.pixel_concepts, x.pixel_concepts)
        assert torch.equal(a.image_concepts, x.image_concepts)


def test_fingerprint_is_a_content_key(tmp_path):
    mini = make_miniature(tmp_path / "b")
    fp = BrodenDataset(mini.root).fingerprint()
    assert BrodenDataset(mini.root).fingerprint() == fp
    assert BrodenDataset(mini.root, categories=("object",)).fingerprint() != fp
    assert BrodenDataset(mini.root, min_image_count=2).fingerprint() != fp
    assert BrodenDataset(mini.root, split="val").fingerprint() != fp
    png = mini.root / "images" / mini.images[0].png_names("object")[0]
    Image.fromarray(encode_ids(np.full((8, 8), 4), np.random.default_rng(1)), mode="RGB").save(png)
    assert BrodenDataset(mini.root).fingerprint() != fp


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_root_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*index\.csv.*label\.csv.*download broden1_224.*yourself"):
        BrodenDataset(tmp_path / "nowhere")
    make_miniature(tmp_path / "broden1_224")
    with pytest.raises(FileNotFoundError, match=r"lacks index\.csv, label\.csv.*Did you mean .*broden1_224"):
        BrodenDataset(tmp_path)


def test_missing_image_and_png(broden_copy):
    root = broden_copy.root
    ds = BrodenDataset(root)
    (root / "images" / ds.image_names[0]).unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_train_00000000\.jpg.*missing"):
        ds[0]
    with pytest.raises(FileNotFoundError, match=r"ADE_train_00000000\.jpg"):
        BrodenDataset(root).fingerprint()
    (root / "images" / broden_copy.images[2].png_names("part")[1]).unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_train_00000002_part_2\.png.*missing"):
        ds.annotations(2)
    with pytest.raises(FileNotFoundError, match=r"ADE_train_00000002_part_2\.png"):
        ds.build_concept_index()


def test_corrupt_image_and_png(broden_copy):
    root = broden_copy.root
    ds = BrodenDataset(root)
    jpg = root / "images" / ds.image_names[3]
    jpg.write_bytes(b"this is not a jpeg")
    with pytest.raises(BrodenFormatError, match=r"cannot read Broden image .*ADE_train_00000003\.jpg"):
        ds[3]
    jpg4 = root / "images" / ds.image_names[4]
    jpg4.write_bytes(jpg4.read_bytes()[:200])  # truncated
    with pytest.raises(BrodenFormatError, match=r"ADE_train_00000004\.jpg"):
        ds[4]
    png = root / "images" / broden_copy.images[5].png_names("color")[0]
    png.write_bytes(png.read_bytes()[:60])
    with pytest.raises(BrodenFormatError, match=r"cannot read Broden label map .*ADE_train_00000005_color\.png"):
        ds.annotations(5)
    grey = root / "images" / broden_copy.images[6].png_names("color")[0]
    Image.fromarray(np.ones((8, 8), np.uint8)).save(grey)
    with pytest.raises(BrodenFormatError, match=r"ADE_train_00000006_color\.png has mode L"):
        ds.annotations(6)
    small = root / "images" / broden_copy.images[7].png_names("object")[0]
    Image.fromarray(encode_ids(np.ones((4, 4), int), np.random.default_rng(0)), mode="RGB").save(small)
    with pytest.raises(BrodenFormatError, match=r"ADE_val_00000007_object\.png is 4x4.*8x8"):
        ds.annotations(7)


@pytest.mark.parametrize("bad_id", [6, 1000, 65535])  # the gap, and unknown ids that need G
def test_unknown_label_id_in_png(broden_copy, bad_id):
    root = broden_copy.root
    plane = broden_copy.images[0].planes["object"][0].copy()
    plane[3, 5] = bad_id
    png = root / "images" / broden_copy.images[0].png_names("object")[0]
    Image.fromarray(encode_ids(plane, np.random.default_rng(0)), mode="RGB").save(png)
    ds = BrodenDataset(root, categories=("color", "part"))  # the object PNG is not read: no error
    ds.build_concept_index()
    ds = BrodenDataset(root, categories=("object",), concepts=["wall"])  # read, and outside the vocabulary: still an error
    with pytest.raises(BrodenFormatError, match=rf"ADE_train_00000000_object\.png contains label ids \[{bad_id}\]"):
        ds.annotations(0)
    with pytest.raises(BrodenFormatError, match=rf"\[{bad_id}\]"):
        ds.build_concept_index()


def test_unknown_image_level_id_in_index(tmp_path):
    images = miniature_images()
    images[0].image_labels["scene"] = [10, 99]
    root = write_broden(tmp_path / "b", MINIATURE_LABELS, images, c_file_categories=("color", "object", "part", "scene"))
    with pytest.raises(BrodenFormatError, match=r"index\.csv:2 .*scene label 99 is not defined"):
        BrodenDataset(root)
    assert len(BrodenDataset(root, categories=("object",)))  # scene not read


def test_mixed_mask_sizes(tmp_path):
    images = miniature_images()
    odd = FixtureImage("pascal/odd.jpg", "train", np.zeros((18, 18, 3), np.uint8), (9, 9), planes={"object": [np.full((9, 9), 4)]})
    root = write_broden(tmp_path / "b", MINIATURE_LABELS, images + [odd], c_file_categories=("color", "object", "part", "scene"))
    with pytest.raises(ValueError, match=r"mix mask \(sh, sw\) sizes \[\(8, 8\), \(9, 9\)\].*broden1_227"):
        BrodenDataset(root)
    assert BrodenDataset(root, subset="ade20k").mask_shape == (8, 8)


# ---------------------------------------------------------------------------------------------- data module
def test_predict_dataloader_batches(broden_miniature, tmp_path):
    dm = BrodenDataModule(str(broden_miniature.root), subset="ade20k", batch_size=4, cache_dir=str(tmp_path))
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert batches[0]["image"].shape == (4, 3, 16, 16)
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(10))
    assert batches[0]["index"].dtype == torch.int64
    assert dm.mask_shape == (8, 8) and dm.image_shape == (16, 16)
    assert dm.vocabulary == dm.dataset.vocabulary and dm.num_concepts == len(truth_vocab_ids(DEFAULT))


def test_concept_index_cache_reuse_and_corrupt_rebuild(broden_miniature, tmp_path, monkeypatch):
    kw = dict(root=str(broden_miniature.root), split="train", cache_dir=str(tmp_path / "cache"))
    first = BrodenDataModule(**kw).concept_index()
    files = sorted((tmp_path / "cache" / "concept_index").iterdir())
    assert [f.suffix for f in files] == [".json", ".npz"]
    npz = files[1]
    rows = truth_rows(broden_miniature.images, split="train")
    np.testing.assert_array_equal(first.dense_masks(torch.arange(len(rows))).numpy(), truth_dense(rows, truth_vocab_ids(DEFAULT)))

    calls = []
    real_build = BrodenDataset.build_concept_index

    def counting_build(self, *a, **k):
        calls.append(1)
        return real_build(self, *a, **k)

    monkeypatch.setattr(BrodenDataset, "build_concept_index", counting_build)
    again = BrodenDataModule(**kw).concept_index()
    assert calls == [] and torch.equal(again.pixel_offsets, first.pixel_offsets)
    assert torch.equal(again.image_concepts, first.image_concepts)

    good = npz.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # same size, one corrupt byte inside the array data
    for damaged in (good[: len(good) // 2], bytes(flipped)):
        npz.write_bytes(damaged)
        with pytest.warns(UserWarning, match="unreadable concept-index cache"):
            rebuilt = BrodenDataModule(**kw).concept_index()
        assert torch.equal(rebuilt.pixel_offsets, first.pixel_offsets)
        assert npz.read_bytes() == good  # rewritten
    assert len(calls) == 2
    files[0].write_text("{not json")
    with pytest.warns(UserWarning):
        BrodenDataModule(**kw).concept_index()
    assert len(calls) == 3 and json.loads(files[0].read_text())["num_entries"] == int(first.pixel_offsets.numel())
    assert not [p for p in files[0].parent.iterdir() if p.suffix == ".tmp"]


@pytest.mark.parametrize("min_image_count", [0, 2])
def test_concept_index_entries_are_mapped_from_files_not_held(broden_miniature, tmp_path, min_image_count):
    """The index's per-entry arrays (12 bytes per annotated pixel and plane: the part that grows with the data) live
    in file mappings in the cache folder, whether just built (unlinked build files) or read back (the .npz), never
    in the process's own memory; and they hold the pixels the fixture wrote."""
    kw = dict(root=str(broden_miniature.root), cache_dir=str(tmp_path / "cache"), min_image_count=min_image_count)
    folder = tmp_path / "cache" / "concept_index"
    built = BrodenDataModule(**kw).concept_index()
    for t in (built.pixel_offsets, built.pixel_concepts):
        assert mapped_file(t).startswith(str(folder)) and mapped_file(t).endswith("(deleted)")
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".npz"]  # nothing of the build left behind
    dm = BrodenDataModule(**kw)
    read = dm.concept_index()
    npz = next(folder.glob("*.npz"))
    assert mapped_file(read.pixel_offsets) == mapped_file(read.pixel_concepts) == str(npz)
    rows = truth_rows(broden_miniature.images)
    ids = list(dm.vocabulary.label_ids)
    for index in (built, read):
        np.testing.assert_array_equal(index.dense_masks(torch.arange(len(rows))).numpy(), truth_dense(rows, ids))


def test_min_count_vocabulary_comes_from_the_cache(broden_miniature, tmp_path, monkeypatch):
    kw = dict(root=str(broden_miniature.root), min_image_count=2, cache_dir=str(tmp_path))
    vocab = BrodenDataModule(**kw).vocabulary
    assert list(vocab.label_ids) == truth_vocab_ids(DEFAULT, truth_rows(broden_miniature.images), 2)

    def no_build(self, *a, **k):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(BrodenDataset, "build_concept_index", no_build)
    dm = BrodenDataModule(**kw)
    assert dm.vocabulary == vocab and dm.concept_index().num_concepts == len(vocab)


def test_train_val_dataloaders_and_subclass_hook(broden_miniature, tmp_path):
    class WithTargets(BrodenDataset):
        def __getitem__(self, i):
            return {**super().__getitem__(i), "target": len(self.image_names[i])}

    class TargetModule(BrodenDataModule):
        def _make_dataset(self, split):
            return WithTargets(split=split, **self._dataset_kwargs())

    dm = TargetModule(str(broden_miniature.root), subset="pascal", batch_size=8, cache_dir=str(tmp_path))
    train = next(iter(dm.train_dataloader()))
    val = next(iter(dm.val_dataloader()))
    assert train["image"].shape[0] == 4 and val["image"].shape[0] == 2 and "target" in train
    names = [img.image for img, _, _ in truth_rows(broden_miniature.images, subset="pascal", split="val")]
    assert dm._split_dataset("val").image_names == names
    assert len(dm.predict_dataloader().dataset) == 6  # split=None: all pascal rows


def test_no_warnings_on_a_clean_run(broden_miniature, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm = BrodenDataModule(str(broden_miniature.root), cache_dir=str(tmp_path))
        dm.concept_index()
        BrodenDataModule(str(broden_miniature.root), cache_dir=str(tmp_path)).concept_index()


def test_copying_the_root_keeps_reading_the_same(broden_miniature, tmp_path):
    dst = shutil.copytree(broden_miniature.root, tmp_path / "copy")
    a, b = BrodenDataset(broden_miniature.root), BrodenDataset(dst)
    assert a.vocabulary == b.vocabulary and a.image_names == b.image_names


def test_image_size_disagreeing_with_the_index_and_empty_vocabulary(broden_copy):
    root = broden_copy.root
    ds = BrodenDataset(root)
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "images" / ds.image_names[2], format="JPEG")
    with pytest.raises(BrodenFormatError, match=r"ADE_train_00000002\.jpg is 10x12 but .*index\.csv says 16x16"):
        ds[2]
    with pytest.raises(ValueError, match=r"no concept occurs in 100 of the 20 selected Broden images"):
        _ = BrodenDataset(root, min_image_count=100).vocabulary


# ---------------------------------------------------------------------------------------------- vocabulary files
def _line_of(path, first_cell):
    """1-based line of the CSV row whose first cell is ``first_cell`` (a plain text scan, not the reader)."""
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.split(",")[0] == str(first_cell))


@pytest.mark.parametrize("dup, what", [(FixtureLabel(5, "door", {"object": 1.0}), "label number 5"),
                                       (FixtureLabel(42, "floor", {"object": 1.0}), "label name 'floor'")])
def test_label_csv_defining_an_id_or_a_name_twice_is_rejected(tmp_path, dup, what):
    labels = MINIATURE_LABELS + [dup]
    root = write_broden(tmp_path / "b", labels, miniature_images(), c_file_categories=("color", "object"))
    order = sorted(labels, key=lambda lab: lab.number)  # the writer's row order
    first = next(i for i, lab in enumerate(order) if lab.number == 5) + 2
    second = order.index(dup) + 2
    with pytest.raises(BrodenFormatError, match=rf"label\.csv:{second}: {what} is already defined on line {first}\b"):
        BrodenDataset(str(root))


def test_category_csv_and_c_file_repeats_are_rejected(tmp_path):
    root = make_miniature(tmp_path / "b").root
    cat = root / "category.csv"
    first = _line_of(cat, "object")
    n = len(cat.read_text().splitlines())
    with open(cat, "a") as f:
        f.write("object,4,300,5,21\n")
    with pytest.raises(BrodenFormatError, match=rf"category\.csv:{n + 1}: category 'object' is already defined on line {first}\b"):
        BrodenDataset(str(root))
    cat.write_text("\n".join(cat.read_text().splitlines()[:-1]) + "\n")
    BrodenDataset(str(root))  # the repaired file reads again
    c_obj = root / "c_object.csv"
    lines = c_obj.read_text().splitlines()
    first = next(i for i, ln in enumerate(lines, 1) if ln.split(",")[1:3] == ["4", "wall"])
    with open(c_obj, "a") as f:
        f.write(f"{len(lines)},4,wall-again,1,0.5\n")
    with pytest.raises(BrodenFormatError, match=rf"c_object\.csv:{len(lines) + 1}: label number 4 is already defined on line {first}\b"):
        BrodenDataset(str(root))


def test_concepts_listed_twice_are_rejected(broden_miniature, tmp_path):
    with pytest.raises(ValueError, match=r"concepts lists 'wall' twice \(positions 0 and 2\)"):
        BrodenDataModule(str(broden_miniature.root), concepts=["wall", "car", "wall"], cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"BrodenDataset: concepts lists 'wall' twice \(positions 0 and 2\)"):
        BrodenDataset(str(broden_miniature.root), concepts=["wall", "car", "wall"])


# ---------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kw, match", [
    ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
    ({"num_workers": -1}, r"num_workers must be an integer >= 0, got -1"),
    ({"min_image_count": -2}, r"min_image_count must be an integer >= 0, got -2"),
    ({"image_size": 0}, r"image_size must be an integer >= 1 \(or null\), got 0"),
    ({"split": "test"}, r"split must be one of 'train', 'val', None, got 'test'"),
    ({"std": (0.2, 0.0, 0.2)}, r"std must be three finite numbers .*all > 0"),
    ({"mean": (0.5, 0.5)}, r"mean must be three finite numbers"),
    ({"categories": ["object", "object"]}, r"categories lists 'object' twice"),
    ({"categories": []}, r"categories must be a non-empty list"),
    ({"subset": ""}, r"subset must be a non-empty folder name"),
    ({"cache_dir": " "}, r"cache_dir must be a file or folder path \(a non-empty string\), got ' '"),
    ({"concepts": ["wall"], "min_image_count": 3}, r"give either `concepts`"),
])
def test_constructor_rejects_out_of_range_arguments(kw, match, tmp_path):
    # root need not exist: the constructor checks the settings before any file is read
    with pytest.raises(ValueError, match=r"BrodenDataModule: " + match):
        BrodenDataModule(str(tmp_path / "nowhere"), **{"cache_dir": str(tmp_path), **kw})


def test_reader_rejects_out_of_range_arguments(broden_miniature):
    with pytest.raises(ValueError, match=r"BrodenDataset: min_image_count must be an integer >= 0, got -1"):
        BrodenDataset(str(broden_miniature.root), min_image_count=-1)
    with pytest.raises(ValueError, match=r"BrodenDataset: image_size must be an integer >= 1 \(or null\), got 0"):
        BrodenDataset(str(broden_miniature.root), image_size=0)


def test_image_listed_twice_in_the_index_is_rejected(tmp_path):
    root = make_miniature(tmp_path / "b").root
    index = root / "index.csv"
    lines = index.read_text().splitlines()
    first = next(i for i, ln in enumerate(lines, 1) if ln.startswith("pascal/2009_000001.jpg,"))
    index.write_text("\n".join(lines + [lines[first - 1]]) + "\n")
    with pytest.raises(BrodenFormatError, match=rf"index\.csv:{len(lines) + 1}: image 'pascal/2009_000001\.jpg' is "
                                                rf"already listed on line {first}\b"):
        BrodenDataset(str(root))
