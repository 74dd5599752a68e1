"""The tensor math of HINT (Wang, Lee, Qi, CVPR 2022) steps 2-3, free of Lightning: responsible regions from
layer saliency, pixel sampling, and the per-concept targets of every hierarchy level at once.

Step 2 (per image, vectorised over the batch): g = ‖S[:, i, j]‖₂ over channels; ĝ = clip((g − min g) /
(P99(g) − min g), 0, 1); positive (the "responsible region") = ĝ > 0.5, background = the rest. Each grid cell
is one sample whose features are the layer's C-dimensional column A[:, i, j] (no pooling). The positives are
kept; background cells are drawn *with replacement*, ``background_per_positive`` per positive (HINT: 1/K for a
group of K concepts), keyed by each image's dataset index so 1 and N processes sample the same cells.

Step 3 targets: a pixel of an image whose class is a leaf of concept e is a positive of e when it lies in the
responsible region; a negative of e when it is a positive of one of e's siblings, or a background pixel of any
image of e's sibling group (HINT's "other concepts' regions plus background"); ignored otherwise.

Step 4 maps: the concept classifiers' (or CAM's) score map on the layer grid, upsampled to the image and
min-max normalised per image, feeds the WSOL metrics (:mod:`lit_explain.metrics.wsol`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["channel_norm", "robust_normalize", "responsible_mask", "RegionPixels", "sample_region_pixels",
           "concept_targets", "minmax_normalize", "upsample_maps", "class_activation_maps", "neuron_rows"]


def channel_norm(saliency: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): the L2 norm over channels of each grid cell."""
    if saliency.ndim != 4:
        raise ValueError(f"channel_norm: saliency must be (B, C, h, w), got {tuple(saliency.shape)}")
    return torch.linalg.vector_norm(saliency.float(), dim=1)


def robust_normalize(g: torch.Tensor, q: float = 0.99) -> torch.Tensor:
    """(B, h, w) -> (B, h, w) in [0, 1]: clip((g − min) / (quantile_q − min), 0, 1) per image.

    The quantile is linear interpolation between order statistics (``numpy.percentile``'s default). The
    P99 instead of the maximum keeps one hot cell from flattening the map. An image whose quantile equals its
    minimum (a constant map, e.g. zero saliency) maps to all zeros: it has no responsible region.
    """
    if not 0.0 < float(q) <= 1.0:
        raise ValueError(f"robust_normalize: q must be in (0, 1], got {q}")
    if g.ndim != 3:
        raise ValueError(f"robust_normalize: g must be (B, h, w), got {tuple(g.shape)}")
    flat = g.float().flatten(1)
    lo = flat.min(dim=1).values
    hi = torch.quantile(flat, float(q), dim=1)
    span = (hi - lo)[:, None, None]
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = ((g.float() - lo[:, None, None]) / safe).clamp(0.0, 1.0)
    return torch.where(span > 0, out, torch.zeros_like(out))


def responsible_mask(saliency: torch.Tensor, threshold: float = 0.5, q: float = 0.99) -> torch.Tensor:
    """(B, C, h, w) saliency -> (B, h, w) bool: the responsible region ĝ > ``threshold``."""
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"responsible_mask: threshold must be in [0, 1), got {threshold}")
    return robust_normalize(channel_norm(saliency), q) > float(threshold)


@dataclass
class RegionPixels:
    """Sampled grid cells of a batch (n cells).

    Attributes:
        features: (n, C) the layer's feature columns, in the requested dtype (float16 halves the storage).
        positive: (n,) bool, True for responsible-region cells.
        image: (n,) int64 dataset index of the cell's image.
        cell: (n,) int64 flat grid position row * w + col (with ``image``, a canonical sort key).
        label: (n,) int64 the image's class (leaf) index.
    """

    features: torch.Tensor
    positive: torch.Tensor
    image: torch.Tensor
    cell: torch.Tensor
    label: torch.Tensor


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix_uniform(seed: int, image: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in [0, 1): splitmix64 of (seed, image, draw), so a draw depends only on its image's
    dataset index and its number, never on the batch or the process it was computed in."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + image.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             + draw.astype(np.uint64) * np.uint64(0x94D049BB133111EB)) & _M64
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def sample_region_pixels(features: torch.Tensor, positive: torch.Tensor, labels: torch.Tensor,
                         background_per_positive: float, image_ids: torch.Tensor | None = None, seed: int = 0,
                         dtype: torch.dtype = torch.float16) -> RegionPixels:
    """Every positive cell plus background cells drawn with replacement, for a whole batch at once.

    Image i contributes all its P_i positive cells and floor(P_i × ``background_per_positive``) background
    cells drawn uniformly with replacement from its own background (HINT pools the backgrounds of a group and
    draws |positives| / K of them; drawing per image in proportion to its positives gives the same expected
    mix and lets each draw be keyed by the image's dataset index). The draws come from a counter-based hash of
    (``seed``, dataset index, draw number), so the sampled set is the same whatever the batching and however
    the images are split across processes. An image with positives but no background cell contributes no
    background draw.

    Args:
        features: (B, C, h, w) the probed layer's output.
        positive: (B, h, w) bool responsible regions (:func:`responsible_mask`).
        labels: (B,) int64 each image's class.
        background_per_positive: background cells per positive cell (>= 0; HINT: 1/K).
        image_ids: (B,) int64 dataset indices (default 0..B-1).
        seed: seed of the background draws (>= 0).
        dtype: storage dtype of the features.

    Returns:
        :class:`RegionPixels`: positives first (image-major, row-major order), then the backgrounds.
    """
    if features.ndim != 4 or positive.shape != (features.shape[0], *features.shape[2:]):
        raise ValueError(f"sample_region_pixels: features (B, C, h, w) {tuple(features.shape)} and positive "
                         f"(B, h, w) {tuple(positive.shape)} do not fit")
    B, _, h, w = features.shape
    if labels.shape != (B,):
        raise ValueError(f"sample_region_pixels: labels must be (B,)={B}, got {tuple(labels.shape)}")
    if not float(background_per_positive) >= 0:
        raise ValueError(f"sample_region_pixels: background_per_positive must be >= 0, got {background_per_positive}")
    if int(seed) < 0:
        raise ValueError(f"sample_region_pixels: seed must be >= 0, got {seed}")
    ids = torch.arange(B) if image_ids is None else image_ids.detach().cpu().long()
    if ids.shape != (B,):
        raise ValueError(f"sample_region_pixels: image_ids must be (B,)={B}, got {tuple(ids.shape)}")
    pos = positive.detach().cpu().bool().reshape(B, h * w)
    n_pos = pos.sum(1)
    n_bg_avail = h * w - n_pos
    n_draw = torch.where(n_bg_avail > 0, (n_pos.double() * float(background_per_positive)).floor().long(), 0)
    pos_img, pos_cell = pos.nonzero(as_tuple=True)
    # background draws: image b gets n_draw[b]; draw j picks its floor(u * n_bg_avail[b])-th background cell
    draw_img = torch.repeat_interleave(torch.arange(B), n_draw)
    starts = torch.cumsum(n_draw, 0) - n_draw
    draw_no = torch.arange(draw_img.numel()) - starts[draw_img]
    u = torch.from_numpy(_splitmix_uniform(int(seed), ids[draw_img].numpy(), draw_no.numpy()))
    rank_in_bg = (u * n_bg_avail[draw_img]).long()
    bg_img, bg_cell = (~pos).nonzero(as_tuple=True)  # image-major, so image b's cells start at bg_start[b]
    bg_start = torch.cumsum(n_bg_avail, 0) - n_bg_avail
    chosen = bg_cell[bg_start[draw_img] + rank_in_bg] if draw_img.numel() else bg_cell[:0]
    img = torch.cat([pos_img, draw_img])
    cell = torch.cat([pos_cell, chosen])
    cols = features.detach().flatten(2)  # (B, C, h*w)
    dev_img, dev_cell = img.to(features.device), cell.to(features.device)
    feats = cols[dev_img, :, dev_cell].to(dtype)
    is_pos = torch.zeros(img.numel(), dtype=torch.bool)
    is_pos[: pos_img.numel()] = True
    return RegionPixels(feats, is_pos, ids[img], cell, labels.detach().cpu().long()[img])


def concept_targets(label: torch.Tensor, positive: torch.Tensor, membership: torch.Tensor,
                    group: torch.Tensor) -> torch.Tensor:
    """(n, K) int8 targets of every concept of every level: 1 positive, 0 negative, -1 ignored.

    Args:
        label: (n,) int64 class (leaf) index of each cell's image, in [0, L).
        positive: (n,) bool responsible-region cell.
        membership: (K, L) bool, concept k contains leaf l (``ConceptHierarchy.membership``).
        group: (K,) int64 sibling-group id of each concept (concepts compared with each other share one).

    A cell is 1 for concept k when it is positive and its class is under k; 0 when its class is under a
    concept of k's group and it is either background or positive for a sibling; -1 when its class is outside
    k's group (the cell says nothing about k).
    """
    if membership.ndim != 2 or group.shape != (membership.shape[0],):
        raise ValueError(f"concept_targets: membership (K, L) {tuple(membership.shape)} and group (K,) "
                         f"{tuple(group.shape)} do not fit")
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= membership.shape[1]):
        raise ValueError(f"concept_targets: labels must be in [0, {membership.shape[1]}), got range "
                         f"[{int(label.min())}, {int(label.max())}]")
    member = membership.bool().to(label.device)
    grp = group.long().to(label.device)
    in_k = member[:, label].T  # (n, K)
    n_groups = int(grp.max()) + 1 if grp.numel() else 0
    onehot = torch.nn.functional.one_hot(grp, n_groups).T.float()  # (G, K)
    in_group = (onehot @ member.float()) > 0  # (G, L): leaf l under some concept of group g
    in_kgroup = in_group[grp][:, label].T  # (n, K)
    pos = positive.bool()[:, None]
    out = torch.full(in_k.shape, -1, dtype=torch.int8, device=label.device)
    out[in_kgroup] = 0
    out[pos & in_k] = 1
    return out


# ---------------------------------------------------------------------------------------------- step 4: WSOL maps
def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """(B, h, w) -> (B, h, w) in [0, 1]: (x − min) / (max − min) per image (a constant map becomes 0), the
    normalisation MaxBoxAccV2 expects before its threshold sweep."""
    if maps.ndim != 3:
        raise ValueError(f"minmax_normalize: maps must be (B, h, w), got {tuple(maps.shape)}")
    flat = maps.float().flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    span = hi - lo
    return torch.where(span > 0, (maps.float() - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(maps, dtype=torch.float32))


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W) bilinear (align_corners=False: cell centres map to cell centres), so a score map
    of the layer's grid lines up with the image's pixels and boxes."""
    if maps.ndim != 3:
        raise ValueError(f"upsample_maps: maps must be (B, h, w), got {tuple(maps.shape)}")
    return torch.nn.functional.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear",
                                           align_corners=False)[:, 0]


def class_activation_maps(features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou et al. 2016), the WSOL baseline: (B, C, h, w) features of the layer before global average
    pooling, (K, C) linear head weight, (B,) class per image -> (B, h, w) Σ_c weight[class, c] · features[:, c].

    For a network that ends in global average pooling + linear, the spatial mean of the CAM plus the bias is
    the class logit.
    """
    if features.ndim != 4 or weight.ndim != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(f"class_activation_maps: features (B, C, h, w) {tuple(features.shape)} and weight (K, C) "
                         f"{tuple(weight.shape)} do not fit")
    if classes.shape != (features.shape[0],):
        raise ValueError(f"class_activation_maps: classes must be (B,)={features.shape[0]}, got {tuple(classes.shape)}")
    w = weight.to(features.dtype)[classes.long()]  # (B, C)
    return torch.einsum("bchw,bc->bhw", features, w)


# ---------------------------------------------------------------------------------------------- the neuron table
def neuron_rows(scores: torch.Tensor, concepts: list[str], levels: list[str], branches: list[str],
                k: int = 10) -> list[dict]:
    """The rows of ``hint_neurons.csv``: one per (concept, unit), concepts in the given order, units by rank.

    Args:
        scores: (K, C) mean |phi| per concept and unit (:mod:`lit_explain.attribution.shapley`).
        concepts: the K concept names.
        levels: each concept's level (e.g. its sibling group's parent); collaborative = shared within a level.
        branches: each concept's branch (e.g. its top-level ancestor); multimodal = shared across branches.
        k: responsible set size per concept (HINT: 10), in [1, C].

    Returns:
        dicts with ``unit, concept, level, shapley, rank`` (0 = most important), ``responsible``,
        ``collaborative`` and ``multimodal`` (bools, see :mod:`lit_explain.attribution.shapley`).
    """
    from lit_explain.attribution.shapley import (collaborative_units, multimodal_units, rank_units,
                                                 responsible_units)

    K, C = scores.shape
    if not len(concepts) == len(levels) == len(branches) == K:
        raise ValueError(f"neuron_rows: scores has {K} concepts but concepts/levels/branches have "
                         f"{len(concepts)}/{len(levels)}/{len(branches)} entries")
    ids = lambda names: torch.tensor([sorted(set(names)).index(n) for n in names])  # noqa: E731
    ranks = rank_units(scores)
    resp = responsible_units(scores, k)
    collab = collaborative_units(resp, ids(levels))
    multi = multimodal_units(resp, ids(branches))
    order = torch.argsort(ranks, dim=1)  # units by rank
    rows = []
    for c in range(K):
        for u in order[c].tolist():
            rows.append({"unit": u, "concept": concepts[c], "level": levels[c], "shapley": float(scores[c, u]),
                         "rank": int(ranks[c, u]), "responsible": bool(resp[c, u]),
                         "collaborative": bool(collab[c, u]), "multimodal": bool(multi[c, u])})
    return rows
