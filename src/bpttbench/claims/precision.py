"""Claim 8: in float16 a vanishing gradient becomes exactly 0, an exploding one inf, at
lags predicted from the float64 rate; loss scaling shifts both by ln S / |lambda|;
bfloat16 and TF32 rates stay within a bound set by their mantissas.

The cell is the orthogonal linear RNN W = sQ with zero inputs (h_t = 0, so the forward
pass is exact in any precision), whose exact BPTT gradient is ||delta_{T-k}|| =
s^k ||delta_T||: rate lambda = ln s. The float64 reference runs the same (rounded) weights
upcast. The rows (bpttbench.precision):

* ``8a`` float16 underflow: the first lag where some batch element's delta is exactly the
  zero vector, against [earliest, latest] from each element's measured lag-0 norm, lambda
  and the per-step round-off (``underflow_interval``). earliest is a theorem: relative u
  in the normal range, at most half the subnormal 2^-24 per element below it. latest is a
  prediction, not a bound (subnormal rounding can keep a vector alive without end): the
  lag where ||delta|| would fall below 2^-25 plus the steps a vector at the round-off's
  fixed point sqrt(H) 2^-25 / (1 - s) takes to decay below 2^-25 (4 for s = 0.5, 2 for
  s = 0.25 at H = 32). Point estimate (ln||delta_T|| - ln 2^-24)/|lambda| in the note.
* ``8b`` float16 overflow: the first inf lies in [norm reaches 65504, norm reaches
  sqrt(H) 65504]. Both ends are theorems, so 8b, 8c.overflow and 8e (built from such
  intervals) and 8f, 8i (round-off bounds) are exactness checks (``common.ROW_KINDS``);
  8a, 8c.underflow, 8d and 8g, whose latest lag is a prediction, are predictions.
* ``8c`` a static loss scale S moves the underflow lag by +ln S/|lambda| and the overflow
  lag by -ln S/lambda; tolerance: the widths of both intervals.
* ``8d`` dynamic loss scaling (GradScaler: 2^16, halved on inf/NaN) on the vanishing
  cell: the shift for the final scale it settles on; ``8e`` on the exploding cell the
  number of halvings lies in the interval where the first inf moves past lag T.
* ``8f`` bfloat16 rate error |lambda_bf16 - lambda_64| <= u + H u_32 + ln cond(W), u = 2^-8
  (8-bit mantissa): the least-squares slope is a weighted mean of per-step increments.
* ``8g`` autocast(float16), float32 model: the underflow lag in the float16 interval;
  ``8h`` every delta_t autocast returns (float32 tensors) is exactly representable in the
  autocast dtype (the matmul backward ran in it).
* ``8i`` (CUDA only) TF32 against FP32: rate difference within 2 u_tf32 + ...
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import precision as pr
from ..config import as_list
from ..gradient_flow.gradients import readout_problem
from ..models import unroll
from .common import ClaimResult, Curves, fmt, make_cell, row
from .settings import Context

SOURCE = "bpttbench.precision (float16/bfloat16 limits, loss scaling as torch.amp.GradScaler)"
INPUT_SIZE = 4


def _cell(scale: float, dtype: str, sec: dict, seed: int, ctx: Context):
    return make_cell("rnn_linear", INPUT_SIZE, sec["hidden"], "orthogonal", scale, seed,
                     device=ctx.device, dtype=pr.DTYPES[dtype])


def _flows(scale: float, steps: int, prec: pr.Precision, sec: dict, seed: int, ctx: Context):
    """(scaled flow, float64 reference, per-step error bound, cell) of one W = sQ cell."""
    cell = _cell(scale, prec.dtype, sec, seed, ctx)
    batch = sec["batch"]
    x = torch.zeros(steps, batch, INPUT_SIZE, device=ctx.device, dtype=pr.DTYPES[prec.dtype])
    w_out, target = readout_problem(sec["hidden"], batch, seed=seed)
    sf = pr.scaled_flow("rnn_linear", cell.params(), x, cell.initial_state(batch), w_out,
                        target, prec)
    ref = pr.reference_flow("rnn_linear", cell.params(), x, cell.initial_state(batch), w_out,
                            target)
    err = pr.step_error_bound(cell.weight_hh_l0, prec.compute_dtype)
    return sf, ref, err, cell


def _first_bad(log_norm: np.ndarray, kind: str) -> float:
    """First lag where some batch element is 0 (underflow) or non-finite (overflow)."""
    bad = np.isneginf(log_norm) if kind == "underflow" else ~np.isfinite(log_norm)
    rows = np.flatnonzero(bad.any(axis=1))
    return float(rows[0]) if rows.size else math.nan


def _interval(kind: str, rate: float, log_start: np.ndarray, ln_s: float, dtype: str,
              hidden: int, err: float) -> tuple[float, float, float]:
    """Interval of the first lag over the batch (min of each element's bounds), and k*."""
    fn = pr.underflow_interval if kind == "underflow" else pr.overflow_interval
    ends = [fn(rate, float(ls) + ln_s, dtype, hidden, err) for ls in log_start]
    return min(e[0] for e in ends), min(e[1] for e in ends), min(e[2] for e in ends)


def _steps(kind: str, scale: float, sec: dict, extra_ln: float = 0.0) -> int:
    """Enough steps to pass the latest predicted lag (delta_T is O(1): ln||delta_T|| < 3)."""
    lim = pr.limits("float16")
    rate = abs(math.log(scale))
    if kind == "underflow":  # the predicted latest lag, with its subnormal extra steps
        latest = pr.underflow_interval(-rate, 3.0 + extra_ln, "float16", sec["hidden"])[1]
        return int(latest) + 5 if math.isfinite(latest) else 10 * int(math.ceil(
            (3.0 + extra_ln - lim["ln_subnormal"]) / rate))
    reach = lim["ln_max"] + 0.5 * math.log(sec["hidden"]) + 6.0
    return int(math.ceil(reach / rate)) + 5


def run(sec: dict, ctx: Context) -> ClaimResult:
    rows, curves = [], Curves()
    seed, hidden, batch = ctx.seeds[0], sec["hidden"], sec["batch"]
    static = [float(s) for s in sec["loss_scale"]]
    cond0 = f"linear RNN W = sQ, zero inputs, H={hidden}, batch {batch}, seed {seed}"
    shown = {"underflow": False, "overflow": False}
    for kind, scales in (("underflow", sec["vanish_scale"]), ("overflow", sec["explode_scale"])):
        for scale in [float(s) for s in scales]:
            ln_s_max = math.log(max(static + [pr.DYNAMIC_INIT_SCALE]))
            steps = _steps(kind, scale, sec, ln_s_max)
            base, ref, err, _ = _flows(scale, steps, pr.Precision("float16"), sec, seed, ctx)
            rate = pr.growth_rate_fit(ref.log_norm_h.mean(axis=1))[0]
            log_start = ref.log_norm_h[0]
            # each chain starts from its own measured lag-0 norms (delta_T rounded to float16)
            lo, hi, k_star = _interval(kind, rate, base.flow.log_norm_h[0], 0.0, "float16",
                                       hidden, err)
            m = _first_bad(base.flow.log_norm_h, kind)
            cond = f"{cond0}, s={scale:g}, T={steps}, float16"
            letter = "8a" if kind == "underflow" else "8b"
            what = ("becomes exactly the zero vector" if kind == "underflow"
                    else "first has an inf element")
            whole, first = pr.underflow_lags(base.flow)
            rows.append(row(
                f"{letter}.s{scale:g}", f"float16 BPTT: the gradient {what} at the lag "
                f"predicted from the float64 rate (first lag over the batch)",
                m, lo, hi - lo, "p<=m<=p+tol", condition=cond, n=batch, unit="lag (steps)",
                source=SOURCE,
                note=(f"float64 rate {fmt(rate)} (ln s = {fmt(math.log(scale))}); k* = "
                      f"{fmt(k_star)}; "
                      + ("earliest: a theorem (the per-step round-off, relative in the normal "
                         "range and half a subnormal per element below it); latest: a "
                         "prediction (no finite bound exists) "
                         if kind == "underflow" else
                         f"interval from the element spread (0.5 ln H = "
                         f"{fmt(0.5 * math.log(hidden))} nats) and ")
                      + f"round-off {fmt(err)} nats/step, from the measured lag-0 norms"
                      + (f"; underflow_lag {whole}, first element exactly 0 at lag {first}."
                         if kind == "underflow" else
                         "; both ends are theorems (largest element <= norm and >= norm / "
                         "sqrt(H)).")),
            ))
            # loss scales: static ones and the dynamic rule
            for s_val in static + [pr.DYNAMIC]:
                sf, _, _, _ = _flows(scale, steps, pr.Precision("float16", None, s_val), sec,
                                     seed, ctx)
                ln_S = math.log(sf.loss_scale)
                m_s = _first_bad(sf.flow.log_norm_h, kind)
                lo_s, hi_s, _ = _interval(kind, rate, sf.flow.log_norm_h[0], ln_S, "float16",
                                          hidden, err)
                if s_val == pr.DYNAMIC and kind == "overflow":
                    rows.append(_dynamic_backoffs(sf, rate, log_start, steps, hidden, err,
                                                  scale, cond))
                    continue
                p = ln_S / abs(rate) * (1 if kind == "underflow" else -1)
                tol = max(abs(p - (lo_s - hi)), abs(p - (hi_s - lo)))
                tag = "8d" if s_val == pr.DYNAMIC else "8c"
                name = "dynamic" if s_val == pr.DYNAMIC else f"S{s_val:g}"
                rows.append(row(
                    f"{tag}.{kind}.s{scale:g}.{name}",
                    f"loss scale S moves the float16 {kind} lag by "
                    f"{'+' if kind == 'underflow' else '-'}ln S/|lambda|",
                    m_s - m, p, tol, condition=f"{cond}, S={sf.loss_scale:g}", n=batch,
                    unit="lags", source=SOURCE,
                    note=(f"lag {fmt(m_s)} with S = {sf.loss_scale:g} "
                          f"({sf.backoffs} halvings from 2^16 when dynamic), {fmt(m)} without; "
                          f"tolerance: both predicted intervals [{lo:g}, {hi:g}] and "
                          f"[{lo_s:g}, {hi_s:g}]."),
                ))
                if not shown[kind]:
                    _curve(curves, kind, f"float16, s={scale:g}, S={sf.loss_scale:g}",
                           sf.flow.log_norm_h)
            _curve(curves, kind, f"float16, s={scale:g}", base.flow.log_norm_h)
            curves.add(kind, f"float64, s={scale:g}", "predicted", np.arange(steps + 1),
                       ref.log_norm_h.mean(axis=1))
            curves.add(kind, f"predicted lag k*, s={scale:g}", "vline", [k_star], [math.nan])
            shown[kind] = True
    lim16 = pr.limits("float16")
    curves.add("underflow", "ln 2^-24 (float16 subnormal)", "hline", [0.0],
               [lim16["ln_subnormal"]])
    curves.add("overflow", "ln 65504 (float16 max)", "hline", [0.0], [lim16["ln_max"]])

    rows += _rates(sec, ctx, curves)
    rows += _autocast(sec, ctx, seed, cond0)
    if ctx.device == "cuda":
        rows.append(_tf32(sec, ctx, seed, cond0))
    return ClaimResult(rows, curves)


def _curve(curves: Curves, panel: str, group: str, log_norm: np.ndarray) -> None:
    mean = log_norm.mean(axis=1)
    curves.add(panel, group, "measured", np.arange(mean.size),
               np.where(np.isfinite(mean), mean, np.nan))


def _dynamic_backoffs(sf: pr.ScaledFlow, rate: float, log_start: np.ndarray, steps: int,
                      hidden: int, err: float, scale: float, cond: str) -> dict:
    """8e: halvings until no element of delta_0..delta_T overflows in float16."""
    lim = pr.limits("float16")
    ln_m = lim["ln_max"]
    top = float(np.max(log_start)) + steps * rate  # largest ln||delta|| over lags and batch
    drift = err * steps

    def first_n(ok) -> int:
        n = 0
        while not ok(math.log(pr.DYNAMIC_INIT_SCALE) + n * math.log(pr.DYNAMIC_BACKOFF)):
            n += 1
        return n
    # surely safe: even a delta concentrated on one element stays below 65504
    n_hi = first_n(lambda ln_S: top + ln_S + drift < ln_m)
    # possibly safe: a perfectly spread delta's elements stay below 65504 + ulp/2
    n_lo = first_n(lambda ln_S: top + ln_S - 0.5 * math.log(hidden) - drift
                   <= ln_m + math.log1p(lim["unit_roundoff"]))
    return row(
        f"8e.s{scale:g}", "dynamic loss scaling of an exploding float16 gradient halves the "
        "scale until delta_T..delta_0 fit below 65504: the number of halvings",
        sf.backoffs, n_lo, n_hi - n_lo, "p<=m<=p+tol", condition=f"{cond}, S dynamic",
        unit="halvings", source=SOURCE,
        note=(f"final scale {sf.loss_scale:g}; interval from ln||delta_0|| <= "
              f"{fmt(top)} (float64 rate) and the element spread."),
    )


def _rates(sec: dict, ctx: Context, curves: Curves) -> list[dict]:
    """8f: bfloat16 (and float16 over its normal range) rates against float64."""
    out = []
    seed, steps = ctx.seeds[0], sec["rate_steps"]
    for scale in [float(s) for s in as_list(sec["rate_scale"])]:
        for seed_ in ctx.seeds[: sec["rate_seeds"]]:
            sf, ref, err, _ = _flows(scale, steps, pr.Precision("bfloat16"), sec, seed_, ctx)
            rate, rate64, diff = pr.rate_vs_reference(sf.flow, ref)
            out.append(row(
                f"8f.s{scale:g}.seed{seed_}", "bfloat16 BPTT rate against the float64 rate of "
                "the same weights: |error| <= u + H u_32 + ln cond(W), u = 2^-8",
                abs(diff), 0.0, err, "m<=p+tol",
                condition=f"linear RNN W = sQ (bf16-rounded), s={scale:g}, H={sec['hidden']}, "
                f"T={steps}, seed {seed_}", n=sec["batch"], unit="nats/step", source=SOURCE,
                note=(f"rate {fmt(rate, 6)} vs float64 {fmt(rate64, 6)}; bound {fmt(err)} "
                      f"(the least-squares slope is a weighted mean of per-step increments)."),
            ))
            if seed_ == seed:
                _curve(curves, "bfloat16", f"bfloat16, s={scale:g}", sf.flow.log_norm_h)
                curves.add("bfloat16", f"float64, s={scale:g}", "predicted",
                           np.arange(steps + 1), ref.log_norm_h.mean(axis=1))
    return out


def _autocast(sec: dict, ctx: Context, seed: int, cond0: str) -> list[dict]:
    """8g: autocast(float16) underflow lag; 8h: deltas exactly representable."""
    out = []
    scale = float(sec["vanish_scale"][0])
    steps = _steps("underflow", scale, sec)
    sf, ref, err, _ = _flows(scale, steps, pr.Precision("float32", "float16"), sec, seed, ctx)
    rate = pr.growth_rate_fit(ref.log_norm_h.mean(axis=1))[0]
    lo, hi, k_star = _interval("underflow", rate, sf.flow.log_norm_h[0], 0.0, "float16",
                               sec["hidden"], pr.step_error_bound(_cell(scale, "float32", sec,
                                                                        seed, ctx).weight_hh_l0,
                                                                  "float16"))
    out.append(row(
        f"8g.s{scale:g}", "autocast(float16) with a float32 model: the gradient becomes exactly "
        "0 at the float16 underflow lag", _first_bad(sf.flow.log_norm_h, "underflow"), lo,
        hi - lo, "p<=m<=p+tol", condition=f"{cond0}, s={scale:g}, T={steps}, autocast float16",
        n=sec["batch"], unit="lag (steps)", source="torch.autocast",
        note=(f"autograd returned {sf.flow.grad_dtype} deltas; k* = {fmt(k_star)}."),
    ))
    for ac in pr.LOW_DTYPES:
        bad, total, gdt = representability(scale, steps, ac, sec, seed, ctx)
        out.append(row(
            f"8h.{ac}", f"autocast({ac}): every delta_t (returned as float32) is exactly a "
            f"{ac} number: the matmul backward ran in {ac}", bad, 0.0, 0.0, "m<=p+tol",
            condition=f"{cond0}, s={scale:g}, T={steps}, autocast {ac}", n=total,
            unit="elements", source="torch.autocast",
            note=f"gradient dtype {gdt}; elements that change when rounded to {ac}: {bad}.",
        ))
    return out


def representability(scale: float, steps: int, ac: str, sec: dict, seed: int,
                     ctx: Context) -> tuple[int, int, str]:
    """(elements of all delta_t that are not exact ``ac`` numbers, total, delta dtype)."""
    cell = _cell(scale, "float32", sec, seed, ctx)
    batch = sec["batch"]
    x = torch.zeros(steps, batch, INPUT_SIZE, device=ctx.device)
    w_out, target = readout_problem(sec["hidden"], batch, seed=seed)
    s0 = (cell.initial_state(batch)[0].requires_grad_(True),)
    with torch.autocast(x.device.type, dtype=pr.DTYPES[ac]):
        states = unroll("rnn_linear", cell.params(), x, s0)
        h_T = states[-1][0]
        loss = 0.5 * ((h_T @ w_out.to(h_T.device, h_T.dtype).T
                       - target.to(h_T.device, h_T.dtype)) ** 2).sum()
    grads = torch.autograd.grad(loss, [s[0] for s in states])
    d = torch.stack(grads)
    bad = int((d.to(pr.DTYPES[ac]).to(d.dtype) != d).sum())
    return bad, int(d.numel()), str(d.dtype).removeprefix("torch.")


def _tf32(sec: dict, ctx: Context, seed: int, cond0: str) -> dict:
    """8i (CUDA): float32 BPTT rate with TF32 matmuls against without."""
    scale, steps = float(as_list(sec["rate_scale"])[0]), sec["rate_steps"]
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        rates = {}
        for flag in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = flag
            sf, ref, _, cell = _flows(scale, steps, pr.Precision("float32"), sec, seed, ctx)
            rates[flag] = pr.rate_vs_reference(sf.flow, ref)[0]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    w = cell.weight_hh_l0
    tol = (pr.step_error_bound(w, "tf32", operands_rounded=2)
           + pr.step_error_bound(w, "float32"))
    return row(
        f"8i.s{scale:g}", "TF32 matmuls: float32 BPTT rate with allow_tf32 against without, "
        "within 2 u_tf32 (10-bit mantissa) + FP32 round-off + ln cond(W)",
        abs(rates[True] - rates[False]), 0.0, tol, "m<=p+tol",
        condition=f"{cond0}, s={scale:g}, T={steps}, CUDA", n=sec["batch"], unit="nats/step",
        source="torch.backends.cuda.matmul.allow_tf32",
        note=f"rate TF32 {fmt(rates[True], 6)}, FP32 {fmt(rates[False], 6)}.",
    )
