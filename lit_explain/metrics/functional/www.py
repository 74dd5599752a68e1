"""WWW's neuron-concept evaluation (the paper's protocol), as plain functions of word lists and embeddings.

Only neurons with a ground truth are scored (e.g. class-logit neurons: their class's synonyms). For neuron u
with predicted concepts P_u (WWW's selected words) and ground-truth synonyms G_u, both normalised by
:func:`normalize_words` (lowercase, surrounding spaces and the prompt-template prefix removed, duplicates
dropped; an empty prediction becomes ``["none"]``):

* hit: ``1[P_u ∩ G_u != ∅]`` (exact string match);
* precision ``|P_u ∩ G_u| / |P_u|``, recall ``|P_u ∩ G_u| / |G_u|``, F1 their harmonic mean (0 when both are 0);
* embedding cosine: the mean over all pairs (p, g) in P_u x G_u of ``cos(E(p), E(g))``, each pair clipped at
  ``clip_max`` (1 for the CLIP text cosine; no clip for the sentence-embedding cosine, whose mean over p of the
  mean over g is the same pair mean).

A run reports, per score, the mean over neurons and its standard error ``std / sqrt(U)`` with the population
standard deviation (ddof = 0). Three sums per score (values, squared values, count) give both, so the
torchmetrics classes of :mod:`lit_explain.metrics.www` are exact under DDP.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["normalize_words", "concept_set_scores", "embedding_cosine_scores", "mean_and_se", "SET_SCORES",
           "DEFAULT_PREFIX"]

#: Names of the columns of :func:`concept_set_scores`.
SET_SCORES = ("hit_rate", "precision", "recall", "f1")
#: The template prefix stripped from predicted words ("a photo of a {}").
DEFAULT_PREFIX = "a photo of a"


def normalize_words(words: Sequence[str] | str, prefix: str | None = DEFAULT_PREFIX, empty: str | None = "none"
                    ) -> list[str]:
    """Lowercased, stripped, template-prefix-free, de-duplicated words (first occurrence order).

    Args:
        words: a list of words/phrases, or one string of comma-separated synonyms ("tench, Tinca tinca",
            the format of a class-label line).
        prefix: a prompt prefix removed from the start of each word (None: keep words as they are).
        empty: what an empty result becomes (WWW scores an empty prediction as ``["none"]``); None keeps [].
    """
    if isinstance(words, str):
        words = words.split(",")
    pre = prefix.lower().strip() if prefix else None
    out: list[str] = []
    for w in words:
        w = str(w).lower().strip()
        if pre and (w == pre or w.startswith(pre + " ")):
            w = w[len(pre):].strip()
        if w and w not in out:
            out.append(w)
    return out if out or empty is None else [empty]


def _pairs(predictions: Sequence, ground_truth: Sequence) -> tuple[list[list[str]], list[list[str]]]:
    if len(predictions) != len(ground_truth):
        raise ValueError(f"predictions ({len(predictions)} neurons) and ground_truth ({len(ground_truth)}) must "
                         "have one entry per neuron each")
    preds = [normalize_words(p) for p in predictions]
    gts = [normalize_words(g, prefix=None, empty=None) for g in ground_truth]
    empty = [u for u, g in enumerate(gts) if not g]
    if empty:
        raise ValueError(f"ground truth of neuron {empty[0]} is empty ({len(empty)} such neurons): only neurons with "
                         "ground-truth words can be scored; leave the others out")
    return preds, gts


def concept_set_scores(predictions: Sequence[Sequence[str]], ground_truth: Sequence[Sequence[str] | str]
                       ) -> torch.Tensor:
    """Per-neuron hit, precision, recall and F1 of exact-string concept sets: (U, 4) float64 (:data:`SET_SCORES`).

    Args:
        predictions: U lists of predicted words (normalised by :func:`normalize_words`).
        ground_truth: U lists of ground-truth synonyms, or comma-separated strings.
    """
    preds, gts = _pairs(predictions, ground_truth)
    out = torch.zeros((len(preds), 4), dtype=torch.float64)
    for u, (p, g) in enumerate(zip(preds, gts)):  # set algebra on short word lists
        inter = len(set(p) & set(g))
        prec, rec = inter / len(p), inter / len(g)
        f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
        out[u] = torch.tensor([float(inter > 0), prec, rec, f1], dtype=torch.float64)
    return out


def embedding_cosine_scores(predictions: Sequence[Sequence[str]], ground_truth: Sequence[Sequence[str] | str],
                            encode: Callable[[list[str]], np.ndarray | torch.Tensor],
                            clip_max: float | None = 1.0) -> torch.Tensor:
    """Per-neuron mean pairwise cosine between predicted and ground-truth words: (U,) float64.

    Every distinct word is encoded once; the pairs of all neurons are one padded batched product.

    Args:
        predictions, ground_truth: as :func:`concept_set_scores`.
        encode: words (n) -> (n, D) embeddings (e.g. ``TextEncoder.encode``); any norm.
        clip_max: each pair's cosine is clipped at this value (1 for CLIP); None = no clip.
    """
    preds, gts = _pairs(predictions, ground_truth)
    vocab = list(dict.fromkeys(w for ws in preds + gts for w in ws))
    emb = torch.as_tensor(np.asarray(encode(vocab)), dtype=torch.float64)
    if emb.ndim != 2 or emb.shape[0] != len(vocab):
        raise ValueError(f"encode must return ({len(vocab)}, D) embeddings for {len(vocab)} words, got "
                         f"{tuple(emb.shape)}")
    emb = F.normalize(emb, dim=1)
    pos = {w: i for i, w in enumerate(vocab)}

    def padded(lists: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ws) for ws in lists)
        idx = torch.zeros((len(lists), width), dtype=torch.long)
        mask = torch.zeros((len(lists), width), dtype=torch.bool)
        for u, ws in enumerate(lists):
            idx[u, :len(ws)] = torch.tensor([pos[w] for w in ws])
            mask[u, :len(ws)] = True
        return emb[idx], mask

    ep, mp = padded(preds)
    eg, mg = padded(gts)
    cos = torch.bmm(ep, eg.transpose(1, 2))  # (U, |P|max, |G|max)
    if clip_max is not None:
        cos = cos.clamp(max=float(clip_max))
    pair = (mp[:, :, None] & mg[:, None, :]).to(cos.dtype)
    return (cos * pair).sum(dim=(1, 2)) / pair.sum(dim=(1, 2))


def mean_and_se(total: torch.Tensor, total_sq: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error ``std / sqrt(n)`` (population std) from sums of values and squares over n items.

    Broadcasts over leading axes; NaN where n = 0.
    """
    n = count.to(torch.float64)
    mean = total.to(torch.float64) / n
    var = (total_sq.to(torch.float64) / n - mean ** 2).clamp(min=0.0)
    return mean, var.sqrt() / n.sqrt()
