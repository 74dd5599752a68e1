"""Batched NMF against sklearn.decomposition.NMF run class by class, planted factors and hand-made bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import NMF
from sklearn.decomposition._nmf import _initialize_nmf
from sklearn.exceptions import ConvergenceWarning

from lit_explain.decomposition.nmf import batched_nmf, class_rows, nndsvd_init, relative_error


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(B=3, n=40, C=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, n, C, generator=g, dtype=torch.float64) ** 2


def _sk_error(x: np.ndarray, k: int, **kw) -> tuple[float, NMF, np.ndarray]:
    m = NMF(n_components=k, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        w = m.fit_transform(x, **({"W": kw.pop("W0"), "H": kw.pop("H0")} if "W0" in kw else {}))
    return float(np.linalg.norm(x - w @ m.components_) / np.linalg.norm(x)), m, w


def _sk_custom(x, k, w0, h0, solver, iters):
    m = NMF(n_components=k, init="custom", solver=solver, tol=0.0, max_iter=iters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        w = m.fit_transform(x, W=w0.copy(), H=h0.copy())
    return w, m.components_


@pytest.mark.parametrize("solver,sk_solver", [("hals", "cd"), ("mu", "mu")])
def test_same_init_same_iterations_as_sklearn(solver, sk_solver):
    """HALS is sklearn's coordinate descent and mu its multiplicative update: same start, same steps, same factors."""
    X, k, iters = _data(), 4, 30
    W0, H0 = nndsvd_init(X, k)
    res = batched_nmf(X, k, solver=solver, init="custom", W0=W0, H0=H0, tol=0.0, max_iter=iters, sweeps=1)
    for b in range(X.shape[0]):
        w, h = _sk_custom(X[b].numpy(), k, W0[b].numpy(), H0[b].numpy(), sk_solver, iters)
        sk_err = np.linalg.norm(X[b].numpy() - w @ h) / np.linalg.norm(X[b].numpy())
        assert float(res.error[b]) <= 1.02 * sk_err  # the stated tolerance
        np.testing.assert_allclose(res.H[b].numpy(), h, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(res.W[b].numpy(), w, rtol=1e-6, atol=1e-8)
    assert int(res.n_iter.min()) == iters


def test_defaults_reach_sklearn_default_objective():
    """Default HALS + nndsvda + tol 1e-4 vs sklearn NMF(init='nndsvda') defaults: error <= 1.02 x sklearn's."""
    X, k = _data(B=4, n=60, C=20, seed=1), 5
    res = batched_nmf(X, k)
    for b in range(X.shape[0]):
        sk_err, _, _ = _sk_error(X[b].numpy(), k, init="nndsvda", random_state=0)
        assert float(res.error[b]) <= 1.02 * sk_err, (b, float(res.error[b]), sk_err)
    assert bool(res.converged.all())


def test_nndsvd_init_matches_sklearn():
    X, k = _data(B=2, n=30, C=12, seed=2), 3
    for fill, name in [(False, "nndsvd"), (True, "nndsvda")]:
        W, H = nndsvd_init(X, k, fill=fill)
        for b in range(2):
            w, h = _initialize_nmf(X[b].numpy(), k, init=name, random_state=0)
            np.testing.assert_allclose(W[b].numpy(), w, atol=1e-6)
            np.testing.assert_allclose(H[b].numpy(), h, atol=1e-6)


def test_recovers_planted_factors():
    """X = W H with H rows on disjoint channel blocks: each recovered component is one planted row (cosine > 0.99)."""
    g = torch.Generator().manual_seed(3)
    H_true = torch.zeros(3, 12, dtype=torch.float64)
    for j in range(3):
        H_true[j, 4 * j : 4 * j + 4] = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    W_true = torch.rand(50, 3, generator=g, dtype=torch.float64)
    res = batched_nmf((W_true @ H_true)[None], 3, max_iter=500, tol=1e-8)
    cos = torch.nn.functional.normalize(res.H[0], dim=1) @ torch.nn.functional.normalize(H_true, dim=1).T
    assert torch.allclose(cos.max(dim=1).values, torch.ones(3, dtype=torch.float64), atol=1e-2)
    assert sorted(cos.argmax(dim=1).tolist()) == [0, 1, 2]
    assert float(res.error[0]) < 1e-2


@pytest.mark.parametrize("init", ["nndsvda", "random"])
def test_deterministic_for_a_seed(init):
    X = _data(seed=4).float()
    a = batched_nmf(X, 3, init=init, seed=7)
    b = batched_nmf(X, 3, init=init, seed=7)
    assert torch.equal(a.W, b.W) and torch.equal(a.H, b.H) and torch.equal(a.n_iter, b.n_iter)
    if init == "random":
        assert not torch.equal(batched_nmf(X, 3, init=init, seed=8).H, a.H)


@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_padded_class_equals_run_alone(solver):
    """A class with 25 of 40 rows (the rest garbage, ignored) gets the factors it gets alone."""
    X = _data(B=3, n=40, C=10, seed=5)
    n_rows = torch.tensor([40, 25, 33])
    res = batched_nmf(X, 3, n_rows=n_rows, solver=solver, max_iter=100)
    for b, nb in enumerate(n_rows.tolist()):
        alone = batched_nmf(X[b : b + 1, :nb], 3, solver=solver, max_iter=100)
        assert torch.allclose(res.H[b], alone.H[0], atol=1e-7), b
        assert torch.allclose(res.W[b, :nb], alone.W[0], atol=1e-7), b
        assert torch.all(res.W[b, nb:] == 0)
        assert int(res.n_iter[b]) == int(alone.n_iter[0])
        Xb = X[b, :nb]
        assert torch.isclose(res.error[b], (Xb - alone.W[0] @ alone.H[0]).norm() / Xb.norm())


def test_converged_class_stops_changing():
    """Two classes converge at different iterations; each one's factors equal a run stopped at its iteration."""
    g = torch.Generator().manual_seed(6)
    easy = torch.rand(40, 2, generator=g, dtype=torch.float64) @ torch.rand(2, 10, generator=g, dtype=torch.float64)
    hard = torch.rand(40, 10, generator=g, dtype=torch.float64)
    X = torch.stack([easy, hard])
    res = batched_nmf(X, 2, tol=1e-3, max_iter=300)
    assert bool(res.converged.all()) and res.n_iter[0] != res.n_iter[1]
    for b in range(2):
        stopped = batched_nmf(X[b : b + 1], 2, tol=0.0, max_iter=int(res.n_iter[b]))
        assert torch.equal(res.H[b], stopped.H[0]) and torch.equal(res.W[b], stopped.W[0])


def test_sklearn_backend_matches_sklearn():
    X, k = _data(B=2, n=30, C=8, seed=8), 3
    res = batched_nmf(X, k, solver="sklearn", init="nndsvda", seed=0)
    for b in range(2):
        sk_err, m, _ = _sk_error(X[b].numpy(), k, init="nndsvda", random_state=0)
        assert abs(float(res.error[b]) - sk_err) < 1e-9
        np.testing.assert_allclose(res.H[b].numpy(), m.components_)


def test_negative_input_error_names_min_and_fix():
    X = _data(B=2, n=10, C=5)
    X[1, 3, 2] = -0.25
    with pytest.raises(ValueError, match=r"min -0\.25 in class 1.*ReLU.*negative='shift'"):
        batched_nmf(X, 2)
    res = batched_nmf(X, 2, negative="shift")
    assert res.shift.tolist() == [0.0, -0.25]
    alone = batched_nmf(X[1:] + 0.25, 2)
    assert torch.allclose(res.H[1], alone.H[0], atol=1e-8)


def test_all_zero_and_too_few_rows_are_skipped_with_reason():
    X = _data(B=3, n=10, C=5)
    X[1] = 0
    res = batched_nmf(X, 3, n_rows=torch.tensor([10, 10, 2]))
    assert set(res.skipped) == {1, 2}
    assert "all-zero" in res.skipped[1] and "2 rows < k=3" in res.skipped[2]
    assert res.valid.tolist() == [True, False, False]
    assert torch.isnan(res.error[1:]).all() and torch.all(res.H[1:] == 0) and torch.all(res.W[1:] == 0)
    alone = batched_nmf(X[:1], 3)
    assert torch.allclose(res.H[0], alone.H[0], atol=1e-10)


@pytest.mark.parametrize("kw,match", [
    ({"k": 0}, "k must be an int >= 1"),
    ({"k": 6}, "k=6 components exceed the C=5"),
    ({"k": 2, "max_iter": 0}, "max_iter must be an int >= 1"),
    ({"k": 2, "sweeps": 0}, "sweeps must be an int >= 1"),
    ({"k": 2, "block_bytes": 0}, "block_bytes must be an int >= 1"),
    ({"k": 2, "tol": -1.0}, "tol must be a number >= 0"),
    ({"k": 2, "solver": "pgd"}, "solver must be one of"),
    ({"k": 2, "init": "svd"}, "init must be one of"),
    ({"k": 2, "negative": "clip"}, "negative must be 'error' or 'shift'"),
    ({"k": 2, "n_rows": torch.tensor([11, 1])}, r"n_rows must be \(B,\)"),
    ({"k": 2, "init": "custom"}, "init='custom' needs W0"),
])
def test_argument_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        batched_nmf(_data(B=2, n=10, C=5), **kw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("row", [0, 4])
def test_nan_input_raises(bad, row):
    """Also in a padded row the class does not own (row 4 of class 1 owns 3 rows): NaN is never silently dropped."""
    X = _data(B=2, n=5, C=4)
    X[1, row, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        batched_nmf(X, 2, n_rows=torch.tensor([5, 3]))


def test_overflowing_entries_are_named_not_taken_for_nan():
    """Finite entries whose squares (or sums) overflow float32: a clear error that names them and the fix."""
    X = _data(B=2, n=4, C=3).float()
    for scale in (1e20, 1e37):
        with pytest.raises(ValueError, match=r"squares of X's entries overflow torch.float32.*rescale X"):
            batched_nmf(X * scale, 1)


def test_subspace_init_equals_exact_svd_init_when_the_spectrum_has_a_gap():
    """C = 40 > k + 10: the range finder on XᵀX runs; on planted rank-3 data plus noise it gives the init of the
    full eigendecomposition and of sklearn's own nndsvd/nndsvda (its randomized SVD), and a class alone gets the
    same init as inside a batch."""
    g = torch.Generator().manual_seed(11)
    X = (torch.rand(3, 60, 3, generator=g, dtype=torch.float64) @ torch.rand(3, 3, 40, generator=g, dtype=torch.float64)
         + 1e-3 * torch.rand(3, 60, 40, generator=g, dtype=torch.float64))
    for fill, name in [(False, "nndsvd"), (True, "nndsvda")]:
        W, H = nndsvd_init(X, 3, fill=fill, svd="gram")
        We, He = nndsvd_init(X, 3, fill=fill, svd="eigh")
        np.testing.assert_allclose(W.numpy(), We.numpy(), atol=1e-9)
        np.testing.assert_allclose(H.numpy(), He.numpy(), atol=1e-9)
        for b in range(3):
            w, h = _initialize_nmf(X[b].numpy(), 3, init=name, random_state=0)
            np.testing.assert_allclose(W[b].numpy(), w, atol=1e-6)
            np.testing.assert_allclose(H[b].numpy(), h, atol=1e-6)
            Wb, Hb = nndsvd_init(X[b : b + 1], 3, fill=fill, svd="gram")
            assert torch.equal(Wb[0], W[b]) and torch.equal(Hb[0], H[b])


def test_stopping_rule_against_error_trajectory():
    """The stop iteration is the first t >= 10 with (e_{t-10} − e_t) / 10 < tol · e_0, where e_t is read off
    independent fixed-length runs (tol 0, max_iter t: the same deterministic trajectory, stopped at t)."""
    X, k, tol = _data(B=3, n=40, C=12, seed=12), 3, 3e-4
    res = batched_nmf(X, k, tol=tol, max_iter=200)
    W0, H0 = nndsvd_init(X, k)
    e0 = relative_error(X, W0, H0)
    for b in range(3):
        e = {0: float(e0[b])}

        def err(t):
            if t not in e:
                e[t] = float(batched_nmf(X[b : b + 1], k, tol=0.0, max_iter=t).error[0])
            return e[t]

        expected = next(t for t in range(10, 201) if (err(t - 10) - err(t)) / 10 < tol * e[0])
        assert bool(res.converged[b]) and int(res.n_iter[b]) == expected, (b, int(res.n_iter[b]), expected)


def test_relative_error_by_hand():
    X = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]])
    W = torch.tensor([[[1.0], [0.0]]])
    H = torch.tensor([[[3.0, 0.0]]])
    assert torch.allclose(relative_error(X, W, H), torch.tensor([4.0 / 5.0]))


def test_classes_split_over_processes_give_identical_factors():
    """Round-robin shards of the classes (as two processes would get them) reproduce the one-batch result bitwise."""
    X = _data(B=5, n=30, C=8, seed=9).float()
    whole = batched_nmf(X, 3)
    for shard in (torch.arange(0, 5, 2), torch.arange(1, 5, 2)):
        part = batched_nmf(X[shard], 3)
        assert torch.equal(part.H, whole.H[shard]) and torch.equal(part.W, whole.W[shard])
        assert torch.equal(part.n_iter, whole.n_iter[shard]) and torch.equal(part.error, whole.error[shard])


def test_class_rows_by_hand():
    a = torch.arange(8.0).reshape(1, 2, 2, 2)  # one image, C=2, 2x2: pixel (y, x) -> (a[0,0,y,x], a[0,1,y,x])
    b = torch.ones(2, 2, 2, 2)
    X, n = class_rows([a, b])
    assert n.tolist() == [4, 8] and X.shape == (2, 8, 2)
    assert X[0, :4].tolist() == [[0.0, 4.0], [1.0, 5.0], [2.0, 6.0], [3.0, 7.0]] and torch.all(X[0, 4:] == 0)
    with pytest.raises(ValueError, match="every class needs"):
        class_rows([a, torch.ones(1, 3, 2, 2)])


@pytest.mark.parametrize("init", ["nndsvda", "random"])
def test_cache_blocks_change_no_result(init):
    """One class per block (block_bytes=1), two per block, and all at once give bitwise the same factors, also with
    skipped classes between the blocks' members."""
    X = _data(B=5, n=30, C=8, seed=13).float()
    X[2] = 0  # skipped: all zero
    n_rows = torch.tensor([30, 30, 30, 2, 25])  # class 3 skipped: too few rows
    whole = batched_nmf(X, 3, n_rows=n_rows, init=init, block_bytes=10**9)
    assert set(whole.skipped) == {2, 3}
    for block_bytes in (1, 2 * 30 * 8 * 4):
        part = batched_nmf(X, 3, n_rows=n_rows, init=init, block_bytes=block_bytes)
        for name in ("W", "H", "n_iter", "converged", "valid"):
            assert torch.equal(getattr(part, name), getattr(whole, name)), (block_bytes, name)
        assert torch.equal(part.error.isnan(), whole.error.isnan())
        assert torch.equal(part.error.nan_to_num(), whole.error.nan_to_num())
