"""The tensor math of WWW (what, where and why of neurons; Ahn et al., CVPR 2024), free of Lightning.

Notation (shapes in every docstring): K neurons (units), N example images per neuron, V concept words,
D embedding size (CLIP), C classes, B images in a batch, (h, w) a layer's spatial grid, (H, W) the output size.

* **What** (concept matching). The adaptive cosine similarity (ACS) of an image x and a concept c subtracts the
  similarity to the bare prompt template t0 ("a photo of a"):
  ``s(x, c) = cos(I(x), T(c)) - cos(I(x), T(t0))``; a neuron's score sums it over its N examples,
  ``S_k(c) = sum_n s(x_n^k, c)``. With unit vectors this is ``S_k(c) = <sum_n I^_n, T^_c - T^_0>``: the
  per-neuron sum (N times the mean) of the image embeddings is all that is needed, so the scores are one
  (K, D) x (D, V) product instead of the (K*N, V) similarity matrix (:func:`concept_scores`).
  Concepts within ``alpha`` of the best are kept (:func:`select_concepts`).
* **Why** (Shapley prior). Class-wise importance of neuron k for class c,
  ``Phi[c, k] = mean_{x in class c} a_k(x) * dy_c/da_k(x)`` (first-order Taylor). For a linear head
  ``y = W a + b`` the gradient is ``W[c]``, so ``Phi = W * class-mean activation`` exactly
  (:func:`class_activation_sums`, :func:`linear_head_shapley`); any other head uses batched autograd
  (:func:`gradient_x_activation`).
* **Where** (heatmaps). The class heatmap ``H_c`` mixes the neuron activation maps of the top-n neurons of
  ``Phi[pred]``, the sample heatmap ``H_s`` those of the per-image ``phi(x)``; the reliability of a
  prediction is ``cos(vec H_c, vec H_s)`` (:func:`weighted_heatmap`, :func:`reliability`), and
  :func:`misprediction_auroc` says how well it detects wrong predictions, beside the maximum softmax
  probability.

Every function is batched; sums (activation sums, counts) are what processes add under DDP.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "unit_rows",
    "adaptive_cosine",
    "example_embedding_sum",
    "concept_scores",
    "select_concepts",
    "ranked_concepts",
    "class_activation_sums",
    "linear_head_shapley",
    "linear_head_sample_shapley",
    "gradient_x_activation",
    "top_n_weights",
    "weighted_heatmap",
    "percentile_masks",
    "reliability",
    "binary_auroc",
    "misprediction_auroc",
]


def unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``x`` (..., D) scaled to unit L2 norm along the last axis (zero rows stay zero), in float32 or wider."""
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return F.normalize(x, dim=-1, eps=eps)


def _check_template(text: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    if text.ndim != 2:
        raise ValueError(f"text embeddings must be (V, D), got shape {tuple(text.shape)}")
    template = template.reshape(-1)
    if template.shape[0] != text.shape[1]:
        raise ValueError(f"template embedding must be (D,) with D = {text.shape[1]} like the text embeddings, got "
                         f"{tuple(template.shape)}; encode the bare prompt (e.g. 'a photo of a') with the same CLIP")
    return template


def adaptive_cosine(image: torch.Tensor, text: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Adaptive cosine similarity of every image with every concept: (M, V).

    ``s[m, v] = cos(image[m], text[v]) - cos(image[m], template)``: the part of an image's similarity to the
    prompt "a photo of a {concept}" that the concept word adds to the bare template.

    Args:
        image: (M, D) image embeddings (any norm).
        text: (V, D) embeddings of the templated concept prompts (any norm).
        template: (D,) embedding of the bare template.
    """
    template = _check_template(text, template)
    if image.ndim != 2 or image.shape[1] != text.shape[1]:
        raise ValueError(f"image embeddings must be (M, D={text.shape[1]}), got {tuple(image.shape)}")
    img = unit_rows(image)
    return img @ (unit_rows(text) - unit_rows(template)[None]).T


def example_embedding_sum(image: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-neuron sum of the unit image embeddings of its examples: (K, D) = N x the mean embedding.

    Args:
        image: (K, N, D) embeddings of each neuron's N example images (any norm).
        valid: optional (K, N) bool, False for padding slots (a neuron with fewer than N examples).
    """
    if image.ndim != 3:
        raise ValueError(f"example embeddings must be (K neurons, N examples, D), got shape {tuple(image.shape)}")
    img = unit_rows(image)
    if valid is not None:
        if valid.shape != image.shape[:2]:
            raise ValueError(f"valid must be (K, N) = {tuple(image.shape[:2])}, got {tuple(valid.shape)}")
        img = img * valid.to(img.dtype)[..., None]
    return img.sum(dim=1)


def concept_scores(image: torch.Tensor, text: torch.Tensor, template: torch.Tensor,
                   valid: torch.Tensor | None = None, chunk_size: int = 8192) -> torch.Tensor:
    """WWW's neuron-concept scores ``S[k, v] = sum_n s(x_n^k, v)`` (adaptive cosine summed over examples): (K, V).

    Exactly the sum of the (K*N, V) adaptive-cosine matrix over each neuron's rows, computed through the
    per-neuron embedding sum (:func:`example_embedding_sum`) without materialising that matrix: memory
    O(K*D + chunk_size*D + K*V) instead of O(K*N*V).

    Args:
        image: (K, N, D) example-image embeddings; or (K, D) per-neuron sums already made by
            :func:`example_embedding_sum` (e.g. summed across processes).
        text: (V, D) embeddings of the templated concept prompts.
        template: (D,) embedding of the bare template.
        valid: optional (K, N) bool mask of real examples (only with a (K, N, D) ``image``).
        chunk_size: concepts per matmul block (bounds the temporary (chunk, D) normalised text).
    """
    template = _check_template(text, template)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if image.ndim == 3:
        sums = example_embedding_sum(image, valid)
    elif image.ndim == 2 and valid is None:
        sums = image.float() if image.dtype in (torch.float16, torch.bfloat16) else image
    else:
        raise ValueError(f"image must be (K, N, D) embeddings or (K, D) sums (valid only with the former), got "
                         f"{tuple(image.shape)}")
    if sums.shape[1] != text.shape[1]:
        raise ValueError(f"image embeddings have D = {sums.shape[1]}, text embeddings D = {text.shape[1]}; "
                         "encode both with the same CLIP")
    t0 = unit_rows(template)
    out = sums.new_empty((sums.shape[0], text.shape[0]))
    for s in range(0, text.shape[0], chunk_size):
        out[:, s:s + chunk_size] = sums @ (unit_rows(text[s:s + chunk_size].to(sums.dtype)) - t0.to(sums.dtype)).T
    return out


def select_concepts(scores: torch.Tensor, alpha: float = 0.95) -> torch.Tensor:
    """WWW's adaptive selection: the concepts within ``alpha`` of each neuron's best score, (K, V) bool.

    Keeps ``S[k, v] >= alpha * max_v S[k, v]``, so the number of concepts varies per neuron. When the best
    score is negative (possible after the template subtraction) ``alpha * max`` lies above the maximum and
    the official rule keeps nothing; the band ``S >= max - (1 - alpha) * |max|`` used here equals
    ``alpha * max`` for ``max >= 0`` and always keeps at least the best concept.

    Args:
        scores: (K, V) neuron-concept scores (:func:`concept_scores`).
        alpha: relative threshold in (0, 1]; the paper's 95 % is 0.95.
    """
    if not 0.0 < float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in (0, 1] (the paper's 95 % is 0.95), got {alpha}")
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be (K neurons, V >= 1 concepts), got shape {tuple(scores.shape)}")
    best = scores.max(dim=1, keepdim=True).values
    return scores >= best - (1.0 - float(alpha)) * best.abs()


def ranked_concepts(scores: torch.Tensor, keep: torch.Tensor) -> list[list[tuple[int, float]]]:
    """Per neuron, the kept concepts as ``(concept index, score)`` sorted by descending score (K lists).

    Args:
        scores: (K, V) scores; keep: (K, V) bool from :func:`select_concepts` (ties keep index order).
    """
    if keep.shape != scores.shape:
        raise ValueError(f"keep {tuple(keep.shape)} must have the shape of scores {tuple(scores.shape)}")
    masked = scores.masked_fill(~keep, float("-inf"))
    order = torch.sort(masked, dim=1, descending=True, stable=True)
    counts = keep.sum(dim=1).tolist()
    idx, val = order.indices.tolist(), order.values.tolist()
    return [list(zip(idx[k][:n], val[k][:n])) for k, n in enumerate(counts)]


# ---------------------------------------------------------------------------------------------- Shapley prior
def class_activation_sums(activations: torch.Tensor, labels: torch.Tensor, num_classes: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of activation vectors and per-class image counts (DDP: add them across processes).

    Args:
        activations: (B, K) per-image neuron values (e.g. pooled penultimate features, or per-image
            Shapley scores from :func:`gradient_x_activation`).
        labels: (B,) int class of each image (the ground truth for the class-wise prior).
        num_classes: C.

    Returns:
        ``sums`` (C, K) float64 and ``counts`` (C,) int64.
    """
    if activations.ndim != 2 or labels.shape != activations.shape[:1]:
        raise ValueError(f"expected activations (B, K) and labels (B,), got {tuple(activations.shape)} and "
                         f"{tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, num_classes={num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    labels = labels.long()
    sums = activations.new_zeros((num_classes, activations.shape[1]), dtype=torch.float64)
    sums.index_add_(0, labels, activations.to(torch.float64))
    counts = torch.bincount(labels, minlength=num_classes)
    return sums, counts


def linear_head_shapley(weight: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Exact class-wise Shapley prior (first-order Taylor) of the inputs of a linear head: (C, K).

    ``Phi[c, k] = W[c, k] * mean_{x in class c} a_k(x)``: for ``y = W a + b`` the gradient dy_c/da is W[c]
    for every input, so the per-image gradient x activation averaged over class c is W times the class-mean
    activation. Classes without images get 0.

    Args:
        weight: (C, K) the head's weight.
        sums: (C, K) per-class activation sums and counts: (C,) image counts (:func:`class_activation_sums`).
    """
    if weight.shape != sums.shape or counts.shape != weight.shape[:1]:
        raise ValueError(f"expected weight (C, K), sums (C, K) and counts (C,), got {tuple(weight.shape)}, "
                         f"{tuple(sums.shape)} and {tuple(counts.shape)}")
    mean = sums.to(torch.float64) / counts.clamp(min=1).to(torch.float64)[:, None]
    return weight.to(torch.float64) * mean


def linear_head_sample_shapley(weight: torch.Tensor, activations: torch.Tensor, classes: torch.Tensor
                               ) -> torch.Tensor:
    """Per-image Shapley scores of a linear head's inputs for one class each: ``W[classes] * a``, (B, K).

    Args:
        weight: (C, K); activations: (B, K); classes: (B,) the class explained per image (e.g. predicted).
    """
    if activations.ndim != 2 or weight.ndim != 2 or activations.shape[1] != weight.shape[1]:
        raise ValueError(f"expected weight (C, K) and activations (B, K), got {tuple(weight.shape)} and "
                         f"{tuple(activations.shape)}")
    return weight[classes.long()].to(activations.dtype) * activations


def gradient_x_activation(head: Callable[[torch.Tensor], torch.Tensor], activations: torch.Tensor,
                          classes: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """Per-image first-order Shapley scores ``a * dy_c/da`` of any differentiable head, one backward per batch.

    Samples are independent in eval mode (no batch statistics), so the gradient of ``sum_b y_b[c_b]`` with
    respect to the batch gives every image's own gradient at once: one pass replaces B batch-1 passes.

    Args:
        head: maps activations (B, K, ...) to logits (B, C) (e.g. the rest of the network after the hook).
        activations: (B, K) or (B, K, *extra) (spatial positions, tokens moved behind K); extra axes are
            reduced by ``reduce``.
        classes: (B,) int class whose logit is explained per image.
        reduce: "sum" or "mean" over the extra axes.

    Returns:
        (B, K) scores in the activations' dtype (detached).
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    if activations.ndim < 2 or classes.shape != activations.shape[:1]:
        raise ValueError(f"expected activations (B, K, ...) and classes (B,), got {tuple(activations.shape)} and "
                         f"{tuple(classes.shape)}")
    with torch.enable_grad():
        a = activations.detach().requires_grad_(True)
        logits = head(a)
        if logits.ndim != 2 or logits.shape[0] != a.shape[0]:
            raise ValueError(f"head must return (B, C) logits, got {tuple(logits.shape)}")
        chosen = logits.gather(1, classes.long().to(logits.device)[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, a)
    phi = (grad * a).detach()
    if phi.ndim > 2:
        phi = phi.flatten(2)
        phi = phi.sum(2) if reduce == "sum" else phi.mean(2)
    return phi


# ---------------------------------------------------------------------------------------------- heatmaps
def top_n_weights(weights: torch.Tensor, n: int) -> torch.Tensor:
    """Each row keeps its n largest (signed) weights divided by their sum, zeros elsewhere: (B, K).

    WWW's heatmap weights ``w_k / sum_{j in Top_n} w_j``. A row whose top-n sum is 0 gets zeros.
    """
    if weights.ndim != 2:
        raise ValueError(f"weights must be (B, K), got {tuple(weights.shape)}")
    if not 1 <= int(n) <= weights.shape[1]:
        raise ValueError(f"top-n must be in [1, K={weights.shape[1]}], got {n}")
    top = weights.topk(int(n), dim=1)
    den = top.values.sum(dim=1, keepdim=True)
    norm = torch.where(den != 0, top.values / torch.where(den != 0, den, torch.ones_like(den)),
                       torch.zeros_like(den))
    return torch.zeros_like(weights).scatter(1, top.indices, norm)


def weighted_heatmap(maps: torch.Tensor, weights: torch.Tensor, n: int = 3,
                     size: tuple[int, int] | None = None) -> torch.Tensor:
    """WWW heatmap: the neuron activation maps of each image's top-n neurons mixed by normalised weights.

    ``H(x) = sum_{k in Top_n(w)} (w_k / sum_{Top_n} w) * up(NAM_k(x))`` with bilinear upsampling ``up``
    (linear, so the maps are mixed on the layer's grid and upsampled once). ``weights = Phi[pred]`` gives the
    class heatmap H_c, per-image Shapley scores the sample heatmap H_s.

    Args:
        maps: (B, K, h, w) layer activations (neuron activation maps), h * w >= 2.
        weights: (B, K) per-image neuron weights.
        n: neurons mixed per image (the paper's demo: 3).
        size: output (H, W); None keeps (h, w).

    Returns:
        (B, H, W) heatmaps.
    """
    if maps.ndim != 4:
        raise ValueError(f"activation maps must be (B, K, h, w), got shape {tuple(maps.shape)}; hook a "
                         "convolutional layer (before global pooling)")
    if maps.shape[2] * maps.shape[3] < 2:
        raise ValueError(f"the layer has {maps.shape[2]}x{maps.shape[3]} spatial positions; heatmaps need at least "
                         "2: hook a layer before global pooling (e.g. layer4, not avgpool)")
    if weights.shape != maps.shape[:2]:
        raise ValueError(f"weights must be (B, K) = {tuple(maps.shape[:2])}, got {tuple(weights.shape)}")
    w = top_n_weights(weights.to(maps.dtype), n)
    mixed = torch.einsum("bk,bkhw->bhw", w, maps)
    if size is not None and tuple(size) != tuple(maps.shape[2:]):
        mixed = F.interpolate(mixed[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return mixed


def percentile_masks(maps: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Each activation map with values at or below its own q-quantile set to 0 (WWW's localised concept maps).

    Args:
        maps: (B, K, H, W); q: quantile in [0, 1) (the paper's demo: the 70th percentile, 0.7).
    """
    if not 0.0 <= float(q) < 1.0:
        raise ValueError(f"q must be in [0, 1), got {q}")
    if maps.ndim != 4:
        raise ValueError(f"maps must be (B, K, H, W), got {tuple(maps.shape)}")
    thr = torch.quantile(maps.flatten(2).float(), float(q), dim=2).to(maps.dtype)
    return torch.where(maps > thr[..., None, None], maps, torch.zeros_like(maps))


def reliability(class_heatmap: torch.Tensor, sample_heatmap: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-image reliability ``cos(vec H_c, vec H_s)``: (B,). Low = the image relies on neurons atypical of its
    predicted class. An all-zero heatmap gives 0.

    Args:
        class_heatmap, sample_heatmap: (B, H, W) heatmaps from :func:`weighted_heatmap` (same shape).
    """
    if class_heatmap.shape != sample_heatmap.shape or class_heatmap.ndim < 2:
        raise ValueError(f"heatmaps must both be (B, H, W), got {tuple(class_heatmap.shape)} and "
                         f"{tuple(sample_heatmap.shape)}")
    return F.cosine_similarity(class_heatmap.flatten(1), sample_heatmap.flatten(1), dim=1, eps=eps)


def binary_auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (ties count 1/2; Mann-Whitney U / (P * N)).

    Args:
        scores: (M,) float, higher = more likely positive; positive: (M,) bool.

    Returns:
        The AUROC, NaN when one of the two groups is empty.
    """
    if scores.ndim != 1 or positive.shape != scores.shape:
        raise ValueError(f"expected scores (M,) and positive (M,), got {tuple(scores.shape)} and "
                         f"{tuple(positive.shape)}")
    positive = positive.bool()
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    values, inverse, counts = torch.unique(scores.double(), return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()  # 1-based rank of the last element of each tie group
    avg_rank = last - (counts.double() - 1.0) / 2.0
    rank_sum = avg_rank[inverse][positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def misprediction_auroc(reliability_score: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor
                        ) -> dict[str, float]:
    """How well low reliability detects wrong predictions, beside the maximum softmax probability (MSP).

    Positives are the mispredicted images (argmax of ``logits`` != ``labels``); each score is negated so that
    a low value flags an error.

    Args:
        reliability_score: (B,) ``cos(H_c, H_s)`` per image; logits: (B, C); labels: (B,) int.

    Returns:
        ``{"auroc_reliability", "auroc_msp", "error_rate", "images"}`` (AUROCs NaN without both outcomes).
    """
    if logits.ndim != 2 or reliability_score.shape != logits.shape[:1] or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected reliability (B,), logits (B, C) and labels (B,), got "
                         f"{tuple(reliability_score.shape)}, {tuple(logits.shape)} and {tuple(labels.shape)}")
    wrong = logits.argmax(dim=1) != labels.to(logits.device).long()
    msp = logits.double().softmax(dim=1).max(dim=1).values
    return {"auroc_reliability": binary_auroc(-reliability_score.double(), wrong),
            "auroc_msp": binary_auroc(-msp, wrong),
            "error_rate": float(wrong.double().mean()) if wrong.numel() else float("nan"),
            "images": int(wrong.numel())}
