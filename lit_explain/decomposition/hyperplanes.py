"""Hyperplanes between every pair of classes in activation space, trained all at once, and the shifting test.

Contrasting class i with class j, the NMF method fits a logistic regression w·a + b on activation vectors a ∈ R^C
of class i (label 0) and class j (label 1); w then points from i towards j. The original trains each of the
K² ordered pairs separately (10⁶ tiny trainings for ImageNet). Every pair sees the same per-class data, so here
one step of full-batch gradient descent for all pairs is a handful of batched matmuls:

* logits of w_ij on class i's vectors: A_i (N, C) @ W_i·ᵀ, batched over i: (K, N, C) @ (K, C, K);
* logits of w_ij on class j's vectors: A_j @ W_·jᵀ, batched over j: (K, N, C) @ (K, C, K);
* the gradients are the transposed products with the residuals.

Loss: the mean binary cross-entropy over the pair's n_i + n_j vectors (no class balancing), plain gradient
descent with a fixed learning rate and number of steps (the paper: lr 0.01, 100 steps, from PyTorch's default
random ``nn.Linear`` init; here ``init="zeros"`` by default, deterministic, or ``"linear"``: the same
uniform(±1/√C) law drawn from ``seed``, or explicit tensors). Diagonal pairs (i, i) carry no contrast (the
paper trained them anyway) and pairs with an empty class cannot be trained (the paper stored zero vectors):
both get a zero normal and NaN accuracy.

:func:`relevant_pixel_vectors` picks each class's training vectors (activations of its most relevant pixels);
:func:`contrastive_mask` weights pixels by their side of a pair's hyperplane for the "A rather than B" NMF.

The shifting test moves a layer's activations along a hyperplane normal and records the class probabilities:
a forward hook replaces the layer output a (B, C, h, w) by a' = ReLU(a + o·d) (d broadcast over positions) for
every offset o and direction d at once (the batch grows to D·O·B), so each image needs one forward per chunk of
directions. Positive offsets move towards class j for d = w_ij (the paper wrote ReLU(a − o·w) with negative o).
The swap metric reads p(A) at the offset where p(B) peaks (the original read it one offset earlier).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

__all__ = ["Hyperplanes", "relevant_pixel_vectors", "pad_classes", "pairwise_hyperplanes", "contrastive_mask",
           "shift_along", "shifted_probabilities", "SwapMetrics", "swap_metrics"]


@dataclass
class Hyperplanes:
    """All ordered pairs of K classes over C channels.

    Attributes:
        normals: (K, K, C) w_ij, pointing from class i (label 0) towards class j (label 1).
        bias: (K, K) b_ij.
        accuracy: (K, K) training accuracy of pair (i, j); NaN on the diagonal and for empty classes.
    """

    normals: torch.Tensor
    bias: torch.Tensor
    accuracy: torch.Tensor


def relevant_pixel_vectors(
    acts: torch.Tensor, relevance: torch.Tensor, frac: float = 0.25, relu: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training vectors of a class's hyperplanes: raw activation vectors of its most relevant pixels.

    Per image, the pixel score is s(y, x) = mean over channels of R (of ReLU(R) with ``relu``; the paper's code
    computed the ReLU'd score and then overwrote it, so effectively none), and the pixels with
    s > frac · max_{y,x} s are kept (an image whose scores are all <= 0 gives none).

    Args:
        acts: (N, C, h, w) the layer's activations of the class's images.
        relevance: (N, C, h, w) their relevance for the class (e.g. DeepLift).
        frac: fraction of the image's maximum score a pixel must exceed, in [0, 1].
        relu: clip R at 0 before the channel mean.

    Returns:
        vectors (M, C) (not relevance-weighted) and the image each came from (M,), image-major then y, x.
    """
    if acts.dim() != 4 or relevance.shape != acts.shape:
        raise ValueError(f"relevant_pixel_vectors: acts and relevance must be the same (N, C, h, w), got "
                         f"{tuple(acts.shape)} and {tuple(relevance.shape)}")
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
        raise ValueError(f"relevant_pixel_vectors: frac must be a number in [0, 1], got {frac!r}")
    score = (relevance.clamp(min=0) if relu else relevance).mean(1)  # (N, h, w)
    top = score.flatten(1).amax(1)  # (N,)
    keep = (score > frac * top[:, None, None]) & (top > 0)[:, None, None]
    vectors = acts.permute(0, 2, 3, 1)[keep]  # (M, C)
    image = torch.arange(acts.shape[0], device=acts.device)[:, None, None].expand_as(keep)[keep]
    return vectors, image


def pad_classes(vectors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-class (N_i, C) vectors into (K, max N_i, C) zero-padded and their counts (K,)."""
    if len(vectors) == 0:
        raise ValueError("pad_classes: need at least one class")
    C = vectors[0].shape[-1]
    if any(v.dim() != 2 or v.shape[1] != C for v in vectors):
        raise ValueError(f"pad_classes: every class needs (N_i, C={C}) vectors, got "
                         f"{[tuple(v.shape) for v in vectors]}")
    counts = torch.tensor([v.shape[0] for v in vectors], device=vectors[0].device)
    out = vectors[0].new_zeros(len(vectors), max(1, int(counts.max())), C)
    for i, v in enumerate(vectors):  # a copy per class, no math
        out[i, : v.shape[0]] = v
    return out, counts


def pairwise_hyperplanes(
    feats: torch.Tensor,
    counts: torch.Tensor,
    *,
    steps: int = 100,
    lr: float = 0.01,
    init: str | tuple[torch.Tensor, torch.Tensor] = "zeros",
    seed: int = 0,
    rows_per_pass: int = 64,
    chunks: Sequence[int] | None = None,
) -> Hyperplanes:
    """Logistic-regression hyperplanes for all ordered class pairs, trained together.

    Args:
        feats: (K, N, C) activation vectors per class; class i owns rows ``[:counts[i]]`` (the rest is ignored).
        counts: (K,) ints in 0..N.
        steps: gradient-descent steps, >= 1.
        lr: learning rate, > 0.
        init: ``zeros`` (default), ``linear`` (uniform(±1/√C) from ``seed``, PyTorch's nn.Linear law) or a
            tuple (W0 (K, K, C), b0 (K, K)).
        seed: seed of the ``linear`` init, >= 0.
        rows_per_pass: classes i trained together (memory ∝ rows_per_pass · K · (C + N)), >= 1. The classes
            are cut into fixed chunks [c·rows_per_pass, (c+1)·rows_per_pass); a chunk's arithmetic depends only on
            its own shapes, so a result does not depend on which chunks are computed together.
        chunks: train only these chunk numbers (distinct, in 0..⌈K / rows_per_pass⌉-1), e.g. a process's share
            from ``distributed.shard(range(n_chunks))``; the processes' outputs, concatenated in chunk order, are
            bitwise the single-process result. Default: all chunks.

    Returns:
        :class:`Hyperplanes` over the pairs (i, j) with i in the chosen chunks (all K by default), j in 0..K-1.
    """
    if not isinstance(feats, torch.Tensor) or feats.dim() != 3:
        raise ValueError(f"pairwise_hyperplanes: feats must be (K, N, C), got {getattr(feats, 'shape', None)}")
    if not feats.is_floating_point():
        feats = feats.float()
    K, N, C = feats.shape
    counts = torch.as_tensor(counts, device=feats.device).long()
    if counts.shape != (K,) or bool(((counts < 0) | (counts > N)).any()):
        raise ValueError(f"pairwise_hyperplanes: counts must be (K,)=({K},) ints in 0..{N}, got {counts.tolist()}")
    for name, value, low in (("steps", steps, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"pairwise_hyperplanes: {name} must be an int >= {low}, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"pairwise_hyperplanes: lr must be a finite number > 0, got {lr!r}")
    if isinstance(rows_per_pass, bool) or not isinstance(rows_per_pass, int) or rows_per_pass < 1:
        raise ValueError(f"pairwise_hyperplanes: rows_per_pass must be an int >= 1, got {rows_per_pass!r}")
    n_chunks = -(-K // rows_per_pass)
    chunks = list(range(n_chunks)) if chunks is None else [int(c) for c in chunks]
    if any(not 0 <= c < n_chunks for c in chunks) or len(set(chunks)) != len(chunks):
        raise ValueError(f"pairwise_hyperplanes: chunks must be distinct chunk numbers in 0..{n_chunks - 1} "
                         f"(K={K} classes, rows_per_pass={rows_per_pass}), got {chunks[:20]}")
    if not bool(torch.isfinite(feats).all()):
        raise ValueError("pairwise_hyperplanes: feats contain NaN or inf")

    if isinstance(init, tuple):
        W0, b0 = init
        if W0.shape != (K, K, C) or b0.shape != (K, K):
            raise ValueError(f"pairwise_hyperplanes: init tensors must be ({K}, {K}, {C}) and ({K}, {K}), got "
                             f"{tuple(W0.shape)} and {tuple(b0.shape)}")
        W0, b0 = W0.to(feats), b0.to(feats)
    elif init == "zeros":
        W0, b0 = feats.new_zeros(K, K, C), feats.new_zeros(K, K)
    elif init == "linear":
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        bound = 1.0 / math.sqrt(C)
        W0 = ((torch.rand(K, K, C, generator=g, dtype=torch.float64) * 2 - 1) * bound).to(feats)
        b0 = ((torch.rand(K, K, generator=g, dtype=torch.float64) * 2 - 1) * bound).to(feats)
    else:
        raise ValueError(f"pairwise_hyperplanes: init must be 'zeros', 'linear' or a (W0, b0) tuple, got {init!r}")

    mask = (torch.arange(N, device=feats.device)[None, :] < counts[:, None]).to(feats.dtype)  # (K, N)
    A = feats * mask[..., None]
    normals, biases, accs = [], [], []
    for c in chunks:
        part = slice(c * rows_per_pass, min(K, (c + 1) * rows_per_pass))
        W, b, acc = _train_rows(A, mask, counts, part, W0[part].clone(), b0[part].clone(), steps, lr)
        normals.append(W)
        biases.append(b)
        accs.append(acc)
    W, b, acc = torch.cat(normals), torch.cat(biases), torch.cat(accs)
    rows = torch.cat([torch.arange(c * rows_per_pass, min(K, (c + 1) * rows_per_pass)) for c in chunks]).to(feats.device)
    diag = rows[:, None] == torch.arange(K, device=feats.device)[None, :]
    bad = diag | (counts[rows][:, None] == 0) | (counts[None, :] == 0)
    W = torch.where(bad[..., None], torch.zeros_like(W), W)
    b = torch.where(bad, torch.zeros_like(b), b)
    acc = torch.where(bad, torch.full_like(acc, float("nan")), acc)
    return Hyperplanes(normals=W, bias=b, accuracy=acc)


def _logits(A, Ai, W, b):
    """z_own (I, N, K): w_ij on class i's rows; z_other (K, N, I): w_ij on class j's rows."""
    z_own = Ai @ W.transpose(1, 2) + b[:, None, :]
    z_other = A @ W.permute(1, 2, 0) + b.T[:, None, :]
    return z_own, z_other


def _train_rows(A, mask, counts, rows, W, b, steps, lr):
    """Gradient descent for the pairs (i, ·) with i in the slice ``rows``: W (I, K, C), b (I, K)."""
    Ai, mi = A[rows], mask[rows]  # (I, N, C), (I, N)
    n = (counts[rows][:, None] + counts[None, :]).to(A.dtype).clamp(min=1)  # (I, K)
    for _ in range(steps):
        z_own, z_other = _logits(A, Ai, W, b)
        r_own = torch.sigmoid(z_own) * mi[..., None]  # label 0: dL/dz = σ(z)
        r_other = (torch.sigmoid(z_other) - 1) * mask[..., None]  # label 1: dL/dz = σ(z) − 1
        gW = r_own.transpose(1, 2) @ Ai + (r_other.permute(0, 2, 1) @ A).transpose(0, 1)  # (I, K, C)
        gb = r_own.sum(1) + r_other.sum(1).T  # (I, K)
        W = W - lr * gW / n[..., None]
        b = b - lr * gb / n
    z_own, z_other = _logits(A, Ai, W, b)
    right = ((z_own <= 0) * mi[..., None]).sum(1) + ((z_other > 0) * mask[..., None]).sum(1).T
    return W, b, right.to(A.dtype) / n


def contrastive_mask(
    acts: torch.Tensor, normal: torch.Tensor, bias: float | torch.Tensor, *, extra: float = 0.0,
    bias_sign: str = "consistent",
) -> torch.Tensor:
    """Per-pixel weight for "why A rather than B": how far each pixel lies on A's side of the A-B hyperplane.

    With the pair's hyperplane w·a + b > 0 meaning "B" (w = w_AB from :func:`pairwise_hyperplanes`), the mask is
    m(y, x) = ReLU(−w·a(y, x) − b + extra) (``bias_sign="consistent"``, the signed distance towards A). The
    paper's code negated w but not b, i.e. ReLU(−w·a + b + extra) (``bias_sign="paper"``, kept for comparison).
    The NMF then factorises m ⊙ A of the images predicted as A.

    Args:
        acts: (N, C, h, w) activations.
        normal: (C,) w_AB.
        bias: scalar b_AB.
        extra: constant added inside the ReLU (0 in the paper).
        bias_sign: ``consistent`` (default) or ``paper``.

    Returns:
        (N, 1, h, w) non-negative mask.
    """
    if acts.dim() != 4 or normal.shape != (acts.shape[1],):
        raise ValueError(f"contrastive_mask: acts (N, C, h, w) and normal (C,) do not fit: {tuple(acts.shape)}, "
                         f"{tuple(normal.shape)}")
    if bias_sign not in ("consistent", "paper"):
        raise ValueError(f"contrastive_mask: bias_sign must be 'consistent' or 'paper', got {bias_sign!r}")
    b = torch.as_tensor(bias, dtype=acts.dtype, device=acts.device)
    if b.numel() != 1:
        raise ValueError(f"contrastive_mask: bias must be a scalar, got shape {tuple(b.shape)}")
    side = -torch.einsum("nchw,c->nhw", acts, normal.to(acts)) + (-b if bias_sign == "consistent" else b) + extra
    return side.clamp(min=0)[:, None]


@contextmanager
def shift_along(layer: nn.Module, directions: torch.Tensor, offsets: torch.Tensor, relu: bool = True) -> Iterator[None]:
    """While active, ``layer``'s output a (B, C, ...) becomes (D·O·B, C, ...): ReLU(a + o·d) for every direction
    d in ``directions`` (D, C) and offset o in ``offsets`` (O,), ordered direction-major, then offset, then image.

    With ``relu`` the result is clipped at 0 (the paper's choice for post-ReLU layers); offset 0 then returns a
    unchanged exactly when a >= 0. The hook is removed on exit, also when the body raises.
    """
    if directions.dim() != 2:
        raise ValueError(f"shift_along: directions must be (D, C), got {tuple(directions.shape)}")
    offsets = torch.as_tensor(offsets).reshape(-1)

    def hook(_m, _inp, out):
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[1] != directions.shape[1]:
            raise ValueError(f"shift_along: the layer output {getattr(out, 'shape', type(out))} does not have "
                             f"C={directions.shape[1]} channels in dim 1")
        extra = out.dim() - 2
        d = directions.to(out).reshape(directions.shape[0], 1, 1, directions.shape[1], *([1] * extra))
        o = offsets.to(out).reshape(1, -1, 1, 1, *([1] * extra))
        shifted = out[None, None] + o * d  # (D, O, B, C, ...)
        if relu:
            shifted = shifted.clamp(min=0)
        return shifted.reshape(-1, *out.shape[1:])

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def shifted_probabilities(
    model: nn.Module,
    layer: nn.Module,
    images: torch.Tensor,
    directions: torch.Tensor,
    offsets: Sequence[float] | torch.Tensor,
    *,
    relu: bool = True,
    directions_per_pass: int = 8,
) -> torch.Tensor:
    """(D, O, K) softmax of the model, averaged over ``images``, with the layer shifted by o·d (see :func:`shift_along`).

    Args:
        model: eval-mode network, images (B, ...) -> logits (B, K); everything after ``layer`` must act per image.
        layer: a submodule of ``model`` with output (B, C, ...).
        images: (B, ...) the images of the class being shifted away from.
        directions: (D, C) shift directions (e.g. hyperplane normals w_AB).
        offsets: (O,) offsets; include 0 for the unshifted reference.
        relu: clip the shifted activations at 0.
        directions_per_pass: directions per forward (memory ∝ this · O · B), >= 1.
    """
    if model.training:
        raise ValueError("shifted_probabilities: call model.eval() first (batch-norm would mix the shifted copies)")
    if not any(m is layer for m in model.modules()):
        raise ValueError("shifted_probabilities: layer is not a submodule of the model")
    if isinstance(directions_per_pass, bool) or not isinstance(directions_per_pass, int) or directions_per_pass < 1:
        raise ValueError(f"shifted_probabilities: directions_per_pass must be an int >= 1, got {directions_per_pass!r}")
    offsets = torch.as_tensor(offsets, dtype=torch.float64).reshape(-1)
    if offsets.numel() == 0 or not bool(torch.isfinite(offsets).all()):
        raise ValueError(f"shifted_probabilities: offsets must be a non-empty list of finite numbers, got {offsets}")
    B, O = images.shape[0], offsets.numel()
    out = []
    with torch.no_grad():
        for d0 in range(0, directions.shape[0], directions_per_pass):
            d = directions[d0 : d0 + directions_per_pass]
            with shift_along(layer, d, offsets, relu=relu):
                logits = model(images)
            out.append(logits.softmax(-1).reshape(d.shape[0], O, B, -1).mean(2))
    return torch.cat(out)


@dataclass
class SwapMetrics:
    """Per direction (D,): p0 = p(B) unshifted, pmax = max over non-zero offsets of p(B), at ``best`` (index into
    offsets), p_a_at_best = p(A) at that same offset, swap = pmax >= p_a_at_best and pmax > 0.5."""

    p0: torch.Tensor
    pmax: torch.Tensor
    best: torch.Tensor
    p_a_at_best: torch.Tensor
    swap: torch.Tensor


def swap_metrics(P: torch.Tensor, offsets: Sequence[float] | torch.Tensor, class_a, class_b) -> SwapMetrics:
    """The shifting test's numbers from P (D, O, K) (:func:`shifted_probabilities`), class A (scalar or (D,)) and
    B (D,). p(A) is read at the offset where p(B) peaks (the original code read it one offset earlier)."""
    offsets = torch.as_tensor(offsets, dtype=torch.float64).reshape(-1)
    D, O, K = P.shape
    if offsets.numel() != O:
        raise ValueError(f"swap_metrics: {offsets.numel()} offsets for P with {O}")
    zero = (offsets == 0).nonzero().flatten()
    if zero.numel() != 1 or O < 2:
        raise ValueError("swap_metrics: offsets must contain 0 exactly once and at least one non-zero offset")
    a = torch.as_tensor(class_a, device=P.device).long().expand(D)
    b = torch.as_tensor(class_b, device=P.device).long().reshape(-1).expand(D)
    rows = torch.arange(D, device=P.device)
    pb = P[rows, :, b]  # (D, O)
    pa = P[rows, :, a]
    p0 = pb[:, int(zero)]
    nonzero = (offsets != 0).to(P.device)
    pmax, best = torch.where(nonzero[None], pb, torch.full_like(pb, -1.0)).max(dim=1)
    p_a = pa.gather(1, best[:, None])[:, 0]
    return SwapMetrics(p0=p0, pmax=pmax, best=best, p_a_at_best=p_a, swap=(pmax >= p_a) & (pmax > 0.5))
