"""BPTT deltas by the Jacobian chain: delta_t = J_{t+1}^T delta_{t+1}, autograd as a reference.

The loss gradient delta_T = dL/dh_T (LSTM: the state adjoint [delta_T; 0]) is carried back
through the analytic step Jacobians of :mod:`bpttbench.jacobians` as a frame of two columns
that share every product:

- column 0 in the working dtype WITHOUT rescaling: it overflows to inf and underflows to 0
  at the lags where real BPTT does (what the gradient_flow table reports, as autograd would);
- column 1 rescaled to unit norm every step, the log of the norm accumulated in float64:
  ln||delta_t|| with no overflow or underflow whatever the chain length (the true rate).

The forward pass is ``models.unroll`` without a graph, the same arithmetic as autograd's
forward, so the trajectory is bitwise the one autograd differentiates (on CUDA by replays of a
captured chunk of steps once they are checked bitwise equal: :mod:`.graphed_unroll`); the derivative
factors are rebuilt from it for all steps at once (no launches per step) as
``jacobians.forward_saved`` defines them. J^T is applied without forming J (as the engine's
RNN chain does): for the LSTM and GRU the transposed formulas of ``jacobians.analytic`` reduce
to one product with W_hh of a gate-sized vector (:func:`gated_adjoint_step`; tested against
``step_jacobians``). Per step the chain costs that product and a few element-wise launches,
one float64 norm and one in-place rescale; per-lag norms, the LSTM's
dL/dc and the underflow flags are reduced per chunk of lags on the device and read back
once per cell. LSTM: the state adjoint treats h and c as independent coordinates; the
reported ln||dL/dc_t|| is autograd's (same-step path c_t -> h_t added, docs/NUMERICS.md).
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..jacobians import NumpyBackend, Saved, TorchBackend
from ..models import Params, State
from .forward_record import CHUNK_BYTES, PARTS, saved_from_states
from .gradients import (
    GradientFlow,
    first_nonfinite_step,
    growth_rate_fit,
    lag_statistics,
    measure_gradient_flow,
)
from .graphed_unroll import unroll_fast

METHODS = ("auto", "autograd", "jacobian_chain")


@dataclass
class DeltaChain:
    """The two columns of the one-column BPTT chain, lags 0..T as rows, batch as columns."""

    flow: GradientFlow  # working dtype, no rescaling (what autograd would report)
    log_norm_h_true: np.ndarray  # [T+1, B] float64: the rescaled (log-scale) column
    log_norm_c_true: np.ndarray | None  # LSTM: ln||dL/dc_t|| (autograd's) in log scale
    saved: Saved | None = None  # the forward record, when asked to keep it (keep_saved)


@dataclass
class CellFlow:
    """What :func:`measure_cell` measured: the flow the tables report, the BPTT method's
    summary columns, and (``keep_saved``) the chain's forward record for the Lyapunov chain."""

    flow: GradientFlow
    summary: dict[str, Any]
    saved: Saved | None = None


def resolve_method(method: str, device: str) -> str:
    """auto -> jacobian_chain on CUDA, autograd on the CPU (the committed CPU tables)."""
    if method not in METHODS:
        raise ValueError(f"gradient_flow.bptt_method: {method!r}; allowed: {', '.join(METHODS)}")
    if method == "auto":
        return "jacobian_chain" if torch.device(device).type == "cuda" else "autograd"
    return method


def is_reference_cell(cell_id: str, every: int) -> bool:
    """Does autograd also run on this cell? A deterministic 1-in-``every`` sample by CRC32 of
    the cell id (the same cells on every machine and rerun); 0 = never, 1 = every cell."""
    if every < 0:
        raise ValueError(f"gradient_flow.autograd_reference_every must be >= 0, got {every}")
    return every > 0 and zlib.crc32(cell_id.encode()) % every == 0


# ------------------------------------------------------------------ array ops of two libraries
class _Ops:
    """The handful of operations the chain loop needs, for torch tensors or numpy arrays."""

    def __init__(self, lib: str) -> None:
        self.torch = lib == "torch"

    def empty(self, shape: tuple[int, ...], ref: Any, f64: bool = False) -> Any:
        if self.torch:
            return torch.empty(shape, dtype=torch.float64 if f64 else ref.dtype, device=ref.device)
        return np.empty(shape, dtype=np.float64 if f64 else ref.dtype)

    def norm64(self, a: Any, out: Any = None) -> Any:
        """2-norm over the last axis in float64 (no float32 underflow of the squares)."""
        if self.torch:
            return torch.linalg.vector_norm(a, dim=-1, dtype=torch.float64, out=out)
        a64 = a.astype(np.float64)
        return np.sqrt(np.einsum("...i,...i->...", a64, a64), out=out)

    def matmul(self, a: Any, b: Any, out: Any) -> None:
        if self.torch:
            torch.matmul(a, b, out=out)
        else:
            np.matmul(a, b, out=out)

    def div_(self, a: Any, s: Any) -> None:
        """a /= s[..., None] in place (s float64; a keeps its dtype)."""
        if self.torch:
            a.div_(s[..., None])
        else:
            with np.errstate(divide="ignore", invalid="ignore"):  # 0/0: _dead_stays_dead
                np.divide(a, s[..., None], out=a, casting="same_kind")

    def stack(self, arrays: list[Any]) -> Any:
        return torch.stack(arrays) if self.torch else np.stack(arrays)

    def host(self, a: Any) -> np.ndarray:
        return a.cpu().numpy() if self.torch else np.asarray(a)


def _rows_per_chunk(row_bytes: int) -> int:
    return max(2, CHUNK_BYTES // max(1, row_bytes))


def delta_chain(model: str, params: Params, x: Tensor, state0: State, w_out: Tensor,
                target: Tensor, *, backend: str = "torch", keep_saved: bool = False
                ) -> DeltaChain:
    """ln||dL/dh_{T-k}|| for k = 0..T by the one-column Jacobian chain (two columns: the
    working dtype unrescaled, and log scale); see the module doc.

    ``backend``: ``torch`` (the params' dtype and device), ``numpy`` (the chain in float64
    on the CPU, from the same forward trajectory: a reference for the chain arithmetic) or
    ``cupy`` (one persistent kernel per chunk of steps, ``bptt_delta_cupy``).
    ``keep_saved``: return the forward record (torch, the params' dtype and device) in the
    result, for ``analyse_chain(saved=...)``: the Lyapunov chain then reads the same trajectory
    and runs no forward of its own.
    """
    if backend not in ("torch", "numpy", "cupy"):
        raise ValueError(f"delta chain backend {backend!r}; allowed: torch, numpy, cupy")
    with torch.no_grad():
        states = unroll_fast(model, params, x, tuple(state0))  # CUDA: graph replays
        h_T = states[-1][0]
        w_o = w_out.to(dtype=h_T.dtype, device=h_T.device)
        resid = h_T @ w_o.T - target.to(dtype=h_T.dtype, device=h_T.device)
        loss = float(0.5 * (resid ** 2).sum())
        delta_T = resid @ w_o  # dL/dh_T, as autograd computes it
        first_bad = first_nonfinite_step(states)
        # this module's chunk bounds (read here: tests set them on bptt_deltas)
        saved = saved_from_states(model, params, x, states, chunk_bytes=CHUNK_BYTES,
                                  parts=PARTS)
        del states
        kept = saved if keep_saved else None
        grad_dtype = str(h_T.dtype).removeprefix("torch.")
        if backend == "cupy":
            run = _run_cupy if model.startswith("rnn_") else _run_cupy_gated
            return replace(run(saved, delta_T, loss, first_bad, grad_dtype), saved=kept)
        if backend == "numpy":
            bk: Any = NumpyBackend()
            fields = ("w_hh", "deriv", "gates", "dgates", "prev", "aux", "aux2")
            saved = Saved(**{**saved.__dict__, **{f: None if getattr(saved, f) is None else
                                                     bk.asarray(getattr(saved, f).cpu())
                                                     for f in fields}})
            delta_T = delta_T.cpu().numpy().astype(np.float64)
        else:
            bk = TorchBackend(h_T.device, h_T.dtype)
        return replace(_run(saved, bk, _Ops(backend), delta_T, loss, first_bad, grad_dtype),
                       saved=kept)


def _run(saved: Saved, bk: Any, ops: _Ops, delta_T: Any, loss: float, first_bad: int | None,
         grad_dtype: str) -> DeltaChain:
    steps, batch, hidden, dim = saved.steps, saved.batch, saved.hidden, saved.dim
    lstm, rnn = saved.model == "lstm", saved.model.startswith("rnn_")
    w = saved.w_hh
    item = int(getattr(w, "itemsize", 0) or w.element_size())
    rows = max(2, min(_rows_per_chunk(batch * 2 * dim * item), -(-(steps + 1) // PARTS) + 1))
    # adjoint coefficients (and their temporaries) of a chunk of steps
    jrows = max(1, min(_rows_per_chunk(batch * 10 * hidden * item), -(-steps // PARTS)))
    buf = ops.empty((rows, batch, 2, dim), w)  # rows of [raw, rescaled] per lag
    scales = []  # norm of the rescaled column per lag (stacked once at the end)
    out = {k: ops.empty((steps + 1, batch), w, f64=True) for k in ("h", "h_unit", "c", "c_unit")}
    zero0 = ops.empty((steps + 1, batch), w, f64=True)
    start = buf[0]
    start[:, 0] = 0.0
    start[:, 0, :hidden] = delta_T
    start[:, 1] = start[:, 0]
    scales.append(ops.norm64(start[:, 1]))
    ops.div_(start[:, 1], scales[0])
    coef, jlo = {}, steps
    lag0 = 0  # lag of buf[0]

    def reduce(n: int) -> None:  # per-lag norms of buf[:n] (lags lag0 .. lag0+n-1), on device
        chunk = buf[:n]
        sl = slice(lag0, lag0 + n)
        ops.norm64(chunk[:, :, 0, :hidden], out=out["h"][sl])
        ops.norm64(chunk[:, :, 1, :hidden], out=out["h_unit"][sl])
        zero0[sl] = chunk[:, :, 0, 0] == 0
        if lstm:  # autograd's dL/dc_t = delta^c_t + o_t (1 - tanh^2 c_t) delta^h_t (t >= 1)
            t_idx = np.arange(steps - lag0, steps - lag0 - n, -1)  # t of each row
            oc = _oc(saved, ops, t_idx, chunk)
            for col, key in ((0, "c"), (1, "c_unit")):
                ops.norm64(chunk[:, :, col, hidden:] + oc * chunk[:, :, col, :hidden],
                           out=out[key][sl])

    pos = 1
    for lag in range(1, steps + 1):
        i = steps - lag  # J_{i+1}: index i of the forward record
        if pos == rows:  # the buffer is full: reduce it and start the next chunk
            reduce(rows)
            lag0 += rows
            buf[0] = buf[rows - 1]
            pos = 1
            lag0 -= 1  # buf[0] now repeats the last lag (its rows are overwritten identically)
        prev, nxt = buf[pos - 1], buf[pos]
        if rnn:  # (J^T v)^T = (phi' * v)^T W: no D x D matrix per step
            ops.matmul(prev * saved.deriv[i][:, None, :], w, out=nxt)
        else:
            if i < jlo:  # coefficients of the next chunk of steps, J_{lo+1} .. J_{i+1}
                jlo = max(0, i + 1 - jrows)
                coef = adjoint_coefficients(saved, ops, jlo, i + 1)
            gated_adjoint_step(saved.model, {k: v[i - jlo] for k, v in coef.items()}, w, prev,
                               nxt, ops)
        scales.append(ops.norm64(nxt[:, 1]))
        ops.div_(nxt[:, 1], scales[-1])
        pos += 1
    reduce(pos)
    host = {k: ops.host(v) for k, v in out.items()}
    log_scale = _log_scale(ops.host(ops.stack(scales)))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_h = np.log(host["h"])
        log_h_true = log_scale + np.log(host["h_unit"])
        log_c = np.log(host["c"]) if lstm else None
        log_c_true = log_scale + np.log(host["c_unit"]) if lstm else None
    log_h_true = _dead_stays_dead(log_h_true, log_scale)
    if log_c_true is not None:
        log_c_true = _dead_stays_dead(log_c_true, log_scale)
    flow = GradientFlow(log_h, log_c, first_bad, loss, ops.host(zero0).astype(bool), 1.0,
                        grad_dtype)
    return DeltaChain(flow, log_h_true, log_c_true)


def _run_cupy(saved: Saved, delta_T: Tensor, loss: float, first_bad: int | None,
              grad_dtype: str) -> DeltaChain:
    """The RNN chain by the persistent kernel: per-lag rows, read back once."""
    from . import bptt_delta_cupy as kc

    if delta_T.is_cuda:  # CuPy's default stream does not wait for torch's queued work
        torch.cuda.current_stream().synchronize()
    norm_raw, scale, zero0 = kc.rnn_delta_rows(
        *(kc.from_torch(t) for t in (saved.deriv, saved.w_hh, delta_T)))
    log_scale = _log_scale(scale)
    with np.errstate(divide="ignore"):
        log_h = np.log(norm_raw)
    flow = GradientFlow(log_h, None, first_bad, loss, zero0 > 0, 1.0, grad_dtype)
    return DeltaChain(flow, _dead_stays_dead(log_scale, log_scale), None)


def _run_cupy_gated(saved: Saved, delta_T: Tensor, loss: float, first_bad: int | None,
                    grad_dtype: str) -> DeltaChain:
    """The LSTM/GRU chain by the persistent kernel, the coefficients from torch per launch."""
    from . import bptt_delta_cupy as kc

    if delta_T.is_cuda:  # CuPy's default stream does not wait for torch's queued work
        torch.cuda.current_stream().synchronize()
    ops = _Ops("torch")
    rows = kc.gated_delta_rows(saved.model, saved.w_hh, delta_T, saved.steps,
                               lambda lo, hi: adjoint_coefficients(saved, ops, lo, hi))
    log_scale = _log_scale(rows[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_h, log_true = np.log(rows[:, 0]), log_scale + np.log(rows[:, 2])
        log_c = np.log(rows[:, 4]) if saved.model == "lstm" else None
        log_c_true = log_scale + np.log(rows[:, 5]) if saved.model == "lstm" else None
    flow = GradientFlow(log_h, log_c, first_bad, loss, rows[:, 3] > 0, 1.0, grad_dtype)
    return DeltaChain(flow, _dead_stays_dead(log_true, log_scale),
                      None if log_c_true is None else _dead_stays_dead(log_c_true, log_scale))


def adjoint_coefficients(saved: Saved, ops: _Ops, lo: int, hi: int) -> dict[str, Any]:
    """Per-step factors of J_{i+1}^T for i in [lo, hi), from the forward record.

    LSTM (gates i, f, g, o; c = c_{t-1}, tc = tanh c_t, oc = o (1 - tanh^2 c_t)):
    J^T [v_h; v_c] = [W_hh^T (k * [w, w, w, v_h]); f w] with w = v_c + oc v_h and
    k = [g i', c f', i g', tc o'] (i' = i(1-i) ..., g' = 1 - g^2).
    GRU (gates r, z, n; u = (1-z)(1-n^2), hn = W_hn h + b_hn):
    J^T v = z v + W_hh^T (k * [v, v, v]) with k = [hn r' u, (h - n) z', r u].
    """
    sl = slice(lo, hi)
    cat = torch.cat if ops.torch else np.concatenate
    if saved.model == "lstm":
        i, f, g, o = _split(saved.gates[sl], 4)
        di, df, dg, do = _split(saved.dgates[sl], 4)
        c, tc, dtc = saved.prev[sl], saved.aux[sl], saved.aux2[sl]
        k = cat([g * di, c * df, i * dg, tc * do], -1)
        return {"k": k, "oc": o * dtc, "f": f}
    r, z, n = _split(saved.gates[sl], 3)
    dr, dz, dn = _split(saved.dgates[sl], 3)
    h, hn, omz = saved.prev[sl], saved.aux[sl], saved.aux2[sl]
    u = omz * dn
    return {"k": cat([hn * dr * u, (h - n) * dz, r * u], -1), "z": z}


def _split(a: Any, parts: int) -> list[Any]:
    width = a.shape[-1] // parts
    return [a[..., j * width:(j + 1) * width] for j in range(parts)]


def gated_adjoint_step(model: str, coef: dict[str, Any], w_hh: Any, prev: Any, nxt: Any,
                       ops: _Ops) -> None:
    """nxt = (J^T prev^T)^T for frames [B, k, D] (rows are the columns), without forming J."""
    hidden = w_hh.shape[1]
    cat = torch.cat if ops.torch else np.concatenate
    if model == "lstm":
        vh, vc = prev[..., :hidden], prev[..., hidden:]
        if ops.torch:  # fused forms: fewer launches per step
            wv = torch.addcmul(vc, coef["oc"][:, None, :], vh)  # dL/dc_t along both paths
            g = cat([wv, wv, wv, vh], -1).mul_(coef["k"][:, None, :])
            torch.cat([g @ w_hh, coef["f"][:, None, :] * wv], -1, out=nxt)
        else:
            wv = vc + coef["oc"][:, None, :] * vh
            g = cat([wv, wv, wv, vh], -1) * coef["k"][:, None, :]
            nxt[..., :hidden] = g @ w_hh
            nxt[..., hidden:] = coef["f"][:, None, :] * wv
    else:  # gru
        g = cat([prev, prev, prev], -1) * coef["k"][:, None, :]
        ops.matmul(g, w_hh, out=nxt)
        if ops.torch:
            nxt.addcmul_(coef["z"][:, None, :], prev)
        else:
            nxt += coef["z"][:, None, :] * prev


def _oc(saved: Saved, ops: _Ops, t_idx: np.ndarray, chunk: Any) -> Any:
    """o_t (1 - tanh^2 c_t) for the rows' steps t (0 for t = 0: no same-step path)."""
    hidden = saved.hidden
    idx = np.maximum(t_idx - 1, 0)
    if ops.torch:
        idx_t = torch.as_tensor(idx, device=chunk.device)
        oc = saved.gates.index_select(0, idx_t)[..., 3 * hidden:] * saved.aux2.index_select(0, idx_t)
        if (t_idx == 0).any():
            oc[torch.as_tensor(t_idx == 0, device=chunk.device)] = 0.0
    else:
        oc = saved.gates[idx][..., 3 * hidden:] * saved.aux2[idx]
        oc[t_idx == 0] = 0.0
    return oc.to(chunk.dtype) if ops.torch else oc.astype(chunk.dtype)


def _log_scale(scale: np.ndarray) -> np.ndarray:
    """Accumulated ln of the per-step rescaling norms (row k: ln of lags 0..k)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.cumsum(np.log(scale), axis=0)


def _dead_stays_dead(log_true: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
    """A column rescaled by a zero norm becomes 0/0; the exact answer is a zero vector from
    that lag on (a linear map keeps 0 at 0): ln 0 = -inf, as the chain engine records it."""
    dead = np.maximum.accumulate(np.isneginf(log_scale), axis=0)
    return np.where(dead, -np.inf, log_true)


# ---------------------------------------------------------------------- compared with autograd
def norm_rel_err(log_chain: np.ndarray, log_ref: np.ndarray) -> float:
    """max over lags and batch of | ||delta||_chain / ||delta||_ref - 1 |.

    Where either is not finite (inf, 0, NaN) the two count as equal only if they are the
    same non-finite value (both overflowed, both underflowed to 0, both NaN); else inf.
    """
    a, b = np.asarray(log_chain, np.float64), np.asarray(log_ref, np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    err = np.zeros_like(a)
    err[both] = np.abs(np.expm1(a[both] - b[both]))
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    err[~both & ~same] = np.inf
    return float(err.max()) if err.size else math.nan


def log_abs_err(log_true: np.ndarray, log_ref: np.ndarray) -> float:
    """max |ln||delta||_log-scale - ln||delta||_ref| over the lags and elements where the
    reference is finite (where it overflowed or underflowed it has no value to compare)."""
    a, b = np.asarray(log_true, np.float64), np.asarray(log_ref, np.float64)
    ok = np.isfinite(b)
    if not ok.any():
        return math.nan
    with np.errstate(invalid="ignore"):
        d = np.abs(a[ok] - b[ok])
    return float(np.nanmax(d)) if not np.isnan(d).all() else math.nan


def method_summary(method: str, chain: DeltaChain | None, reference: GradientFlow | None
                   ) -> dict[str, Any]:
    """The summary columns of the BPTT method (NaN where a part did not run)."""
    out: dict[str, Any] = {"bptt_method": method, "grad_norm_rel_err_vs_autograd": math.nan,
                           "log_grad_norm_max_abs_err": math.nan,
                           "growth_rate_log_scale": math.nan}
    if chain is not None:
        with np.errstate(invalid="ignore"):
            out["growth_rate_log_scale"] = growth_rate_fit(
                lag_statistics(chain.log_norm_h_true)["log_grad_norm"])[0]
        if reference is not None:
            out["grad_norm_rel_err_vs_autograd"] = norm_rel_err(chain.flow.log_norm_h,
                                                                reference.log_norm_h)
            out["log_grad_norm_max_abs_err"] = log_abs_err(chain.log_norm_h_true,
                                                           reference.log_norm_h)
    return out


def measure_cell(spec: Any, params: Params, x: Tensor, state0: State, w_out: Tensor,
                 target: Tensor, device: str, *, keep_saved: bool = False) -> CellFlow:
    """A gradient-flow cell's BPTT by its ``bptt_method`` (a CellSpec): the flow the tables
    report and the method's summary columns. With the chain, autograd also runs on the
    sampled reference cells (``autograd_reference_every``) and is compared in the summary.
    ``keep_saved``: with the chain, also return its forward record (for the Lyapunov chain);
    autograd keeps none."""
    method = resolve_method(spec.bptt_method, device)
    if method == "autograd":
        flow = measure_gradient_flow(spec.model, params, x, state0, w_out, target)
        return CellFlow(flow, method_summary(method, None, None))
    backend = "numpy" if spec.jacobian_backend == "numpy" else "torch"
    if torch.device(device).type == "cuda" and spec.jacobian_backend in ("auto", "cupy"):
        from .bptt_delta_cupy import unusable_reason

        why = unusable_reason(spec.model, spec.hidden, np.dtype(spec.dtype))
        backend = "torch" if why else "cupy"
        if why:
            warnings.warn(f"BPTT deltas by the torch path, not the CuPy kernel: {why}",
                          RuntimeWarning, stacklevel=2)  # once per reason, not per cell
    ref = None  # first: autograd's graph is freed before the kept forward record is made
    if is_reference_cell(spec.cell_id, spec.autograd_reference_every):
        ref = measure_gradient_flow(spec.model, params, x, state0, w_out, target)
    chain = delta_chain(spec.model, params, x, state0, w_out, target, backend=backend,
                        keep_saved=keep_saved)
    return CellFlow(chain.flow, method_summary(method, chain, ref), chain.saved)
