"""Unit bitmaps: layer activations upsampled to the annotation grid and cut at an activation range.

All dissection methods compare concepts with units on the concept masks' grid (Broden: 112x112 or 113x113):
activations are upsampled bilinearly with ``align_corners=False`` (half-pixel centres, the same interpolation as
PIL's bilinear that NetDissect-Lite and compexp use) and masks are never downsampled. A unit is "on" where the
upsampled value lies strictly inside its range ``lo < a < hi``; NetDissect's single range is ``(thr, +inf)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["upsample_to_mask", "upsample_maps", "unit_bitmaps"]


def upsample_to_mask(acts: torch.Tensor, mask_shape: tuple[int, int]) -> torch.Tensor:
    """(B, U, h, w) -> (B, U, sh, sw) float32, bilinear, ``align_corners=False``."""
    acts = acts.to(torch.float32)
    if tuple(acts.shape[-2:]) == tuple(mask_shape):
        return acts
    return F.interpolate(acts, size=tuple(mask_shape), mode="bilinear", align_corners=False)


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


def unit_bitmaps(acts: torch.Tensor, mask_shape: tuple[int, int], lo: torch.Tensor,
                 hi: torch.Tensor | None = None) -> torch.Tensor:
    """Bitmaps (B, U, sh*sw) bool of ``lo[u] < upsample(acts)[b, u] < hi[u]``.

    Args:
        acts: (B, U, h, w) activations.
        mask_shape: (sh, sw) annotation grid.
        lo: (U,) lower bounds (exclusive).
        hi: (U,) upper bounds (exclusive); None means +inf.
    """
    up = upsample_to_mask(acts, mask_shape).flatten(2)
    lo = torch.as_tensor(lo, dtype=torch.float32)[None, :, None]
    out = up > lo
    if hi is not None:
        hi = torch.as_tensor(hi, dtype=torch.float32)[None, :, None]
        out &= up < hi
    return out
