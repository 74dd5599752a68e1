"""The tensor math of LaViSE (Yang, Kim, Joo, CVPR 2022), free of Lightning: loss, masks, filter attention,
word ranking. Every function is vectorised over the batch / units; shapes are in the docstrings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "ATTENTION_MODES",
    "cosine_hinge_rank_loss",
    "resize_masks",
    "filter_attention",
    "rank_words",
    "RankedWords",
]

#: How the explainer input is built from the feature map F (C, h, w) for filter u when explaining it:
#:
#: * ``attention_code``: F_k ⊙ F_u / ‖F_u‖₂ for every channel k (a spatial product), as the authors' code
#:   (``infer_filter.py``, method "projection") and the MLRC reproduction compute it. After the network's
#:   global average pool, channel k becomes ⟨F_k, F_u⟩ / (‖F_u‖ h w).
#: * ``attention_paper``: cos(F_u, F_k) · F_k, the paper's text (Eq. 2: a scalar attention weight per channel,
#:   the cosine similarity of the flattened maps). After the pool: cos(F_u, F_k) · mean(F_k).
#: * ``activation``: F ⊙ [F_u > T_u] (the paper's "activation masking" baseline).
#: * ``image``: the image is zeroed where the upsampled F_u <= T_u and passed through the backbone again
#:   ("image masking" baseline; needs the backbone, handled by the LightningModule).
#: * ``original``: F unchanged (the "original image" baseline).
ATTENTION_MODES = ("attention_code", "attention_paper", "activation", "image", "original")


def cosine_hinge_rank_loss(
    pred: torch.Tensor, label_emb: torch.Tensor, target: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """LaViSE's hinge-rank loss on cosine similarities (paper Eq. 1, the authors' ``CSMRLoss``).

    With S = cos(pred, label_emb) (B, K): for each row, ``pos = mean of S over its positive labels``, and
    ``loss_row = Σ_{c negative} max(0, margin - pos + S_c)``. Rows without a positive label are ignored (the
    original turned their NaN into 0, which still divided by them in the batch mean); the result is the mean over
    rows with a positive, and exactly 0 (with a gradient path) when there is none.

    Args:
        pred: (B, D) explainer outputs.
        label_emb: (K, D) label embeddings (need not be normalised; cosine is taken).
        target: (B, K) multi-hot {0, 1}.
        margin: the hinge margin (1.0 in the paper).

    Returns:
        scalar loss.
    """
    if pred.shape[0] != target.shape[0] or label_emb.shape[0] != target.shape[1] or pred.shape[1] != label_emb.shape[1]:
        raise ValueError(
            f"cosine_hinge_rank_loss: pred {tuple(pred.shape)}, label_emb {tuple(label_emb.shape)} and target "
            f"{tuple(target.shape)} do not fit (B, D), (K, D), (B, K)"
        )
    sims = F.normalize(pred, dim=-1) @ F.normalize(label_emb, dim=-1).T  # (B, K)
    pos_mask = target > 0
    n_pos = pos_mask.sum(1)
    valid = n_pos > 0
    pos = (sims * pos_mask).sum(1) / n_pos.clamp(min=1)
    hinge = (margin - pos[:, None] + sims).clamp(min=0) * (~pos_mask)
    per_row = hinge.sum(1)
    if not bool(valid.any()):
        return (per_row * 0.0).sum()
    return per_row[valid].mean()


def resize_masks(masks: torch.Tensor, size: tuple[int, int], mode: str = "area") -> torch.Tensor:
    """Resize (B, 1, S, S) masks in [0, 1] to the feature grid (h', w').

    ``area`` (default) keeps the fraction of each feature cell the object covers, so small objects are not lost;
    ``nearest`` is what the authors' code does (Resize(7, nearest)) and drops objects smaller than a cell;
    ``bilinear`` interpolates with ``align_corners=False``.
    """
    if mode == "area":
        return F.adaptive_avg_pool2d(masks.float(), size)
    if mode == "nearest":
        return F.interpolate(masks.float(), size=size, mode="nearest")
    if mode == "bilinear":
        return F.interpolate(masks.float(), size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"mask resize mode must be 'area', 'nearest' or 'bilinear', got {mode!r}")


def filter_attention(feats: torch.Tensor, unit_maps: torch.Tensor, thresholds: torch.Tensor | None, mode: str) -> torch.Tensor:
    """The explainer input of each (filter, image) pair, before the network's pooling.

    Args:
        feats: (P, C, h, w) the layer's feature map of the pair's image.
        unit_maps: (P, h, w) the explained filter's map F_u of that image (one channel of ``feats``).
        thresholds: (P,) T_u, needed by ``activation``.
        mode: one of :data:`ATTENTION_MODES` except ``image`` (which re-runs the backbone).

    Returns:
        (P, C, h, w).
    """
    if mode == "attention_code":
        norm = unit_maps.flatten(1).norm(dim=1).clamp(min=1e-12)
        return feats * (unit_maps / norm[:, None, None])[:, None]
    if mode == "attention_paper":
        cos = F.cosine_similarity(feats.flatten(2), unit_maps.flatten(1)[:, None, :], dim=-1, eps=1e-12)  # (P, C)
        return feats * cos[:, :, None, None]
    if mode == "activation":
        if thresholds is None:
            raise ValueError("filter_attention: mode 'activation' needs thresholds")
        return feats * (unit_maps > thresholds.to(unit_maps.dtype)[:, None, None])[:, None]
    if mode == "original":
        return feats
    raise ValueError(f"filter_attention: unknown mode {mode!r}; expected one of {ATTENTION_MODES} ('image' is "
                     "computed by re-running the backbone)")


@dataclass
class RankedWords:
    """Per unit, the explanation words ranked by (weighted) frequency over the unit's top images.

    Attributes:
        words: (U, x) vocabulary index of each rank, -1 where fewer than x distinct words occurred.
        scores: (U, x) weighted frequency / total weight of the unit's images (1.0 = in every image's top-s).
        counts: (U, x) number of images whose top-s contain the word.
        similarity: (U, x) mean cosine similarity of the word over the images where it occurred.
        images: (U,) number of images that contributed.
    """

    words: torch.Tensor
    scores: torch.Tensor
    counts: torch.Tensor
    similarity: torch.Tensor
    images: torch.Tensor


def rank_words(
    words: torch.Tensor,
    sims: torch.Tensor,
    valid: torch.Tensor,
    weights: torch.Tensor,
    vocab_size: int,
    top_x: int,
) -> RankedWords:
    """Rank each unit's words by how often they are among the top-s words of its top images.

    Score of word w for unit u = Σ_i weight_i [w ∈ top-s(i)] / Σ_i weight_i over the unit's valid images; ties are
    broken by the mean cosine similarity, then by vocabulary index. One sparse pass for all units (no U × V table,
    so a 400K-word GloVe vocabulary is fine).

    Args:
        words: (U, p, s) vocabulary indices of each image's top-s words.
        sims: (U, p, s) their cosine similarities.
        valid: (U, p) bool, images that count (computed and max activation > 0).
        weights: (U, p) per-image weight (1 for plain frequency, the max activation for relevance weighting).
        vocab_size: V.
        top_x: how many words per unit to return.
    """
    n_units, p, s = words.shape
    w = torch.where(valid, weights.double(), torch.zeros_like(weights, dtype=torch.float64))
    total = w.sum(1)  # (U,)
    m = valid[:, :, None].expand(-1, -1, s) & (words >= 0)
    unit = torch.arange(n_units)[:, None, None].expand(-1, p, s)[m]
    key = unit * vocab_size + words[m]
    uniq, inv = torch.unique(key, return_inverse=True)
    score = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, w[:, :, None].expand(-1, -1, s)[m])
    count = torch.zeros(len(uniq), dtype=torch.int64).index_add_(0, inv, torch.ones_like(inv))
    simsum = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, sims.double()[m])
    u_of = uniq // vocab_size
    w_of = uniq % vocab_size
    mean_sim = simsum / count.clamp(min=1)
    norm_score = score / total[u_of].clamp(min=1e-300)
    # order: unit asc, score desc, similarity desc, word asc (successive stable sorts, least significant first)
    order = torch.arange(len(uniq))
    for key_t, desc in ((w_of, False), (mean_sim, True), (norm_score, True), (u_of, False)):
        order = order[torch.argsort(key_t[order], descending=desc, stable=True)]
    u_sorted = u_of[order]
    start = torch.searchsorted(u_sorted, torch.arange(n_units))
    rank = torch.arange(len(order)) - start[u_sorted]
    keep = rank < top_x
    out_words = torch.full((n_units, top_x), -1, dtype=torch.int64)
    out_scores = torch.zeros(n_units, top_x, dtype=torch.float64)
    out_counts = torch.zeros(n_units, top_x, dtype=torch.int64)
    out_sims = torch.zeros(n_units, top_x, dtype=torch.float64)
    sel = order[keep]
    ui, ri = u_sorted[keep], rank[keep]
    out_words[ui, ri] = w_of[sel]
    out_scores[ui, ri] = norm_score[sel]
    out_counts[ui, ri] = count[sel]
    out_sims[ui, ri] = mean_sim[sel]
    return RankedWords(out_words, out_scores, out_counts, out_sims, valid.sum(1))
