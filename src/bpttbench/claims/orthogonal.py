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
from ..gradients import measure_gradient_flow, readout_problem
from ..jacobians import analyse_chain
from .common import ClaimResult, Curves, detached, fmt, gaussian_inputs, make_cell, row
from .settings import Context

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
    rows.append(row(
        "3b", "linear RNN with W = sQ: BPTT gradient ||dL/dh_{T-k}|| = s^k ||dL/dh_T|| "
        "(largest |deviation| of the log over k, batch, s, seeds)", worst_bptt, 0.0, tol,
        "m<=p+tol", condition=cond, n=n * (steps + 1) * BATCH, unit="nats", source=SOURCE,
        note=f"autograd; worst at {where_bptt}; tolerance {fmt(tol)} (round-off bound).",
    ))
    return ClaimResult(rows, curves)
