"""The adjoint chain: products of transposed Jacobians, tracked in log scale.

BPTT propagates the error backward with the transposed Jacobians,

    delta_t = J_{t+1}^T delta_{t+1} = P_{T,t}^T delta_T,    P_{T,t} = J_T ... J_{t+1},

so the engine applies J_T^T, J_{T-1}^T, ..., J_1^T in that order to a frame of k
orthonormal vectors (the one loop: :func:`bpttbench.jacobians.loop.frame_loop`). Every step
the columns are rescaled to unit norm (the log of the scale goes into a float64
accumulator), and every ``qr_every`` steps (and at the last step) the frame is
re-orthonormalised by a sign-fixed QR whose log|diag R| is added to the float64 totals.
The totals after lag steps are the log stretching factors of the frame; their slopes over
a window that leaves out the alignment and forward transients are the (finite-time)
Lyapunov exponents. They are *not* the singular values of P_{T,T-lag}: those come from the
full-frame pass in :mod:`bpttbench.jacobians.spectrum`. See docs/NUMERICS.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from bpttbench.jacobians.analytic import Saved, forward_saved, step_jacobians
from bpttbench.jacobians.backends import Array, ArrayBackend
from bpttbench.jacobians.frame import (  # noqa: F401 - CHUNK_BYTES, FRAME_SEED re-exported
    CHUNK_BYTES,
    FRAME_SEED,
    chunk_steps,
    full_frame,
    initial_frame,
)
from bpttbench.jacobians.loop import frame_loop
from bpttbench.jacobians.registry import array_backend, backend_for, chain_backends, resolve_backend
from bpttbench.jacobians.spectrum import full_frame_chain
from bpttbench.models import check_model, state_size


@dataclass
class ChainResult:
    """What :func:`analyse_chain` measures (natural logs, per step).

    The adjoint chain runs over lags 1..T (lag = T - t). Lags 1..warmup_align are the
    alignment transient of the frame, lags past T - warmup_forward the forward transient
    (states near s_0); the exponents use only the window between them (L = T - both lags).

    exponents:       [k] float64 Lyapunov exponents over the window: each batch element's
                     (log stretching at lag T - warmup_forward minus that at lag warmup_align)
                     / L, its k values sorted descending, then the mean over the batch
    exponents_std:   [k] their standard deviation over the batch (ddof=0)
    exponents_se:    [k] standard error of the batch mean (ddof=1 / sqrt(B)); batch elements
                     share the weights, so this is the error given the weights
    exponents_half:  [2, k] batch-mean exponents over the first and the second half of the
                     window (lag order; frame column order): a convergence check
    frame_log_stretch: [T, k] row lag-1: batch mean of the accumulated log stretching of the
                     k columns of the QR frame after ``lag`` steps (frame order). Not the
                     singular values of the product (only their sum over a full frame is)
    sv_lags:         [L] lags of the rows of log_sv (None without singular values)
    log_sv:          [L, k] batch mean of ln sigma_i(P_{T,T-lag}), i = 1..k, the true
                     singular values (full-frame pass, :mod:`.spectrum`); NaN where sigma_i is
                     below the float64 SVD's resolution; None when not requested
    sum_exponents:   sum of all D exponents over the window (full frame; NaN without it)
    mean_log_det:    mean of ln|det J_t| over the same steps and the batch, by LU
    warmup_forward, warmup_align: the transients left out (steps)
    backend:         the backend actually used ("numpy", "torch", "cupy")
    steps:           T
    """

    exponents: np.ndarray
    exponents_std: np.ndarray
    exponents_se: np.ndarray
    exponents_half: np.ndarray
    frame_log_stretch: np.ndarray
    sv_lags: np.ndarray | None
    log_sv: np.ndarray | None
    sum_exponents: float
    mean_log_det: float
    warmup_forward: int
    warmup_align: int
    backend: str
    steps: int

    @property
    def det_gap(self) -> float:
        """sum of the exponents minus mean ln|det J|: zero up to the engine's round-off."""
        return self.sum_exponents - self.mean_log_det


def check_k(model: str, hidden: int, k: int) -> int:
    dim = state_size(model, hidden)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= dim:
        raise ValueError(
            f"k={k!r} is out of range: the frame size k must be an integer in 1..{dim} "
            f"(the state dimension D of {model} with hidden size {hidden})"
        )
    return int(k)


def _chunk_steps(batch: int, dim: int, itemsize: int) -> int:
    """Time steps of Jacobians built at once (reads :data:`CHUNK_BYTES` at call time)."""
    return chunk_steps(batch, dim, itemsize, CHUNK_BYTES)


class _Accumulators:
    """The k-frame chain's float64 logs: ``total`` up to the last QR, ``scale`` since it,
    and one batch-mean row per lag."""

    def __init__(self, bk: ArrayBackend, batch: int, k: int, ref: Array) -> None:
        self.bk = bk
        self.scale = bk.zeros64((batch, k), ref)  # log column scales since the last QR
        self.total = bk.zeros64((batch, k), ref)  # log|diag R| (+ scales) up to the last QR
        self.rows: list[Array] = []

    def qr(self, lag: int, i: int, m: Array) -> Array:
        # one step of growth since the last rescale cannot overflow: QR directly
        q, self.total, self.scale = self.bk.qr_accumulate(m, self.total, self.scale)
        self.rows.append(self.bk.mean(self.total, 0))
        return q

    def rescale(self, lag: int, i: int, m: Array) -> Array:
        # rescale the columns to unit norm, keep the log scales in float64
        q, self.scale, row = self.bk.rescale_accumulate(m, self.total, self.scale)
        self.rows.append(self.bk.mean(row, 0))
        return q


def run_chain(
    saved: Saved, bk: ArrayBackend, k: int, qr_every: int = 1, frame0: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Adjoint chain over all T steps of ``saved``.

    Returns (totals [B, k], log_sv rows [T, k]) as float64 NumPy arrays; totals are the
    accumulated log stretching of each batch element's frame after the final QR. A backend
    with a fused whole-chain kernel runs it (:meth:`ArrayBackend.fused_chain`); every other
    case runs the one loop, :func:`bpttbench.jacobians.loop.frame_loop`.
    """
    batch, dim = saved.batch, saved.dim
    if frame0 is None:
        frame0 = initial_frame(dim, k)
    fused = bk.fused_chain(saved, k, qr_every, frame0)
    if fused is not None:
        return fused
    w = saved.w_hh
    q = bk.zeros((batch, dim, k), w) + bk.like(bk.asarray(frame0), w)
    acc = _Accumulators(bk, batch, k, w)
    itemsize = int(getattr(w, "itemsize", None) or w.element_size())
    with bk.loop_context(batch * dim * k):
        frame_loop(saved, bk, q, acc.qr, acc.rescale, qr_every=qr_every,
                   chunk=_chunk_steps(batch, dim, itemsize))
    return (bk.to_numpy(acc.total).astype(np.float64),
            bk.to_numpy(bk.stack(acc.rows, 0)).astype(np.float64))


def k_frame_from_full(logdiag: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`run_chain`'s (totals [B, k], rows [T, k]) with a QR every step, read off the
    full-frame pass's ln|diag R| [T, B, D] instead of a second chain: the full frame starts
    with the k-frame as its first k columns (``frame.full_frame``), and a QR's first k columns
    and R entries depend on the first k columns alone (Gram-Schmidt), so its first k logs at
    every lag are the k-frame chain's (equal to rounding; tests/test_jacobians.py)."""
    with np.errstate(invalid="ignore"):  # -inf (a dead relu direction) + -inf stays -inf
        cum = np.cumsum(logdiag[:, :, :k], axis=0)
        return cum[-1].copy(), cum.mean(axis=1)


def slice_saved(saved: Saved, lo: int, hi: int) -> Saved:
    """The forward record of steps [lo, hi) only (a chain of hi - lo steps ending at hi)."""
    arrays = {f: getattr(saved, f)[lo:hi] for f in ("deriv", "gates", "dgates", "prev", "aux",
                                                    "aux2") if getattr(saved, f) is not None}
    return replace(saved, steps=hi - lo, **arrays)


def check_shared_record(saved: Saved, backend: str, model: str,
                        params: Mapping[str, torch.Tensor], x: torch.Tensor) -> Saved:
    """``saved`` if it is a forward record of this model, shape, dtype and device that the
    chain ``backend`` can adopt; else a ValueError naming the mismatch."""
    if backend not in ("torch", "cupy"):
        raise ValueError(f"a shared forward record needs the torch or cupy backend, not "
                         f"{backend!r} (numpy runs its own float64 forward)")
    w = params["weight_hh_l0"]
    want = (model, int(w.shape[1]), int(x.shape[0]), int(x.shape[1]))
    have = (saved.model, saved.hidden, saved.steps, saved.batch)
    if have != want:
        raise ValueError(f"shared forward record is (model, H, T, B) = {have}; the chain "
                         f"needs {want}")
    rec = saved.w_hh
    if not isinstance(rec, torch.Tensor) or (rec.dtype, rec.device) != (w.dtype, w.device):
        raise ValueError("shared forward record must hold torch tensors of the params' dtype "
                         f"and device ({w.dtype}, {w.device}), got {type(rec).__name__} "
                         f"{getattr(rec, 'dtype', '?')} on {getattr(rec, 'device', '?')}")
    return saved


def check_warmups(steps: int, warmup_forward: int, warmup_align: int) -> None:
    for name, v in (("warmup_forward", warmup_forward), ("warmup_align", warmup_align)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ValueError(f"{name}={v!r} must be an integer >= 0")
    if steps - warmup_forward - warmup_align < 2:
        raise ValueError(
            f"warmup_forward={warmup_forward} + warmup_align={warmup_align} leave fewer than 2 "
            f"of the T={steps} steps for the Lyapunov exponents; use a longer sequence or "
            "shorter warm-ups")


def _window_exponents(saved: Saved, bk: ArrayBackend, k: int, qr_every: int,
                      totals: np.ndarray, wf: int, wa: int) -> np.ndarray:
    """Per-element exponents [B, k] over lags wa+1 .. T-wf: the stretching of the frame at
    lag T-wf minus that at lag wa (both from chains that start at lag 1 with the same frame
    and end in a QR), over the window length."""
    steps = saved.steps
    end = totals if wf == 0 else run_chain(slice_saved(saved, wf, steps), bk, k, qr_every)[0]
    start = 0.0 if wa == 0 else run_chain(slice_saved(saved, steps - wa, steps), bk, k,
                                          qr_every)[0]
    return (end - start) / (steps - wf - wa)


def analyse_chain(
    model: str,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    state0: tuple[torch.Tensor, ...] | None = None,
    *,
    k: int,
    qr_every: int = 1,
    backend: str = "auto",
    warmup_forward: int = 0,
    warmup_align: int = 0,
    singular_values: bool = True,
    sv_lags: np.ndarray | None = None,
    saved: Saved | None = None,
) -> ChainResult:
    """Lyapunov exponents, frame stretching and true singular values of the adjoint chain.

    x is [T, B, input_size] (time-major); params use torch names. The forward pass
    that saves the gates runs in the params' dtype and device (numpy backend:
    float64 on the CPU); the log accumulators are float64 on every backend.
    ``singular_values`` adds the full-frame pass (:mod:`.spectrum`): ln sigma_i of the
    products at ``sv_lags`` (default: every lag), the sum of all exponents and mean
    ln|det J|. It costs several times the k-frame chain; claims that need only the
    exponents switch it off.

    ``saved``: a forward record of this very (params, x, state0) already made on the params'
    device and dtype (a gradient-flow cell's BPTT-delta chain makes one from autograd's own
    trajectory, ``bptt_deltas.saved_from_states``): the chain then runs no forward pass of its
    own. Only for the torch and cupy backends (numpy's forward is float64 on the CPU).
    """
    check_model(model)
    hidden = int(params["weight_hh_l0"].shape[1])
    k = check_k(model, hidden, k)
    if isinstance(qr_every, bool) or not isinstance(qr_every, int | np.integer) or qr_every < 1:
        raise ValueError(f"qr_every={qr_every!r} must be an integer >= 1")
    if x.shape[0] < 1:
        raise ValueError("x has no time steps (T = 0); the chain needs T >= 1")
    wf, wa = int(warmup_forward), int(warmup_align)
    if wf or wa:
        check_warmups(int(x.shape[0]), warmup_forward, warmup_align)
    name = resolve_backend(backend, params)
    forward_bk, bk, adopt = chain_backends(name, params)
    if saved is None:
        saved = adopt(forward_saved(model, params, x, state0, forward_bk))
    else:
        saved = adopt(check_shared_record(saved, name, model, params, x))
    steps = saved.steps
    ff = None
    if singular_values:
        itemsize = bk.itemsize(saved.w_hh)
        ff = full_frame_chain(saved, bk, sv_lags, full_frame(saved.dim, k),
                              chunk=_chunk_steps(saved.batch, saved.dim, itemsize))
    if ff is not None and qr_every == 1:
        # the full frame's first k columns are the k-frame (same start, QR every step)
        totals, rows = k_frame_from_full(ff.logdiag, k)
        window = ff.logdiag[wa:steps - wf, :, :k].sum(axis=0) / (steps - wf - wa)
    else:
        totals, rows = run_chain(saved, bk, k, int(qr_every))
        window = _window_exponents(saved, bk, k, int(qr_every), totals, wf, wa)
    per_elem = -np.sort(-window, axis=1)
    n = per_elem.shape[0]
    with np.errstate(invalid="ignore"):  # -inf/NaN exponents (dead or exploding) are data
        mean, std = per_elem.mean(axis=0), per_elem.std(axis=0)
        se = per_elem.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full(k, math.nan)
        padded = np.concatenate([np.zeros((1, k)), rows])  # lag 0..T
        mid = wa + (steps - wf - wa) // 2
        half = np.stack([(padded[mid] - padded[wa]) / (mid - wa),
                         (padded[steps - wf] - padded[mid]) / (steps - wf - mid)])
    lags_sv, log_sv, sum_exp, mean_det = None, None, math.nan, math.nan
    if ff is not None:
        lags_sv = ff.lags
        with np.errstate(invalid="ignore"):
            log_sv = ff.log_sv.mean(axis=1)[:, :k]  # NaN where any element is unresolved
        win = slice(wa, steps - wf)  # rows of lags wa+1 .. T-wf
        sum_exp = float(ff.logdiag[win].sum(axis=(0, 2)).mean() / (steps - wf - wa))
        mean_det = float(ff.log_det[win].mean())
    return ChainResult(exponents=mean, exponents_std=std, exponents_se=se, exponents_half=half,
                       frame_log_stretch=rows, sv_lags=lags_sv, log_sv=log_sv,
                       sum_exponents=sum_exp, mean_log_det=mean_det, warmup_forward=wf,
                       warmup_align=wa, backend=name, steps=steps)


def exponents_after_warmup(result: ChainResult, warmup: int) -> np.ndarray:
    """Slopes of the batch-mean frame stretching from lag ``warmup`` to T: exponents with the first
    ``warmup`` lags (frame alignment transient) discarded; column (frame) order."""
    steps = result.steps
    if not 0 <= warmup < steps:
        raise ValueError(f"warmup={warmup} must be in 0..{steps - 1}")
    start = result.frame_log_stretch[warmup - 1] if warmup > 0 else 0.0
    return (result.frame_log_stretch[-1] - start) / (steps - warmup)


# ---------------------------------------------------------------------------------------------
# explicit chains over a given Jacobian array (for delta checks)


def _batched(jac: Array, v: Array) -> tuple[Array, Array, bool]:
    if len(jac.shape) == 3:  # [T, D, D] with v [D]
        return jac[:, None], v[None], True
    return jac, v, False


def apply_adjoint_chain(jac: Array, v: Array) -> Array:
    """delta_t = P_{T,t}^T v for t = 0..T: [T+1, B, D] (row T is v itself).

    ``jac`` is [T, B, D, D] (or [T, D, D] with v [D]); numpy or torch. No rescaling:
    meant for short chains; use :func:`log_norm_adjoint_chain` for long ones.
    """
    bk = backend_for(jac)
    j, vv, unb = _batched(jac, v)
    steps = int(j.shape[0])
    out = [vv]
    for i in range(steps - 1, -1, -1):
        out.append((bk.mT(j[i]) @ out[-1][..., None])[..., 0])
    res = bk.stack(out[::-1], 0)
    return res[:, 0] if unb else res


def log_norm_adjoint_chain(jac: Array, v: Array) -> np.ndarray:
    """log ||P_{T,T-lag}^T v||_2 for lag = 0..T: float64 [T+1, B] (or [T+1] for unbatched).

    The vector is renormalised every step and the logs summed in float64, so any
    chain length is safe from overflow and underflow.
    """
    bk = backend_for(jac)
    j, vv, unb = _batched(jac, v)
    steps = int(j.shape[0])
    u = vv
    nrm = bk.colnorm64(u[..., :, None])[..., 0]
    acc = bk.log(nrm)
    logs = [acc]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = u * bk.like(1.0 / nrm, u)[..., None]
        for i in range(steps - 1, -1, -1):
            u = (bk.mT(j[i]) @ u[..., None])[..., 0]
            nrm = bk.colnorm64(u[..., :, None])[..., 0]
            acc = acc + bk.log(nrm)
            logs.append(acc)
            u = u * bk.like(bk.where(nrm > 0, 1.0 / nrm, 0.0 * nrm), u)[..., None]
    res = bk.to_numpy(bk.stack(logs, 0)).astype(np.float64)
    return res[:, 0] if unb else res


def growth_rate(log_norms: np.ndarray, start: int = 0) -> float:
    """Least-squares slope of log-norm against lag (natural log per step), from lag ``start``."""
    y = np.asarray(log_norms, dtype=np.float64)
    if y.ndim > 1:
        y = y.mean(axis=tuple(range(1, y.ndim)))
    lags = np.arange(y.shape[0], dtype=np.float64)
    if y.shape[0] - start < 2:
        return math.nan
    return float(np.polyfit(lags[start:], y[start:], 1)[0])


def jacobians(
    model: str,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    state0: tuple[torch.Tensor, ...] | None = None,
    *,
    backend: str = "numpy",
) -> Array:
    """All T per-step Jacobians [T, B, D, D] (numpy float64, or torch in the params' dtype).

    Memory is T * B * D^2 elements: meant for tests and short chains; the chain
    engine builds them in time chunks instead.
    """
    bk = array_backend(backend, params)
    saved = forward_saved(model, params, x, state0, bk)
    return step_jacobians(saved, bk)
