"""Upsampling of independent (image, unit) maps for the tallies: bilinear values, and bits that do not depend on
which other maps share the call (so DDP ranks, which see different pairs, get the same bitmaps)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_explain.activations.bitmaps import upsample_maps, upsample_to_mask

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
    assert torch.equal(upsample_to_mask(maps[None], (5, 5))[0], maps)
