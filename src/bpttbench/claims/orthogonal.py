"""Claim 3: a linear RNN with W = s Q (Q orthogonal) scales every direction by exactly s^k.

For h_t = W h_{t-1} + U x_t the Jacobian is W at every step, so the k-step product is
(sQ)^k = s^k Q^k and all of its singular values equal s^k: gradients vanish (s < 1) or
explode (s > 1) at exactly ln s per step, in every direction, whatever the input.

* ``3a`` every singular value, every k: the Jacobian engine's QR frame over all H
  directions (``analyse_chain``, k = H) against k ln s;
* ``3b`` BPTT by autograd: ln||delta_{T-k}|| - ln||delta_T|| against k ln s.

Both are exact statements, so the tolerance is a float64 round-off bound: every step
(a matrix product and a Householder QR, or a matrix-vector product) changes a log
singular value by at most c H eps, summed over the k <= T steps, with c = 10.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config import as_list
from ..gradient_flow.gradients import measure_gradient_flow, readout_problem
from ..jacobians import NumpyBackend, analyse_chain, forward_saved
from .common import ClaimResult, Curves, detached, fmt, gaussian_inputs, make_cell, row
from .settings import Context

DET_C = 10.0  # round-off constant of the QR-vs-LU determinant check (3c)

SOURCE = "exact for W = sQ (linear RNN)"
ROUNDOFF_C = 10.0
INPUT_SIZE = 4
BATCH = 2


def run(sec: dict, ctx: Context) -> ClaimResult:
    hidden, steps = sec["hidden"], sec["steps"]
    scales = [float(s) for s in as_list(sec["weight_scale"])]
    eps = float(torch.finfo(ctx.dtype).eps)
    tol = ROUNDOFF_C * steps * hidden * eps
    rows, curves = [], Curves()
    lags = np.arange(1, steps + 1)
    worst_sv, worst_bptt, where_sv, where_bptt = 0.0, 0.0, "", ""
    gaps: list[tuple[float, float, str]] = []  # |sum lambda - mean ln|det J||, |ln det|, where
    for scale in scales:
        for seed in ctx.seeds:
            cell = make_cell("rnn_linear", INPUT_SIZE, hidden, "orthogonal", scale, seed,
                             device=ctx.device, dtype=ctx.dtype)
            x = gaussian_inputs(steps, BATCH, INPUT_SIZE, seed, device=ctx.device,
                                dtype=ctx.dtype, salt=31)
            with torch.no_grad():
                chain = analyse_chain("rnn_linear", detached(cell.params()), x, None, k=hidden,
                                      backend=ctx.jacobian_backend)
            dev_sv = np.abs(chain.log_sv - lags[:, None] * math.log(scale))
            gaps.append((abs(chain.det_gap), abs(chain.mean_log_det), f"linear s={scale:g}"))
            w_out, target = readout_problem(hidden, BATCH, seed=seed)
            flow = measure_gradient_flow("rnn_linear", cell.params(), x,
                                         cell.initial_state(BATCH), w_out, target)
            rel = flow.log_norm_h - flow.log_norm_h[0]
            dev_bptt = np.abs(rel - np.arange(steps + 1)[:, None] * math.log(scale))
            if dev_sv.max() >= worst_sv:
                worst_sv, where_sv = float(dev_sv.max()), f"s={scale:g}, seed {seed}"
            if np.nanmax(dev_bptt) >= worst_bptt or not np.isfinite(dev_bptt).all():
                worst_bptt = float(np.max(dev_bptt))  # NaN propagates: fails the row
                where_bptt = f"s={scale:g}, seed {seed}"
            if seed == ctx.seeds[0]:
                grp = f"s={scale:g}"
                curves.add("singular_values", grp, "band", lags, chain.log_sv.mean(axis=1),
                           0.5 * (chain.log_sv.max(axis=1) - chain.log_sv.min(axis=1)))
                curves.add("singular_values", grp, "predicted", lags, lags * math.log(scale))
                curves.add("deviation", grp, "measured", lags,
                           np.maximum(dev_sv.max(axis=1), 1e-18))
    curves.add("deviation", "round-off bound", "bound", lags,
               ROUNDOFF_C * lags * hidden * eps)
    cond = (f"H={hidden}, k<={steps}, s in {{{', '.join(f'{s:g}' for s in scales)}}}, "
            f"{len(ctx.seeds)} seeds, {str(ctx.dtype).removeprefix('torch.')}")
    n = len(scales) * len(ctx.seeds)
    rows.append(row(
        "3a", "linear RNN with W = sQ: every singular value of the k-step Jacobian product is "
        "s^k (largest |ln sigma_i - k ln s| over i, k, s, seeds)", worst_sv, 0.0, tol,
        "m<=p+tol", condition=cond, n=n * steps * hidden, unit="nats", source=SOURCE,
        note=(f"true singular values of the products (full-frame pass of analyse_chain, backend "
              f"{ctx.jacobian_backend}); worst at {where_sv}; tolerance {ROUNDOFF_C:g} T H eps "
              f"= {fmt(tol)} (round-off bound)."),
    ))
    # 3c: with a full frame, sum of the exponents = mean ln|det J_t| (also for a tanh RNN,
    # whose Jacobians differ every step): the engine's QR accumulation against LU
    top_scale = max(scales)
    kappa = 1.0  # largest condition number of a J_t (linear chains: 1)
    for seed in ctx.seeds:
        cell = make_cell("rnn_tanh", INPUT_SIZE, hidden, "orthogonal", top_scale, seed,
                         device=ctx.device, dtype=ctx.dtype)
        x = gaussian_inputs(steps, BATCH, INPUT_SIZE, seed, device=ctx.device,
                            dtype=ctx.dtype, salt=37)
        with torch.no_grad():
            chain = analyse_chain("rnn_tanh", detached(cell.params()), x, None, k=hidden,
                                  backend=ctx.jacobian_backend, sv_lags=np.array([steps]))
            # condition number of J_t = diag(tanh') sQ: max tanh' / min tanh' (Q orthogonal)
            deriv = forward_saved("rnn_tanh", detached(cell.params()), x, None,
                                  NumpyBackend()).deriv
        kappa = max(kappa, float((deriv.max(axis=-1) / deriv.min(axis=-1)).max()))
        gaps.append((abs(chain.det_gap), abs(chain.mean_log_det), f"tanh s={top_scale:g}"))
    gap, size, where_gap = max(gaps, key=lambda g: (not math.isfinite(g[0]), g[0]))
    tol_gap = DET_C * hidden * eps * kappa * max(1.0, max(g[1] for g in gaps))
    rows.append(row(
        "3c", "full frame: the sum of all Lyapunov exponents equals the mean ln|det J_t| "
        "(largest |difference| over the linear and tanh chains)", gap, 0.0, tol_gap,
        "m<=p+tol", condition=f"H={hidden}, T={steps}, linear s in {scales}, tanh s="
        f"{top_scale:g}, {len(ctx.seeds)} seeds", n=len(gaps), unit="nats/step",
        source="bpttbench.jacobians (QR vs LU)",
        note=(f"ln|det J_t| by LU (slogdet; RNN: sum ln|tanh'| + ln|det W|) against the "
              f"accumulated ln|diag R| of the full QR frame, over the same steps; worst at "
              f"{where_gap}; tolerance {DET_C:g} H eps kappa max(1, |ln det|) = "
              f"{fmt(tol_gap)} per step, kappa = {fmt(kappa, 3)} the largest condition number "
              "of a J_t (round-off of two backward-stable factorisations, QR and LU)."),
    ))
    rows.append(row(
        "3b", "linear RNN with W = sQ: BPTT gradient ||dL/dh_{T-k}|| = s^k ||dL/dh_T|| "
        "(largest |deviation| of the log over k, batch, s, seeds)", worst_bptt, 0.0, tol,
        "m<=p+tol", condition=cond, n=n * (steps + 1) * BATCH, unit="nats", source=SOURCE,
        note=f"autograd; worst at {where_bptt}; tolerance {fmt(tol)} (round-off bound).",
    ))
    return ClaimResult(rows, curves)
