"""Non-negative matrix factorisation of many classes at once, on whatever device the data is on.

The NMF concept method factorises, for every class, a (pixels x channels) matrix of relevance-weighted
activations into a few components: X ≈ W H with W (n, k) per-pixel codes and H (k, C) channel loadings, both
non-negative, minimising the Frobenius error ‖X − W H‖_F. The original runs sklearn on the CPU once per class
(about a day per model and layer with the attributions); here all classes are stacked into one padded tensor
X (B, n, C) and every update is a batched matmul over the classes.

Why hand-written: sklearn has no batched solver and no GPU path; torch has no NMF. ``solver="sklearn"`` keeps
sklearn as the parity backend (a per-class loop, for checking only).

Solvers:

* ``hals`` (default): hierarchical alternating least squares, i.e. exact coordinate descent on one column of W
  (then one row of H) at a time, with the other columns fixed, clipped at 0. It is the same update as sklearn's
  default ``cd`` solver (which the paper used), so results match sklearn's iteration for iteration, and it
  converges in far fewer iterations than multiplicative updates, which also cannot move an entry away from 0
  (zeros of an nndsvd init stay zero for ever).
* ``mu``: Lee & Seung multiplicative updates for the Frobenius loss (sklearn's ``mu``): cheap per step, slower
  to converge; kept for comparison.

Initialisation (``init``):

* ``nndsvd``: non-negative double SVD (Boutsidis & Gallopoulos 2008) from the top-k singular triplets. For
  triplet j > 0 the positive parts (u+, v+) or negative parts (u-, v-) are kept, whichever has the larger
  ‖u±‖‖v±‖. Flipping the sign of a singular pair (u, v) -> (-u, -v), which an SVD may return either way, swaps
  the two parts, so the choice, and the init, do not depend on the SVD's sign convention (only an exact tie
  could); the first triplet uses |u|, |v|. Entries below 1e-6 are set to 0.
* ``nndsvda`` (default, as sklearn >= 1.1): nndsvd with its zeros filled with the class's mean entry, so that
  no entry starts stuck at 0.
* ``random``: sqrt(mean / k) · |N(0, 1)| from a generator seeded with ``seed`` (draws depend on the batch
  shape, so a class padded into another batch starts differently; nndsvd(a) does not).

The top-k singular triplets come from a randomized range finder (Halko et al.) with one Gaussian test matrix
(C, k + 10) shared by all classes, drawn from ``seed`` (so the init is deterministic for a seed and does not
depend on which other classes, or how many padded rows, share the batch), with 7 power iterations; for the
top few triplets it is exact to float precision on the data this method sees.

Padding: class b owns the first ``n_rows[b]`` rows of X[b]; the rest are ignored (set to 0). Zero rows of X
keep zero rows of W under both solvers, so a padded class gets the same factors as when run alone.

Convergence: per class, the relative error e_t = ‖X − W H‖_F / ‖X‖_F is tracked every iteration (from
traces, without forming W H) and a class stops when e_{t-1} − e_t < tol · e_0 (sklearn's rule for ``mu``).
A stopped class is no longer updated; the loop ends when all have stopped or after ``max_iter`` iterations.

Bad input: NaN/inf raise; negative entries raise (naming the minimum and the class), unless
``negative="shift"`` subtracts each class's minimum; a class whose rows are all zero, or that has fewer rows
than components, is skipped with a reason in :attr:`NMFResult.skipped` (its W, H are 0 and its error NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["SOLVERS", "INITS", "NMFResult", "batched_nmf", "nndsvd_init", "relative_error"]

SOLVERS = ("hals", "mu", "sklearn")
INITS = ("nndsvda", "nndsvd", "random", "custom")
_EPS_ZERO = 1e-6  # nndsvd entries below this become exact zeros
_OVERSAMPLE = 10
_POWER_ITERS = 7


@dataclass
class NMFResult:
    """Factors of a batch of B classes.

    Attributes:
        W: (B, n, k) non-negative per-row codes (zero on padded rows and for skipped classes).
        H: (B, k, C) non-negative component loadings (zero for skipped classes).
        error: (B,) relative reconstruction error ‖X − W H‖_F / ‖X‖_F; NaN for skipped classes.
        n_iter: (B,) iterations each class ran.
        converged: (B,) True where the tolerance stopped the class before ``max_iter``.
        valid: (B,) False for skipped classes.
        skipped: {batch index: reason} for the skipped classes.
        shift: (B,) the constant subtracted from each class (0 unless ``negative="shift"``).
    """

    W: torch.Tensor
    H: torch.Tensor
    error: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor
    valid: torch.Tensor
    skipped: dict[int, str] = field(default_factory=dict)
    shift: torch.Tensor | None = None


def relative_error(X: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """(B,) ‖X − W H‖_F / ‖X‖_F for X (B, n, C), W (B, n, k), H (B, k, C); NaN where X is all zero."""
    num = (X - W @ H).flatten(1).norm(dim=1)
    den = X.flatten(1).norm(dim=1)
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(X.dtype).tiny), torch.full_like(den, float("nan")))


def _row_mask(n_rows: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n, 1) 1.0 on the rows each class owns."""
    return (torch.arange(n, device=n_rows.device)[None, :] < n_rows[:, None])[..., None]


def _top_singular(X: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of each X[b] (B, n, C): U (B, n, k), S (B, k), V (B, C, k).

    Randomized range finder: Q = orth((X Xᵀ)^q X Ω) with one test matrix Ω (C, l) for all classes, then the
    exact SVD of the small Qᵀ X (B, l, C).
    """
    B, n, C = X.shape
    l = min(k + _OVERSAMPLE, C)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    omega = torch.randn(C, l, generator=g, dtype=torch.float64).to(device=X.device, dtype=X.dtype)
    Q = torch.linalg.qr(X @ omega).Q  # (B, n, min(n, l))
    for _ in range(_POWER_ITERS):
        Q = torch.linalg.qr(X.transpose(1, 2) @ Q).Q  # (B, C, .)
        Q = torch.linalg.qr(X @ Q).Q  # (B, n, .)
    Ub, S, Vh = torch.linalg.svd(Q.transpose(1, 2) @ X, full_matrices=False)
    U = Q @ Ub
    return U[:, :, :k], S[:, :k], Vh[:, :k, :].transpose(1, 2)


def nndsvd_init(
    X: torch.Tensor, k: int, n_rows: torch.Tensor | None = None, fill: bool = True, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """NNDSVD starting factors of every class, vectorised over classes and components.

    Args:
        X: (B, n, C) non-negative, rows past ``n_rows[b]`` zero.
        k: components, 1 <= k <= min(n, C).
        n_rows: (B,) rows each class owns (default: all n).
        fill: fill the zeros with the class's mean entry (``nndsvda``) rather than leave them (``nndsvd``).
        seed: seed of the randomized SVD's test matrix.

    Returns:
        W0 (B, n, k) (zero on padded rows), H0 (B, k, C).
    """
    B, n, C = X.shape
    if n_rows is None:
        n_rows = torch.full((B,), n, device=X.device, dtype=torch.long)
    U, S, V = _top_singular(X, k, seed)
    rows = _row_mask(n_rows, n).to(X.dtype)
    U = U * rows
    up, un = U.clamp(min=0), (-U).clamp(min=0)
    vp, vn = V.clamp(min=0), (-V).clamp(min=0)
    tiny = torch.finfo(X.dtype).tiny
    upn, unn = up.norm(dim=1), un.norm(dim=1)  # (B, k)
    vpn, vnn = vp.norm(dim=1), vn.norm(dim=1)
    mp, mn = upn * vpn, unn * vnn
    pos = mp > mn  # (B, k)
    u = torch.where(pos[:, None, :], up / upn.clamp(min=tiny)[:, None, :], un / unn.clamp(min=tiny)[:, None, :])
    v = torch.where(pos[:, None, :], vp / vpn.clamp(min=tiny)[:, None, :], vn / vnn.clamp(min=tiny)[:, None, :])
    sigma = torch.where(pos, mp, mn)
    # the leading triplet: |u|, |v| (its parts are sign-consistent for a non-negative matrix)
    u[:, :, 0] = U[:, :, 0].abs()
    v[:, :, 0] = V[:, :, 0].abs()
    sigma[:, 0] = 1.0
    lam = (S * sigma).clamp(min=0).sqrt()  # (B, k)
    W = u * lam[:, None, :]
    H = (v * lam[:, None, :]).transpose(1, 2)
    W = torch.where(W < _EPS_ZERO, torch.zeros_like(W), W)
    H = torch.where(H < _EPS_ZERO, torch.zeros_like(H), H)
    if fill:
        avg = X.sum(dim=(1, 2)) / (n_rows.to(X.dtype) * C).clamp(min=1)  # (B,) mean over owned entries
        W = torch.where(W == 0, avg[:, None, None].expand_as(W), W) * rows
        H = torch.where(H == 0, avg[:, None, None].expand_as(H), H)
    return W, H


def _random_init(X: torch.Tensor, k: int, n_rows: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, n, C = X.shape
    avg = (X.sum(dim=(1, 2)) / (n_rows.to(X.dtype) * C).clamp(min=1) / k).sqrt()
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    H = torch.randn(B, k, C, generator=g, dtype=torch.float64).abs().to(X.device, X.dtype) * avg[:, None, None]
    W = torch.randn(B, n, k, generator=g, dtype=torch.float64).abs().to(X.device, X.dtype) * avg[:, None, None]
    return W * _row_mask(n_rows, n).to(X.dtype), H


def _hals_step(X: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One HALS sweep (all columns of W, then all rows of H); returns W, H and the new squared error (B,)."""
    k = W.shape[2]
    XHt = X @ H.transpose(1, 2)  # (B, n, k)
    HHt = H @ H.transpose(1, 2)  # (B, k, k)
    W = W.clone()
    for t in range(k):
        hess = HHt[:, t, t]  # (B,)
        grad = (W @ HHt[:, :, t : t + 1])[:, :, 0] - XHt[:, :, t]  # (B, n)
        upd = (W[:, :, t] - grad / hess.clamp(min=torch.finfo(X.dtype).tiny)[:, None]).clamp(min=0)
        W[:, :, t] = torch.where(hess[:, None] > 0, upd, W[:, :, t])
    WtX = W.transpose(1, 2) @ X  # (B, k, C)
    WtW = W.transpose(1, 2) @ W  # (B, k, k)
    H = H.clone()
    for t in range(k):
        hess = WtW[:, t, t]
        grad = (WtW[:, t : t + 1, :] @ H)[:, 0, :] - WtX[:, t, :]  # (B, C)
        upd = (H[:, t, :] - grad / hess.clamp(min=torch.finfo(X.dtype).tiny)[:, None]).clamp(min=0)
        H[:, t, :] = torch.where(hess[:, None] > 0, upd, H[:, t, :])
    return W, H, _sq_error(X, WtX, WtW, H)


def _mu_step(X: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One multiplicative update of W then H (Frobenius loss); zero denominators become float32 eps."""
    eps = torch.finfo(torch.float32).eps
    HHt = H @ H.transpose(1, 2)
    den = W @ HHt
    W = W * (X @ H.transpose(1, 2)) / torch.where(den == 0, torch.full_like(den, eps), den)
    WtX = W.transpose(1, 2) @ X
    WtW = W.transpose(1, 2) @ W
    den = WtW @ H
    H = H * WtX / torch.where(den == 0, torch.full_like(den, eps), den)
    return W, H, _sq_error(X, WtX, WtW, H)


def _sq_error(X: torch.Tensor, WtX: torch.Tensor, WtW: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """(B,) ‖X − W H‖²_F = ‖X‖² − 2⟨WᵀX, H⟩ + ⟨WᵀW, H Hᵀ⟩ without forming W H."""
    xx = X.flatten(1).pow(2).sum(1)
    cross = (WtX * H).flatten(1).sum(1)
    quad = (WtW * (H @ H.transpose(1, 2))).flatten(1).sum(1)
    return (xx - 2 * cross + quad).clamp(min=0)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"batched_nmf: {name} must be an int >= {low}, got {value!r}")
    return value


def batched_nmf(
    X: torch.Tensor,
    k: int,
    *,
    n_rows: torch.Tensor | None = None,
    solver: str = "hals",
    init: str = "nndsvda",
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int = 0,
    negative: str = "error",
    W0: torch.Tensor | None = None,
    H0: torch.Tensor | None = None,
) -> NMFResult:
    """Factorise every class X[b] ≈ W[b] H[b] with non-negative factors, all classes at once.

    Args:
        X: (B, n, C) non-negative float; class b owns rows ``[:n_rows[b]]`` (the rest is ignored).
        k: components per class, 1 <= k <= C.
        n_rows: (B,) int rows per class, 0..n (default: n for all).
        solver: ``hals`` (default, see the module docstring), ``mu``, or ``sklearn`` (a per-class loop over
            ``sklearn.decomposition.NMF`` with solver ``cd``, for parity checks; its ``tol`` follows sklearn's own
            stopping rule).
        init: ``nndsvda`` (default), ``nndsvd``, ``random``, or ``custom`` (then ``W0`` and ``H0`` are used).
        max_iter: iterations at most, >= 1.
        tol: relative-improvement tolerance, >= 0 (0: run ``max_iter`` iterations).
        seed: seed of the randomized SVD (nndsvd/nndsvda) or of the random init, >= 0.
        negative: ``error`` (default) raises on a negative entry; ``shift`` subtracts each class's minimum
            (over its own rows) first, so the factors describe X − min instead of X (recorded in ``shift``).
        W0, H0: (B, n, k) and (B, k, C) non-negative starting factors for ``init="custom"``.

    Returns:
        :class:`NMFResult`.
    """
    if not isinstance(X, torch.Tensor) or X.dim() != 3:
        raise ValueError(f"batched_nmf: X must be a (B, n, C) tensor, got {getattr(X, 'shape', type(X))}")
    if not X.is_floating_point():
        X = X.float()
    B, n, C = X.shape
    _check_int("k", k, 1)
    if k > C:
        raise ValueError(f"batched_nmf: k={k} components exceed the C={C} columns (channels); use k <= {C}")
    _check_int("max_iter", max_iter, 1)
    _check_int("seed", seed, 0)
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol >= 0:
        raise ValueError(f"batched_nmf: tol must be a number >= 0, got {tol!r}")
    if solver not in SOLVERS:
        raise ValueError(f"batched_nmf: solver must be one of {SOLVERS}, got {solver!r}")
    if init not in INITS:
        raise ValueError(f"batched_nmf: init must be one of {INITS}, got {init!r}")
    if negative not in ("error", "shift"):
        raise ValueError(f"batched_nmf: negative must be 'error' or 'shift', got {negative!r}")
    if n_rows is None:
        n_rows = torch.full((B,), n, dtype=torch.long, device=X.device)
    n_rows = torch.as_tensor(n_rows, device=X.device).long()
    if n_rows.shape != (B,) or bool(((n_rows < 0) | (n_rows > n)).any()):
        raise ValueError(f"batched_nmf: n_rows must be (B,)=({B},) ints in 0..{n}, got {n_rows.tolist()}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError("batched_nmf: X contains NaN or inf; check the activations / relevance maps feeding it")
    rows = _row_mask(n_rows, n)
    X = X * rows.to(X.dtype)
    big = torch.tensor(float("inf"), dtype=X.dtype, device=X.device)
    mins = torch.where(rows, X, big).amin(dim=(1, 2))  # (B,) inf for classes without rows
    shift = torch.zeros(B, dtype=X.dtype, device=X.device)
    if bool((mins < 0).any()):
        b = int(mins.argmin())
        if negative == "error":
            raise ValueError(
                f"batched_nmf: X has negative entries (min {float(mins[b]):.4g} in class {b}); NMF needs "
                "non-negative activations: probe a layer after a ReLU, or pass negative='shift' to subtract each "
                "class's minimum (the components then describe X - min)")
        shift = torch.where(torch.isfinite(mins) & (mins < 0), mins, shift)
        X = (X - shift[:, None, None]) * rows.to(X.dtype)

    skipped: dict[int, str] = {}
    zero = X.flatten(1).abs().amax(dim=1) == 0
    for b in torch.nonzero((n_rows < k) | zero).flatten().tolist():
        nb = int(n_rows[b])
        skipped[b] = (f"{nb} rows < k={k} components: give the class more images or lower k" if nb < k else
                      "all-zero activations: NMF is undefined (every factorisation fits); nothing to explain")
    valid = torch.ones(B, dtype=torch.bool, device=X.device)
    if skipped:
        valid[list(skipped)] = False

    if init == "custom":
        if W0 is None or H0 is None or W0.shape != (B, n, k) or H0.shape != (B, k, C):
            raise ValueError(f"batched_nmf: init='custom' needs W0 ({B}, {n}, {k}) and H0 ({B}, {k}, {C}), got "
                             f"{None if W0 is None else tuple(W0.shape)} and {None if H0 is None else tuple(H0.shape)}")
        if bool((W0 < 0).any()) or bool((H0 < 0).any()):
            raise ValueError("batched_nmf: W0 and H0 must be non-negative")
        W, H = W0.to(X) * rows.to(X.dtype), H0.to(X).clone()
    elif not bool(valid.any()):
        W, H = X.new_zeros(B, n, k), X.new_zeros(B, k, C)
    elif init == "random":
        W, H = _random_init(X, k, n_rows, seed)
    else:
        W, H = nndsvd_init(X, k, n_rows, fill=init == "nndsvda", seed=seed)
    vmask = valid[:, None, None].to(X.dtype)
    W, H = W * vmask, H * vmask

    if solver == "sklearn":
        return _sklearn_loop(X, k, n_rows, valid, skipped, shift, init, W, H, max_iter, tol, seed)

    step = _hals_step if solver == "hals" else _mu_step
    xnorm2 = X.flatten(1).pow(2).sum(1)
    xnorm = xnorm2.sqrt().clamp(min=torch.finfo(X.dtype).tiny)
    err0 = _sq_error(X, W.transpose(1, 2) @ X, W.transpose(1, 2) @ W, H).sqrt() / xnorm  # (B,)
    prev = err0.clone()
    n_iter = torch.zeros(B, dtype=torch.long, device=X.device)
    converged = torch.zeros(B, dtype=torch.bool, device=X.device)
    active = valid.clone()
    idx = torch.nonzero(active).flatten()
    Xa = X[idx]
    for _ in range(max_iter):
        if idx.numel() == 0:
            break
        Wa, Ha, sq = step(Xa, W[idx], H[idx])
        W[idx], H[idx] = Wa, Ha
        n_iter[idx] += 1
        err = sq.sqrt() / xnorm[idx]
        done = (prev[idx] - err) < tol * err0[idx]
        prev[idx] = err
        if bool(done.any()):
            converged[idx[done]] = True
            keep = ~done
            idx, Xa = idx[keep], Xa[keep]
    error = relative_error(X, W, H)
    error = torch.where(valid, error, torch.full_like(error, float("nan")))
    return NMFResult(W=W, H=H, error=error, n_iter=n_iter, converged=converged, valid=valid, skipped=skipped,
                     shift=shift)


def _sklearn_loop(X, k, n_rows, valid, skipped, shift, init, W, H, max_iter, tol, seed) -> NMFResult:
    """The parity backend: sklearn.decomposition.NMF(solver='cd') on each class in turn (CPU, float64)."""
    import warnings

    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    B, n, C = X.shape
    W_out, H_out = torch.zeros_like(W), torch.zeros_like(H)
    n_iter = torch.zeros(B, dtype=torch.long, device=X.device)
    converged = torch.zeros(B, dtype=torch.bool, device=X.device)
    for b in torch.nonzero(valid).flatten().tolist():
        nb = int(n_rows[b])
        xb = X[b, :nb].detach().cpu().double().numpy()
        model = NMF(n_components=k, init=init, solver="cd", max_iter=max_iter, tol=tol, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if init == "custom":
                wb = model.fit_transform(xb, W=W[b, :nb].detach().cpu().double().numpy().copy(),
                                         H=H[b].detach().cpu().double().numpy().copy())
            else:
                wb = model.fit_transform(xb)
        W_out[b, :nb] = torch.from_numpy(wb).to(W_out)
        H_out[b] = torch.from_numpy(model.components_).to(H_out)
        n_iter[b] = int(model.n_iter_)
        converged[b] = int(model.n_iter_) < max_iter
    error = relative_error(X, W_out, H_out)
    error = torch.where(valid, error, torch.full_like(error, float("nan")))
    return NMFResult(W=W_out, H=H_out, error=error, n_iter=n_iter, converged=converged, valid=valid,
                     skipped=skipped, shift=shift)
