"""Unit cards: a unit's top images with its activation region and its label's mask overlaid.

Each tile shows the image, dims everything outside the unit's bitmap (the NetDissect look), outlines the
explanation's mask in green, and draws the activation as a red outline. Tiles are laid side by side under a
title line. Pure PIL + numpy, no plotting stack.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["unit_card", "outline"]


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels (H, W) bool of a bool mask: set pixels with an unset 4-neighbour."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~inner


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127


def unit_card(images: Sequence[Image.Image], unit_masks: Sequence[np.ndarray], label_masks: Sequence[np.ndarray],
              title: str, tile: int = 128) -> Image.Image:
    """Compose a card.

    Args:
        images: top images (PIL, any size).
        unit_masks: per image, the unit's bitmap (bool, any grid; resized nearest to the tile).
        label_masks: per image, the explanation's mask (bool), or an empty array when none.
        title: text above the tiles (unit, label, IoU).
        tile: tile side in pixels.
    """
    n = max(1, len(images))
    card = Image.new("RGB", (n * (tile + 4) + 4, tile + 26), (255, 255, 255))
    draw = ImageDraw.Draw(card)
    draw.text((4, 4), title, fill=(0, 0, 0))
    for k, (img, um, lm) in enumerate(zip(images, unit_masks, label_masks)):
        rgb = np.asarray(img.convert("RGB").resize((tile, tile), Image.BILINEAR), dtype=np.float32)
        act = _resize_mask(um, (tile, tile))
        out = np.where(act[..., None], rgb, rgb * 0.35)
        out[outline(act)] = (255, 40, 40)
        if lm.size:
            out[outline(_resize_mask(lm, (tile, tile)))] = (40, 230, 40)
        card.paste(Image.fromarray(out.clip(0, 255).astype(np.uint8)), (4 + k * (tile + 4), 22))
    return card
