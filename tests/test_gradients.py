"""BPTT deltas against float64 finite differences and exact results for linear RNNs."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from bpttbench.config import gradient_flow_cells, validate
from bpttbench.gradient_flow.cells import run_cell
from bpttbench.gradient_flow.gradients import (
    fit_round_off,
    flow_status,
    growth_rate_fit,
    horizon,
    lag_statistics,
    measure_gradient_flow,
    readout_problem,
)
from bpttbench.models import MODELS, RecurrentCell, init_parameters, unroll


def _loss_from(model, params, x, state_t, t, w_out, target, b):
    """L for batch element b when the forward pass restarts at step t from ``state_t``."""
    states = unroll(model, params, x[t:], state_t)
    h_T = states[-1][0]
    return 0.5 * ((h_T[b] @ w_out.T - target[b]) ** 2).sum()


@pytest.mark.parametrize("model", MODELS)
def test_autograd_delta_equals_finite_differences(model: str, rng_seed: int) -> None:
    torch.manual_seed(rng_seed)
    hidden, T, batch = 6, 12, 3
    cell = init_parameters(RecurrentCell(model, 4, hidden, dtype=torch.float64), "orthogonal",
                           0.95, bias_scale=0.2, seed=rng_seed)
    params = {k: v.detach() for k, v in cell.params().items()}
    x = torch.randn(T, batch, 4, dtype=torch.float64)
    state0 = tuple(torch.randn(batch, hidden, dtype=torch.float64) * 0.5
                   for _ in range(2 if model == "lstm" else 1))
    w_out, target = readout_problem(hidden, batch, seed=rng_seed)
    flow = measure_gradient_flow(model, params, x, state0, w_out, target)

    # Reference: delta_t . v by central differences in float64, per batch element.
    states = unroll(model, params, x, state0)
    eps = 1e-5
    for t in (T, T - 1, T // 2, 0):
        lag = T - t
        b = int(torch.randint(batch, ()).item())
        grads = []
        for i in range(hidden):
            e = torch.zeros(batch, hidden, dtype=torch.float64)
            e[b, i] = eps
            plus = (states[t][0] + e,) + states[t][1:]
            minus = (states[t][0] - e,) + states[t][1:]
            lp = _loss_from(model, params, x, plus, t, w_out, target, b)
            lm = _loss_from(model, params, x, minus, t, w_out, target, b)
            grads.append(((lp - lm) / (2 * eps)).item())
        fd_norm = np.linalg.norm(grads)
        # Central differences: O(eps^2) truncation plus rounding 1e-16 * |L| / eps ~ 1e-9 per
        # component: 1e-5 relative for ||delta|| >= 1e-4. A ReLU cell can have delta exactly 0
        # (every unit off), where only the absolute term applies.
        assert fd_norm == pytest.approx(math.exp(flow.log_norm_h[lag, b]), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("scale", [0.5, 0.9, 1.0, 1.3])
def test_linear_orthogonal_rnn_growth_rate_is_ln_s(scale: float, rng_seed: int) -> None:
    torch.manual_seed(rng_seed)
    cell = init_parameters(RecurrentCell("rnn_linear", 3, 16, dtype=torch.float64), "orthogonal",
                           scale, seed=rng_seed)
    x = torch.randn(60, 5, 3, dtype=torch.float64)
    w_out, target = readout_problem(16, 5, seed=rng_seed)
    flow = measure_gradient_flow("rnn_linear", cell.params(), x, cell.initial_state(5), w_out,
                                 target)
    stats = lag_statistics(flow.log_norm_h)
    rate, r2 = growth_rate_fit(stats["log_grad_norm"])
    # delta_{T-k} = (W^T)^k delta_T and W = sQ: ||delta_{T-k}|| = s^k ||delta_T|| exactly.
    assert rate == pytest.approx(math.log(scale), abs=1e-10)
    assert r2 == pytest.approx(1.0, abs=1e-10)
    T = x.shape[0]
    expected_h = None if scale >= 1 else math.floor(math.log(1e-6) / math.log(scale)) + 1
    expected_h = expected_h if expected_h is not None and expected_h <= T else None
    assert horizon(stats["log_grad_norm"]) == expected_h
    assert flow_status(flow) == ("ok", None)


def _r2_reference(y: np.ndarray) -> float:
    """R^2 of the least-squares line through (k, y), k = 0..n-1, by numpy lstsq (float64)."""
    k = np.arange(y.size, dtype=np.float64)
    a = np.stack([k, np.ones_like(k)], axis=1)
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    resid = y - a @ coef
    return 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flat_chain_fit_is_exact_in_its_dtype(dtype: torch.dtype, rng_seed: int) -> None:
    """A linear orthogonal RNN at s = 1 is exactly flat (rate 0): R^2 = 1 in float32 too.

    Its float32 log norms carry rounding noise (a few 1e-8), which the old float64 guard
    read as a bad fit (R^2 0.86 to 0.93 in the committed summary)."""
    torch.manual_seed(rng_seed)
    T, B, H = int(torch.randint(40, 220, ())), 5, 16
    cell = init_parameters(RecurrentCell("rnn_linear", 3, H, dtype=dtype), "orthogonal", 1.0,
                           seed=rng_seed)
    x = torch.randn(T, B, 3, dtype=dtype)
    w_out, target = readout_problem(H, B, seed=rng_seed)
    flow = measure_gradient_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w_out,
                                 target)
    y = lag_statistics(flow.log_norm_h)["log_grad_norm"]
    rate, r2 = growth_rate_fit(y, flow.grad_dtype)
    eps = torch.finfo(dtype).eps
    assert rate == pytest.approx(0.0, abs=10 * eps)  # ||delta_{T-k}|| = ||delta_T|| exactly
    assert r2 == 1.0
    if dtype == torch.float32:  # the case is real: noise the float64 guard would not pass
        assert np.ptp(y) > 0 and growth_rate_fit(y, "float64")[1] < 1.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_r2_against_numpy_reference(dtype: str, rng_seed: int) -> None:
    """Fresh random lines plus noise: exact (R^2 = 1) only within the dtype's round-off."""
    rng = np.random.default_rng(rng_seed)
    n = int(rng.integers(50, 300))
    k = np.arange(n, dtype=np.float64)
    line = rng.normal(0.0, 5.0) + rng.normal(0.0, 0.3) * k
    unit = rng.standard_normal(n)
    unit /= np.sqrt(np.mean(unit**2))  # RMS 1
    tol = fit_round_off(line, dtype)
    eps = float(np.finfo(dtype).eps)
    assert tol == pytest.approx(math.sqrt(n) * eps * max(1.0, np.abs(line).max()), rel=1e-12)
    # noise well inside the round-off: exact
    assert growth_rate_fit(line + 0.05 * tol * unit, dtype)[1] == 1.0
    # noise well above it (a flat line too, where R^2 is then a real fit quality). The two
    # float64 fits differ by their own round-off, 1/1000 of this noise: 1 - R^2 to 1%.
    for y in (line + 1e3 * tol * unit, line[0] + 1e3 * tol * unit):
        rate, r2 = growth_rate_fit(y, dtype)
        assert 1.0 - r2 == pytest.approx(1.0 - _r2_reference(y), rel=1e-2, abs=1e-12)
        assert rate == pytest.approx(np.polyfit(k, y, 1)[0], rel=1e-6, abs=1e-3 * tol)
    assert growth_rate_fit(line[0] + 1e3 * tol * unit, dtype)[1] < 0.5  # noise, no slope
    y = line + 0.1 * np.sin(0.3 * k) * rng.uniform(0.5, 2.0)  # curved: far above round-off
    rate, r2 = growth_rate_fit(y, dtype)
    assert r2 == pytest.approx(_r2_reference(y), abs=1e-9) and r2 < 1.0
    assert rate == pytest.approx(np.polyfit(k, y, 1)[0], rel=1e-9)
    # float32 round-off is float64's noise: a float32-exact fit is not exact in float64
    if dtype == "float32":
        y = line + 0.05 * tol * unit
        assert growth_rate_fit(y, "float64")[1] == pytest.approx(_r2_reference(y), abs=1e-9)


def test_nonflat_float32_chain_r2_is_the_numpy_fit(rng_seed: int) -> None:
    """A tanh RNN's curved float32 flow: R^2 is the plain least-squares value, not 1."""
    torch.manual_seed(rng_seed)
    T, B, H = 80, 4, 16
    cell = init_parameters(RecurrentCell("rnn_tanh", 3, H, dtype=torch.float32), "orthogonal",
                           float(np.random.default_rng(rng_seed).uniform(1.2, 2.0)),
                           seed=rng_seed)
    x = torch.randn(T, B, 3)
    w_out, target = readout_problem(H, B, seed=rng_seed)
    flow = measure_gradient_flow("rnn_tanh", cell.params(), x, cell.initial_state(B), w_out,
                                 target)
    y = lag_statistics(flow.log_norm_h)["log_grad_norm"]
    assert np.isfinite(y).all()
    rate, r2 = growth_rate_fit(y, "float32")
    assert r2 == pytest.approx(_r2_reference(y), abs=1e-9) and r2 < 1.0


def test_lstm_cell_state_gradient_is_recorded(rng_seed: int) -> None:
    cell = init_parameters(RecurrentCell("lstm", 3, 8, dtype=torch.float64), "orthogonal", 1.0,
                           seed=rng_seed)
    x = torch.randn(20, 4, 3, dtype=torch.float64)
    w_out, target = readout_problem(8, 4)
    flow = measure_gradient_flow("lstm", cell.params(), x, cell.initial_state(4), w_out, target)
    assert flow.log_norm_c is not None and flow.log_norm_c.shape == (21, 4)
    # The loss reads h_T only: dL/dc_T = o_T * (1 - tanh^2 c_T) * dL/dh_T, which is smaller.
    assert np.all(flow.log_norm_c[0] < flow.log_norm_h[0])
    assert np.all(np.isfinite(flow.log_norm_c))


def test_float32_explosion_is_recorded_not_raised() -> None:
    """A linear RNN at s = 2 overflows float32 in the forward pass near ln(3.4e38)/ln 2 steps."""
    cfg = validate({"dtype": "float32", "device": "cpu", "gradient_flow": {
        "models": "rnn_linear", "seq_len": 200, "weight_scale": 2.0, "hidden": 16, "batch": 4,
        "input_size": 4, "lyapunov_k": 4}})
    spec = next(gradient_flow_cells(cfg))
    record = run_cell(spec)
    s = record["summary"]
    assert s["status"] in {"overflow", "nan"}
    # h_t grows like 2^t * |h_1| with |h_1| ~ 1: inf from about t = 128 = log2(3.4e38).
    assert 115 <= s["first_nonfinite_step"] <= 135
    # The log-scale engine still gives the exact rate ln 2 (float32 inputs, float64 log sums).
    assert s["lyapunov_max"] == pytest.approx(math.log(2), abs=1e-5)
    # Same cell in float64 stays finite: the blow-up is float32's range, not a bug.
    ok = run_cell(replace(spec, dtype="float64"))["summary"]
    assert ok["status"] == "ok" and ok["growth_rate"] == pytest.approx(math.log(2), abs=1e-9)


def test_flat_float32_cell_reports_r2_one(rng_seed: int) -> None:
    """The summary's growth_fit_r2 of an exactly flat float32 cell (rnn_linear, s = 1) is 1,
    as the column doc says; growth_rate is 0 to float32 round-off."""
    cfg = validate({"dtype": "float32", "device": "cpu", "gradient_flow": {
        "models": "rnn_linear", "seq_len": 50, "weight_scale": 1.0, "hidden": 16, "batch": 4,
        "input_size": 4, "lyapunov_k": 4, "seeds": rng_seed % 10_000}})
    s = run_cell(next(gradient_flow_cells(cfg)))["summary"]
    assert s["status"] == "ok" and s["compute_dtype"] == "float32"
    assert s["growth_rate"] == pytest.approx(0.0, abs=1e-6) and s["growth_fit_r2"] == 1.0


def test_a_failing_cell_records_error_and_keeps_going() -> None:
    cfg = validate({"device": "cpu", "gradient_flow": {"models": "gru", "seq_len": 5,
                                                       "weight_scale": 1.0, "hidden": 4}})
    spec = replace(next(gradient_flow_cells(cfg)), device="tpu")
    record = run_cell(spec)
    assert record["summary"]["status"] == "error"
    assert "unknown device 'tpu'" in record["error"]
