"""ConceptIndex against dense brute-force computations on random masks."""

import hashlib
import zipfile

import pytest
import torch

from lit_explain.concepts.index import ConceptIndex
from tests.helpers.maps import mapped_file


def _random_problem(seed=0, n=7, c=5, sh=6, sw=5, u=4):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, c, sh, sw, generator=g) < 0.3
    masks[:, 2] = False  # concept 2 pixel-free: only image-level below
    masks[3] = False  # an image without pixel annotations
    image_level = torch.zeros(n, c, dtype=torch.bool)
    image_level[[0, 4], 2] = True
    image_level[1, 0] = True  # concept 0 is image-level in image 1 and pixel-level elsewhere
    bitmaps = torch.rand(n, u, sh, sw, generator=g) < 0.4
    bitmaps[5] = False  # an image where no unit fires
    return masks, image_level, bitmaps


def _dense(masks, image_level):
    return masks | image_level[:, :, None, None]


def test_intersections_match_dense():
    masks, image_level, bitmaps = _random_problem()
    index = ConceptIndex.from_dense(masks, image_level)
    dense = _dense(masks, image_level)
    ids = torch.tensor([6, 0, 1, 3, 5])
    got = index.intersections(bitmaps[ids], ids)
    ref = torch.einsum("buhw,bchw->uc", bitmaps[ids].int(), dense[ids].int())
    assert torch.equal(got, ref.to(torch.int64))
    per = index.per_image_intersections(bitmaps[ids], ids)
    assert torch.equal(per, torch.einsum("buhw,bchw->buc", bitmaps[ids].int(), dense[ids].int()).long())
    # tiny chunks over units give the same
    assert torch.equal(index.intersections(bitmaps[ids], ids, max_elements=1), got)


def test_areas_and_dense_masks():
    masks, image_level, _ = _random_problem(seed=1)
    index = ConceptIndex.from_dense(masks, image_level)
    dense = _dense(masks, image_level)
    assert torch.equal(index.concept_areas(), dense.sum((0, 2, 3)))
    assert torch.equal(index.image_areas().long(), dense.sum((2, 3)))
    assert torch.equal(index.concept_image_counts(), dense.any(3).any(2).sum(0))
    ids = torch.tensor([4, 1, 2])
    assert torch.equal(index.dense_masks(ids), dense[ids])
    assert torch.equal(index.dense_masks(ids, torch.tensor([3, 0])), dense[ids][:, [3, 0]])


def test_category_hits_match_dense():
    masks, image_level, bitmaps = _random_problem(seed=2)
    index = ConceptIndex.from_dense(masks, image_level)
    cat = torch.tensor([0, 1, 1, 2, 0])
    ids = torch.arange(7)
    got = index.category_hits(bitmaps, ids, cat, 3)
    pix = torch.einsum("buhw,bchw->buc", bitmaps.int(), masks.int()) > 0
    ref = torch.zeros(7, 4, 3, dtype=torch.bool)
    for k in range(3):
        ref[:, :, k] = pix[:, :, cat == k].any(-1) | image_level[:, cat == k].any(-1)[:, None]
    assert torch.equal(got, ref)


def test_label_planes_dedup_and_unknown_labels():
    # two part planes with the same label at one pixel count once; labels outside the vocabulary are ignored
    planes = [torch.tensor([[[1, 2], [0, 9]], [[1, 0], [0, 2]]]).numpy(), None]
    lut = torch.full((10,), -1, dtype=torch.int64)
    lut[1], lut[2], lut[5] = 0, 1, 2
    index = ConceptIndex.from_label_planes(planes, [[5], [5, 0]], lut.numpy(), 3, (2, 2))
    dense = index.dense_masks(torch.arange(2))
    assert dense[0, 0].tolist() == [[True, False], [False, False]]
    assert dense[0, 1].tolist() == [[False, True], [False, True]]
    assert dense[:, 2].all()
    assert index.concept_areas().tolist() == [1, 2, 8]


def test_save_load_roundtrip(tmp_path):
    masks, image_level, bitmaps = _random_problem(seed=3)
    index = ConceptIndex.from_dense(masks, image_level)
    index.save(tmp_path / "idx.npz")
    for mmap in (True, False):
        back = ConceptIndex.load(tmp_path / "idx.npz", mmap=mmap)
        assert back.fingerprint() == index.fingerprint()
        for t in (back.pixel_offsets, back.pixel_concepts):  # mapped from the file, or read into memory
            assert mapped_file(t) == (str(tmp_path / "idx.npz") if mmap else "")
        ids = torch.arange(7)
        assert torch.equal(back.intersections(bitmaps, ids), index.intersections(bitmaps, ids))
    assert [p.name for p in tmp_path.iterdir()] == ["idx.npz"]  # no temporary left behind
    data = bytearray((tmp_path / "idx.npz").read_bytes())
    data[data.find(index.pixel_offsets.numpy().tobytes()) + 3] ^= 1  # one bit of the mapped offsets
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    with pytest.raises(zipfile.BadZipFile, match="CRC"):
        ConceptIndex.load(tmp_path / "bad.npz")


def test_label_planes_hold_every_pixel_concept():
    masks, image_level, _ = _random_problem(seed=4)
    index = ConceptIndex.from_dense(masks, image_level)
    ids = torch.tensor([3, 0, 6])
    planes = index.label_planes(ids)  # (B, depth, H)
    assert planes.shape[1] == int(masks.flatten(2).sum(1).max())
    got = torch.zeros(3, 5, 30, dtype=torch.bool)
    for k in range(planes.shape[1]):
        b, q = torch.nonzero(planes[:, k] >= 0, as_tuple=True)
        got[b, planes[b, k, q], q] = True
    pixel_only = masks & ~image_level[:, :, None, None]
    assert torch.equal(got, pixel_only[ids].flatten(2))


def test_set_pixels_lists_the_true_entries_in_row_major_order():
    from lit_explain.concepts.index import set_pixels

    g = torch.Generator().manual_seed(0)
    bits = torch.rand(37, 6, 5, generator=g) > 0.8  # (P, sh, sw): flattened to (P, H) inside
    p, q = set_pixels(bits)
    ref = [(i, j) for i in range(37) for j in range(30) if bool(bits.reshape(37, 30)[i, j])]
    assert list(zip(p.tolist(), q.tolist())) == ref and p.dtype == q.dtype == torch.int64
    empty = set_pixels(torch.zeros(0, 30, dtype=torch.bool))
    assert empty[0].numel() == 0 and empty[1].numel() == 0


def test_blockwise_passes_equal_the_dense_masks(monkeypatch):
    """The passes over the whole index walk it in blocks of BLOCK entries and the per-image queries in groups of
    at most max_entries entries (so no temporary grows with the dataset); with blocks of a few entries, unsorted
    input and pixel entries under image-level labels, everything still equals the dense masks."""
    import lit_explain.concepts.index as mod

    masks, image_level, _ = _random_problem(seed=5, n=9)
    ids = torch.tensor([4, 1, 1, 8, 3])  # repeats count twice
    whole = ConceptIndex.from_dense(masks, image_level)
    planes_whole = whole.label_planes(ids)
    monkeypatch.setattr(mod, "BLOCK", 3)
    n, c, sh, sw = masks.shape
    img, con, pix = masks.reshape(n, c, -1).nonzero(as_tuple=True)
    perm = torch.randperm(len(img), generator=torch.Generator().manual_seed(0))  # unsorted, covered entries kept
    index = ConceptIndex((img * sh * sw + pix)[perm], con[perm], image_level, (sh, sw))
    dense = _dense(masks, image_level)
    pixel_only = (masks & ~image_level[:, :, None, None]).flatten(2)  # (N, C, H)
    assert index.image_ptr.tolist() == [0, *torch.cumsum(pixel_only.sum((1, 2)), 0).tolist()]
    assert index.depth == int(pixel_only.sum(1).max())
    assert torch.equal(index.concept_areas(), dense.sum((0, 2, 3)))
    assert torch.equal(index.concept_areas(ids, max_entries=5), dense[ids].sum((0, 2, 3)))
    assert torch.equal(index.concept_image_counts(), dense.any(3).any(2).sum(0))
    assert torch.equal(index.image_areas().long(), dense.sum((2, 3)))
    # the same concepts on every pixel (their slot order follows the input order of a pixel's entries)
    assert torch.equal(index.label_planes(ids, max_entries=1).sort(1).values, planes_whole.sort(1).values)
    assert torch.equal(index.dense_masks(ids), dense[ids])
    h = hashlib.sha256()  # the fingerprint hashes the arrays' bytes (without copying them)
    for t in (index.pixel_offsets, index.pixel_concepts, index.image_concepts):
        h.update(t.numpy().tobytes())
    h.update(repr(index.mask_shape).encode())
    assert index.fingerprint() == h.hexdigest()[:16]


def test_sorted_input_is_adopted_without_a_copy():
    masks, image_level, _ = _random_problem(seed=6)
    index = ConceptIndex.from_dense(masks, image_level)
    again = ConceptIndex(index.pixel_offsets, index.pixel_concepts, index.image_concepts, index.mask_shape)
    assert again.pixel_offsets.data_ptr() == index.pixel_offsets.data_ptr()
    assert again.pixel_concepts.data_ptr() == index.pixel_concepts.data_ptr()
    assert torch.equal(again.image_ptr, index.image_ptr)
