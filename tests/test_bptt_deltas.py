"""BPTT deltas by the one-column Jacobian chain against autograd (issue 13, item 3).

Tolerances on ||delta_t|| (max over lags 0..T and the batch of the relative error):
float64 1e-12 (observed ~4e-15: the same trajectory, products in another order); float32
2e-4 (over 25 seeds at T = 60, H = 16, all models: working-dtype column up to 1.7e-5,
log-scale column up to 8.5e-5, a relu element decayed to e^-31 where float32 autograd itself
is 3.8e-5 off float64 autograd: float32 rounding of the product chain, and the tanh derivative
from the pre-activation here, 1 - tanh^2 of the output in autograd; the relu derivative is
taken from h_t > 0, as autograd's).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bpttbench.config import CellSpec
from bpttbench.gradient_flow import bptt_deltas
from bpttbench.gradient_flow.bptt_deltas import (
    delta_chain,
    is_reference_cell,
    log_abs_err,
    norm_rel_err,
    resolve_method,
    saved_from_states,
)
from bpttbench.gradient_flow.cells import build_cell, cell_problem, make_inputs
from bpttbench.gradient_flow.gradients import measure_gradient_flow, readout_problem
from bpttbench.jacobians import Saved, TorchBackend, forward_saved, step_jacobians
from bpttbench.models import MODELS, unroll

TOL = {"float64": 1e-12, "float32": 2e-4}


def _setup(model, dtype, seed, *, scale=1.0, seq_len=60, hidden=16, batch=5, init="orthogonal"):
    return cell_problem(CellSpec(model, init, hidden, seq_len, scale, seed, 4, 1.0, 0.0, batch,
                                 4, 1, "cpu", dtype, False, True, "torch"), "cpu")


@pytest.fixture
def seed():
    s = int(np.random.SeedSequence().entropy % 100_000)
    print(f"seed={s}")
    return s


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("model", MODELS)
def test_chain_equals_autograd(model, backend, dtype, seed):
    """||delta_t|| of both columns (working dtype, log scale) equals autograd's at every lag;
    LSTM: also ||dL/dc_t||; the underflow flags, the loss and the forward status agree."""
    cell, x, w_out, target = _setup(model, dtype, seed)
    args = (model, cell.params(), x, cell.initial_state(x.shape[1]), w_out, target)
    ref = measure_gradient_flow(*args)
    got = delta_chain(*args, backend=backend)
    # no overflow or NaN; rnn_relu may have an exactly zero gradient (every unit dead), which
    # norm_rel_err counts as agreement only where both are 0
    finite = np.isfinite(ref.log_norm_h) | (model == "rnn_relu") & np.isneginf(ref.log_norm_h)
    assert finite.all()
    tol = TOL[dtype] if backend == "torch" else TOL["float32" if dtype == "float32" else "float64"]
    err = norm_rel_err(got.flow.log_norm_h, ref.log_norm_h)
    err_log = log_abs_err(got.log_norm_h_true, ref.log_norm_h)
    print(model, backend, dtype, f"rel err {err:.2e}, log-scale abs err {err_log:.2e}")
    assert err < tol and err_log < tol
    if model == "lstm":
        assert norm_rel_err(got.flow.log_norm_c, ref.log_norm_c) < tol
        assert log_abs_err(got.log_norm_c_true, ref.log_norm_c) < tol
    else:
        assert got.flow.log_norm_c is None
    assert got.flow.loss == pytest.approx(ref.loss, rel=1e-12)
    assert (got.flow.first_zero_h == ref.first_zero_h).all()
    assert got.flow.first_nonfinite_step == ref.first_nonfinite_step
    assert got.flow.grad_dtype == ref.grad_dtype


@pytest.mark.parametrize("model", ["rnn_tanh", "lstm", "gru"])
def test_chunked_chain_equals_one_chunk(model, seed, monkeypatch):
    """Buffers of 2..3 rows (many chunks, Jacobian chunks of 2 steps) give the same numbers."""
    cell, x, w_out, target = _setup(model, "float64", seed, seq_len=23)
    args = (model, cell.params(), x, cell.initial_state(x.shape[1]), w_out, target)
    whole = delta_chain(*args)
    monkeypatch.setattr(bptt_deltas, "CHUNK_BYTES", 1)
    small = delta_chain(*args)
    np.testing.assert_allclose(small.flow.log_norm_h, whole.flow.log_norm_h, rtol=0, atol=1e-13)
    np.testing.assert_allclose(small.log_norm_h_true, whole.log_norm_h_true, rtol=0, atol=1e-13)


@pytest.mark.parametrize("model", MODELS)
def test_saved_from_states_matches_forward_saved(model, seed):
    """The forward record rebuilt from the unrolled states is the engine's (float64)."""
    cell, x, _, _ = _setup(model, "float64", seed, seq_len=12)
    state0 = cell.initial_state(x.shape[1])
    with torch.no_grad():
        mine = saved_from_states(model, cell.params(), x, unroll(model, cell.params(), x, state0))
    ref = forward_saved(model, cell.params(), x, state0, TorchBackend("cpu", torch.float64))
    for f in ("deriv", "gates", "dgates", "prev", "aux", "aux2"):
        a, b = getattr(mine, f), getattr(ref, f)
        assert (a is None) == (b is None), f
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    with torch.no_grad():
        bk = TorchBackend("cpu", torch.float64)
        torch.testing.assert_close(step_jacobians(mine, bk), step_jacobians(ref, bk), rtol=0,
                                   atol=1e-13)


def test_float32_overflow_at_the_same_lag_as_autograd(seed):
    """Exploding linear RNN (W = 2 Q, T = 100: h_T ~ 2^100 is finite, delta_{T-k} ~ 2^(100+k)
    overflows float32 past k ~ 28) in float32: the working-dtype column reaches inf at
    the lag where autograd's delta does; the log-scale column stays finite and matches the
    float64 autograd run (same weights and inputs, upcast) within 1e-4 at every lag."""
    cell, x, w_out, target = _setup("rnn_linear", "float32", seed, scale=2.0, seq_len=100)
    args = ("rnn_linear", cell.params(), x, cell.initial_state(x.shape[1]), w_out, target)
    ref = measure_gradient_flow(*args)
    got = delta_chain(*args)
    inf_ref = int(np.flatnonzero(np.isposinf(ref.log_norm_h).any(axis=1))[0])
    inf_got = int(np.flatnonzero(np.isposinf(got.flow.log_norm_h).any(axis=1))[0])
    print(f"first inf lag: autograd {inf_ref}, chain {inf_got}")
    assert inf_got == inf_ref and 0 < inf_ref < 100
    p64 = {k: v.to(torch.float64) for k, v in cell.params().items()}
    ref64 = measure_gradient_flow("rnn_linear", p64, x.double(),
                                  tuple(s.double() for s in args[3]), w_out, target)
    assert np.isfinite(ref64.log_norm_h).all() and np.isfinite(got.log_norm_h_true).all()
    err = float(np.abs(got.log_norm_h_true - ref64.log_norm_h).max())
    print(f"log-scale float32 vs float64 autograd: {err:.2e} (ln||delta|| up to "
          f"{ref64.log_norm_h.max():.1f})")
    assert err < 1e-4
    assert norm_rel_err(got.flow.log_norm_h, ref.log_norm_h) < TOL["float32"]


def test_method_and_reference_selection():
    assert resolve_method("auto", "cpu") == "autograd"
    assert resolve_method("auto", "cuda") == "jacobian_chain"
    assert resolve_method("jacobian_chain", "cpu") == "jacobian_chain"
    with pytest.raises(ValueError, match="allowed: auto, autograd, jacobian_chain"):
        resolve_method("cudnn", "cpu")
    ids = [f"rnn_tanh-orthogonal-h32-T50-s{s:g}-seed{k}" for s in (0.5, 1, 2) for k in range(40)]
    picked = [is_reference_cell(c, 10) for c in ids]
    assert 0 < sum(picked) < len(ids) and picked == [is_reference_cell(c, 10) for c in ids]
    assert all(is_reference_cell(c, 1) for c in ids) and not any(is_reference_cell(c, 0)
                                                                 for c in ids)


def test_norm_rel_err_non_finite():
    with np.errstate(divide="ignore"):
        a = np.log(np.array([[1.0, 0.0], [np.inf, 2.0]]))
    assert norm_rel_err(a, a) == 0.0
    b = a.copy()
    b[1, 0] = 5.0
    assert math.isinf(norm_rel_err(a, b))
    assert norm_rel_err(a + 1e-9, a) == pytest.approx(1e-9, rel=1e-3)


def test_cell_reports_both_methods_in_one_table(seed):
    """A jacobian_chain cell that is also an autograd reference: the same summary row holds
    the method and both comparisons; the per-lag table is the chain's. An auto cell on the
    CPU runs autograd only (the committed CPU tables' numbers)."""
    from dataclasses import replace

    from bpttbench.gradient_flow.cells import run_cell
    from bpttbench.tables import tables_from_records

    base = CellSpec("gru", "orthogonal", 12, 40, 1.25, seed % 1000, 4, 1.0, 0.0, 6, 4, 1,
                    "cpu", "float32", False, True, "torch", autograd_reference_every=1)
    chain = run_cell(replace(base, bptt_method="jacobian_chain"))
    auto = run_cell(base)
    tables = tables_from_records([chain, auto])
    s = tables["summary"].set_index("bptt_method")
    print(s[["grad_norm_rel_err_vs_autograd", "log_grad_norm_max_abs_err",
             "growth_rate_log_scale", "growth_rate"]])
    assert set(s.index) == {"jacobian_chain", "autograd"}
    row = s.loc["jacobian_chain"]
    assert row["grad_norm_rel_err_vs_autograd"] < TOL["float32"]
    assert row["log_grad_norm_max_abs_err"] < TOL["float32"]
    assert abs(row["growth_rate_log_scale"] - row["growth_rate"]) < 1e-5
    assert abs(row["growth_rate"] - s.loc["autograd", "growth_rate"]) < 1e-5
    assert s.loc["autograd", ["grad_norm_rel_err_vs_autograd", "log_grad_norm_max_abs_err",
                              "growth_rate_log_scale"]].isna().all()
    gf = tables["gradient_flow"]
    assert len(gf) == 2 * 41


@pytest.mark.parametrize("determinism", [False, True], indirect=True)
@pytest.mark.parametrize("model", MODELS)
def test_cost_model_launches_are_counted(model, determinism, monkeypatch):
    """costmodel.DELTAS_LAUNCHES are the profiler's launches per step of delta_chain, and the
    chain reads nothing back to the host inside the step loop. (One chunk of steps: the
    chunks' few launches each are a fixed cost per cell, PARTS of them.)"""
    monkeypatch.setattr(bptt_deltas, "PARTS", 1)
    from bpttbench.costmodel import DELTAS_LAUNCHES, DELTAS_LAUNCHES_DETERMINISTIC
    from bpttbench.profiling import count_host_reads, count_launches, per_step

    def make(t):
        cell, x, w_out, target = _setup(model, "float32", 0, seq_len=t, hidden=8, batch=2)
        return lambda: delta_chain(model, cell.params(), x, cell.initial_state(2), w_out,
                                   target)

    table = DELTAS_LAUNCHES_DETERMINISTIC if determinism else DELTAS_LAUNCHES
    assert per_step(count_launches, make, 20, 60) == table[model]
    assert per_step(count_host_reads, make, 20, 60) == 0


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_matrix_free_adjoint_equals_step_jacobians(model, backend, seed):
    """J^T applied without forming J equals the engine's analytic J_t transposed (float64)."""
    from bpttbench.gradient_flow.bptt_deltas import _Ops, adjoint_coefficients, gated_adjoint_step

    cell, x, _, _ = _setup(model, "float64", seed, seq_len=7, init="gaussian", scale=1.3)
    state0 = cell.initial_state(x.shape[1])
    with torch.no_grad():
        saved = saved_from_states(model, cell.params(), x, unroll(model, cell.params(), x,
                                                                  state0))
        jac = step_jacobians(saved, TorchBackend("cpu", torch.float64))  # [T, B, D, D]
    ops = _Ops(backend)
    if backend == "numpy":
        fields = ("w_hh", "gates", "dgates", "prev", "aux", "aux2")
        saved = Saved(**{**saved.__dict__, **{f: getattr(saved, f).detach().numpy()
                                              for f in fields}})
    coef = adjoint_coefficients(saved, ops, 0, saved.steps)
    gen = torch.Generator().manual_seed(seed)
    for t in range(saved.steps):
        v = torch.randn(x.shape[1], 2, saved.dim, generator=gen, dtype=torch.float64)
        want = (v @ jac[t]).numpy()  # rows: (J^T v)^T
        prev = v.numpy() if backend == "numpy" else v
        nxt = np.empty_like(prev) if backend == "numpy" else torch.empty_like(v)
        with torch.no_grad():
            gated_adjoint_step(model, {k: c[t] for k, c in coef.items()}, saved.w_hh, prev,
                               nxt, ops)
        got = nxt if backend == "numpy" else nxt.numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-13 * np.abs(want).max())


@pytest.mark.parametrize("model", MODELS)
def test_peak_memory_within_the_cell_estimate(model):
    """The chain's peak (bytes torch allocated, profiler) stays within memory.estimate_cell,
    so a cell's too_large decision holds for either BPTT method."""
    from bpttbench.memory import estimate_cell
    from bpttbench.profiling import peak_allocated_bytes

    spec = CellSpec(model, "orthogonal", 32, 600, 1.0, 0, 4, 1.0, 0.0, 16, 4, 1, "cpu",
                    "float32", False, True, "torch")
    cell, x = build_cell(spec, "cpu"), make_inputs(spec, "cpu")
    w_out, target = readout_problem(32, 16, seed=0)
    peak = peak_allocated_bytes(lambda: delta_chain(model, cell.params(), x,
                                                    cell.initial_state(16), w_out, target))
    est = estimate_cell(spec, "cpu").peak_bytes
    print(model, f"chain peak {peak / 2**20:.1f} MiB, estimate {est / 2**20:.1f} MiB")
    assert peak <= est


def test_config_keys_validate_and_reach_the_cells():
    from bpttbench.config import ConfigError, gradient_flow_cells, validate
    from bpttbench.long_range.sweep import long_range_runs

    cfg = validate({})
    cells = list(gradient_flow_cells(cfg))
    assert {(c.bptt_method, c.autograd_reference_every) for c in cells} == {("auto", 10)}
    assert {r.fused for r in long_range_runs(cfg)} == {"auto"}
    cfg = validate({"gradient_flow": {"bptt_method": "jacobian_chain",
                                      "autograd_reference_every": 3},
                    "long_range": {"fused": True}})
    assert {(c.bptt_method, c.autograd_reference_every)
            for c in gradient_flow_cells(cfg)} == {("jacobian_chain", 3)}
    assert {r.fused for r in long_range_runs(cfg)} == {True}
    for bad, key in (({"gradient_flow": {"bptt_method": "cudnn"}}, "gradient_flow.bptt_method"),
                     ({"gradient_flow": {"autograd_reference_every": -1}},
                      "gradient_flow.autograd_reference_every"),
                     ({"long_range": {"fused": "yes"}}, "long_range.fused")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(bad)


@pytest.mark.parametrize("determinism", [False, True], indirect=True)
@pytest.mark.parametrize("model", MODELS)
def test_forward_launches_are_counted(model, determinism):
    """costmodel.FORWARD_LAUNCHES: the graph-free unrolled forward's launches per step (what
    stays on torch when the CuPy kernel runs the RNN chain)."""
    from bpttbench.costmodel import FORWARD_LAUNCHES, FORWARD_LAUNCHES_DETERMINISTIC
    from bpttbench.profiling import count_launches, per_step

    def make(t):
        cell, x, _, _ = _setup(model, "float32", 0, seq_len=t, hidden=8, batch=2)

        def run():
            with torch.no_grad():
                unroll(model, cell.params(), x, cell.initial_state(2))
        return run

    table = FORWARD_LAUNCHES_DETERMINISTIC if determinism else FORWARD_LAUNCHES
    assert per_step(count_launches, make, 20, 60) == table[model]
