"""Claim 4: Pascanu, Mikolov & Bengio (2013), Sec. 3.1.

For h_t = tanh(W h_{t-1} + U x_t + b) every step's Jacobian is diag(tanh'(a_t)) W with
|tanh'| <= 1, so ||dh_T/dh_t||_2 <= lambda_1^{T-t} with lambda_1 = ||W||_2 (largest
singular value). Hence lambda_1 < 1 is sufficient for vanishing gradients, and
lambda_1 > 1 is necessary for exploding ones (not sufficient: tanh' < 1 shrinks).

* ``4a`` the bound at every lag, batch element and seed, for W Gaussian rescaled to
  lambda_1 in ``spectral_norm`` (< 1): the spectral norm of the explicit Jacobian
  product, count of lags where ln||dh_T/dh_t|| > (T - t) ln lambda_1 + round-off;
  predicted 0.
* ``4b`` necessity: over the sweep ``sweep_spectral_norm`` (both sides of 1), count of
  cells whose top Lyapunov exponent is significantly positive (exploding) although
  lambda_1 <= 1; predicted 0. The note says how many lambda_1 > 1 cells still vanish.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import theory as th
from ..config import as_list
from ..jacobians import analyse_chain, exponents_after_warmup, jacobians
from ..models import RecurrentCell
from .checks import check_section
from .common import ClaimResult, Curves, detached, gaussian_inputs, generator, row
from .settings import Context

SOURCE = "Pascanu, Mikolov & Bengio (2013), Sec. 3.1"
ROUNDOFF_C = 10.0


def tanh_rnn(hidden: int, input_size: int, spectral_norm: float, seed: int, ctx: Context
             ) -> RecurrentCell:
    """tanh RNN with W_hh Gaussian rescaled to ||W_hh||_2 = spectral_norm, W_ih ~ N(0, 1/I)."""
    gen = generator(seed, 41)
    f64 = torch.float64
    w = torch.randn(hidden, hidden, generator=gen, dtype=f64)
    w *= spectral_norm / torch.linalg.matrix_norm(w, ord=2)
    w_ih = torch.randn(hidden, input_size, generator=gen, dtype=f64) / math.sqrt(input_size)
    cell = RecurrentCell("rnn_tanh", input_size, hidden, dtype=ctx.dtype, device=ctx.device)
    with torch.no_grad():
        for name, value in (("weight_hh_l0", w), ("weight_ih_l0", w_ih)):
            getattr(cell, name).copy_(value)
        cell.bias_ih_l0.zero_()
        cell.bias_hh_l0.zero_()
    return cell


def log_product_norms(jac: torch.Tensor) -> np.ndarray:
    """ln||J_T ... J_{T-k+1}||_2 for k = 1..T: [T, B] (jac [T, B, H, H], explicit products)."""
    steps = jac.shape[0]
    prod = jac[steps - 1]
    out = [torch.log(torch.linalg.matrix_norm(prod, ord=2))]
    for i in range(steps - 2, -1, -1):
        prod = prod @ jac[i]
        out.append(torch.log(torch.linalg.matrix_norm(prod, ord=2)))
    return torch.stack(out).to(torch.float64).cpu().numpy()


def run(sec: dict, ctx: Context) -> ClaimResult:
    hidden, inp, steps, batch = sec["hidden"], sec["input_size"], sec["seq_len"], sec["batch"]
    eps = float(torch.finfo(ctx.dtype).eps)
    rows, curves = [], Curves()
    lags = np.arange(1, steps + 1)
    # 4a: the bound at every lag
    norms = [float(s) for s in as_list(sec["spectral_norm"])]
    checks, violations, worst_gap = 0, 0, -math.inf
    for lam in norms:
        per_seed = []
        for seed in ctx.seeds:
            cell = tanh_rnn(hidden, inp, lam, seed, ctx)
            x = gaussian_inputs(steps, batch, inp, seed, device=ctx.device, dtype=ctx.dtype,
                                salt=43)
            with torch.no_grad():
                jac = jacobians("rnn_tanh", detached(cell.params()), x, backend="torch")
            logs = log_product_norms(jac)  # [T, B]
            bound = np.asarray(th.pascanu_bound_log(lam, lags))[:, None]
            slack = ROUNDOFF_C * lags[:, None] * hidden * eps
            violations += int(((logs > bound + slack) | ~np.isfinite(logs)).sum())
            checks += logs.size
            worst_gap = max(worst_gap, float(np.max(logs - bound)))
            per_seed.append(logs)
        logs = np.concatenate(per_seed, axis=1)
        grp = f"lambda_1={lam:g}"
        curves.add("bound", grp, "band", lags, logs.mean(axis=1),
                   0.5 * (logs.max(axis=1) - logs.min(axis=1)))
        curves.add("bound", grp, "bound", lags, np.asarray(th.pascanu_bound_log(lam, lags)))
    rows.append(row(
        "4a", "tanh RNN, lambda_1 = ||W_hh||_2 < 1: ||dh_T/dh_t||_2 <= lambda_1^(T-t) at every "
        "lag, batch element and seed (violations)", violations, 0, 0, "m<=p+tol",
        condition=(f"H={hidden}, T={steps}, lambda_1 in {{{', '.join(f'{v:g}' for v in norms)}}}"
                   f", {len(ctx.seeds)} seeds x {batch}"),
        n=checks, unit="count", source=SOURCE,
        note=(f"spectral norm of the explicit Jacobian products; a lag counts as a violation "
              f"above the bound + {ROUNDOFF_C:g} k H eps (round-off). Closest approach: "
              f"max ln(norm/bound) = {worst_gap:.3g} nats (the bound is not tight: tanh' < 1 "
              f"and the product's directions do not align)."),
    ))

    # 4b: necessity, over a sweep on both sides of 1
    warm = sec["warmup"]
    check_section("pascanu", sec, ctx.seeds)
    sweep = [float(s) for s in as_list(sec["sweep_spectral_norm"])]
    bad, explode_above, vanish_above, n_above = 0, 0, 0, 0
    for lam in sweep:
        exps, stds = [], []
        for seed in ctx.seeds:
            cell = tanh_rnn(hidden, inp, lam, seed, ctx)
            x = gaussian_inputs(steps, batch, inp, seed, device=ctx.device, dtype=ctx.dtype,
                                salt=47)
            with torch.no_grad():
                chain = analyse_chain("rnn_tanh", detached(cell.params()), x, None, k=1,
                                      backend=ctx.jacobian_backend, singular_values=False)
            exps.append(float(exponents_after_warmup(chain, warm)[0]))
            stds.append(float(chain.exponents_std[0]) / math.sqrt(batch))
        for e, se in zip(exps, stds, strict=True):
            exploding = e - ctx.z * se > 0
            vanishing = e + ctx.z * se < 0
            if lam <= 1:
                bad += int(exploding)
            else:
                n_above += 1
                explode_above += int(exploding)
                vanish_above += int(vanishing)
        curves.add("necessity", "top Lyapunov exponent", "points", [lam] * len(exps), exps,
                   [ctx.z * s for s in stds])
    grid = np.geomspace(min(sweep), max(sweep), 60)
    curves.add("necessity", "ln lambda_1 (bound)", "bound", grid, np.log(grid))
    n_below = len(ctx.seeds) * sum(lam <= 1 for lam in sweep)
    rows.append(row(
        "4b", "lambda_1 > 1 is necessary for exploding gradients: cells with lambda_1 <= 1 whose "
        "top Lyapunov exponent is significantly > 0", bad, 0, 0, "m<=p+tol",
        condition=(f"H={hidden}, T={steps}, lambda_1 in "
                   f"{{{', '.join(f'{v:g}' for v in sweep)}}}, {len(ctx.seeds)} seeds"),
        n=n_below, unit="count", source=SOURCE,
        note=(f"exploding = exponent - {ctx.z:g} se > 0 (se over the batch). Not sufficient: of "
              f"the {n_above} cells with lambda_1 > 1, {explode_above} explode and "
              f"{vanish_above} still vanish (tanh' < 1 and W's directions)."),
    ))
    return ClaimResult(rows, curves)
