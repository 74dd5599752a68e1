"""Crops around a neuron's peak, for WWW's minor concepts (what the neuron sees in a part of the image).

A unit's activation map on an example image has a peak cell; the crop is the square of side
``fraction * min(H, W)`` centred on that cell's centre in image coordinates, shifted inside the image when it
would cross a border, and resized back to the image size (bilinear) for the image encoder.
"""

from __future__ import annotations

import torch

__all__ = ["peak_cells", "peak_crop_boxes", "crop_resize"]


def peak_cells(maps: torch.Tensor) -> torch.Tensor:
    """(M, 2) int64 (row, column) of each map's maximum, the first in row-major order on ties.

    Args:
        maps: (M, h, w) activation maps.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be (M, h, w), got {tuple(maps.shape)}")
    flat = maps.flatten(1).argmax(dim=1)
    return torch.stack([flat // maps.shape[2], flat % maps.shape[2]], dim=1)


def peak_crop_boxes(cells: torch.Tensor, grid: tuple[int, int], image: tuple[int, int], fraction: float
                    ) -> torch.Tensor:
    """(M, 4) float boxes ``(x0, y0, x1, y1)`` in pixels of the crops centred on grid cells.

    Args:
        cells: (M, 2) (row, column) cells of an (h, w) grid laid over the image.
        grid: (h, w); image: (H, W).
        fraction: crop side as a fraction of min(H, W), in (0, 1].
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    (h, w), (H, W) = grid, image
    side = float(fraction) * min(H, W)
    cy = (cells[:, 0].double() + 0.5) * H / h
    cx = (cells[:, 1].double() + 0.5) * W / w
    y0 = (cy - side / 2).clamp(0, H - side)
    x0 = (cx - side / 2).clamp(0, W - side)
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=1).float()


def crop_resize(images: torch.Tensor, which: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]
                ) -> torch.Tensor:
    """Crops of ``images[which]`` at ``boxes``, resized to ``size``: (M, C, *size).

    Bilinear sampling with 2x2 samples per output pixel (``torchvision.ops.roi_align``, pixel centres at
    half-integers): a crop of the continuous image, so for a box on whole pixels and a zoom of 2 it is the sliced
    crop upsampled bilinearly except on its outer ring of pixels, which blends in the image pixels just beyond the
    box (where the slice would repeat its own edge). Every crop of a batch is cut in one call.

    Args:
        images: (B, C, H, W); which: (M,) image of each crop; boxes: (M, 4) ``(x0, y0, x1, y1)`` pixels.
    """
    from torchvision.ops import roi_align

    rois = torch.cat([which.to(images.dtype)[:, None], boxes.to(images.dtype)], dim=1).to(images.device)
    return roi_align(images, rois, output_size=tuple(size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
