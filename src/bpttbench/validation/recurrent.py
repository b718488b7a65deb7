"""Kernel validation of the recurrent-pass kernels: the BPTT-delta chains and the forward record.

Each check drives the kernel through its own driver, with a small ``chunk`` of steps per
launch where the shape asks for one (so a shape can span several launches and carry its state
across them), and compares with a float64 NumPy reference that gets the kernel's exact inputs
(rounded to the kernel dtype):

- ``bptt_delta_rnn`` (kernels/bptt_delta.cu through ``bptt_delta_cupy.rnn_delta_rows``) and
  ``bptt_delta_lstm``/``bptt_delta_gru`` (kernels/bptt_delta_gated.cu through
  ``gated_delta_rows``, the coefficients of ``bptt_deltas.adjoint_coefficients`` in the
  kernel dtype as its inputs): the per-lag norms of both columns (the unrescaled one, and the
  rescaled one with its accumulated log scale; the LSTM's autograd ||dL/dc_t|| of both too)
  against a float64 chain of ``gated_adjoint_step`` (RNN: W^T (phi' v)) rescaled every step.
  Error: max over lags and batch of | ||delta||_kernel / ||delta||_ref - 1 |
  (``bptt_deltas.norm_rel_err``); a column-0 zero flag that the reference does not have
  counts as inf.
- ``forward_record_<model>`` (kernels/forward_record.cu through ``cupy_forward.record``):
  every field of the record and the final state against ``analytic.forward_saved`` in float64
  on the NumPy backend (whose sigmoid is relatively accurate on both tails, as the kernel's
  1 / (1 + exp(-a)) is). Error: elementwise relative
  for the derivative factors (deriv, dgates, aux2: well conditioned even where tiny), normwise
  max |got - ref| / max |ref| for the values (h, c, tanh c, gates, gh_n: some near 0 by
  cancellation); rnn_relu's 0/1 derivative must match exactly except within 1e-4 (float32) or
  1e-12 (float64) of the kink (an error of 1 otherwise).
"""

from __future__ import annotations

import math

import numpy as np

from bpttbench.gradient_flow import bptt_delta_cupy as kc
from bpttbench.gradient_flow.bptt_deltas import (
    _Ops,
    adjoint_coefficients,
    gated_adjoint_step,
    norm_rel_err,
)
from bpttbench.jacobians import cupy_forward
from bpttbench.jacobians import cupy_kernels as ck
from bpttbench.jacobians.analytic import PARAM_NAMES, Saved, forward_saved
from bpttbench.jacobians.backends import NumpyBackend
from bpttbench.jacobians.cupy_backend import CupyBackend
from bpttbench.models import gate_count

F64 = np.float64
FORWARD_MODELS = ("rnn_tanh", "rnn_relu", "rnn_linear", "lstm", "gru")
#: record fields that are derivative factors (checked elementwise relative to themselves)
DERIVATIVES = ("deriv", "dgates", "aux2")
INPUTS = 4  # input size of the random cells


def _round(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.asarray(a, dtype=dtype).astype(F64)


def random_cell(model: str, hidden: int, batch: int, steps: int, seed: int, dtype: np.dtype,
          w_scale: float = 1.0, x_scale: float = 3.0
          ) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[np.ndarray, ...]]:
    """Random params, inputs and a nonzero initial state, rounded to dtype (float64 arrays).
    x_scale 3 drives some gates into saturation (|a| up to ~10)."""
    rng = np.random.default_rng(seed)
    g = gate_count(model) * hidden
    params = {"weight_ih_l0": rng.standard_normal((g, INPUTS)) * x_scale / math.sqrt(INPUTS),
              "weight_hh_l0": rng.standard_normal((g, hidden)) * w_scale / math.sqrt(hidden),
              "bias_ih_l0": rng.standard_normal(g) * 0.3,
              "bias_hh_l0": rng.standard_normal(g) * 0.3}
    x = rng.standard_normal((steps, batch, INPUTS))
    state0 = tuple(rng.standard_normal((batch, hidden)) * 0.5
                   for _ in range(2 if model == "lstm" else 1))
    return ({n: _round(p, dtype) for n, p in params.items()}, _round(x, dtype),
            tuple(_round(s, dtype) for s in state0))


def _log(a: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(a, F64))


def _norm(a: np.ndarray) -> np.ndarray:
    return np.sqrt((a * a).sum(axis=-1))


# --------------------------------------------------------------------------- BPTT deltas


def _rnn_delta(shape: tuple[int, ...], dtype: np.dtype, seed: int) -> float:
    batch, hidden, steps, chunk = shape
    rng = np.random.default_rng(seed)
    w = _round(rng.standard_normal((hidden, hidden)) * 1.3 / math.sqrt(hidden), dtype)
    deriv = _round(rng.uniform(0.05, 1.0, (steps, batch, hidden)), dtype)
    delta = _round(rng.standard_normal((batch, hidden)), dtype)
    cp = ck.cp
    raw, scale, zero0 = kc.rnn_delta_rows(*(cp.asarray(a, dtype=dtype) for a in (deriv, w, delta)),
                                          chunk=chunk)
    # float64 reference: the column rescaled every step, its log norm accumulated
    u = delta / _norm(delta)[:, None]
    log_ref = [_log(_norm(delta))]
    for lag in range(1, steps + 1):
        u = (u * deriv[steps - lag]) @ w
        sc = _norm(u)
        u = u / sc[:, None]
        log_ref.append(log_ref[-1] + _log(sc))
    log_ref = np.stack(log_ref)
    if (zero0 != 0).any():  # random columns: the reference's entry 0 is never exactly 0
        return math.inf
    return max(norm_rel_err(_log(raw), log_ref),
               norm_rel_err(np.cumsum(_log(scale), axis=0), log_ref))


def _gated_delta(model: str, shape: tuple[int, ...], dtype: np.dtype, seed: int) -> float:
    batch, hidden, steps, chunk = shape
    params, x, state0 = random_cell(model, hidden, batch, steps, seed, dtype, w_scale=1.3,
                              x_scale=1.0)
    rec = forward_saved(model, params, x, state0, NumpyBackend())
    fields = {f: None if getattr(rec, f) is None else np.asarray(getattr(rec, f), dtype=dtype)
              for f in ("w_hh", "deriv", "gates", "dgates", "prev", "aux", "aux2")}
    saved = Saved(model, hidden, steps, batch, **fields)  # the record in the kernel dtype
    coef = adjoint_coefficients(saved, _Ops("numpy"), 0, steps)  # computed in the kernel dtype
    rng = np.random.default_rng(seed + 1)
    delta = _round(rng.standard_normal((batch, hidden)), dtype)
    cp = ck.cp
    coef_dev = {n: cp.asarray(a) for n, a in coef.items()}
    rows = kc.gated_delta_rows(model, cp.asarray(fields["w_hh"]), cp.asarray(delta, dtype=dtype),
                               steps, lambda lo, hi: {n: a[lo:hi] for n, a in coef_dev.items()},
                               chunk=chunk)
    # float64 reference from the same coefficients and W_hh (widened)
    c64 = {n: a.astype(F64) for n, a in coef.items()}
    w64 = fields["w_hh"].astype(F64)
    lstm = model == "lstm"
    dim = 2 * hidden if lstm else hidden
    u = np.zeros((batch, 1, dim))
    u[:, 0, :hidden] = delta / _norm(delta)[:, None]
    log_scale = _log(_norm(delta))
    ref_h, ref_c = [log_scale + _log(_norm(u[:, 0, :hidden]))], []
    if lstm:
        ref_c.append(_log(_norm(c64["oc"][steps - 1] * delta)))
    for lag in range(1, steps + 1):
        i = steps - lag  # J_{i+1}^T: the state is delta_i afterwards
        nxt = np.empty_like(u)
        gated_adjoint_step(model, {n: a[i] for n, a in c64.items()}, w64, u, nxt, _Ops("numpy"))
        sc = _norm(nxt[:, 0])
        u = nxt / sc[:, None, None]
        log_scale = log_scale + _log(sc)
        ref_h.append(log_scale + _log(_norm(u[:, 0, :hidden])))
        if lstm:  # autograd's dL/dc_i = vc + o (1 - tanh^2 c) vh at t = i, 0 at t = 0
            oc = c64["oc"][i - 1] if i >= 1 else np.zeros((batch, hidden))
            ref_c.append(log_scale + _log(_norm(u[:, 0, hidden:] + oc * u[:, 0, :hidden])))
    if (rows[:, 3] != 0).any():
        return math.inf
    kernel_scale = np.cumsum(_log(rows[:, 1]), axis=0)
    errs = [norm_rel_err(_log(rows[:, 0]), np.stack(ref_h)),
            norm_rel_err(kernel_scale + _log(rows[:, 2]), np.stack(ref_h))]
    if lstm:
        errs += [norm_rel_err(_log(rows[:, 4]), np.stack(ref_c)),
                 norm_rel_err(kernel_scale + _log(rows[:, 5]), np.stack(ref_c))]
    return max(errs)


# ------------------------------------------------------------------------ forward record


def _relu_kink(params: dict[str, np.ndarray], x: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """|a| of rnn_relu's float64 pre-activations, [T, B, H] (where the 0/1 derivative flips)."""
    w_ih, w_hh, b_ih, b_hh = (params[n] for n in PARAM_NAMES)
    h, out = h0, []
    for xt in x:
        a = xt @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        out.append(np.abs(a))
        h = np.maximum(a, 0.0)
    return np.stack(out)


def _forward_record(model: str, shape: tuple[int, ...], dtype: np.dtype, seed: int) -> float:
    batch, hidden, steps, chunk = shape
    params, x, state0 = random_cell(model, hidden, batch, steps, seed, dtype)
    ref = forward_saved(model, params, x, state0, NumpyBackend())
    got = cupy_forward.record(model, params, x, state0, CupyBackend(dtype), chunk=chunk)
    cp = ck.cp
    names = ck.FORWARD_FIELDS["rnn" if model.startswith("rnn_") else model]
    pairs = [(n, cp.asnumpy(getattr(got, n)), np.asarray(getattr(ref, n))) for n in names]
    pairs += [(f"final_state[{j}]", cp.asnumpy(g), np.asarray(r))
              for j, (g, r) in enumerate(zip(got.final_state, ref.final_state, strict=True))]
    errs = []
    for name, g, r in pairs:
        g = g.astype(F64)
        if g.shape != r.shape or not np.isfinite(g).all():
            return math.inf
        if model == "rnn_relu" and name == "deriv":
            kink = 1e-4 if np.dtype(dtype) == np.dtype(np.float32) else 1e-12
            far = _relu_kink(params, x, state0[0]) > kink
            errs.append(float((g != r)[far].any()))
        elif name in DERIVATIVES:
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(g == r, 0.0, np.abs(g - r) / np.abs(r))
            errs.append(float(rel.max()))
        else:
            errs.append(float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-300)))
    return max(errs)


def check(name: str, shape: tuple[int, ...], dtype: np.dtype, seed: int) -> float | None:
    """max_rel_err of one recurrent-pass kernel check; None when ``name`` is not one of them."""
    if name == "bptt_delta_rnn":
        return _rnn_delta(shape, dtype, seed)
    if name in ("bptt_delta_lstm", "bptt_delta_gru"):
        return _gated_delta(name.rsplit("_", 1)[1], shape, dtype, seed)
    if name.startswith("forward_record_") and name[len("forward_record_"):] in FORWARD_MODELS:
        return _forward_record(name[len("forward_record_"):], shape, dtype, seed)
    return None
