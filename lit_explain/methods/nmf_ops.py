"""Tensor math of the NMF concept method, free of Lightning (shapes documented, testable by hand).

* :func:`select_class_images`: per class, the images the model predicts as that class, in a seeded random order,
  capped (the paper's "first 60 of a shuffled loader", made reproducible and independent of the process count);
* :class:`LayerHead`: "the rest of the network" after the probed layer as a function of the layer's output, for
  predictions from stored activations and for the prediction-from-components strips;
* :func:`image_codes`: each selected image's mean NMF code per component (the per-pixel codes summarised);
* :func:`component_shares`: how much of a class's reconstruction each component carries;
* :func:`top_loadings`: a component's strongest units with their loadings, as table text;
* :func:`crop_cells`: the pixel window of pooled grid cells, for prototype pictures;
* :func:`paste_patch`: the patch-insertion test's image edit (bottom-right corner, or a constant fill);
* :func:`matching_score`: how well components match planted unit directions (the proof on planted models).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["select_class_images", "LayerHead", "image_codes", "component_shares", "top_loadings", "crop_cells",
           "paste_patch", "fill_corner", "matching_score", "cell_window", "class_probability",
           "apply_in_chunks"]


def select_class_images(preds: torch.Tensor, classes: Sequence[int], cap: int, seed: int) -> list[torch.Tensor]:
    """The images predicted as each class, shuffled with a generator seeded by (seed, class), first ``cap`` kept.

    The order of a class's images depends only on the seed, the class and the set of images predicted as it
    (candidates are sorted by dataset index before the shuffle), never on batches or processes.

    Args:
        preds: (N,) int64 predicted class per dataset index (-1 for an image not scored).
        classes: the classes to select for.
        cap: images kept per class, >= 1 (the paper: 60).
        seed: >= 0.

    Returns:
        one (n_a,) int64 tensor of dataset indices per class, n_a = min(cap, images predicted as a).
    """
    out = []
    preds = torch.as_tensor(preds).reshape(-1).cpu()
    for c in classes:
        cand = torch.nonzero(preds == int(c)).flatten()  # ascending
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(c))
        out.append(cand[torch.randperm(len(cand), generator=g)][: int(cap)])
    return out


class LayerHead:
    """The network after ``layer`` as a function of the layer's output: acts (B, C, h', w') -> logits (B, K).

    The full model runs on a constant input of ``image_shape`` (zeros) while a forward hook replaces the
    layer's output by the given activations, so any architecture works whose later modules see the layer only
    through its output (a whole block or stage such as ``layer4`` or ``layer3.5``; not a layer inside a block
    with a skip connection around it). The part before the layer is computed on the constant input and wasted:
    about the cost of the layer's prefix per call. Spatial sizes other than the layer's own (the 1-cell-wide
    strips of the prediction test) need a head that pools globally (ResNets, the synthetic CNN).

    Args:
        net: the eval-mode network (images -> (B, K) logits).
        layer: the probed module of ``net``.
        image_shape: (3, H, W) of the network's images.
    """

    def __init__(self, net: nn.Module, layer: nn.Module, image_shape: Sequence[int]) -> None:
        self.net, self.layer, self.image_shape = net, layer, tuple(int(s) for s in image_shape)

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        def hook(_m, _i, _o):
            return acts.to(_o.dtype) if isinstance(_o, torch.Tensor) else acts

        x = acts.new_zeros(acts.shape[0], *self.image_shape)
        handle = self.layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return self.net(x)
        finally:
            handle.remove()


def image_codes(W: torch.Tensor, n_images: int, pixels: int) -> torch.Tensor:
    """(n_images, k) mean code of each image per component, from per-pixel codes W (n_images·pixels, k) whose
    rows are image-major (as :func:`lit_explain.decomposition.nmf.class_rows` lays them out)."""
    return W[: n_images * pixels].reshape(n_images, pixels, -1).mean(1)


def component_shares(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """(B, k) share of each component in the reconstruction's total mass: Σ_rows,cols W[:, t] H[t, :], normalised
    to sum 1 per class (0 for an all-zero class). W (B, n, k), H (B, k, C)."""
    mass = W.sum(1) * H.sum(2)  # (B, k): Σ_i W_it · Σ_c H_tc
    total = mass.sum(1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp(min=torch.finfo(mass.dtype).tiny), torch.zeros_like(mass))


def top_loadings(h: torch.Tensor, top: int) -> tuple[list[int], list[float]]:
    """The ``top`` units of largest loading of one component h (C,), largest first (ties: smaller unit), with
    their loadings normalised by the component's L2 norm (so they read as cosines with the unit axes)."""
    norm = float(h.norm())
    order = torch.sort(-h.double(), stable=True).indices[: int(top)]
    return [int(u) for u in order], [float(h[u]) / norm if norm > 0 else 0.0 for u in order]


def cell_window(gh: int, gw: int, height: int, width: int) -> tuple[int, int]:
    """(sy, sx) pixel size of a pooled grid cell: int(H / gh) by int(W / gw) (the paper's int(224 / grid); a
    trailing strip of pixels outside the grid is ignored when the division is not exact)."""
    return max(1, height // gh), max(1, width // gw)


def crop_cells(images: torch.Tensor, y: torch.Tensor, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(M, 3, sy, sx) the pixel windows of grid cells (y, x) (M,) of images (M, 3, H, W)."""
    H, W = images.shape[-2:]
    sy, sx = cell_window(grid[0], grid[1], H, W)
    rows = (y[:, None] * sy + torch.arange(sy)[None]).clamp(max=H - 1)  # (M, sy)
    cols = (x[:, None] * sx + torch.arange(sx)[None]).clamp(max=W - 1)  # (M, sx)
    m = torch.arange(images.shape[0])
    return images[m[:, None, None, None], torch.arange(images.shape[1])[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def paste_patch(images: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """A copy of images (B, 3, H, W) with the bottom-right corner replaced by ``patch`` (3, ph, pw) (the paper
    pasted its person patch into the bottom-right corner of the husky images)."""
    out = images.clone()
    ph, pw = patch.shape[-2:]
    out[:, :, -ph:, -pw:] = patch.to(out)
    return out


def fill_corner(images: torch.Tensor, size: tuple[int, int], value: float = 0.0) -> torch.Tensor:
    """A copy of images (B, 3, H, W) whose bottom-right (ph, pw) corner is ``value`` (the insertion control)."""
    out = images.clone()
    out[:, :, -int(size[0]):, -int(size[1]):] = float(value)
    return out


def matching_score(H: torch.Tensor, truth: Sequence[Sequence[int]]) -> torch.Tensor:
    """(A,) mean over each class's planted units u of max over its components of cos(H[a, t], e_u).

    1 means that every planted unit of the class has a component pointing exactly along it; a class whose
    components mix units (or ignore one) scores lower. H (A, k, C); truth: per class, its planted unit indices.
    """
    Hn = H / H.norm(dim=2, keepdim=True).clamp(min=torch.finfo(H.dtype).tiny)
    out = torch.zeros(H.shape[0], dtype=torch.float64)
    for a, units in enumerate(truth):
        units = torch.as_tensor(list(units), dtype=torch.long)
        out[a] = Hn[a][:, units].amax(0).double().mean() if len(units) else float("nan")
    return out


def class_probability(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(B,) softmax probability of ``classes`` (B,) from logits (B, K)."""
    return logits.softmax(-1).gather(1, classes.reshape(-1, 1).long())[:, 0]


def apply_in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int) -> torch.Tensor:
    """fn over fixed chunks of x's first dimension, concatenated (memory bound; same chunks whatever the caller)."""
    return torch.cat([fn(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]) if len(x) else fn(x)
