"""Unit bitmaps: layer activations upsampled to the annotation grid and cut at an activation range.

All dissection methods compare concepts with units on the concept masks' grid (Broden: 112x112 or 113x113):
activations are upsampled bilinearly with ``align_corners=False`` (half-pixel centres, the same interpolation as
PIL's bilinear that NetDissect-Lite and compexp use) and masks are never downsampled. A unit is "on" where the
upsampled value lies strictly inside its range ``lo < a < hi``; NetDissect's single range is ``(thr, +inf)``.

Every unit bitmap of the project (NetDissect's tally, the compositional searches and their null baselines, the
unit cards, LaViSE's recall ground truth) comes from :func:`unit_bitmaps`, which upsamples through
:func:`upsample_maps` only: the bits of one map never depend on the shape of the call or on the maps beside it,
so a table, a card and a DDP rank always agree on which pixels a unit covers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["upsample_maps", "unit_bitmaps", "may_fire", "range_bitmap", "set_pixels"]

#: Maps upsampled together as the channels of one ``F.interpolate`` input by ``upsample_maps``.
_GROUP = 16


def upsample_maps(maps: torch.Tensor, mask_shape: tuple[int, int]) -> torch.Tensor:
    """(P, h, w) independent maps -> (P, sh, sw) float32, bilinear, ``align_corners=False``.

    The maps are laid out as 16 channels per image, zero-padded to a multiple of 16, because
    ``F.interpolate`` takes a slower path with different rounding for single-channel inputs (P, 1, h, w).
    Laid out like this, each map's values do not depend on its position or on the other maps, so the same
    (image, unit) pair gives the same bits on any DDP rank. They equal those of upsampling the layer's
    (N, U, h, w) activations whole, as a dense reference does, whenever U is a multiple of 16.
    """
    maps = maps.to(torch.float32)
    p, (h, w) = maps.shape[0], tuple(maps.shape[-2:])
    if (h, w) == tuple(mask_shape):
        return maps
    pad = (-p) % _GROUP
    if pad:
        maps = torch.cat([maps, maps.new_zeros(pad, h, w)])
    up = F.interpolate(maps.view(-1, _GROUP, h, w), size=tuple(mask_shape), mode="bilinear", align_corners=False)
    return up.view(-1, *mask_shape)[:p]


def unit_bitmaps(acts: torch.Tensor, mask_shape: tuple[int, int], lo, hi=None) -> torch.Tensor:
    """Bitmaps ``lo < upsample(acts) < hi`` (strict on both sides): the one upsample-and-cut of the project.

    Args:
        acts: (..., h, w) activation maps, e.g. (B, U, h, w) a layer's units or (P, h, w) (image, unit) pairs.
        mask_shape: (sh, sw) annotation grid.
        lo: lower bounds (exclusive), broadcastable to ``acts.shape[:-2]`` (a scalar, (U,) per unit, (P,) per
            pair); compared in float32, the upsampled values' dtype.
        hi: upper bounds (exclusive), same broadcasting; None means +inf (NetDissect's ``a > thr``).

    Returns:
        (..., sh*sw) bool.
    """
    lead = tuple(acts.shape[:-2])
    h = int(mask_shape[0]) * int(mask_shape[1])
    up = upsample_maps(acts.reshape(-1, *acts.shape[-2:]), mask_shape).reshape(*lead, h)  # also with 0 maps
    lo = torch.as_tensor(lo, dtype=torch.float32, device=up.device)
    out = up > lo[..., None]
    if hi is not None:
        hi = torch.as_tensor(hi, dtype=torch.float32, device=up.device)
        out &= up < hi[..., None]
    return out


def may_fire(maxes: torch.Tensor, lo) -> torch.Tensor:
    """Bool mask of the maps whose bitmap above ``lo`` can have a pixel, from their maxima at layer resolution.

    Bilinear upsampling is a convex combination, so an upsampled value never exceeds the map's maximum; a small
    relative margin (1e-5, far above float32 rounding) keeps the rounding of the interpolation from hiding a
    pixel just above ``lo``. Maps left out have empty bitmaps, so skipping them changes no count.

    Args:
        maxes: (...) float per-map maxima (the activation store's ``maxes``).
        lo: lower bounds broadcastable to ``maxes``.
    """
    lo = torch.as_tensor(lo, dtype=torch.float32)
    return maxes > lo - (lo.abs() * 1e-5 + 1e-12)


def range_bitmap(entry, unit: int, lo: float, hi: float, mask_shape: tuple[int, int],
                 chunk_pixels: int = 1 << 24) -> torch.Tensor:
    """(N, sh*sw) bool ``lo < upsample(a_unit) < hi`` of one unit over every image of an activation cache.

    Only the images whose stored maximum passes :func:`may_fire` are read and upsampled (in chunks of about
    ``chunk_pixels`` output values); the other rows stay False.

    Args:
        entry: an :class:`~lit_explain.activations.store.ActivationEntry` (``acts`` (N, U, h, w), ``maxes`` (N, U)).
        unit: the unit's index in the entry.
        lo, hi: the range (strict); ``hi = inf`` for NetDissect's single range.
        mask_shape: (sh, sw) annotation grid.
        chunk_pixels: memory bound of one upsampling call.
    """
    n, h = entry.shape[0], int(mask_shape[0]) * int(mask_shape[1])
    out = torch.zeros(n, h, dtype=torch.bool)
    maxes = torch.from_numpy(np.array(entry.maxes[:, unit], dtype=np.float32))
    cand = torch.nonzero(may_fire(maxes, lo)).flatten()
    for chunk in cand.split(max(1, chunk_pixels // h)):
        acts = torch.from_numpy(np.asarray(entry.acts[chunk.numpy(), unit], dtype=np.float32))
        out[chunk] = unit_bitmaps(acts, mask_shape, lo, hi)
    return out


def set_pixels(bitmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``bitmaps.nonzero(as_tuple=True)`` of (P, H) bool bitmaps: (pair index (n,), pixel index (n,)) int64,
    in row-major order. numpy's flat scan of a bool array is about 1.5x faster than torch's 2-D ``nonzero``."""
    bits = bitmaps.flatten(1).cpu()
    flat = torch.from_numpy(np.flatnonzero(bits.numpy()))
    h = max(1, bits.shape[1])
    return flat // h, flat % h
