"""WWW's neuron-concept metrics as torchmetrics Metrics with sum states (exact under DDP).

Definitions in :mod:`lit_explain.metrics.functional.www` (the paper's protocol): hit rate, precision / recall /
F1 of exact-string concept sets, the CLIP text cosine and the sentence-embedding cosine, each as the mean over
neurons with its standard error. Each process updates with its own neurons; the states are per-score sums
(values, squares, count), summed across processes, so 1 and N processes give the same numbers.

* :class:`ConceptSetMetrics`: hit rate, precision, recall, F1.
* :class:`ConceptEmbeddingCosine`: mean pairwise cosine under a text encoder; :func:`clip_cosine_metric` (the
  CLIP text tower on the raw words, pairs clipped at 1) and :func:`minilm_cosine_metric` (the offline
  all-MiniLM-L6-v2 sentence encoder, reported as ``minilm_cos``: it stands in for the paper's
  all-mpnet-base-v2, which cannot be downloaded here).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torchmetrics import Metric

from lit_explain.metrics.functional.www import (SET_SCORES, concept_set_scores, embedding_cosine_scores,
                                                 mean_and_se)

__all__ = ["ConceptSetMetrics", "ConceptEmbeddingCosine", "clip_cosine_metric", "minilm_cosine_metric"]


class _SumStates(Metric):
    """Sum, sum of squares and count per score (float64 / int64, ``dist_reduce_fx="sum"``)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def _add_sum_states(self, n: int) -> None:
        self.add_state("total", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def _accumulate(self, values: torch.Tensor) -> None:
        """values: (U, n) per-neuron scores."""
        values = values.to(self.device, torch.float64)
        self.total = self.total + values.sum(0)
        self.total_sq = self.total_sq + (values ** 2).sum(0)
        self.count = self.count + values.shape[0]

    def _summary(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        mean, se = mean_and_se(self.total, self.total_sq, self.count)
        out = {}
        for i, name in enumerate(names):
            out[name] = mean[i]
            out[f"{name}_se"] = se[i]
        out["neurons"] = self.count.clone()
        return out


class ConceptSetMetrics(_SumStates):
    """Hit rate, precision, recall and F1 of predicted concept words against ground-truth synonyms.

    ``update(predictions, ground_truth)``: U lists of predicted words (WWW's concepts of U neurons) and U lists
    (or comma-separated strings) of ground-truth synonyms. ``compute()`` returns
    ``{"hit_rate", "hit_rate_se", "precision", "precision_se", "recall", "recall_se", "f1", "f1_se", "neurons"}``
    (scalar tensors; NaN before any update).

    Args:
        kwargs: torchmetrics ``Metric`` keyword arguments.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._add_sum_states(len(SET_SCORES))

    def update(self, predictions: Sequence[Sequence[str]], ground_truth: Sequence[Sequence[str] | str]) -> None:
        if len(predictions):
            self._accumulate(concept_set_scores(predictions, ground_truth))

    def compute(self) -> dict[str, torch.Tensor]:
        return self._summary(SET_SCORES)


class ConceptEmbeddingCosine(_SumStates):
    """Mean pairwise cosine between predicted and ground-truth words under a text encoder.

    ``update(predictions, ground_truth)`` as :class:`ConceptSetMetrics`; ``compute()`` returns
    ``{"<name>_cos", "<name>_cos_se", "neurons"}``.

    Args:
        encoder: a :class:`~lit_explain.text.encoders.TextEncoder` (its ``encode``) or any callable
            words -> (n, D) embeddings.
        name: prefix of the result keys, e.g. "clip" or "minilm" (letters, digits, '_').
        clip_max: each pair's cosine is clipped at this value (CLIP: 1.0); None = no clip.
        kwargs: torchmetrics ``Metric`` keyword arguments.
    """

    def __init__(self, encoder: Any, name: str = "clip", clip_max: float | None = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        encode = getattr(encoder, "encode", encoder)
        if not callable(encode):
            raise ValueError(f"ConceptEmbeddingCosine: encoder must have .encode(words) or be callable, got "
                             f"{type(encoder).__name__}")
        if not name or not name.replace("_", "").isalnum():
            raise ValueError(f"ConceptEmbeddingCosine: name must be letters, digits or '_', got {name!r}")
        if clip_max is not None and not -1.0 < float(clip_max) <= 1.0:
            raise ValueError(f"ConceptEmbeddingCosine: clip_max must be in (-1, 1] or None, got {clip_max}")
        self._encode: Callable[[list[str]], np.ndarray] = encode
        self.name, self.clip_max = name, clip_max
        self._add_sum_states(1)

    def update(self, predictions: Sequence[Sequence[str]], ground_truth: Sequence[Sequence[str] | str]) -> None:
        if len(predictions):
            scores = embedding_cosine_scores(predictions, ground_truth, self._encode, self.clip_max)
            self._accumulate(scores[:, None])

    def compute(self) -> dict[str, torch.Tensor]:
        return self._summary([f"{self.name}_cos"])


def clip_cosine_metric(model_name: str, pretrained_path: str, model_config_path: str | None = None,
                       cache_dir: str | None = "cache/text_embeddings", **kwargs: Any) -> ConceptEmbeddingCosine:
    """The CLIP text cosine (``clip_cos``): an open_clip text tower from a local file, raw words (no template),
    pairs clipped at 1. The paper uses CLIP ViT-B/16; the synthetic world uses its own trained CLIP."""
    from lit_explain.text.encoders import OpenClipEncoder

    enc = OpenClipEncoder(model_name=model_name, pretrained_path=pretrained_path,
                          model_config_path=model_config_path, template="{}", cache_dir=cache_dir)
    return ConceptEmbeddingCosine(enc, name="clip", clip_max=1.0, **kwargs)


def minilm_cosine_metric(cache_dir: str | None = "cache/text_embeddings", **kwargs: Any) -> ConceptEmbeddingCosine:
    """The sentence-embedding cosine with the offline all-MiniLM-L6-v2 (``minilm_cos``; the paper's MPNet cosine
    with another, offline, sentence encoder: values are not comparable to the paper's)."""
    from lit_explain.text.encoders import SentenceTransformerEncoder

    enc = SentenceTransformerEncoder(model="all-MiniLM-L6-v2", cache_dir=cache_dir)
    return ConceptEmbeddingCosine(enc, name="minilm", clip_max=None, **kwargs)
