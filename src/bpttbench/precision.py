"""Reduced precision: BPTT in float16/bfloat16, under autocast, with loss scaling.

What a precision setting is (:class:`Precision`), where each dtype underflows and
overflows (:func:`limits`), BPTT under a static or dynamic loss scale
(:func:`scaled_flow`), the float64 reference of the same cell (:func:`reference_flow`:
the low-precision weights and inputs upcast, so the numbers are identical), and the
predicted underflow/overflow lags and rate-error bounds the claim group 8_precision
tests (:func:`underflow_interval`, :func:`overflow_interval`, :func:`step_error_bound`).

Log sums and norms stay float64 throughout (``gradients._log_norms`` upcasts before the
norm), so only the BPTT arithmetic itself runs in the low precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .gradient_flow.gradients import (
    GradientFlow,
    first_lag_where,
    growth_rate_fit,
    measure_gradient_flow,
)
from .models import Params, State
from .planning.precision import DYNAMIC, LOW_DTYPES, Precision, check_dtype

__all__ = ["DTYPES", "DYNAMIC", "LOW_DTYPES", "Precision", "torch_dtype"]

#: the one map from dtype names to torch dtypes (names and sizes: planning.precision)
DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64, "float32": torch.float32,
    "float16": torch.float16, "bfloat16": torch.bfloat16,
}
DYNAMIC_INIT_SCALE = 2.0**16  # torch.amp.GradScaler's init_scale
DYNAMIC_BACKOFF = 0.5  # GradScaler's backoff_factor
DYNAMIC_MAX_BACKOFFS = 64  # 2^16 -> 2^-48: past that a finite gradient is out of reach
U32 = 2.0**-24  # float32 unit round-off (matmuls accumulate in float32)


def torch_dtype(name: str, allowed: tuple[str, ...] | None = None) -> torch.dtype:
    """The torch dtype of a name (a ValueError naming the allowed ones otherwise)."""
    return DTYPES[check_dtype(name, allowed)]


def limits(dtype: torch.dtype | str) -> dict[str, float]:
    """ln of the smallest subnormal, of the largest finite value, and the unit round-off.

    float16: 2^-24 (ln -16.64) and 65504 (ln 11.09), u = 2^-11; bfloat16: 2^-133 and
    3.39e38, u = 2^-8 (8-bit mantissa); float32: 2^-149 and 3.40e38, u = 2^-24.
    """
    dt = torch_dtype(dtype) if isinstance(dtype, str) else dtype
    fi = torch.finfo(dt)
    return {"ln_subnormal": math.log(fi.tiny) + math.log(fi.eps), "ln_max": math.log(fi.max),
            "unit_roundoff": fi.eps / 2.0, "mantissa_bits": -math.log2(fi.eps) + 1}


@dataclass
class ScaledFlow:
    flow: GradientFlow
    loss_scale: float  # the scale of the returned flow (the final one when dynamic)
    backoffs: int  # halvings of a dynamic scale (0 for a static one)


def _nonfinite(flow: GradientFlow) -> bool:
    arrays = [flow.log_norm_h] + ([flow.log_norm_c] if flow.log_norm_c is not None else [])
    return any(bool(np.isnan(a).any() or np.isposinf(a).any()) for a in arrays)


def scaled_flow(model: str, params: Params, x: torch.Tensor, state0: State, w_out: torch.Tensor,
                target: torch.Tensor, prec: Precision) -> ScaledFlow:
    """BPTT under ``prec``'s autocast and loss scale; log norms are of the unscaled delta.

    Dynamic: as GradScaler, start at 2^16 and halve while any delta_t is inf/NaN (GradScaler
    skips the step and halves; here the same batch is tried again), at most 64 times.
    """
    ac = DTYPES[prec.autocast] if prec.autocast else None
    if prec.loss_scale != DYNAMIC:
        s = float(prec.loss_scale)
        flow = measure_gradient_flow(model, params, x, state0, w_out, target, loss_scale=s,
                                     autocast=ac)
        return ScaledFlow(flow, s, 0)
    s, backoffs = DYNAMIC_INIT_SCALE, 0
    while True:
        flow = measure_gradient_flow(model, params, x, state0, w_out, target, loss_scale=s,
                                     autocast=ac)
        if not _nonfinite(flow) or backoffs >= DYNAMIC_MAX_BACKOFFS:
            return ScaledFlow(flow, s, backoffs)
        s *= DYNAMIC_BACKOFF
        backoffs += 1


def reference_flow(model: str, params: Params, x: torch.Tensor, state0: State,
                   w_out: torch.Tensor, target: torch.Tensor) -> GradientFlow:
    """The same cell in float64: the same weights, inputs and state upcast (exact)."""
    f64 = torch.float64
    p64 = {k: v.detach().to(f64) for k, v in params.items()}
    return measure_gradient_flow(model, p64, x.to(f64), tuple(s.to(f64) for s in state0),
                                 w_out, target)


def underflow_lags(flow: GradientFlow) -> tuple[int | None, int | None]:
    """First lag where some batch element's delta is exactly the zero vector, and where
    its first element is exactly 0 (None: never within T)."""
    whole = first_lag_where(np.isneginf(flow.log_norm_h))
    first = first_lag_where(flow.first_zero_h) if flow.first_zero_h is not None else None
    return whole, first


def rate_vs_reference(flow: GradientFlow, ref: GradientFlow) -> tuple[float, float, float]:
    """(rate, float64 rate, rate - float64 rate) fitted over the same lags: those where the
    measured batch-mean ln||delta|| is finite (underflowed or overflowed lags drop out)."""
    mean = flow.log_norm_h.mean(axis=1)
    with np.errstate(invalid="ignore"):
        mean_ref = np.where(np.isfinite(mean), ref.log_norm_h.mean(axis=1), np.nan)
    rate, _ = growth_rate_fit(mean)
    rate64, _ = growth_rate_fit(mean_ref)
    return rate, rate64, rate - rate64


class LossScaler:
    """Loss scaling for training, with torch.amp.GradScaler's rule for ``dynamic``.

    Static S: multiply the loss by S, divide the gradients by S. Dynamic: start at 2^16;
    an update with an inf/NaN gradient is skipped and S halved; after ``growth_interval``
    finite updates in a row S doubles (GradScaler's defaults). Written out rather than
    using GradScaler because GradScaler refuses float16 parameters (pure float16 training).
    """

    def __init__(self, loss_scale: float | str, growth_interval: int = 2000) -> None:
        self.dynamic = loss_scale == DYNAMIC
        self.scale = DYNAMIC_INIT_SCALE if self.dynamic else float(loss_scale)
        self.growth_interval = growth_interval
        self.backoffs = 0
        self._good = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0 and not self.dynamic:
            return loss
        return loss.to(torch.promote_types(loss.dtype, torch.float32)) * self.scale

    @torch.no_grad()
    def unscale_(self, params: list[torch.nn.Parameter]) -> None:
        if self.scale != 1.0:
            for p in params:
                if p.grad is not None:
                    p.grad.div_(self.scale)

    def update(self, found_inf: bool) -> None:
        if not self.dynamic:
            return
        if found_inf:
            self.scale *= DYNAMIC_BACKOFF
            self.backoffs += 1
            self._good = 0
        else:
            self._good += 1
            if self._good >= self.growth_interval:
                self.scale *= 2.0
                self._good = 0


# ----------------------------------------------------------------------------------------
# predictions


def first_lag_above(level: float, log_start: float, rate: float) -> float:
    """First integer lag k >= 0 with log_start + k |rate| > level (rate != 0), as a float."""
    if log_start > level:
        return 0.0
    return math.floor((level - log_start) / abs(rate)) + 1.0


def _factors(rate: float, step_error: float) -> tuple[float, float]:
    """(g_lo, g_hi) = exp(rate -+ step_error): the least and most ||delta|| can change in one
    step apart from the subnormal range's absolute round-off."""
    return math.exp(rate - step_error), math.exp(rate + step_error)


def norm_envelope(rate: float, log_start: float, dtype: str, hidden: int, step_error: float,
                  lags: int) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) bound on ln||delta_{T-k}|| computed in ``dtype``, k = 0..lags (a theorem).

    One step computes d' = fl(W^T d): ||W^T d|| lies in [sigma_min, sigma_max] ||d||, and
    rounding to nearest moves each entry by at most u |entry| in the normal range and by at
    most m/2 (half the smallest subnormal, an absolute error) in the subnormal range, so
    ||d'|| <= g_hi ||d|| + c m and ||d'|| >= g_lo ||d|| - c m with g = exp(rate +- step_error)
    (``step_error`` from :func:`step_error_bound`, ``rate`` the float64 rate, which lies in
    [ln sigma_min, ln sigma_max]) and c = sqrt(H)/2. Unrolled from ||d_0|| = exp(log_start)
    (the measured lag-0 norm): U_k = g_hi^k r_0 + c (1 - g_hi^k)/(1 - g_hi) and L_k likewise
    with -c. U_k does not go to 0: it tends to the fixed point c/(1 - g_hi), which is why no
    norm argument bounds the lag of the exact zero from above. lower is -inf where L_k <= 0.
    """
    ln_m = limits(dtype)["ln_subnormal"]
    g_lo, g_hi = _factors(rate, step_error)
    c = 0.5 * math.sqrt(hidden)
    k = np.arange(lags + 1, dtype=np.float64)
    r0 = math.exp(log_start - ln_m)
    up = g_hi**k * r0 + c * k if g_hi == 1.0 else g_hi**k * r0 + c * (1 - g_hi**k) / (1 - g_hi)
    lo = g_lo**k * r0 - c * k if g_lo == 1.0 else g_lo**k * r0 - c * (1 - g_lo**k) / (1 - g_lo)
    with np.errstate(divide="ignore"):
        return np.where(lo > 0, np.log(np.maximum(lo, 0.0)), -np.inf) + ln_m, np.log(up) + ln_m


def underflow_interval(rate: float, log_start: float, dtype: str, hidden: int,
                       step_error: float = 0.0) -> tuple[float, float, float]:
    """(earliest, latest, k*) lag at which a vanishing delta becomes exactly the zero vector.

    ln||delta_{T-k}|| = log_start + k rate exactly (rate < 0); log_start is the measured
    lag-0 norm. Units: m, the smallest subnormal; c = sqrt(H)/2, g = exp(rate +- step_error)
    (:func:`norm_envelope`).

    earliest (a theorem): d_k = 0 needs every entry of W^T d_{k-1} within m/2 of 0, so
    ||W^T d_{k-1}|| <= c m, while ||W^T d_{k-1}|| >= g_lo L_{k-1}; that is L_k <= 0:
    k >= ln(1 + r_0 (1 - g_lo)/c) / |ln g_lo|.

    latest (a prediction, not a bound): rounding to nearest in the subnormal range can keep
    a vector alive without end (an entry of 1 ulp times a coefficient above 1/2 rounds back
    to 1 ulp: W = 0.8 I never reaches 0), so no finite upper bound exists in general. The
    prediction: K0, the first lag where even the upper trajectory r_0 g_hi^k is below half
    an ulp (every entry would round to 0 without the subnormal round-off), plus
    E = ceil(ln(2 R) / |ln g_hi|) steps, the time a vector at the fixed point R = c/(1 - g_hi)
    of ||d'|| <= g_hi ||d|| + c m (the largest norm the per-step round-off can sustain)
    takes to decay below half an ulp. inf when g_hi >= 1. E = 4 for s = 0.5 at H = 16 or 32
    (R just above 4 and 5.7 ulps), 2 for s = 0.25.
    k* = (log_start - ln m) / |rate| is the issue's point estimate.
    """
    ln_m = limits(dtype)["ln_subnormal"]
    k_star = (log_start - ln_m) / abs(rate)
    g_lo, g_hi = _factors(rate, step_error)
    c = 0.5 * math.sqrt(hidden)
    r0 = math.exp(log_start - ln_m)
    lo = max(1.0, float(math.ceil(math.log1p(r0 * (1 - g_lo) / c) / -math.log(g_lo))))
    if g_hi >= 1.0:
        return lo, math.inf, k_star
    k0 = first_lag_above(log_start - ln_m - math.log(0.5), 0.0, math.log(g_hi))
    reach = 2.0 * c / (1.0 - g_hi)  # 2 R: R in units of half an ulp
    extra = float(math.ceil(math.log(reach) / -math.log(g_hi))) if reach > 1.0 else 0.0
    return lo, max(lo, k0 + extra), k_star


def overflow_interval(rate: float, log_start: float, dtype: str, hidden: int,
                      step_error: float = 0.0) -> tuple[float, float, float]:
    """(earliest, latest, k*) lag of the first inf in an exploding delta (rate > 0).

    An element overflows once |delta_i| >= the largest finite value M plus half an ulp:
    earliest when delta is concentrated on one element (||delta|| > M), latest when spread
    evenly (||delta|| > sqrt(H) (M + ulp/2)). ||delta_{T-k}|| grows from the measured lag-0
    norm by a factor within exp(rate -+ step_error) per step (relative round-off in the normal
    range), so each end uses the rate moved out by ``step_error``. k* = (ln M - log_start) / rate.
    """
    ln_max = limits(dtype)["ln_max"]
    k_star = (ln_max - log_start) / rate
    half_ulp = math.log1p(limits(dtype)["unit_roundoff"])  # M + half an ulp rounds to inf
    lo = first_lag_above(ln_max, log_start, rate + step_error)
    hi = first_lag_above(ln_max + half_ulp + 0.5 * math.log(hidden), log_start,
                         rate - step_error)
    return lo, hi, k_star


def step_error_bound(w_hh: torch.Tensor, compute_dtype: str, operands_rounded: int = 1) -> float:
    """Bound on the per-step error of ln||delta|| for a linear RNN (J_t = W at every step).

    One step computes fl(W^T delta): products accumulated in float32, whose error is at most
    gamma_H sum_j |W_ji delta_j| per entry (gamma_H = H u_32 / (1 - H u_32)), so at most
    gamma_H ||W||_F ||delta|| <= gamma_H ||W||_F / sigma_min ||W^T delta|| in the norm (twice
    that covers ln(1 - x) >= -2x), and rounded once to the compute dtype (relative error <= u
    per element in the normal range, so <= u in the norm; TF32 rounds both operands,
    ``operands_rounded`` = 2). The computed delta then points in a slightly different direction
    than the exact one, and ||W^T v|| / ||v|| varies with v by at most
    ln(sigma_max / sigma_min) of the W actually used. Sum of the three. (The absolute round-off
    of the subnormal range is not in it: :func:`norm_envelope`.)
    """
    u = limits(compute_dtype)["unit_roundoff"] if compute_dtype != "tf32" else 2.0**-11
    w64 = w_hh.detach().to(torch.float64).cpu()
    sv = torch.linalg.svdvals(w64)
    log_cond = float(torch.log(sv.max() / sv.min()))
    hidden = w_hh.shape[-1]
    gamma = hidden * U32 / (1.0 - hidden * U32)
    accumulate = 2.0 * gamma * float(torch.linalg.matrix_norm(w64) / sv.min())
    return -operands_rounded * math.log1p(-u) + accumulate + log_cond
