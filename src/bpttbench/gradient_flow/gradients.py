"""BPTT gradient flow: the total derivative delta_t = dL/dh_t at every step, by autograd.

The loss sits at the last step only, L = 1/2 sum_b ||W_out h_T^b - y^b||^2, so
delta_T = W_out^T (W_out h_T - y) and, going back, delta_t = P_{T,t}^T delta_T with
P_{T,t} = J_T ... J_{t+1}. Autograd gives delta_t for every t as the gradient of L with
respect to the intermediate node h_t. Norms are taken in float64 so that a float32
delta near its overflow threshold does not overflow only because it is squared.

Exploding gradients are data: non-finite values are recorded with the lag where
they first appear, never raised.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..models import Params, State, unroll

# bytes of stacked per-step tensors reduced at once (bounds the extra memory of the
# reductions; the memory estimate counts the same chunks)
from ..planning.memory import REDUCE_CHUNK_BYTES

QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
HORIZON_RATIO = 1e-6  # horizon: first lag where ||delta_{T-k}|| / ||delta_T|| < this


@dataclass
class GradientFlow:
    """ln||delta_{T-k}|| for lags k = 0..T (rows) and batch elements (columns)."""

    log_norm_h: np.ndarray  # [T+1, B] float64, row k is lag k (t = T - k)
    log_norm_c: np.ndarray | None  # LSTM only: ln||dL/dc_{T-k}||
    first_nonfinite_step: int | None  # forward pass: first t with a non-finite state
    loss: float
    # [T+1, B]: element 0 of dL/dh_{T-k} is exactly zero (the first element's underflow)
    first_zero_h: np.ndarray | None = None
    loss_scale: float = 1.0  # S: the loss was multiplied by S, log norms are of delta (ln S off)
    grad_dtype: str | None = None  # dtype of the tensors dL/dh_t autograd returned

    @property
    def lags(self) -> np.ndarray:
        return np.arange(self.log_norm_h.shape[0])


def readout_problem(
    hidden: int, batch: int, *, outputs: int = 10, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """A fixed random linear readout W_out [O, H] ~ N(0, 1/H) and targets y [B, O] ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(10_007 + int(seed))
    w_out = torch.randn(outputs, hidden, generator=gen, dtype=torch.float64) / math.sqrt(hidden)
    target = torch.randn(batch, outputs, generator=gen, dtype=torch.float64)
    return w_out, target


def _chunks(n_items: int, item_bytes: int, budget: int = REDUCE_CHUNK_BYTES) -> range:
    return range(0, n_items, max(1, budget // max(1, item_bytes)))


def _log_norms(grads: list[Tensor | None]) -> np.ndarray:
    """ln||g||_2 over the last axis for each per-step gradient, as one [len, B] float64 array.

    The norms are reduced on the tensors' device in chunks of steps (a few launches per
    chunk, not per step) and come back to the host once: no round-trip per step.
    """
    if any(g is None for g in grads):  # h_t not on any path to L (cannot happen for t <= T)
        raise RuntimeError("a hidden state is disconnected from the loss")
    first = grads[0]
    step = _chunks(len(grads), first.numel() * 8)
    parts = [torch.log(torch.linalg.vector_norm(
        torch.stack([g.detach() for g in grads[i:i + step.step]]).to(torch.float64), dim=-1))
        for i in step]
    return torch.cat(parts).cpu().numpy()


def _first_element_zero(grads: list[Tensor]) -> np.ndarray:
    """[len, B] bool: the first element of each per-step gradient is exactly 0 (an underflow).

    Like the norms: a few launches per chunk of steps and one read back, none per step."""
    step = _chunks(len(grads), grads[0].numel() * grads[0].element_size())
    return torch.cat([torch.stack([g.detach()[..., 0] for g in grads[i:i + step.step]]) == 0
                      for i in step]).cpu().numpy()


def first_nonfinite_step(states: list[State]) -> int | None:
    """First t whose state (h_t, or c_t) holds an inf or NaN; None if all are finite.

    Per-step flags are reduced on the device in chunks and read back once.
    """
    flags = []
    for j in range(len(states[0])):
        seq = [s[j].detach() for s in states]
        step = _chunks(len(seq), seq[0].numel() * seq[0].element_size())
        flags.append(torch.cat([torch.isfinite(torch.stack(seq[i:i + step.step])).flatten(1).all(1)
                                for i in step]))
    bad = np.flatnonzero(~torch.stack(flags).all(0).cpu().numpy())
    return int(bad[0]) if bad.size else None


def measure_gradient_flow(
    model: str, params: Params, x: Tensor, state0: State, w_out: Tensor, target: Tensor,
    *, loss_scale: float = 1.0, autocast: torch.dtype | None = None,
) -> GradientFlow:
    """Run BPTT for one batch and return ln||dL/dh_t|| (and ln||dL/dc_t||) for every step.

    ``state0`` tensors are made leaves that require grad so that delta_0 is measured too.
    ``loss_scale`` S: backpropagate S L (static loss scaling, as mixed-precision training
    does); the returned log norms are ln||S delta|| - ln S, so they compare with S = 1
    while underflow and overflow happen where the scaled values cross the limits.
    ``autocast``: run forward and loss under ``torch.autocast`` with this dtype (the
    parameters stay in their own dtype, as users train).
    """
    state0 = tuple(s.detach().clone().requires_grad_(True) for s in state0)
    ctx = (torch.autocast(x.device.type, dtype=autocast) if autocast is not None
           else contextlib.nullcontext())
    with ctx:
        states = unroll(model, params, x, state0)
        h_T = states[-1][0]
        w_out = w_out.to(dtype=h_T.dtype, device=h_T.device)
        target = target.to(dtype=h_T.dtype, device=h_T.device)
        loss = 0.5 * ((h_T @ w_out.T - target) ** 2).sum()
    first_bad = first_nonfinite_step(states)
    hs = [s[0] for s in reversed(states)]  # lag 0 first
    cs = [s[1] for s in reversed(states)] if model == "lstm" else []
    # As torch.amp.GradScaler: its float32 scale promotes a half loss to float32, and the
    # gradient S reaches the half graph rounded to its dtype (2^16 -> inf in float16).
    scaled = loss if loss_scale == 1.0 else loss.to(torch.promote_types(loss.dtype,
                                                                        torch.float32)) * loss_scale
    grads = torch.autograd.grad(scaled, hs + cs, allow_unused=False)
    log_h = _log_norms(list(grads[: len(hs)]))
    log_c = _log_norms(list(grads[len(hs) :])) if cs else None
    if loss_scale != 1.0:  # ln||S delta|| - ln S; +-inf stay what they are
        log_h = log_h - math.log(loss_scale)
        log_c = None if log_c is None else log_c - math.log(loss_scale)
    first_zero = _first_element_zero(list(grads[: len(hs)]))
    return GradientFlow(log_h, log_c, first_bad, float(loss.detach()), first_zero,
                        float(loss_scale), str(grads[0].dtype).removeprefix("torch."))


def lag_statistics(log_norms: np.ndarray) -> dict[str, np.ndarray]:
    """Per lag: mean, std and quantiles of ln||delta|| over the batch (natural log).

    Rows with a NaN anywhere give NaN; -inf (a float underflow to exactly 0) and +inf
    propagate as they are, because they are what the float arithmetic produced.
    """
    with np.errstate(invalid="ignore"):
        stats = {
            "log_grad_norm": log_norms.mean(axis=1),
            "log_grad_norm_std": log_norms.std(axis=1),
        }
        qs = np.quantile(log_norms, QUANTILES, axis=1)
    for q, values in zip(QUANTILES, qs, strict=True):
        stats[f"log_grad_norm_q{round(q * 100):02d}"] = values
    stats["n_finite"] = np.isfinite(log_norms).sum(axis=1)
    return stats


def growth_rate_fit(mean_log_norm: np.ndarray, dtype: str | np.dtype | None = "float64"
                    ) -> tuple[float, float]:
    """Least-squares slope (per step, natural log) of mean ln||delta_{T-k}|| against k, and R^2
    (the summary's growth_rate; ``jacobians.chain.growth_rate`` is the slope of one chain's
    log norms, without a fit quality).

    Only finite lags enter the fit. NaN when fewer than 2 finite lags remain.
    ``dtype``: the dtype the chain's products ran in ("tf32" for TF32 matmuls). R^2 is 1
    when the fit is exact to that dtype's round-off (see :func:`fit_round_off`): a flat
    chain (rate 0) otherwise gets 1 - (rounding noise)/(rounding noise), an arbitrary value.
    """
    lags = np.arange(mean_log_norm.shape[0], dtype=np.float64)
    ok = np.isfinite(mean_log_norm)
    if ok.sum() < 2:
        return math.nan, math.nan
    k, y = lags[ok], mean_log_norm[ok]
    slope, intercept = np.polyfit(k, y, 1)
    resid = y - (slope * k + intercept)
    ss_tot, ss_res = float(((y - y.mean()) ** 2).sum()), float((resid**2).sum())
    exact = math.sqrt(ss_res / y.size) <= fit_round_off(y, dtype)
    r2 = 1.0 if exact else 1.0 - ss_res / ss_tot
    return float(slope), r2


def fit_round_off(log_norms: np.ndarray, dtype: str | np.dtype | None = "float64") -> float:
    """RMS residual below which a fit to ``log_norms`` is exact to the round-off of ``dtype``.

    One ln||delta|| carries an absolute error of a few eps of the dtype the chain ran in,
    and the fit's own float64 arithmetic about eps64 |ln||delta|||; both are within
    eps max(1, max|ln||delta|||). Along a chain of n steps the per-step errors add up
    like a random walk: sqrt(n) eps max(1, max|ln||delta|||). (Committed float32 flat cells,
    T = 50 and 200: RMS residual <= 0.33 eps32; a curved cell's residuals are ~1e5 eps32.)
    """
    name = "float64" if dtype is None else str(dtype).removeprefix("torch.")
    # TF32 matmuls keep a 10-bit mantissa (eps 2^-10)
    eps = 2.0**-10 if name == "tf32" else float(torch.finfo(getattr(torch, name)).eps)
    scale = max(1.0, float(np.max(np.abs(log_norms)))) if log_norms.size else 1.0
    return math.sqrt(log_norms.size) * eps * scale


def horizon(mean_log_norm: np.ndarray, ratio: float = HORIZON_RATIO) -> int | None:
    """First lag k with mean ln||delta_{T-k}|| - mean ln||delta_T|| < ln(ratio); None if never."""
    drop = mean_log_norm - mean_log_norm[0]
    below = np.flatnonzero(drop < math.log(ratio))
    return int(below[0]) if below.size else None


def first_lag_where(mask: np.ndarray) -> int | None:
    """First row (lag) where any batch element satisfies ``mask``; None if none does."""
    rows = np.flatnonzero(mask.any(axis=1))
    return int(rows[0]) if rows.size else None


def flow_status(flow: GradientFlow) -> tuple[str, int | None]:
    """(status, first lag with a non-finite delta): ok, overflow (inf only) or nan."""
    logs = [flow.log_norm_h] + ([flow.log_norm_c] if flow.log_norm_c is not None else [])
    nan_lag = min((v for v in (first_lag_where(np.isnan(a)) for a in logs) if v is not None),
                  default=None)
    inf_lag = min((v for v in (first_lag_where(np.isposinf(a)) for a in logs) if v is not None),
                  default=None)
    if nan_lag is not None:
        return "nan", nan_lag if inf_lag is None else min(nan_lag, inf_lag)
    if inf_lag is not None or flow.first_nonfinite_step is not None:
        return "overflow", inf_lag
    return "ok", None
