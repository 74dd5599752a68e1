"""Pictures of a filter's top images weighted by its activation map (LaViSE's visualisation)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

__all__ = ["attention_picture", "to_rgb"]


def to_rgb(image: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> np.ndarray:
    """(3, S, S) normalised image -> (S, S, 3) float in [0, 1] (min-max scaled when mean/std are unknown)."""
    x = image.float()
    if mean is not None and std is not None:
        x = x * torch.as_tensor(std).view(3, 1, 1) + torch.as_tensor(mean).view(3, 1, 1)
    else:
        x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-8)
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def attention_picture(images: list[np.ndarray], maps: list[torch.Tensor], title: str, tile: int = 112) -> Image.Image:
    """Tiles of image × clamp(upsampled map / its max, 0.3), with ``title`` above.

    Args:
        images: (S, S, 3) float [0, 1] images.
        maps: (h, w) activation maps of the filter on those images.
        title: text line (filter and words).
        tile: tile side in pixels.
    """
    head = 18
    n = max(len(images), 1)
    canvas = Image.new("RGB", (n * tile + (n - 1) * 2, tile + head), "white")
    for t, (img, amap) in enumerate(zip(images, maps)):
        up = F.interpolate(amap[None, None].float(), size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        weight = (up / up.max().clamp(min=1e-8)).clamp(min=0.3).numpy()[..., None]
        arr = (np.clip(img * weight, 0, 1) * 255).astype(np.uint8)
        canvas.paste(Image.fromarray(arr).resize((tile, tile), Image.BILINEAR), (t * (tile + 2), head))
    ImageDraw.Draw(canvas).text((2, 3), title, fill="black")
    return canvas
