"""True singular values of the chain products and the determinant check (full frame).

A k-column QR frame carried through the adjoint chain measures how much *that frame* is
stretched; its column logs are not the singular values of the product (only their sum
over a full frame is). For the singular values themselves this pass carries a full
orthonormal D x D frame F through the adjoint chain, QR every step,

    P_{T,T-lag}^T F = Q_lag R_lag ... R_1 = Q_lag A_lag,

so the singular values of P_{T,T-lag} are those of the upper-triangular A_lag (Q_lag and F
are orthogonal). A_lag = R_lag A_{lag-1} is kept column-scaled, A = U diag(exp(c)) with unit
columns U and float64 logs c: a column's growth over one step cannot overflow, so no lag
is too long. :func:`log_singular_values` then reads ln sigma_i off A without forming it:
close values by a float64 SVD of their block, widely spread ones after zero-shift QR
sweeps that decouple them. Against a 200-digit reference over 100-300 nats of spread the
error in ln sigma is typically 1e-11, at most about D eps e^SPAN (1e-7 for D = 6;
tests/test_spectrum.py). A value it cannot resolve is NaN.

The same pass gives every step's ln|diag R| (the full Lyapunov spectrum) and, computed
independently by LU (slogdet), ln|det J_t|: with a full frame sum_i ln|R_ii| = ln|det J_t|
exactly, so the gap between the two measures the engine's round-off.

Backend-generic (numpy, torch, cupy through the ArrayBackend primitives): the steps are the
one chain loop's (:func:`bpttbench.jacobians.loop.frame_loop`, QR every step), each QR step
one backend hook (``ArrayBackend.full_frame_step``: the generic formulas, or on CuPy the
out-of-place QR, R = Q^T M and one fused float64 update kernel), and the
accumulated A and its logs stay on the backend's device; results come back in a few large
transfers per cell (:data:`RESULT_BYTES` each), not per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bpttbench.jacobians.analytic import Saved
from bpttbench.jacobians.backends import Array, ArrayBackend
from bpttbench.jacobians.frame import CHUNK_BYTES, chunk_steps, full_frame
from bpttbench.jacobians.loop import frame_loop

#: widest range (nats) below the largest value of a block that one float64 SVD reports:
#: its relative error there is about D eps e^SPAN (1e-6 for D = 64); lower values are NaN
SPAN = 18.0
#: bytes of each kind of per-step result (ln|diag R|, ln|det J|, the reported lags' A and
#: logs) held on the device before one read-back (planning.memory counts them)
RESULT_BYTES = 64 * 2**20
#: coupled values further apart than this (nats) are first separated by QR sweeps
SWEEP_GAP = 8.0


@dataclass
class FullFrame:
    """What :func:`full_frame_chain` measures, float64 NumPy arrays (natural logs).

    lags:    [L] the lags (1..T) of the rows of log_sv
    log_sv:  [L, B, D] ln sigma_i(P_{T,T-lag}) at lag = lags[row], descending in i
             (NaN where unresolved, -inf for an exactly singular product)
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


def _block_ids(coupled: np.ndarray) -> np.ndarray:
    """[..., n] id of the contiguous block of each index: blocks are the index ranges that no
    coupling (i < j) crosses."""
    n = coupled.shape[-1]
    last = n - 1 - np.argmax(coupled[..., ::-1], axis=-1)  # furthest j coupled to i
    reach = np.where(coupled.any(axis=-1), last, np.arange(n))
    crossed = np.maximum.accumulate(reach, axis=-1)[..., :-1] > np.arange(n - 1)
    zero = np.zeros(crossed.shape[:-1] + (1,), dtype=int)
    return np.concatenate([zero, np.cumsum(~crossed, axis=-1)], axis=-1)


def _blocks(coupled: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous index ranges [lo, hi) that no coupling crosses, of size > 1."""
    ids = _block_ids(coupled)
    starts = np.flatnonzero(np.diff(np.concatenate([[-1], ids])))
    ends = np.concatenate([starts[1:], [ids.size]])
    return [(int(lo), int(hi)) for lo, hi in zip(starts, ends, strict=True) if hi - lo > 1]


def _coupling(u: np.ndarray, logc: np.ndarray, tol: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """(ln|A_ii| [m, n], coupled [m, n, n]: i < j with |A_ij| > tol max(|A_ii|, |A_jj|)).

    An uncoupled pair's singular values are |A_ii|, |A_jj| to a relative (A_ij / max)^2."""
    n = u.shape[-1]
    ln_diag = logc + np.log(np.abs(np.diagonal(u, axis1=-2, axis2=-1)))
    ln_a = np.log(np.abs(u)) + logc[..., None, :]
    rel = ln_a - np.maximum(ln_diag[..., :, None], ln_diag[..., None, :])
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    return ln_diag, upper & (rel > np.log(tol)) & np.isfinite(ln_diag)[..., :, None]


def _wide(ln_diag: np.ndarray, coupled: np.ndarray) -> np.ndarray:
    """[m] whether a block of coupled values holds two more than SWEEP_GAP nats apart (a QR
    sweep multiplies their coupling by about exp(-2 SWEEP_GAP))."""
    ids = _block_ids(coupled)
    same = ids[..., :, None] == ids[..., None, :]
    gap = np.abs(ln_diag[..., :, None] - ln_diag[..., None, :])
    return (same & np.isfinite(gap) & (gap > SWEEP_GAP)).any(axis=(-2, -1))


def log_singular_values(u: np.ndarray, logc: np.ndarray, tol: float = 1e-6,
                        max_sweeps: int = 6) -> np.ndarray:
    """ln sigma(U diag(exp(logc))) descending, [..., n], for U upper triangular.

    Values that are coupled (off-diagonal entries above ``tol`` relative to the diagonal)
    come from a float64 SVD of their diagonal block scaled by its largest column (relative
    error about n eps exp(distance below the block's largest)). Where two coupled values
    lie more than SWEEP_GAP nats apart, zero-shift QR sweeps (A -> R^T of the QR of A^T,
    which keeps the singular values), done on the column-scaled form so that no entry
    overflows, decouple them: each sweep multiplies the coupling of values i < j by about
    (sigma_j / sigma_i)^2, so spread-out (graded) values separate in a few sweeps and are
    read off the diagonal, to the relative accuracy of the Householder QR. A block value
    more than SPAN nats below the block's largest after ``max_sweeps`` sweeps is NaN.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore", under="ignore"):
        n = u.shape[-1]
        lead = u.shape[:-2]
        u = u.reshape((-1, n, n)).copy()
        logc = logc.reshape((-1, n)).astype(np.float64)
        bad = ~(np.isfinite(u).all(axis=(-2, -1)) & ~np.isnan(logc).any(axis=-1))
        u[bad], logc[bad] = np.eye(n), 0.0
        ln_diag, coupled = _coupling(u, logc, tol)
        todo = np.flatnonzero(_wide(ln_diag, coupled))
        for _ in range(max_sweeps):
            if todo.size == 0:
                break
            v, m = _transpose(u[todo], logc[todo])
            r = np.linalg.qr(v, mode="r")
            u[todo], logc[todo] = _unit_columns(r, m)  # upper triangular, same sing. values
            ln_diag[todo], coupled[todo] = _coupling(u[todo], logc[todo], tol)
            todo = todo[_wide(ln_diag[todo], coupled[todo])]
        out = ln_diag.copy()
        by_size: dict[int, list[tuple[int, int]]] = {}  # coupled blocks, batched by size
        for b in np.flatnonzero(coupled.any(axis=(-2, -1))):
            for lo, hi in _blocks(coupled[b]):
                by_size.setdefault(hi - lo, []).append((b, lo))
        for size, where in by_size.items():
            bs, los = np.array([w[0] for w in where]), np.array([w[1] for w in where])
            idx = los[:, None] + np.arange(size)[None, :]  # [nb, size]
            sub = u[bs[:, None, None], idx[:, :, None], idx[:, None, :]]
            sub_c = logc[bs[:, None], idx]
            top = np.max(sub_c, axis=-1, keepdims=True)
            top = np.where(np.isfinite(top), top, 0.0)
            sv = np.log(np.linalg.svd(sub * np.exp(sub_c - top)[:, None, :],
                                      compute_uv=False)) + top
            out[bs[:, None], idx] = np.where(sv - sv[:, :1] >= -SPAN, sv, np.nan)
        out[bad] = np.nan
        # descending; an unresolved (NaN) value keeps the place its diagonal estimate gives
        key = np.where(np.isnan(out), ln_diag, out)
        order = np.argsort(-key, axis=-1, kind="stable")
        return np.take_along_axis(out, order, axis=-1).reshape(lead + (n,))


def _triu_mask(bk: ArrayBackend, dim: int, ref) -> object:
    return bk.like(bk.asarray(np.triu(np.ones((dim, dim)))), ref)


class _DeviceRows:
    """Arrays produced step by step on the backend's device, read back to the host in one
    transfer per ``budget`` bytes (and once at the end), never once per step."""

    def __init__(self, bk: ArrayBackend, budget: int) -> None:
        self.bk, self.budget = bk, budget
        self.pending: list[Array] = []
        self.held = 0
        self.host: list[np.ndarray] = []

    def add(self, a: Array) -> None:
        self.pending.append(a)
        self.held += int(a.nbytes)
        if self.held >= self.budget:
            self.flush()

    def flush(self) -> None:
        if self.pending:  # one array: read it back as it is (no stacked device copy)
            one = len(self.pending) == 1
            rows = self.pending[0][None] if one else self.bk.stack(self.pending, 0)
            self.host.append(self.bk.to_numpy(rows))
            self.pending, self.held = [], 0

    def result(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self.host).astype(np.float64, copy=False)


def report_lags(steps: int, dense: int = 8, total: int = 20) -> np.ndarray:
    """The lags at which singular values are reported: every lag up to ``dense``, then
    about ``total - dense`` geometrically spaced ones up to T (always including T)."""
    if steps <= total:
        return np.arange(1, steps + 1)
    tail = np.geomspace(dense + 1, steps, total - dense).round().astype(int)
    return np.unique(np.concatenate([np.arange(1, dense + 1), tail, [steps]]))


def full_frame_chain(saved: Saved, bk: ArrayBackend, lags: np.ndarray | None = None,
                     frame0: np.ndarray | None = None, chunk: int | None = None) -> FullFrame:
    """Adjoint chain of a full D x D frame (QR every step): ln|diag R| and the independent
    ln|det J| at every lag, singular values at ``lags`` (default: every lag; each lag's
    SVD costs about as much as its QR). See the module docstring.

    Every step runs on the backend's device in its array type: the QR, R = Q^T M, the
    float64 update A_lag = R_lag A_{lag-1} with its column logs (``bk.full_frame_step``),
    ln|det J|. The per-step
    logs and the A of the reported lags are read back in transfers of at most
    :data:`RESULT_BYTES` each (once per cell when they fit), never once per step; the singular
    values are then read off on the host. ``chunk``: time steps of gated Jacobians built at
    once (default: as many as fit :data:`~bpttbench.jacobians.frame.CHUNK_BYTES`).
    """
    steps, batch, dim = saved.steps, saved.batch, saved.dim
    lags = np.arange(1, steps + 1) if lags is None else np.asarray(lags, dtype=int)
    if lags.size == 0 or lags.min() < 1 or lags.max() > steps:
        raise ValueError(f"lags must lie in 1..{steps} (the chain length T)")
    want = set(lags.tolist())
    w = saved.w_hh
    if frame0 is None:
        frame0 = full_frame(dim, dim)
    if chunk is None:
        chunk = chunk_steps(batch, dim, bk.itemsize(w), CHUNK_BYTES)
    q = bk.zeros((batch, dim, dim), w) + bk.like(bk.asarray(frame0), w)
    mask = _triu_mask(bk, dim, w)
    rnn = saved.model.startswith("rnn_")
    # ln|det W| once per cell; stays on the device (a [B]-broadcast float64 array)
    logdet_w = bk.logabsdet(bk.f64(w)) if rnn else None
    # A_0 = I, column-scaled: u unit columns, logc their float64 logs (on the device)
    st = {"u": bk.zeros64((batch, dim, dim), w) + bk.f64(bk.eye(dim, w)),
          "logc": bk.zeros64((batch, dim), w), "dets": None, "lo": 0}
    budget = RESULT_BYTES
    kept_u, kept_c = _DeviceRows(bk, budget), _DeviceRows(bk, budget)
    logdiag, log_det = _DeviceRows(bk, budget), _DeviceRows(bk, budget)

    def on_chunk(lo: int, hi: int, jac: Array | None) -> None:
        if rnn:  # ln|det diag(phi') W| = sum ln|phi'| + ln|det W|
            st["dets"] = bk.sum(bk.log(bk.abs(bk.f64(saved.deriv[lo:hi]))), -1) + logdet_w
        else:  # batched LUs in float64, a quarter of the chunk at a time (bounded copies)
            step = max(1, (hi - lo) // 4)
            st["dets"] = bk.cat([bk.logabsdet(bk.f64(jac[a:a + step]))
                                 for a in range(0, hi - lo, step)], 0)
        st["lo"] = lo

    def on_qr(lag: int, i: int, m: Array) -> Array:
        # M = Q R; A_lag = R_lag A_{lag-1} with unit columns and float64 logs (one backend
        # hook: the generic formulas, or the cupy backend's fused kernels)
        q, logd, st["u"], st["logc"] = bk.full_frame_step(m, st["u"], st["logc"], mask)
        if lag in want:
            kept_u.add(st["u"])
            kept_c.add(st["logc"])
        logdiag.add(logd)
        log_det.add(st["dets"][i - st["lo"]])
        return q

    with bk.loop_context(batch * dim * dim), np.errstate(divide="ignore", invalid="ignore"):
        frame_loop(saved, bk, q, on_qr, qr_every=1, chunk=chunk, on_chunk=on_chunk)
    log_sv = log_singular_values(kept_u.result(), kept_c.result())
    return FullFrame(np.unique(lags), log_sv, logdiag.result(), log_det.result())
