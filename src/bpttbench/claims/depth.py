"""Claim 1: the unrolled network is as deep as the sequence.

Seed text (Cause 1): BPTT unrolls the RNN into a feed-forward network with one layer
per time step, and "the gradient in early layers is the product of terms from all the
later layers". Measured consequence: ln||dL/dh_{T-k}|| is a straight line in the lag k,
and its slope is the top Lyapunov exponent of the per-step Jacobian chain.

Per (model, weight scale), over ``claims.seeds`` x batch:

* ``1a`` linearity: the slope on the first half of the lags equals the slope on the
  second half (a curved line would differ); tolerance t standard errors of the mean over
  seeds of the per-sample slope difference (batch elements share W, so seeds are the
  independent units; t has seeds - 1 degrees of freedom at the level of ``claims.z``).
  The R^2 of the whole fit is in the note.
* ``1b`` the rate: least-squares slope of the batch-mean ln||delta_{T-k}|| (autograd)
  against the top Lyapunov exponent of the adjoint Jacobian chain
  (:func:`bpttbench.jacobians.analyse_chain`) on the same weights and inputs; tolerance
  t standard errors of the difference, paired by seed.

Fits use the lags [w, T - w], w = ``warmup``: the first w lags are the backward
transient (delta_T = W_out^T (...) turning towards the top Lyapunov vector), the last w
the forward one (the state starting at h_0 = 0 has not reached its stationary
distribution, so its Jacobians differ). Both are O(1) in ln||delta||, not part of the
claim. With a z factor on per-sample errors, LSTM at s = 3 showed a 3.1 standard-error
curvature for seeds 0-2, which 30 seeds showed to be chance (mean difference
6e-5 +- 2.5e-3), and the reason seed-level errors with a t factor are used.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config import as_list
from ..gradient_flow.gradients import measure_gradient_flow, readout_problem
from ..jacobians import analyse_chain
from .checks import check_section
from .common import (
    ClaimResult,
    Curves,
    detached,
    fmt,
    gaussian_inputs,
    linear_fit,
    make_cell,
    row,
    seed_mean_se,
    slopes,
    t_factor,
)
from .settings import Context

SOURCE = "seed text, Cause 1; Lyapunov exponents of the Jacobian chain"


def measure_cell(model: str, init: str, scale: float, seed: int, sec: dict, ctx: Context
                 ) -> dict[str, np.ndarray | float]:
    """BPTT log-norms [T+1, B] and the chain's top exponent for one (model, scale, seed)."""
    hidden, batch, steps = sec["hidden"], sec["batch"], sec["seq_len"]
    cell = make_cell(model, sec["input_size"], hidden, init, scale, seed, device=ctx.device,
                     dtype=ctx.dtype)
    x = gaussian_inputs(steps, batch, sec["input_size"], seed, device=ctx.device,
                        dtype=ctx.dtype, salt=11)
    w_out, target = readout_problem(hidden, batch, seed=seed)
    flow = measure_gradient_flow(model, cell.params(), x, cell.initial_state(batch), w_out,
                                 target)
    with torch.no_grad():
        chain = analyse_chain(model, detached(cell.params()), x, None, k=1,
                              backend=ctx.jacobian_backend, singular_values=False)
    warm, last = sec["warmup"], steps - sec["warmup"]
    top = np.concatenate([[0.0], chain.frame_log_stretch[:, 0]])  # lag 0..T
    return {
        "log_norm": flow.log_norm_h,
        "lyapunov": float((top[last] - top[warm]) / (last - warm)),
        "lyapunov_std": float(chain.exponents_std[0]),
    }


def run(sec: dict, ctx: Context) -> ClaimResult:
    rows, curves = [], Curves()
    warm, steps, batch = sec["warmup"], sec["seq_len"], sec["batch"]
    check_section("depth", sec, ctx.seeds)
    lags = np.arange(steps + 1)
    roundoff = 100.0 * float(torch.finfo(ctx.dtype).eps)
    last = steps - warm
    fit = slice(warm, last + 1)
    half = warm + (last - warm) // 2
    first, second = slice(warm, half + 1), slice(half, last + 1)
    for model in as_list(sec["models"]):
        for scale in [float(s) for s in as_list(sec["weight_scale"])]:
            cells = [measure_cell(model, sec["init"], scale, seed, sec, ctx) for seed in ctx.seeds]
            logs = np.stack([c["log_norm"] for c in cells])  # [S, T+1, B]
            finite = bool(np.isfinite(logs).all())
            cond = f"{model}, s={scale:g}"
            cid = f"{model}.s{scale:g}"
            # per-sample slopes, seeds x batch
            s_all = np.stack([slopes(lags[fit], lg[fit]) for lg in logs])
            s_first = np.stack([slopes(lags[first], lg[first]) for lg in logs])
            s_second = np.stack([slopes(lags[second], lg[second]) for lg in logs])
            diff, se_diff, dof_diff = seed_mean_se(s_second - s_first)
            fits = [linear_fit(lags[fit], lg[fit].mean(axis=1)) for lg in logs]
            r2s = [f[2] for f in fits]
            rates = np.array([f[0] for f in fits])
            rate = float(rates.mean())
            lyaps = np.array([c["lyapunov"] for c in cells])
            lyap = float(lyaps.mean())
            _, se_1b, dof_1b = seed_mean_se(rates - lyaps)  # paired by seed
            if len(cells) < 2:  # one seed: from the per-sample spreads
                se_1b = math.hypot(float(s_all.std(ddof=1)), cells[0]["lyapunov_std"]) / math.sqrt(batch)
                dof_1b = batch - 1
            k_1a, k_1b = t_factor(ctx.z, dof_diff), t_factor(ctx.z, dof_1b)
            note_nf = "" if finite else " Some ln||delta|| were not finite (see the figure)."
            rows.append(row(
                f"1a.{cid}",
                "ln||dL/dh_{T-k}|| is linear in the lag k: slope on the second half of the lags "
                "minus slope on the first half",
                diff, 0.0, k_1a * se_diff, condition=cond, n=s_all.size, stderr=se_diff,
                unit="nats/step", source=SOURCE,
                note=(f"lags {warm}..{half} vs {half}..{last}; tolerance {k_1a:.3g} standard "
                      f"errors (t, {dof_diff} dof, the level of z={ctx.z:g}) of the mean over "
                      f"seeds of the per-sample slope difference; R^2 of "
                      f"the fit of the batch mean on lags {warm}..{last}: min over seeds "
                      f"{fmt(min(r2s), 6)}." + note_nf),
            ))
            rows.append(row(
                f"1b.{cid}",
                "the rate of ln||dL/dh_{T-k}|| (autograd) is the top Lyapunov exponent of the "
                "Jacobian chain",
                rate, lyap, k_1b * se_1b + roundoff, condition=cond, n=s_all.size,
                stderr=se_1b,
                unit="nats/step", source=SOURCE,
                note=(f"least-squares slope of the batch mean on lags {warm}..{last} (mean over "
                      f"seeds) vs the chain's top exponent over the same lags (analyse_chain, "
                      f"k=1); tolerance {k_1b:.3g} standard errors (t, {dof_1b} dof) of the "
                      f"difference paired by seed, plus 100 eps = {fmt(roundoff)} of round-off "
                      f"(the two methods are exactly equal for a linear RNN)." + note_nf),
            ))
            mean_curve = np.nanmean(logs.mean(axis=2), axis=0)
            curves.add(model, f"s={scale:g}", "measured", lags, mean_curve - mean_curve[0])
            pred = mean_curve[warm] - mean_curve[0] + lyap * (lags[fit] - warm)  # lags w..T-w
            curves.add(model, f"s={scale:g}", "predicted", lags[fit], pred)
    return ClaimResult(rows, curves)
