"""The per-(filter, image) results of LaViSE's predict pass and the tables and pictures made from them.

:class:`FilterExplanations` holds, for every explained filter and each of its top images, the explainer's top words,
their scores, the ground-truth categories and the activation map; it is identical on every rank (each pair was
computed by one rank and gathered). :func:`filter_rows` and :func:`pair_rows` turn it into the ``filters`` and
``pairs`` tables, :func:`filter_pictures` into the pictures the writer saves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lit_explain.methods.base import SILENT_REASON
from lit_explain.methods.lavise_ops import RankedWords
from lit_explain.results import Picture

__all__ = ["FilterExplanations", "filter_rows", "pair_rows", "filter_pictures"]


@dataclass
class FilterExplanations:
    """Everything predict computed for the explained filters; identical on every rank.

    Shapes: U filters, p top images, s_max words kept per image, K categories, V vocabulary words, (h, w) grid.

    Attributes:
        units: (U,) channel of each filter.
        thresholds: (U,) float64 T_u, the ``quantile`` of the filter's activations.
        top_index: (U, p) dataset index of the top images (-1 = none).
        top_values: (U, p) their max activation.
        valid: (U, p) bool: pairs that were explained (an image exists and its max activation is > 0).
        owner: (U, p) int64 rank that computed each pair (each rank feeds only its own pairs to metrics).
        words: (U, p, s_max) vocabulary index of each pair's top words.
        word_scores: (U, p, s_max) their cosine similarity.
        ground_truth: (U, p, K) bool, categories whose masks overlap the thresholded activation (IoU > 0.04).
        maps: (U, p, h, w) the filter's activation map on each top image (for pictures).
        ranked: the per-filter explanation (:class:`~lit_explain.methods.lavise_ops.RankedWords`).
        vocabulary: the V words explanations are chosen from.
        word_labels: (V,) int64 category id of each word (-1 if it names no category).
        label_names: the K categories.
        seen: (K,) bool categories used in training.
        label_images: (K,) reference images containing each category.
        num_images: N, reference images.
        attention: the attention mode used.
        quantile: q of the thresholds.
        silent: (U,) bool filters with no activation above their threshold (unlabelled, with a reason).
    """

    units: torch.Tensor
    thresholds: torch.Tensor
    top_index: torch.Tensor
    top_values: torch.Tensor
    valid: torch.Tensor
    owner: torch.Tensor
    words: torch.Tensor
    word_scores: torch.Tensor
    ground_truth: torch.Tensor
    maps: torch.Tensor
    ranked: RankedWords
    vocabulary: list[str]
    word_labels: torch.Tensor
    label_names: list[str]
    seen: torch.Tensor
    label_images: torch.Tensor
    num_images: int
    attention: str
    quantile: float
    silent: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def topk_labels(self, k: int) -> torch.Tensor:
        """(U, p, k) category ids of each pair's first k words (-1 for words that name no category)."""
        w = self.words[..., :k]
        return torch.where(w >= 0, self.word_labels[w.clamp(min=0)], torch.full_like(w, -1))

    def word_seen(self, word: int) -> bool:
        """Whether vocabulary word ``word`` names a category used in training."""
        lab = int(self.word_labels[word])
        return lab >= 0 and bool(self.seen[lab])


def filter_rows(ex: FilterExplanations) -> list[dict[str, Any]]:
    """The ``filters`` table: one row per (filter, rank): ``filter, rank, word, score, seen, category, count,
    similarity, images, threshold``. ``score`` is the word's (weighted) frequency among the top-s words of the
    filter's top images (1.0 = in every image's top-s); ``seen`` is ``seen`` when the word names a category used in
    training, else ``unseen``; ``category`` is the category the word names ("" if none). A silent filter (no
    activation above its threshold) gets one row with an empty word and a ``reason``."""
    rows = []
    r = ex.ranked
    for i, u in enumerate(ex.units.tolist()):
        if ex.silent is not None and bool(ex.silent[i]):
            rows.append({"filter": u, "rank": 0, "word": "", "score": 0.0, "seen": "", "category": "", "count": 0,
                         "similarity": 0.0, "images": 0, "threshold": float(ex.thresholds[i]), "reason": SILENT_REASON})
            continue
        for rank in range(r.words.shape[1]):
            w = int(r.words[i, rank])
            if w < 0:
                break
            lab = int(ex.word_labels[w])
            rows.append({
                "filter": u,
                "rank": rank + 1,
                "word": ex.vocabulary[w],
                "score": float(r.scores[i, rank]),
                "seen": "seen" if ex.word_seen(w) else "unseen",
                "category": ex.label_names[lab] if lab >= 0 else "",
                "count": int(r.counts[i, rank]),
                "similarity": float(r.similarity[i, rank]),
                "images": int(r.images[i]),
                "threshold": float(ex.thresholds[i]),
            })
    return rows


def pair_rows(ex: FilterExplanations, top_words: int) -> list[dict[str, Any]]:
    """The ``pairs`` table: one row per explained (filter, top image): the image's dataset index, its max
    activation, its top words and its ground-truth categories (IoU > 0.04 with the thresholded activation)."""
    rows = []
    for i, u in enumerate(ex.units.tolist()):
        for j in range(ex.top_index.shape[1]):
            if not bool(ex.valid[i, j]):
                continue
            words = [ex.vocabulary[int(w)] for w in ex.words[i, j, :top_words] if int(w) >= 0]
            truth = [ex.label_names[int(c)] for c in torch.nonzero(ex.ground_truth[i, j]).flatten()]
            rows.append({"filter": u, "image_rank": j + 1, "image": int(ex.top_index[i, j]),
                         "max_activation": float(ex.top_values[i, j]), "words": " | ".join(words),
                         "ground_truth": " | ".join(truth)})
    return rows


def filter_pictures(ex: FilterExplanations, dataset: Any, num_pictures: int = 16, images_per_picture: int = 8,
                    words_in_title: int = 5) -> list[Picture]:
    """Pictures of the first ``num_pictures`` filters: their top images, each shown as
    image × clamp(F_u↑ / max, 0.3) (the authors' visualisation), with the explanation words above."""
    from lit_explain.viz.filter_pictures import attention_picture, to_rgb

    tf = getattr(dataset, "transform", None)
    mean, std = getattr(tf, "mean", None), getattr(tf, "std", None)
    pictures = []
    for i, u in enumerate(ex.units.tolist()[:num_pictures]):
        js = [j for j in range(ex.top_index.shape[1]) if bool(ex.valid[i, j])][:images_per_picture]
        if not js:
            continue

        def draw(i=i, u=u, js=js):
            imgs = [to_rgb(dataset[int(ex.top_index[i, j])]["image"], mean, std) for j in js]
            words = [ex.vocabulary[int(w)] for w in ex.ranked.words[i, :words_in_title] if int(w) >= 0]
            return attention_picture(imgs, [ex.maps[i, j] for j in js], f"filter {u}: {', '.join(words)}")

        pictures.append(Picture(f"filters/filter_{u:04d}", draw, tag=f"lavise/filter_{u:04d}"))
    return pictures
