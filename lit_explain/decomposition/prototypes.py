"""Prototype grid cells of NMF components: the cells of a pooled activation grid most similar to each component.

Each component h (C,) of a class is shown by the image regions whose activation vectors point the same way:
the layer's activations are average-pooled 2x2 (stride 2, so each cell covers a fixed pixel window of the
image), every cell vector a ∈ R^C is compared with h by cosine similarity, and the top cells are kept. With
``exclude_own`` the cells of images predicted as the component's class are left out, so the prototypes must
come from other classes' images (the stricter test of the paper).

Everything is vectorised over classes, components and cells: one (A·K, C) @ (C, n·G) matmul per chunk of n
images (G cells per image), merged into a running top-n with ties broken by the smaller cell index, so the
result does not depend on the chunk size, and partial results of several processes (over disjoint images,
``image_ids`` global) merge exactly with :func:`merge_top_cells`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lit_explain.topk import merge_topk

__all__ = ["pool_grid", "TopCells", "top_cells", "merge_top_cells"]


def pool_grid(acts: torch.Tensor, size: int = 2) -> torch.Tensor:
    """(N, C, h // size, w // size): average over non-overlapping size x size windows (a trailing row or column
    that does not fill a window is dropped, as in the paper's 7x7 -> 3x3 at a ResNet's last stage)."""
    if acts.dim() != 4:
        raise ValueError(f"pool_grid: acts must be (N, C, h, w), got {tuple(acts.shape)}")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= min(acts.shape[2:]):
        raise ValueError(f"pool_grid: size must be an int in 1..{min(acts.shape[2:])} (the grid side), got {size!r}")
    return F.avg_pool2d(acts, kernel_size=size, stride=size)


@dataclass
class TopCells:
    """The top cells of each (class, component), best first.

    Attributes:
        score: (A, K, top) cosine similarity; -inf where fewer than ``top`` cells were eligible.
        index: (A, K, top) flat cell index image_id·G + y·gw + x; -1 where none.
        image, y, x: (A, K, top) the cell's image id and grid position; -1 where none.
    """

    score: torch.Tensor
    index: torch.Tensor
    image: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor


def top_cells(
    cells: torch.Tensor,
    bases: torch.Tensor,
    top: int = 8,
    *,
    preds: torch.Tensor | None = None,
    classes: torch.Tensor | None = None,
    exclude_own: bool = False,
    image_ids: torch.Tensor | None = None,
    images_per_pass: int = 256,
) -> TopCells:
    """Rank all grid cells by cosine similarity to every component.

    Args:
        cells: (N, C, gh, gw) pooled activations (:func:`pool_grid`).
        bases: (A, K, C) components of A classes (rows of H).
        top: cells kept per component, >= 1.
        preds: (N,) predicted class of each image; needed with ``exclude_own``.
        classes: (A,) the class each row of ``bases`` explains; needed with ``exclude_own``.
        exclude_own: leave out cells of images with ``preds == classes[a]`` for class a.
        image_ids: (N,) global image ids (default 0..N-1), for merging results over processes.
        images_per_pass: images compared per matmul (memory ∝ A·K·images_per_pass·G), >= 1.

    Returns:
        :class:`TopCells`.
    """
    if cells.dim() != 4 or bases.dim() != 3 or bases.shape[2] != cells.shape[1]:
        raise ValueError(f"top_cells: cells (N, C, gh, gw) and bases (A, K, C) do not fit: {tuple(cells.shape)}, "
                         f"{tuple(bases.shape)}")
    for name, value in (("top", top), ("images_per_pass", images_per_pass)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"top_cells: {name} must be an int >= 1, got {value!r}")
    N, C, gh, gw = cells.shape
    A, K, _ = bases.shape
    G = gh * gw
    if exclude_own:
        if preds is None or classes is None:
            raise ValueError("top_cells: exclude_own=True needs preds (N,) and classes (A,)")
        preds = torch.as_tensor(preds, device=cells.device).reshape(-1)
        classes = torch.as_tensor(classes, device=cells.device).reshape(-1)
        if preds.shape != (N,) or classes.shape != (A,):
            raise ValueError(f"top_cells: preds must be ({N},) and classes ({A},), got {tuple(preds.shape)}, "
                             f"{tuple(classes.shape)}")
    ids = torch.arange(N, device=cells.device) if image_ids is None else torch.as_tensor(image_ids, device=cells.device).long()
    if ids.shape != (N,):
        raise ValueError(f"top_cells: image_ids must be ({N},), got {tuple(ids.shape)}")
    hb = F.normalize(bases.reshape(A * K, C).to(cells.dtype), dim=1)
    values = cells.new_full((A * K, 0), float("-inf"))
    index = torch.full((A * K, 0), -1, dtype=torch.long, device=cells.device)
    cell_no = torch.arange(G, device=cells.device)
    for n0 in range(0, N, images_per_pass):
        chunk = cells[n0 : n0 + images_per_pass]
        n = chunk.shape[0]
        vec = F.normalize(chunk.flatten(2).transpose(1, 2).reshape(n * G, C), dim=1)  # (n·G, C), image-major
        sims = hb @ vec.T  # (A·K, n·G)
        if exclude_own:
            own = preds[n0 : n0 + n][None, :] == classes[:, None]  # (A, n)
            own = own[:, None, :, None].expand(A, K, n, G).reshape(A * K, n * G)
            sims = sims.masked_fill(own, float("-inf"))
        flat = (ids[n0 : n0 + n, None] * G + cell_no[None, :]).reshape(1, -1).expand(A * K, -1)
        values, index = merge_topk(values, index, sims, flat, top)
    return _top_cells(values.reshape(A, K, top), index.reshape(A, K, top), gh, gw)


def _top_cells(values: torch.Tensor, index: torch.Tensor, gh: int, gw: int) -> TopCells:
    G = gh * gw
    index = torch.where(torch.isfinite(values), index, torch.full_like(index, -1))
    image = torch.where(index >= 0, index // G, index)
    rest = index % G
    y = torch.where(index >= 0, rest // gw, index)
    x = torch.where(index >= 0, rest % gw, index)
    return TopCells(score=values, index=index, image=image, y=y, x=x)


def merge_top_cells(a: TopCells, b: TopCells, grid: tuple[int, int]) -> TopCells:
    """The top cells over the union of two disjoint image sets (e.g. two processes' shards, global image ids),
    exactly what :func:`top_cells` gives on all the images at once.

    Args:
        a, b: results with the same (A, K, top) shape.
        grid: (gh, gw) of the pooled grid both were computed on.
    """
    if a.score.shape != b.score.shape:
        raise ValueError(f"merge_top_cells: shapes differ: {tuple(a.score.shape)} vs {tuple(b.score.shape)}")
    gh, gw = grid
    A, K, top = a.score.shape
    v, i = merge_topk(a.score.reshape(A * K, top), a.index.reshape(A * K, top), b.score.reshape(A * K, top),
                  b.index.reshape(A * K, top), top)
    return _top_cells(v.reshape(A, K, top), i.reshape(A, K, top), gh, gw)
