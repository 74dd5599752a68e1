"""Linear concept classifiers for every concept of every hierarchy level at once (HINT step 3).

HINT fits one linear classifier per concept over the C channels of a probed layer (sklearn ``SGDClassifier``,
``loss='hinge'`` or ``'modified_huber'``, L2 penalty ``alpha=0.01``), one concept at a time. Here the K
classifiers are the K rows of one (K, C) weight: one matrix product scores a batch of n pixels for all
concepts, and the loss is the *sum* of the per-concept objectives. Because the heads share no parameter, the
gradient of that sum with respect to head k is the gradient of concept k's own objective, so training all
heads together with an element-wise optimiser (SGD, Adam) takes exactly the steps that K separate fits would
take on the same batches, in one pass over the data instead of K.

Per-concept objective (sklearn's, with y in {-1, +1}, f = w·x + b):
``mean over the concept's labelled pixels of L(y f) + alpha/2 ‖w‖²`` (the intercept is not penalised), with
hinge L(z) = max(0, 1 − z) and modified Huber L(z) = max(0, 1 − z)² for z ≥ −1, −4 z otherwise.
Targets are int8 (n, K): 1 positive, 0 negative, −1 not labelled for that concept (the pixel's image lies
outside the concept's sibling group), see :func:`lit_explain.methods.hint_ops.concept_targets`.

Applied to a feature map as a 1×1 convolution, the classifiers give concept maps (B, K, h, w) for
localisation (HINT step 4).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["LOSSES", "hinge", "modified_huber", "multi_head_loss", "ConceptClassifiers", "per_concept_accuracy"]

LOSSES = ("hinge", "modified_huber")


def hinge(z: torch.Tensor) -> torch.Tensor:
    """Element-wise hinge max(0, 1 − z) of margins z = y f."""
    return (1.0 - z).clamp(min=0.0)


def modified_huber(z: torch.Tensor) -> torch.Tensor:
    """Element-wise modified Huber of margins z = y f: max(0, 1 − z)² for z ≥ −1, −4 z below (sklearn's)."""
    return torch.where(z >= -1.0, (1.0 - z).clamp(min=0.0) ** 2, -4.0 * z)


def multi_head_loss(scores: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, loss: str = "hinge",
                    alpha: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed per-concept objectives and each concept's own.

    Args:
        scores: (n, K) decision values f.
        targets: (n, K) int {1, 0, −1 ignored}.
        weight: (K, C) the classifier weights (for the L2 term).
        loss: ``"hinge"`` or ``"modified_huber"``.
        alpha: L2 strength (>= 0); the penalty is alpha/2 ‖w_k‖² per concept.

    Returns:
        (scalar sum over concepts, (K,) per-concept objective). A concept with no labelled pixel in the batch
        contributes only its L2 term.
    """
    if loss not in LOSSES:
        raise ValueError(f"multi_head_loss: loss must be one of {LOSSES}, got {loss!r}")
    if not float(alpha) >= 0:
        raise ValueError(f"multi_head_loss: alpha must be >= 0, got {alpha}")
    if scores.shape != targets.shape or weight.shape[0] != scores.shape[1]:
        raise ValueError(f"multi_head_loss: scores {tuple(scores.shape)}, targets {tuple(targets.shape)} and weight "
                         f"{tuple(weight.shape)} do not fit (n, K), (n, K), (K, C)")
    valid = targets >= 0
    y = torch.where(targets > 0, 1.0, -1.0).to(scores.dtype)
    per_pixel = (hinge if loss == "hinge" else modified_huber)(y * scores) * valid
    count = valid.sum(0).clamp(min=1).to(scores.dtype)
    per_concept = per_pixel.sum(0) / count + 0.5 * float(alpha) * (weight ** 2).sum(1)
    return per_concept.sum(), per_concept


def per_concept_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K,) correct and (K,) labelled pixel counts (int64 sums, DDP-summable): correct = sign(f) agrees with y
    (f > 0 predicts positive)."""
    valid = targets >= 0
    correct = ((scores > 0) == (targets > 0)) & valid
    return correct.sum(0), valid.sum(0)


class ConceptClassifiers(nn.Module):
    """K linear concept classifiers over C channels, stored as one (K, C) weight and (K,) bias.

    Args:
        in_channels: C, the probed layer's channels (>= 1).
        concepts: the K concept names (unique, >= 1), in head order.
        loss: ``"hinge"`` (linear SVM) or ``"modified_huber"`` (HINT's VGG19 classifiers).
        alpha: L2 strength, >= 0 (HINT: 0.01).

    Weights start at zero, as sklearn's SGD does, so a fit is deterministic given the data order.
    """

    def __init__(self, in_channels: int, concepts: Sequence[str], loss: str = "hinge", alpha: float = 0.01) -> None:
        super().__init__()
        if int(in_channels) < 1:
            raise ValueError(f"ConceptClassifiers: in_channels must be >= 1, got {in_channels}")
        concepts = [str(c) for c in concepts]
        if not concepts or len(set(concepts)) != len(concepts):
            raise ValueError(f"ConceptClassifiers: concepts must be >= 1 unique names, got {concepts[:10]}")
        if loss not in LOSSES:
            raise ValueError(f"ConceptClassifiers: loss must be one of {LOSSES}, got {loss!r}")
        if not float(alpha) >= 0:
            raise ValueError(f"ConceptClassifiers: alpha must be >= 0, got {alpha}")
        self.concepts = concepts
        self.loss_name = loss
        self.alpha = float(alpha)
        self.weight = nn.Parameter(torch.zeros(len(concepts), int(in_channels)))
        self.bias = nn.Parameter(torch.zeros(len(concepts)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C) pixel features -> (n, K) decision values."""
        return x.to(self.weight.dtype) @ self.weight.T + self.bias

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`multi_head_loss` of this batch: (scalar, (K,))."""
        return multi_head_loss(self(x), targets, self.weight, self.loss_name, self.alpha)

    def concept_maps(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) feature maps -> (B, K, h, w) decision values (the classifiers as a 1×1 convolution)."""
        if features.ndim != 4 or features.shape[1] != self.weight.shape[1]:
            raise ValueError(f"concept_maps: features must be (B, {self.weight.shape[1]}, h, w), got "
                             f"{tuple(features.shape)}")
        return torch.einsum("bchw,kc->bkhw", features.to(self.weight.dtype), self.weight) + self.bias[:, None, None]

    def proba(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores in [0, 1]: sklearn's modified-Huber ``predict_proba`` (clip(f, −1, 1) + 1) / 2 (also used for
        hinge, as a monotone squashing for threshold sweeps)."""
        return (scores.clamp(-1.0, 1.0) + 1.0) / 2.0
