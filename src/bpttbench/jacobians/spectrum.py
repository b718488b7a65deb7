"""True singular values of the chain products and the determinant check (full frame).

A k-column QR frame carried through the adjoint chain measures how much *that frame* is
stretched; its column logs are not the singular values of the product (only their sum
over a full frame is). For the singular values themselves this pass carries a full
orthonormal D x D frame F through the adjoint chain, QR every step,

    P_{T,T-lag}^T F = Q_lag R_lag ... R_1 = Q_lag A_lag,

so the singular values of P_{T,T-lag} are those of the upper-triangular A_lag (Q_lag and F
are orthogonal). A_lag = R_lag A_{lag-1} is kept column-scaled, A = U diag(exp(c)) with unit
columns U and float64 logs c: a column's growth over one step cannot overflow, so no lag
is too long. ln sigma_i(A) = max(c) + ln sigma_i(U diag(exp(c - max c))) by a float64 SVD,
whose error is about D eps sigma_1: ln sigma_i is resolved where sigma_i > RESOLVE sigma_1,
and reported NaN below that (not a number the SVD can give).

The same pass gives every step's ln|diag R| (the full Lyapunov spectrum) and, computed
independently by LU (slogdet), ln|det J_t|: with a full frame sum_i ln|R_ii| = ln|det J_t|
exactly, so the gap between the two measures the engine's round-off.

Backend-generic (numpy, torch, cupy through the ArrayBackend primitives); no kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bpttbench.jacobians.analytic import Saved, step_jacobians
from bpttbench.jacobians.backends import ArrayBackend

#: smallest sigma_i / sigma_1 reported: below it a float64 SVD resolves nothing (~D eps)
RESOLVE = 1e-11


@dataclass
class FullFrame:
    """What :func:`full_frame_chain` measures, float64 NumPy arrays (natural logs).

    lags:    [L] the lags (1..T) of the rows of log_sv
    log_sv:  [L, B, D] ln sigma_i(P_{T,T-lag}) at lag = lags[row], descending in i
             (NaN where sigma_i < RESOLVE sigma_1, -inf for an exactly singular product)
    logdiag: [T, B, D] ln|diag R| of the QR at lag = row + 1 (column i: i-th Lyapunov direction)
    log_det: [T, B] ln|det J| of the Jacobian applied at lag = row + 1, by LU (slogdet)
    """

    lags: np.ndarray
    log_sv: np.ndarray
    logdiag: np.ndarray
    log_det: np.ndarray


def _unit_columns(v: np.ndarray, logscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v with unit columns, logscale + ln column norms); zero columns stay zero (-inf)."""
    nrm = np.sqrt((v * v).sum(axis=-2))
    return v * np.where(nrm > 0, 1.0 / nrm, 0.0)[..., None, :], logscale + np.log(nrm)


def _transpose(u: np.ndarray, logc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U diag e^c)^T in column-scaled form, without forming e^c (no overflow)."""
    t = np.swapaxes(u, -1, -2)
    logs = np.log(np.abs(t)) + logc[..., :, None]  # ln|A^T[i, j]|
    top = np.max(logs, axis=-2)
    top = np.where(np.isfinite(top), top, 0.0)
    return _unit_columns(np.sign(t) * np.exp(logs - top[..., None, :]), top)


def _blocks(coupled: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous index ranges [lo, hi) that no coupling crosses, of size > 1."""
    n = coupled.shape[-1]
    reach = np.where(coupled.any(axis=-1), n - 1 - np.argmax(coupled[:, ::-1], axis=-1),
                     np.arange(n))
    crossed = np.maximum.accumulate(reach)[:-1] > np.arange(n - 1)
    out, lo = [], 0
    for i in range(n - 1):
        if not crossed[i]:
            if i + 1 - lo > 1:
                out.append((lo, i + 1))
            lo = i + 1
    if n - lo > 1:
        out.append((lo, n))
    return out


def log_singular_values(u: np.ndarray, logc: np.ndarray, tol: float = 1e-9,
                        sweeps: int = 4) -> np.ndarray:
    """ln sigma(U diag(exp(logc))) descending, [..., n], for U upper triangular.

    Zero-shift QR sweeps (A -> R^T of the QR of A^T, which keeps the singular values),
    done on the column-scaled form so that no entry overflows: each sweep multiplies the
    coupling of singular values i < j by about (sigma_j / sigma_i)^2, so widely spread
    (graded) values decouple in a few sweeps and are read off the diagonal, to the
    relative accuracy of the Householder QR. Values still coupled after the sweeps (close
    to each other, in contiguous diagonal blocks) come from a float64 SVD of their block
    scaled by its largest column; where a block spans more than 1/RESOLVE they are NaN.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore", under="ignore"):
        n = u.shape[-1]
        lead = u.shape[:-2]
        u = u.reshape((-1, n, n)).copy()
        logc = logc.reshape((-1, n)).astype(np.float64)
        bad = ~(np.isfinite(u).all(axis=(-2, -1)) & ~np.isnan(logc).any(axis=-1))
        u[bad], logc[bad] = np.eye(n), 0.0
        upper = np.triu(np.ones((n, n), dtype=bool), 1)
        for _ in range(sweeps):
            v, m = _transpose(u, logc)
            r = np.linalg.qr(v, mode="r")
            u, logc = _unit_columns(r, m)  # upper triangular, same singular values
        ln_diag = logc + np.log(np.abs(np.diagonal(u, axis1=-2, axis2=-1)))
        # |A_ij| relative to the smaller of |A_ii|, |A_jj| (coupling of i and j)
        ln_a = np.log(np.abs(u)) + logc[..., None, :]
        rel = ln_a - np.minimum(ln_diag[..., :, None], ln_diag[..., None, :])
        coupled = upper & (rel > np.log(tol))
        out = ln_diag.copy()
        for b in np.flatnonzero(coupled.any(axis=(-2, -1))):  # close values: SVD of the block
            for lo, hi in _blocks(coupled[b]):
                sub_c = logc[b, lo:hi]
                top = np.max(sub_c)
                if not np.isfinite(top):
                    continue
                sv = np.log(np.linalg.svd(u[b, lo:hi, lo:hi] * np.exp(sub_c - top)[None, :],
                                          compute_uv=False)) + top
                out[b, lo:hi] = np.where(sv - sv[0] >= np.log(RESOLVE), sv, np.nan)
        out[bad] = np.nan
        return -np.sort(-out, axis=-1).reshape(lead + (n,))  # descending, NaN last


def _triu_mask(bk: ArrayBackend, dim: int, ref) -> object:
    return bk.like(bk.asarray(np.triu(np.ones((dim, dim)))), ref)


def report_lags(steps: int, dense: int = 12, total: int = 32) -> np.ndarray:
    """The lags at which singular values are reported: every lag up to ``dense``, then
    about ``total - dense`` geometrically spaced ones up to T (always including T)."""
    if steps <= total:
        return np.arange(1, steps + 1)
    tail = np.geomspace(dense + 1, steps, total - dense).round().astype(int)
    return np.unique(np.concatenate([np.arange(1, dense + 1), tail, [steps]]))


def full_frame_chain(saved: Saved, bk: ArrayBackend, lags: np.ndarray | None = None,
                     frame0: np.ndarray | None = None, chunk: int = 64) -> FullFrame:
    """Adjoint chain of a full D x D frame (QR every step): ln|diag R| and the independent
    ln|det J| at every lag, singular values at ``lags`` (default: every lag; each lag's
    SVD costs about as much as its QR). See the module docstring."""
    steps, batch, dim = saved.steps, saved.batch, saved.dim
    lags = np.arange(1, steps + 1) if lags is None else np.asarray(lags, dtype=int)
    if lags.size == 0 or lags.min() < 1 or lags.max() > steps:
        raise ValueError(f"lags must lie in 1..{steps} (the chain length T)")
    want = set(lags.tolist())
    w = saved.w_hh
    if frame0 is None:
        from bpttbench.jacobians.chain import initial_frame

        frame0 = initial_frame(dim, dim)
    q = bk.zeros((batch, dim, dim), w) + bk.like(bk.asarray(frame0), w)
    mask = _triu_mask(bk, dim, w)
    u = np.broadcast_to(np.eye(dim), (batch, dim, dim)).copy()  # A_0 = I, column-scaled
    logc = np.zeros((batch, dim))
    rnn = saved.model.startswith("rnn_")
    w_t = bk.mT(w)
    if rnn:  # ln|det diag(phi') W| = sum ln|phi'| + ln|det W|
        logdet_w = float(bk.to_numpy(bk.logabsdet(bk.f64(w))))
    kept_u, kept_c, logdiag, log_det = [], [], [], []
    with bk.small_problem(batch * dim * dim), np.errstate(divide="ignore", invalid="ignore"):
        for hi in range(steps, 0, -chunk):
            lo = max(0, hi - chunk)
            jac = None if rnn else step_jacobians(saved, bk, lo, hi)
            for i in range(hi - 1, lo - 1, -1):
                if rnn:
                    d = saved.deriv[i]
                    m = w_t @ (d[..., :, None] * q)
                    ld = bk.to_numpy(bk.sum(bk.log(bk.abs(bk.f64(d))), -1)) + logdet_w
                else:
                    m = bk.mT(jac[i - lo]) @ q
                    ld = bk.to_numpy(bk.logabsdet(bk.f64(jac[i - lo])))
                q, logd = bk.qr_logdiag(m)
                r = (bk.mT(q) @ m) * mask  # the R of m = Q R (upper triangle, diag >= 0)
                v = bk.to_numpy(bk.f64(r)) @ u  # R_lag A_{lag-1}, one step of growth
                nrm = np.sqrt((v * v).sum(axis=-2))
                u = v * np.where(nrm > 0, 1.0 / nrm, 0.0)[..., None, :]
                logc = logc + np.log(nrm)
                if steps - i in want:
                    kept_u.append(u)
                    kept_c.append(logc)
                logdiag.append(bk.to_numpy(logd).astype(np.float64))
                log_det.append(np.asarray(ld, dtype=np.float64))
    log_sv = log_singular_values(np.stack(kept_u), np.stack(kept_c))
    return FullFrame(np.unique(lags), log_sv, np.stack(logdiag), np.stack(log_det))
