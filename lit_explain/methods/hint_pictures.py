"""Pictures of HINT's concept maps: for a few images, the image and each concept classifier's map beside it.

The concept classifiers applied as a 1x1 convolution score every cell of the layer's grid; shown upsampled to the
image (bilinear, cell centres aligned) and mapped to a red-on-black heat map where the classifier says "yes"
(score > 0, brightness by score) so a reader sees at once which part of the image each concept picks out.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_explain.methods.hint_ops import upsample_maps

__all__ = ["concept_map_grid"]


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> [0, 1] by per-image, per-channel min-max (the normalisation is unknown)."""
    flat = images.float().flatten(2)
    lo, hi = flat.min(2).values[..., None, None], flat.max(2).values[..., None, None]
    return (images.float() - lo) / (hi - lo).clamp(min=1e-6)


def concept_map_grid(images: torch.Tensor, maps: torch.Tensor) -> Any:
    """A PIL image: one row per image, the image then one heat map per concept.

    Args:
        images: (B, 3, H, W) the images as fed to the model.
        maps: (B, K, h, w) concept decision values on the layer grid.

    Returns:
        PIL.Image of size ((K + 1) · W, B · H).
    """
    from PIL import Image

    B, K = maps.shape[:2]
    H, W = images.shape[-2:]
    up = upsample_maps(maps.reshape(B * K, *maps.shape[2:]).float(), (H, W)).reshape(B, K, H, W)
    scale = up.flatten(2).amax(2).clamp(min=1e-6)[..., None, None]
    heat = (up.clamp(min=0) / scale)  # (B, K, H, W) in [0, 1], 0 where the classifier says no
    tiles = torch.zeros(B, K, 3, H, W)
    tiles[:, :, 0] = heat
    tiles[:, :, 1] = (heat - 0.5).clamp(min=0) * 2  # bright cells turn yellow
    row = torch.cat([_to_unit(images)[:, None], tiles], 1)  # (B, K + 1, 3, H, W)
    grid = row.permute(0, 3, 1, 4, 2).reshape(B * H, (K + 1) * W, 3)
    return Image.fromarray((grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
