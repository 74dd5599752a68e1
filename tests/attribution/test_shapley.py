"""Neuron Shapley values: the streaming linear closed form equals shap.LinearExplainer; the tree surrogate
(shap.TreeExplainer on sklearn trees) agrees in ranking on planted truth; the neuron sets on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
import shap
import torch

from lit_explain.attribution.shapley import (collaborative_units, linear_shap, linear_shap_scores,
                                             masked_abs_deviation, masked_mean, multimodal_units, rank_units,
                                             responsible_units, tree_shap_scores)


def planted(n=600, C=8, seed=0):
    """y depends on unit 2 strongly and unit 5 weakly; the other units are noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, C))
    y = (2.0 * x[:, 2] + 0.7 * x[:, 5] + 0.1 * rng.normal(size=n) > 0).astype(int)
    return x, y


def test_linear_closed_form_equals_shap_linear_explainer():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 5)) * np.array([1, 2, 3, 0.5, 1]) + 3
    w = rng.normal(size=(2, 5))
    b = np.array([0.3, -1.0])
    phi = linear_shap(torch.tensor(w), torch.tensor(x), torch.tensor(x.mean(0))).numpy()  # (n, K, C)
    for k in range(2):
        expl = shap.LinearExplainer((w[k], b[k]), shap.maskers.Independent(x, max_samples=len(x)))
        np.testing.assert_allclose(phi[:, k], expl.shap_values(x), rtol=1e-10, atol=1e-10)


def test_streamed_scores_equal_mean_abs_of_full_shap_per_concept():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=(90, 4)))
    targets = torch.tensor(rng.integers(-1, 2, size=(90, 3)), dtype=torch.int8)
    w = torch.tensor(rng.normal(size=(3, 4)))
    s, c = torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for part in (slice(0, 40), slice(40, 90)):  # two batches (or two processes): sums add up
        ps, pc = masked_mean(x[part], targets[part])
        s, c = s + ps, c + pc
    mu = s / c[:, None]
    dev = masked_abs_deviation(x[:40], targets[:40], mu, chunk=7) + masked_abs_deviation(x[40:], targets[40:], mu)
    scores = linear_shap_scores(w, dev, c)
    for k in range(3):
        xs = x[targets[:, k] >= 0].numpy()
        expl = shap.LinearExplainer((w[k].numpy(), 0.0), shap.maskers.Independent(xs, max_samples=len(xs)))
        np.testing.assert_allclose(scores[k].numpy(), np.abs(expl.shap_values(xs)).mean(0), rtol=1e-9)


def test_tree_surrogate_agrees_in_ranking_with_linear_on_planted_truth():
    from sklearn.svm import LinearSVC

    x, y = planted()
    tree = tree_shap_scores(x, y, max_depth=3, n_estimators=20, learning_rate=0.5)
    w = torch.tensor(LinearSVC(C=1.0).fit(x, y).coef_)
    mu = torch.tensor(x.mean(0, keepdims=True))
    lin = linear_shap_scores(w, (torch.tensor(x) - mu).abs().sum(0, keepdim=True), torch.tensor([float(len(x))]))
    assert np.argsort(-tree)[:2].tolist() == [2, 5]
    assert torch.argsort(lin[0], descending=True)[:2].tolist() == [2, 5]
    with pytest.raises(ValueError, match="both classes"):
        tree_shap_scores(x, np.zeros(len(x)))


def test_ranks_and_sets_hand_worked():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.0],    # concept a  (level 0, branch 0)
                           [0.8, 0.7, 0.0, 0.0],    # concept b  (level 0, branch 1)
                           [0.0, 0.2, 0.2, 0.6],    # concept c  (level 1, branch 0)
                           [0.0, 0.0, 0.0, 0.0]])   # concept d: no signal
    assert rank_units(scores).tolist() == [[2, 0, 1, 3], [0, 1, 2, 3], [3, 1, 2, 0], [0, 1, 2, 3]]
    resp = responsible_units(scores, k=2)
    assert resp.tolist() == [[False, True, True, False], [True, True, False, False],
                             [False, True, False, True], [False] * 4]
    level = torch.tensor([0, 0, 1, 1])
    branch = torch.tensor([0, 1, 0, 1])
    # unit 1 is responsible for a and b (both level 0): collaborative for both; c is alone at level 1
    assert collaborative_units(resp, level).tolist() == [[False, True, False, False], [False, True, False, False],
                                                         [False] * 4, [False] * 4]
    # unit 1 is held by a, c (branch 0) and b (branch 1): multimodal for all three; unit 2/3/0 are single-branch
    assert multimodal_units(resp, branch).tolist() == [[False, True, False, False], [False, True, False, False],
                                                       [False, True, False, False], [False] * 4]
    with pytest.raises(ValueError, match=r"k must be in \[1, C=4\]"):
        responsible_units(scores, k=5)
