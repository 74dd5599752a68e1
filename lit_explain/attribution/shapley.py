"""Neuron Shapley values of concept classifiers (HINT step 3): per (concept, unit) scores, rankings, and the
responsible / collaborative / multimodal neuron sets.

Two estimators of the score ``mean over the concept's pixels of |phi_c|`` (phi = the SHAP value of channel c):

* **linear** (default, exact, streaming): for a linear classifier f(x) = w·x + b with features treated as
  independent (the interventional / ``Independent`` masker of ``shap.LinearExplainer``), SHAP has the closed
  form phi_c(x) = w_c (x_c − mu_c), mu = the mean of the background data. So mean |phi_c| = |w_c| · E|x_c − mu_c|,
  computed from sums over pixels (two passes: mean, then absolute deviation) without ever forming the (n, C)
  matrix of SHAP values, and exact under any sharding of the pixels (the sums add up across processes).
  For concept k, the data are the pixels labelled for k (target != −1), as HINT runs SHAP on each concept's
  own training set.
* **tree** (HINT's parity option): a gradient-boosted tree surrogate trained on the same (X, y) and
  ``shap.TreeExplainer`` on it. HINT used XGBoost on a GPU (depth 10, eta 1, 50 rounds); here sklearn's
  ``GradientBoostingClassifier`` with those settings runs on the CPU. Much slower and not additive across
  processes: use it on a sample.

Sets (hand-checkable, plain tensor functions):

* responsible set of concept k: its top-``k`` units by score (HINT plots the top 10);
* collaborative: a unit responsible for two or more concepts of the same level;
* multimodal: a unit responsible for concepts of different branches (e.g. different top-level ancestors).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["linear_shap", "masked_mean", "masked_abs_deviation", "linear_shap_scores", "tree_shap_scores",
           "rank_units", "responsible_units", "collaborative_units", "multimodal_units"]


def linear_shap(weight: torch.Tensor, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Exact SHAP values of linear classifiers with independent features: (K, C), (n, C), (C,) or (K, C) ->
    (n, K, C), phi[i, k, c] = weight[k, c] · (x[i, c] − mean[(k,) c])."""
    mu = mean if mean.ndim == 2 else mean[None]
    return weight[None] * (x[:, None, :].to(weight.dtype) - mu[None].to(weight.dtype))


def _valid(targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if targets.ndim != 2 or targets.shape[0] != x.shape[0]:
        raise ValueError(f"targets must be (n, K) for x (n, C)={tuple(x.shape)}, got {tuple(targets.shape)}")
    return (targets >= 0).to(torch.float64)


def masked_mean(x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-concept feature sums over labelled pixels: ((K, C) float64 sum of x, (K,) float64 count).

    Sum these over batches (and processes) and divide to get each concept's mean mu_k.
    """
    v = _valid(targets, x)
    return v.T @ x.to(torch.float64), v.sum(0)


def masked_abs_deviation(x: torch.Tensor, targets: torch.Tensor, mean: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(K, C) float64: sum over concept k's labelled pixels of |x − mean[k]| (mean: (K, C)); chunked over pixels
    so the (chunk, K, C) intermediate stays bounded."""
    v = _valid(targets, x)
    out = torch.zeros(mean.shape, dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], int(chunk)):
        dev = (x[s:s + chunk, None, :].to(torch.float64) - mean[None].to(torch.float64)).abs()  # (b, K, C)
        out += torch.einsum("bk,bkc->kc", v[s:s + chunk], dev)
    return out


def linear_shap_scores(weight: torch.Tensor, abs_dev_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """(K, C) mean |phi| = |w| · (sum |x − mu|) / count; a concept with no pixel scores 0."""
    return weight.detach().abs().to(torch.float64) * abs_dev_sum / count.clamp(min=1)[:, None]


def tree_shap_scores(x: np.ndarray, y: np.ndarray, max_depth: int = 10, n_estimators: int = 50,
                     learning_rate: float = 1.0, seed: int = 0, explain: np.ndarray | None = None) -> np.ndarray:
    """(C,) mean |SHAP| of a gradient-boosted tree surrogate (sklearn, CPU) fitted to binary labels.

    Args:
        x: (n, C) pixel features; y: (n,) {0, 1} labels of one concept.
        max_depth, n_estimators, learning_rate: the surrogate (HINT: 10, 50, 1.0).
        seed: the surrogate's random state.
        explain: (m, C) the pixels to explain (default: ``x``).
    """
    import shap
    from sklearn.ensemble import GradientBoostingClassifier

    if int(max_depth) < 1 or int(n_estimators) < 1 or not float(learning_rate) > 0:
        raise ValueError(f"tree_shap_scores: max_depth and n_estimators must be >= 1 and learning_rate > 0, got "
                         f"{max_depth}, {n_estimators}, {learning_rate}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).astype(int)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"tree_shap_scores: x must be (n, C) and y (n,), got {x.shape} and {y.shape}")
    if set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError(f"tree_shap_scores: y must hold both classes 0 and 1, got {np.unique(y).tolist()}")
    model = GradientBoostingClassifier(n_estimators=int(n_estimators), max_depth=int(max_depth),
                                       learning_rate=float(learning_rate), random_state=int(seed)).fit(x, y)
    phi = shap.TreeExplainer(model).shap_values(x if explain is None else np.asarray(explain, dtype=np.float64))
    phi = np.asarray(phi)
    if phi.ndim == 3:  # some shap versions return one matrix per class; keep the positive class
        phi = phi[..., 1] if phi.shape[-1] == 2 else phi[1]
    return np.abs(phi).mean(0)


def rank_units(scores: torch.Tensor) -> torch.Tensor:
    """(K, C) scores -> (K, C) int64 rank of each unit per concept (0 = highest score; ties: lower unit first)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks


def responsible_units(scores: torch.Tensor, k: int = 10) -> torch.Tensor:
    """(K, C) bool: the top-``k`` units of each concept (k in [1, C]); concepts with all-zero scores get none."""
    if not 1 <= int(k) <= scores.shape[1]:
        raise ValueError(f"responsible_units: k must be in [1, C={scores.shape[1]}], got {k}")
    return (rank_units(scores) < int(k)) & (scores.max(dim=1, keepdim=True).values > 0)


def _shared(responsible: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """(K, C) count, for each (k, unit), of concepts k' with same[k, k'] that hold the unit."""
    return same.to(torch.float32) @ responsible.to(torch.float32)


def collaborative_units(responsible: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """(K, C) bool: unit u is collaborative for concept k when it is responsible for k and for at least one
    other concept of k's level (``level``: (K,) int id of each concept's level or sibling group)."""
    same = level[:, None] == level[None, :]
    return responsible.bool() & (_shared(responsible, same) >= 2)


def multimodal_units(responsible: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """(K, C) bool: unit u is multimodal for concept k when it is responsible for k and for some concept of a
    different branch (``branch``: (K,) int id, e.g. each concept's top-level ancestor)."""
    other = branch[:, None] != branch[None, :]
    return responsible.bool() & (_shared(responsible, other) >= 1)
