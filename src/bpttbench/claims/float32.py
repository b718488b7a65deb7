"""Claim 6: exploding gradients become inf/NaN in float32; log scale and clipping.

Seed text (ApX): "the gradient signal grows exponentially [...] leading to NaN". Three
measurements:

* ``6a`` overflow onset. A linear RNN with W = sQ (s > 1) and zero inputs keeps
  h_t = 0 (the forward pass stays finite) while delta_{T-k} = (W^T)^k delta_T grows as
  s^k exactly. float32 BPTT first shows inf/NaN at a lag between
  ``theory.float32_overflow_lag(ln s, ln||delta_T||)`` (the norm reaches FLT_MAX: the
  earliest an element can overflow, delta concentrated on one coordinate) and the same
  with ``hidden_size=H`` (delta spread evenly: the latest). Predicted: that interval.
  Where inside it depends on delta's direction and even on the float32 summation order
  (a partial sum of a dot product can overflow one step before the result would). Both
  ends are theorems (no element exceeds ||delta||, the largest is at least
  ||delta||/sqrt(H)), so the row is an exactness check, not a prediction.
* ``6b`` the log-scale Jacobian engine (``analyse_chain`` in float32, rescaling every
  step, logs summed in float64) on the same network over ``chain_steps`` steps, far past
  the overflow: all H Lyapunov exponents against ln s; tolerance a float32 round-off
  bound (10 H eps_32 per step).
* ``6c``-``6e`` gradient-norm clipping (``torch.nn.utils.clip_grad_norm_``) of the
  parameter gradient of a chaotic float32 tanh RNN (Gaussian W, sigma_w = clip_sigma_w)
  at sequence lengths up to ``clip_max_len``: where the returned total norm is finite,
  the clipped gradient's norm is at most the threshold (6c) and its direction unchanged,
  cosine 1 (6d), to float32 round-off (z sqrt(P) eps_32, P parameters). 6e: the total
  norm itself is a float32 sum of squares, so it overflows once ||g|| exceeds
  sqrt(FLT_MAX) = e^44.36 (``float32_overflow_lag(..., squared=True)``), although g is
  still finite; clip_grad_norm_ then multiplies g by max_norm / inf = 0 and the update
  is lost. Predicted: the breakdown at ln||g|| = 0.5 ln FLT_MAX.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import theory as th
from ..gradient_flow.gradients import flow_status, measure_gradient_flow, readout_problem
from ..jacobians import analyse_chain
from .common import ClaimResult, Curves, detached, fmt, gaussian_inputs, make_cell, row
from .settings import Context

SOURCE = "seed text (ApX): exploding gradients lead to NaN; theory.float32_overflow_lag"
F32 = torch.float32
EPS32 = float(torch.finfo(F32).eps)
ROUNDOFF_C = 10.0


def overflow_run(scale: float, sec: dict, seed: int, ctx: Context) -> dict:
    """float32 BPTT through the zero-input orthogonal linear RNN, past the overflow."""
    hidden, batch, inp = sec["hidden"], sec["batch"], sec["input_size"]
    late = (th.LOG_FLOAT32_MAX + 0.5 * math.log(hidden) + 10.0) / math.log(scale)
    steps = int(math.ceil(late)) + 10
    cell = make_cell("rnn_linear", inp, hidden, "orthogonal", scale, seed, device=ctx.device,
                     dtype=F32)
    x = torch.zeros(steps, batch, inp, device=ctx.device, dtype=F32)
    w_out, target = readout_problem(hidden, batch, seed=seed)
    flow = measure_gradient_flow("rnn_linear", cell.params(), x, cell.initial_state(batch),
                                 w_out, target)
    status, bad_lag = flow_status(flow)
    log_start = flow.log_norm_h[0]  # [B] ln||delta_T||
    early = [math.floor(th.float32_overflow_lag(math.log(scale), ls)) + 1 for ls in log_start]
    late_b = [math.floor(th.float32_overflow_lag(math.log(scale), ls, hidden_size=hidden)) + 1
              for ls in log_start]
    with torch.no_grad():
        xc = torch.zeros(sec["chain_steps"], batch, inp, device=ctx.device, dtype=F32)
        chain = analyse_chain("rnn_linear", detached(cell.params()), xc, None, k=hidden,
                              backend=ctx.jacobian_backend, singular_values=False)
    return {"steps": steps, "status": status, "onset": bad_lag, "early": min(early),
            "late": min(late_b), "log_norm": flow.log_norm_h, "log_start": log_start,
            "exponents": chain.exponents, "chain_backend": chain.backend,
            "chain_top": chain.frame_log_stretch[:, 0]}


def clip_sweep(sec: dict, seed: int, ctx: Context) -> dict[str, np.ndarray]:
    """float32 parameter gradients of a chaotic tanh RNN at growing T, clipped."""
    hidden, batch, inp = sec["hidden"], sec["batch"], sec["input_size"]
    max_norm = float(sec["clip_norm"])
    lengths = np.arange(sec["clip_len_step"], sec["clip_max_len"] + 1, sec["clip_len_step"])
    out = {k: [] for k in ("length", "log_g", "g_finite", "total_finite", "ratio", "cosine")}
    w_out, target = readout_problem(hidden, batch, seed=seed)
    w_out, target = w_out.to(ctx.device, F32), target.to(ctx.device, F32)
    x_all = gaussian_inputs(int(lengths.max()), batch, inp, seed, device=ctx.device, dtype=F32,
                            salt=61)
    for steps in lengths:
        cell = make_cell("rnn_tanh", inp, hidden, "gaussian", float(sec["clip_sigma_w"]), seed,
                         device=ctx.device, dtype=F32)
        out_h, _ = cell(x_all[:steps])
        loss = 0.5 * ((out_h[-1] @ w_out.T - target) ** 2).sum()
        loss.backward()
        grads = [p.grad.detach().clone() for p in cell.parameters()]
        flat64 = torch.cat([g.reshape(-1).to(torch.float64) for g in grads])
        g_finite = bool(torch.isfinite(flat64).all())
        norm64 = float(torch.linalg.vector_norm(flat64)) if g_finite else math.inf
        total = float(torch.nn.utils.clip_grad_norm_(list(cell.parameters()), max_norm))
        clipped = torch.cat([p.grad.detach().reshape(-1).to(torch.float64)
                             for p in cell.parameters()])
        if g_finite and math.isfinite(total) and torch.isfinite(clipped).all():
            ratio = float(torch.linalg.vector_norm(clipped)) / max_norm
            cosine = float(flat64 @ clipped / (torch.linalg.vector_norm(flat64)
                                               * torch.linalg.vector_norm(clipped)))
        else:
            ratio, cosine = math.nan, math.nan
        out["length"].append(int(steps))
        out["log_g"].append(math.log(norm64) if norm64 > 0 else -math.inf)
        out["g_finite"].append(g_finite)
        out["total_finite"].append(math.isfinite(total))
        out["ratio"].append(ratio)
        out["cosine"].append(cosine)
    return {k: np.asarray(v) for k, v in out.items()} | {"params": int(flat64.numel())}


def run(sec: dict, ctx: Context) -> ClaimResult:
    rows, curves = [], Curves()
    seed = ctx.seeds[0]
    hidden = sec["hidden"]
    worst_exp, where_exp, n_exp = 0.0, "", 0
    for scale in [float(s) for s in sec["weight_scale"]]:
        r = overflow_run(scale, sec, seed, ctx)
        onset = math.nan if r["onset"] is None else float(r["onset"])
        rows.append(row(
            f"6a.s{scale:g}", "float32 BPTT of an exploding gradient (linear RNN, W = sQ, "
            "s > 1): first lag with inf/NaN lies in the predicted overflow interval",
            onset, r["early"], r["late"] - r["early"], "p<=m<=p+tol",
            condition=f"s={scale:g}, H={hidden}, batch {sec['batch']}, T={r['steps']}",
            n=sec["batch"], unit="lag (steps)", source=SOURCE,
            note=(f"status {r['status']}; interval [norm reaches FLT_MAX, norm reaches "
                  f"FLT_MAX sqrt(H)] from theory.float32_overflow_lag with rate ln s and "
                  f"ln||delta_T|| up to {fmt(float(np.max(r['log_start'])))} (earliest "
                  f"batch element)."),
        ))
        dev = np.abs(r["exponents"] - math.log(scale))
        n_exp += dev.size
        if float(dev.max()) >= worst_exp or not np.isfinite(dev).all():
            worst_exp, where_exp = float(np.max(dev)), f"s={scale:g}"
        lags = np.arange(r["log_norm"].shape[0])
        grp = f"s={scale:g}"
        ln = r["log_norm"].mean(axis=1)
        curves.add("overflow", grp, "measured", lags, np.where(np.isfinite(ln), ln, np.nan))
        curves.add("overflow", grp, "predicted", lags, float(np.mean(r["log_start"]))
                   + lags * math.log(scale))
        if r["onset"] is not None:
            curves.add("overflow", grp, "vline", [onset], [math.nan])
        # the engine's top log singular value, drawn a bit past the BPTT run
        shown = min(len(r["chain_top"]), int(1.5 * r["steps"]))
        chain_lags = np.arange(1, shown + 1)
        curves.add("overflow", grp, "bound", chain_lags,
                   float(np.mean(r["log_start"])) + r["chain_top"][:shown])
    curves.add("overflow", "ln FLT_MAX", "hline", [0.0], [th.LOG_FLOAT32_MAX])
    tol_b = ROUNDOFF_C * hidden * EPS32
    rows.append(row(
        "6b", "the log-scale Jacobian engine in float32 gives the exact rate ln s far past "
        "the overflow (largest |lambda_i - ln s| over all H exponents and s)", worst_exp, 0.0,
        tol_b, "m<=p+tol",
        condition=f"H={hidden}, {sec['chain_steps']} steps, s in {sec['weight_scale']}",
        n=n_exp, unit="nats/step", source="bpttbench.jacobians.analyse_chain",
        note=(f"float32 frames rescaled every step, logs summed in float64; worst at "
              f"{where_exp}; tolerance {ROUNDOFF_C:g} H eps_32 = {fmt(tol_b)} per step."),
    ))

    sw = clip_sweep(sec, seed, ctx)
    ok = sw["g_finite"] & sw["total_finite"] & np.isfinite(sw["ratio"])
    tol_c = ctx.z * math.sqrt(sw["params"]) * EPS32
    cond = (f"tanh RNN, Gaussian sigma_w={sec['clip_sigma_w']:g}, H={hidden}, float32, "
            f"T={int(sw['length'][0])}..{int(sw['length'][-1])}, max_norm={sec['clip_norm']:g}")
    n_ok = int(ok.sum())
    rows.append(row(
        "6c", "gradient-norm clipping bounds the update: ||clipped g|| / max_norm <= 1 "
        "(largest over lengths with a finite clip norm)",
        float(np.max(sw["ratio"][ok])) if n_ok else math.nan, 1.0, tol_c, "m<=p+tol",
        condition=cond, n=n_ok, unit="ratio", source="torch.nn.utils.clip_grad_norm_",
        note=(f"{n_ok} of {len(ok)} lengths had a finite clip norm (ln||g|| up to "
              f"{fmt(float(np.max(sw['log_g'][ok])) if n_ok else math.nan)}); tolerance z "
              f"sqrt(P) eps_32 = {fmt(tol_c)} (P={sw['params']}, probabilistic round-off)."),
    ))
    rows.append(row(
        "6d", "gradient-norm clipping keeps the direction: cosine(g, clipped g) = 1 (smallest "
        "over lengths with a finite clip norm)",
        float(np.min(sw["cosine"][ok])) if n_ok else math.nan, 1.0, tol_c, "m>=p-tol",
        condition=cond, n=n_ok, unit="cosine", source="torch.nn.utils.clip_grad_norm_",
        note=f"cosine in float64 of the float32 gradients; tolerance {fmt(tol_c)} (round-off).",
    ))
    # 6e: where the float32 total norm overflows while g is finite
    finite_g = sw["g_finite"]
    broke = finite_g & ~sw["total_finite"]
    fine = finite_g & sw["total_finite"]
    thr = 0.5 * th.LOG_FLOAT32_MAX
    if broke.any() and fine.any():
        first_inf = float(np.min(sw["log_g"][broke]))
        last_fine = float(np.max(sw["log_g"][fine & (sw["log_g"] < first_inf)], initial=-np.inf))
        measured, tol_e = first_inf, first_inf - last_fine
        note = (f"clip_grad_norm_ returned inf from ln||g|| = {fmt(first_inf)} (last finite at "
                f"{fmt(last_fine)}; the tolerance is that gap) while g was finite: its norm is "
                f"a float32 sum of squares. clip_coef = max_norm / inf = 0 then zeroes the "
                f"whole update.")
    else:
        measured, tol_e = math.nan, math.nan
        note = ("no length where g was finite but the clip norm was not: either the norm "
                "kernel rescales (no squared overflow on this device) or the sweep did not "
                f"reach ln||g|| = {thr:.2f}; ln||g|| reached "
                f"{fmt(float(np.max(sw['log_g'][finite_g])) if finite_g.any() else math.nan)}.")
    nan_after = int((~finite_g).sum())
    if nan_after:
        note += (f" At {nan_after} lengths g itself had overflowed; clipping cannot repair that "
                 f"(inf * 0 = NaN).")
    rows.append(row(
        "6e", "clip_grad_norm_ breaks down where the float32 squared norm overflows: ln||g|| = "
        "0.5 ln FLT_MAX", measured, thr, tol_e, "p<=m<=p+tol" if math.isfinite(tol_e) else
        "|m-p|<=tol", condition=cond, n=int(finite_g.sum()), unit="nats",
        source="theory.float32_overflow_lag(squared=True)", note=note,
    ))
    curves.add("clipping", "ln||g|| (float64 norm of the float32 gradient)", "measured",
               sw["length"], np.where(np.isfinite(sw["log_g"]), sw["log_g"], np.nan))
    curves.add("clipping", "ln||clipped g||", "measured", sw["length"],
               np.log(np.where(ok, sw["ratio"] * float(sec["clip_norm"]), np.nan)))
    curves.add("clipping", "0.5 ln FLT_MAX (squared norm overflows)", "hline", [0.0], [thr])
    curves.add("clipping", "ln max_norm", "hline", [0.0], [math.log(float(sec["clip_norm"]))])
    return ClaimResult(rows, curves)
