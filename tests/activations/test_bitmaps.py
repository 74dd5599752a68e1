"""Upsampling of independent (image, unit) maps for the tallies: bilinear values, and bits that do not depend on
which other maps share the call (so DDP ranks, which see different pairs, get the same bitmaps)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_explain.activations.bitmaps import may_fire, range_bitmap, unit_bitmaps, upsample_maps

SIZES = [((8, 8), (32, 32)), ((7, 7), (112, 112)), ((13, 13), (113, 113)), ((6, 9), (50, 37)), ((14, 14), (224, 224))]


def _bilinear_float64(maps: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Half-pixel-centre bilinear interpolation written out by hand (align_corners=False, edge clamping)."""

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        f = src - i0
        return i0, i1, f

    (y0, y1, fy), (x0, x1, fx) = axis(maps.shape[1], out_shape[0]), axis(maps.shape[2], out_shape[1])
    m = maps.astype(np.float64)
    rows = m[:, y0, :] * (1 - fy)[None, :, None] + m[:, y1, :] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


@pytest.mark.parametrize("shape,out", SIZES)
def test_values_are_bilinear(shape, out):
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(37, *shape, generator=g) * 3
    got = upsample_maps(maps, out).double().numpy()
    ref = _bilinear_float64(maps.numpy(), out)
    assert got.shape == (37, *out)
    # float32 values, and PyTorch computes the source coordinates in float32 (1.5e-6 off for 13 -> 113)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("shape,out", SIZES)
def test_bits_do_not_depend_on_the_other_maps(shape, out):
    g = torch.Generator().manual_seed(1)
    maps = torch.relu(torch.randn(53, *shape, generator=g)).half().float()  # the cache's float16 values
    full = upsample_maps(maps, out)
    perm = torch.randperm(53, generator=g)
    assert torch.equal(upsample_maps(maps[perm], out), full[perm])
    assert torch.equal(upsample_maps(maps[5:22], out), full[5:22])
    assert torch.equal(upsample_maps(maps[:1], out), full[:1])


@pytest.mark.parametrize("shape,out", SIZES)
def test_bits_equal_upsampling_the_whole_layer(shape, out):
    """A dense reference upsamples the (N, U, h, w) activations at once; with U a multiple of 16 the pairs'
    bits are the same, so thresholded bitmaps agree pixel for pixel."""
    g = torch.Generator().manual_seed(2)
    acts = torch.relu(torch.randn(3, 32, *shape, generator=g)).half().float()
    dense = F.interpolate(acts, size=out, mode="bilinear", align_corners=False)
    pairs = upsample_maps(acts.reshape(96, *shape), out).reshape(3, 32, *out)
    assert torch.equal(pairs, dense)


def test_same_grid_is_returned_as_is():
    maps = torch.randn(4, 5, 5)
    assert torch.equal(upsample_maps(maps, (5, 5)), maps)
    assert torch.equal(unit_bitmaps(maps, (5, 5), 0.0), (maps > 0).flatten(1))


def test_unit_bitmaps_are_strict_on_both_sides():
    up = torch.tensor([[[0.0, 1.0, 1.5, 2.0, 3.0]]])  # one (1, 5) map already on the grid
    assert unit_bitmaps(up, (1, 5), 1.0, 2.0)[0].tolist() == [False, False, True, False, False]
    assert unit_bitmaps(up, (1, 5), 2.0)[0].tolist() == [False, False, False, False, True]
    assert unit_bitmaps(up, (1, 5), 2.0, math.inf)[0].tolist() == [False, False, False, False, True]
    per_unit = unit_bitmaps(torch.stack([up, up * 2], 1), (1, 5), torch.tensor([0.5, 2.5]), torch.tensor([1.6, 4.5]))
    assert per_unit.shape == (1, 2, 5)
    assert per_unit[0, 0].tolist() == [False, True, True, False, False]
    assert per_unit[0, 1].tolist() == [False, False, True, True, False]


@pytest.mark.parametrize("shape,out", SIZES[:3])
def test_unit_bitmaps_cut_the_grouped_upsampling_whatever_the_layout(shape, out):
    """Per-pair bounds on (P, h, w) maps, per-unit bounds on (B, U, h, w), one map alone (a unit card's
    single-unit call): the same bits as cutting the hand-written bilinear values, away from float ties."""
    g = torch.Generator().manual_seed(3)
    acts = torch.relu(torch.randn(4, 5, *shape, generator=g)).half().float()
    lo, hi = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.0]), torch.tensor([0.9, math.inf, 1.2, 0.6, 2.0])
    ref = _bilinear_float64(acts.reshape(20, *shape).numpy(), out).reshape(4, 5, -1)
    want = (ref > lo.double().numpy()[None, :, None]) & (ref < hi.double().numpy()[None, :, None])
    near = np.zeros_like(want)  # pixels within float32 rounding of a bound may go either way
    for b in (lo, hi):
        near |= np.abs(ref - b.double().numpy()[None, :, None]) < 1e-5
    layer = unit_bitmaps(acts, out, lo, hi).numpy()
    assert layer.shape == (4, 5, out[0] * out[1])
    assert ((layer == want) | near).all()
    pairs = unit_bitmaps(acts.reshape(20, *shape), out, lo.repeat(4), hi.repeat(4)).reshape(4, 5, -1)
    assert torch.equal(pairs, torch.from_numpy(layer))
    one = unit_bitmaps(acts[:, 2:3], out, lo[2:3], hi[2:3])  # (B, 1, h, w): one unit across images
    assert torch.equal(one[:, 0], torch.from_numpy(layer[:, 2]))


def test_may_fire_keeps_every_map_with_a_pixel_above_lo():
    g = torch.Generator().manual_seed(4)
    maps = torch.rand(200, 3, 3, generator=g)
    lo = maps.amax((1, 2)).quantile(0.5)
    keep = may_fire(maps.amax((1, 2)), lo)
    bits = unit_bitmaps(maps, (10, 10), lo)
    assert not bits[~keep].any()  # a map left out has an empty bitmap
    assert keep.sum() < 200  # and maps below lo are left out


class _Entry:
    """The two arrays of an activation cache entry that range_bitmap reads."""

    def __init__(self, acts):
        self.acts, self.maxes, self.shape = acts.numpy(), acts.amax((2, 3)).numpy(), tuple(acts.shape)


def test_range_bitmap_equals_cutting_every_image():
    g = torch.Generator().manual_seed(5)
    acts = torch.relu(torch.randn(30, 3, 4, 4, generator=g)).half().float()
    entry = _Entry(acts)
    for lo, hi in ((0.5, 1.5), (1.0, math.inf)):
        want = unit_bitmaps(acts[:, 1], (16, 16), lo, hi)
        got = range_bitmap(entry, 1, lo, hi, (16, 16), chunk_pixels=5 * 256)  # several chunks
        assert torch.equal(got, want)
        assert got.any() and not got.all()
