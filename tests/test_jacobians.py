"""The Jacobian engine against autograd, finite differences and exact cases.

Tolerances (float64 unless said):
- analytic J vs torch.func.jacrev: atol 1e-10 (observed ~1e-16);
- analytic J vs central finite differences (eps 1e-6): atol 1e-7;
- numpy vs torch backend in float64: 1e-10 on exponents and log_sv;
- torch float32 vs numpy float64: 1e-5 absolute on exponents (natural log per step),
  5e-5 * max(1, |value|) on log_sv (float32 rounding of the forward pass and QR);
- autograd delta_t vs P_{T,t}^T delta_T: relative 1e-10;
- top Lyapunov exponent vs long-run growth rate of ||delta|| over T = 1500 steps: 5e-3
  (both are finite-time estimates of the same limit; they differ by O(1/T) alignment terms);
- linear RNN with W = s Q: every exponent ln s to 1e-10; 10^4 steps at s = 2 in float32:
  finite and ln 2 to 1e-5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bpttbench.jacobians import (
    ChainResult,
    analyse_chain,
    apply_adjoint_chain,
    chain,
    exponents_after_warmup,
    forward_saved,
    growth_rate,
    initial_frame,
    jacobians,
    log_norm_adjoint_chain,
)
from bpttbench.jacobians.backends import NumpyBackend, TorchBackend
from bpttbench.models import MODELS, RecurrentCell, cell_step, init_parameters, state_size, unroll

F64 = torch.float64


def make_case(
    model,
    hidden=5,
    inp=3,
    batch=3,
    steps=6,
    *,
    scale=1.2,
    init="gaussian",
    bias=0.5,
    seed=0,
    dtype=F64,
    forget_bias=0.0,
):
    cell = RecurrentCell(model, inp, hidden, dtype=dtype)
    init_parameters(cell, init, scale, bias_scale=bias, seed=seed, forget_bias=forget_bias)
    params = {k: v.detach() for k, v in cell.params().items()}
    gen = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(steps, batch, inp, generator=gen, dtype=F64).to(dtype)
    n_state = 2 if model == "lstm" else 1
    state0 = tuple(
        (0.8 * torch.randn(batch, hidden, generator=gen, dtype=F64)).to(dtype)
        for _ in range(n_state)
    )
    return params, x, state0


def flat_step(model, params, x_t, hidden):
    """s_{t-1} (flat [D]) -> s_t (flat [D]) for one batch element."""

    def f(s):
        return torch.cat(cell_step(model, params, x_t, tuple(s.split(hidden))))

    return f


def states_flat(states, b):
    return [torch.cat([part[b] for part in s]) for s in states]


# ----------------------------------------------------------------------------- analytic J


@pytest.mark.parametrize("model", MODELS)
def test_analytic_jacobians_match_jacrev(model):
    hidden, steps, batch = 5, 4, 3
    params, x, state0 = make_case(model, hidden, batch=batch, steps=steps, seed=3)
    jac = jacobians(model, params, x, state0)  # numpy float64 oracle
    dim = state_size(model, hidden)
    assert jac.shape == (steps, batch, dim, dim) and jac.dtype == np.float64
    states = unroll(model, params, x, state0)
    worst = 0.0
    for t in range(steps):
        for b in range(batch):
            s_prev = states_flat(states, b)[t]
            ref = torch.func.jacrev(flat_step(model, params, x[t, b], hidden))(s_prev)
            worst = max(worst, float(np.abs(ref.numpy() - jac[t, b]).max()))
    assert worst < 1e-10
    # the torch backend builds the same matrices
    jac_t = jacobians(model, params, x, state0, backend="torch")
    assert np.abs(jac_t.numpy() - jac).max() < 1e-12


def test_lstm_c_path_and_gru_diag_z_are_exercised():
    hidden = 4
    params, x, state0 = make_case("lstm", hidden, steps=2, seed=5, forget_bias=1.0)
    jac = jacobians("lstm", params, x, state0)
    h = hidden
    dhdc, dcdc = jac[..., :h, h:], jac[..., h:, h:]
    f = forward_saved("lstm", params, x, state0, NumpyBackend()).gates[..., h : 2 * h]
    assert np.allclose(np.diagonal(dcdc, axis1=-2, axis2=-1), f, atol=1e-14)
    assert np.abs(dhdc).max() > 1e-2 and np.abs(jac[..., h:, :h]).max() > 1e-2
    # GRU: diag(z) is a sizeable part of J (removing it breaks the jacrev agreement above)
    params, x, state0 = make_case("gru", hidden, steps=2, seed=6)
    saved = forward_saved("gru", params, x, state0, NumpyBackend())
    z = saved.gates[..., hidden : 2 * hidden]
    assert z.min() > 0.05 and z.max() < 0.95


@pytest.mark.parametrize("model", ["lstm", "gru", "rnn_tanh"])
def test_analytic_jacobians_match_finite_differences(model):
    hidden = 4
    params, x, state0 = make_case(model, hidden, batch=1, steps=1, seed=7)
    jac = jacobians(model, params, x, state0)[0, 0]
    f = flat_step(model, params, x[0, 0], hidden)
    s0 = states_flat([state0], 0)[0]
    eps = 1e-6
    fd = np.empty_like(jac)
    for j in range(s0.numel()):
        e = torch.zeros_like(s0)
        e[j] = eps
        fd[:, j] = ((f(s0 + e) - f(s0 - e)) / (2 * eps)).numpy()
    assert np.abs(fd - jac).max() < 1e-7


@pytest.mark.parametrize("model", MODELS)
def test_saved_forward_matches_models_unroll(model):
    params, x, state0 = make_case(model, steps=7, seed=8)
    states = unroll(model, params, x, state0)
    for name in ("numpy", "torch"):
        bk = NumpyBackend() if name == "numpy" else TorchBackend("cpu", F64)
        saved = forward_saved(model, params, x, state0, bk)
        for got, want in zip(saved.final_state, states[-1], strict=True):
            assert np.abs(np.asarray(got) - want.numpy()).max() < 1e-13


# ----------------------------------------------------------------------- delta checks


def readout_loss(h_last, readout_seed=0):
    gen = torch.Generator().manual_seed(readout_seed)
    readout = torch.randn(h_last.shape[1], 3, generator=gen, dtype=F64)
    target = torch.randn(h_last.shape[0], 3, generator=gen, dtype=F64)
    return ((h_last @ readout - target) ** 2).sum()


def autograd_deltas(model, params, x, state0):
    """delta_t = dL/ds_t for t = 0..T with s_t = (h_t[, c_t]) as free coordinates, by autograd.

    A zero perturbation eps_t is added to s_t right after step t; dL/deps_t is the adjoint
    of the state, which is what P_{T,t}^T delta_T propagates. [T+1, B, D]
    """
    eps = [
        tuple(torch.zeros_like(s, requires_grad=True) for s in state0)
        for _ in range(x.shape[0] + 1)
    ]
    state = tuple(s + e for s, e in zip(state0, eps[0], strict=True))
    for t in range(x.shape[0]):
        state = cell_step(model, params, x[t], state)
        state = tuple(s + e for s, e in zip(state, eps[t + 1], strict=True))
    flat = [e for es in eps for e in es]
    grads = torch.autograd.grad(readout_loss(state[0]), flat, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(e) for g, e in zip(grads, flat, strict=True)]
    per = len(state0)
    return torch.stack(
        [torch.cat(grads[t * per : (t + 1) * per], dim=-1) for t in range(len(eps))]
    ).numpy()


def unrolled_autograd_grads(model, params, x, state0):
    """dL/dh_t (and dL/dc_t) of the plain unrolled graph (bpttbench.models.unroll)."""
    state0 = tuple(s.clone().requires_grad_(True) for s in state0)
    states = unroll(model, params, x, state0)
    flat = [part for s in states for part in s]
    grads = torch.autograd.grad(readout_loss(states[-1][0]), flat, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(f) for g, f in zip(grads, flat, strict=True)]
    per = len(state0)
    return [tuple(grads[t * per : (t + 1) * per]) for t in range(len(states))], states


@pytest.mark.parametrize("model", MODELS)
def test_autograd_deltas_equal_adjoint_chain(model):
    params, x, state0 = make_case(model, hidden=6, batch=3, steps=12, scale=1.1, seed=9)
    deltas = autograd_deltas(model, params, x, state0)
    jac = jacobians(model, params, x, state0)
    chain_deltas = apply_adjoint_chain(jac, deltas[-1])
    scale = np.abs(deltas).max()
    assert scale > 0
    assert np.abs(chain_deltas - deltas).max() <= 1e-10 * scale
    # the log-norm chain sees the same vectors, indexed by lag
    logs = log_norm_adjoint_chain(jac, deltas[-1])
    want = np.log(np.linalg.norm(deltas[::-1], axis=-1))
    assert np.abs(logs - want).max() < 1e-10
    # same in torch
    logs_t = log_norm_adjoint_chain(torch.from_numpy(jac), torch.from_numpy(deltas[-1]))
    assert np.abs(logs_t - logs).max() < 1e-12
    # the plain unrolled graph: dL/dh_t is the h-part of delta_t for every model; for the
    # LSTM, autograd's dL/dc_t also counts the same-step path c_t -> h_t = o_t tanh(c_t)
    grads, states = unrolled_autograd_grads(model, params, x, state0)
    hidden = state0[0].shape[1]
    for t, g in enumerate(grads):
        assert np.abs(g[0].numpy() - deltas[t][:, :hidden]).max() <= 1e-10 * scale
        if model == "lstm" and t > 0:
            saved = forward_saved(model, params, x, state0, NumpyBackend())
            o, dtc = saved.gates[t - 1][:, 3 * hidden :], saved.aux2[t - 1]
            want_c = deltas[t][:, hidden:] + o * dtc * deltas[t][:, :hidden]
            assert np.abs(g[1].numpy() - want_c).max() <= 1e-10 * scale


def test_top_exponent_is_long_run_growth_rate_of_delta():
    # |lambda_1| T must stay well inside float64's range for the plain autograd gradients
    model, steps = "rnn_tanh", 1500
    params, x, state0 = make_case(
        model, hidden=12, batch=4, steps=steps, scale=2.0, seed=10, bias=0.1
    )
    res = analyse_chain(model, params, x, state0, k=1, backend="numpy")
    grads, _ = unrolled_autograd_grads(model, params, x, state0)  # plain BPTT gradients
    logs = np.log(np.stack([np.linalg.norm(g[0].numpy(), axis=-1) for g in grads[::-1]]))
    assert np.isfinite(logs).all()
    rate_total = float(((logs[-1] - logs[0]) / steps).mean())
    rate_fit = growth_rate(logs, start=100)
    lam = res.exponents[0]
    assert abs(lam - rate_total) < 5e-3
    assert abs(lam - rate_fit) < 5e-3
    # the frame's first column is exactly the chain applied to the first frame vector
    jac = jacobians(model, params, x, state0)
    q0 = initial_frame(state_size(model, 12), 1)[:, 0]
    logs_q0 = log_norm_adjoint_chain(jac, np.broadcast_to(q0, (4, q0.size)).copy())
    assert np.abs(logs_q0[1:].mean(axis=1) - res.frame_log_stretch[:, 0]).max() < 1e-9


# --------------------------------------------------------------------------- the chain


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("qr_every", [1, 3])
def test_numpy_and_torch_backends_agree(model, qr_every):
    # rnn_relu: a step with fewer than k active units makes the frame rank-deficient (exact
    # exponents -inf, numerically roundoff); H = 16 keeps >= 4 units active at every step
    hidden, k = (16, 3) if model == "rnn_relu" else (6, 4)
    params, x, state0 = make_case(model, hidden=hidden, batch=4, steps=40, scale=1.3, seed=11)
    ref = analyse_chain(model, params, x, state0, k=k, qr_every=qr_every, backend="numpy")
    got = analyse_chain(model, params, x, state0, k=k, qr_every=qr_every, backend="torch")
    assert isinstance(ref, ChainResult) and ref.backend == "numpy" and got.backend == "torch"
    assert ref.steps == got.steps == 40 and ref.log_sv.shape == (40, k)
    assert ref.exponents.dtype == np.float64 and ref.exponents.shape == (k,)
    assert np.all(np.diff(ref.exponents) <= 0)
    assert np.abs(ref.exponents - got.exponents).max() < 1e-10
    assert np.abs(ref.exponents_std - got.exponents_std).max() < 1e-10
    assert np.abs(ref.log_sv - got.log_sv).max() < 1e-10


@pytest.mark.parametrize("model", ["rnn_tanh", "lstm", "gru"])
def test_float32_torch_close_to_float64_numpy(model):
    params, x, state0 = make_case(model, hidden=6, batch=4, steps=60, scale=1.3, seed=12)
    ref = analyse_chain(model, params, x, state0, k=4, backend="numpy")
    p32 = {n: v.float() for n, v in params.items()}
    got = analyse_chain(
        model, p32, x.float(), tuple(s.float() for s in state0), k=4, backend="torch"
    )
    assert np.abs(ref.exponents - got.exponents).max() < 1e-5
    tol = 5e-5 * np.maximum(1.0, np.abs(ref.log_sv))
    assert np.all(np.abs(ref.log_sv - got.log_sv) <= tol)


def test_qr_every_is_exact_at_qr_lags_and_first_column_everywhere():
    model = "gru"
    params, x, state0 = make_case(model, hidden=6, batch=3, steps=30, scale=1.4, seed=13)
    every = analyse_chain(model, params, x, state0, k=5, qr_every=1, backend="numpy")
    sparse = analyse_chain(model, params, x, state0, k=5, qr_every=4, backend="numpy")
    lags = np.arange(1, 31)
    at_qr = (lags % 4 == 0) | (lags == 30)
    assert np.abs(every.log_sv[at_qr] - sparse.log_sv[at_qr]).max() < 1e-10
    assert np.abs(every.log_sv[:, 0] - sparse.log_sv[:, 0]).max() < 1e-10
    assert np.abs(every.exponents - sparse.exponents).max() < 1e-10


def test_time_chunking_does_not_change_results(monkeypatch):
    params, x, state0 = make_case("lstm", hidden=4, batch=2, steps=13, seed=14)
    ref = analyse_chain("lstm", params, x, state0, k=3, backend="numpy")
    monkeypatch.setattr(chain, "CHUNK_BYTES", 1)  # one step per chunk
    got = analyse_chain("lstm", params, x, state0, k=3, backend="numpy")
    assert np.abs(ref.log_sv - got.log_sv).max() < 1e-13


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_linear_rnn_with_scaled_orthogonal_weights_has_all_exponents_ln_s(scale):
    hidden = 6
    params, x, state0 = make_case(
        "rnn_linear", hidden, batch=2, steps=50, scale=scale, init="orthogonal", bias=0.0, seed=15
    )
    for backend in ("numpy", "torch"):
        res = analyse_chain("rnn_linear", params, x, state0, k=hidden, backend=backend)
        assert np.abs(res.exponents - math.log(scale)).max() < 1e-10
        assert np.abs(res.exponents_std).max() < 1e-10
        lags = np.arange(1, 51)[:, None]
        assert np.abs(res.log_sv - lags * math.log(scale)).max() < 1e-10


def test_ten_thousand_steps_at_scale_two_in_float32():
    hidden, steps = 4, 10_000
    params, x, state0 = make_case(
        "rnn_linear",
        hidden,
        inp=2,
        batch=1,
        steps=steps,
        scale=2.0,
        init="orthogonal",
        bias=0.0,
        seed=16,
        dtype=torch.float32,
    )
    res = analyse_chain("rnn_linear", params, x, state0, k=hidden, backend="torch")
    assert res.backend == "torch" and res.steps == steps
    assert np.isfinite(res.exponents).all() and np.isfinite(res.log_sv).all()
    assert np.abs(res.exponents - math.log(2.0)).max() < 1e-5
    assert abs(res.log_sv[-1, 0] - steps * math.log(2.0)) < 1e-5 * steps  # ~6931, no overflow


def test_exploding_states_are_data_not_errors():
    params, x, state0 = make_case("rnn_relu", hidden=5, batch=2, steps=200, scale=30.0,
                                  init="orthogonal", seed=17, dtype=torch.float32)
    res = analyse_chain("rnn_relu", params, x, state0, k=2, backend="torch")
    assert res.frame_log_stretch.shape == (200, 2) and res.log_sv.shape == (200, 2)
    p64 = {n: v.double() for n, v in params.items()}
    res64 = analyse_chain("rnn_relu", p64, x.double(), tuple(s.double() for s in state0), k=2,
                          backend="numpy")
    # float64 does not overflow (30^200 < 1e308): exploding, lambda_1 within ln 2 of ln 30
    assert np.isfinite(res64.exponents).all() and abs(res64.exponents[0] - math.log(30)) < 0.7
    assert np.isfinite(res64.log_sv[:, 0]).all()
    # float32 states overflow: every exponent is either the float64 one or not finite
    # (recorded as data), never a finite wrong number
    ok = ~np.isfinite(res.exponents) | (np.abs(res.exponents - res64.exponents) < 1e-3)
    assert ok.all()


def test_exponents_after_warmup():
    params, x, state0 = make_case("rnn_tanh", hidden=5, steps=20, seed=18)
    res = analyse_chain("rnn_tanh", params, x, state0, k=2, backend="numpy")
    stretch = res.frame_log_stretch
    np.testing.assert_allclose(exponents_after_warmup(res, 0), stretch[-1] / 20)
    w = exponents_after_warmup(res, 5)
    np.testing.assert_allclose(w, (stretch[-1] - stretch[4]) / 15)
    with pytest.raises(ValueError, match="warmup"):
        exponents_after_warmup(res, 20)


# ------------------------------------------------------------------------ API contract


@pytest.mark.parametrize(
    ("model", "bad_k"), [("rnn_tanh", 0), ("rnn_tanh", 6), ("lstm", 11), ("gru", -1), ("gru", 2.5)]
)
def test_k_out_of_range_is_a_clear_error(model, bad_k):
    params, x, state0 = make_case(model, hidden=5, steps=2, seed=19)
    dim = state_size(model, 5)
    with pytest.raises(ValueError, match=rf"k={bad_k}.*1\.\.{dim}"):
        analyse_chain(model, params, x, state0, k=bad_k)


def test_lstm_accepts_k_up_to_2h_and_default_state():
    params, x, _ = make_case("lstm", hidden=3, steps=5, seed=20)
    res = analyse_chain("lstm", params, x, k=6, backend="numpy")
    assert res.exponents.shape == (6,) and res.log_sv.shape == (5, 6)


def test_auto_backend_on_cpu_is_torch_and_cupy_needs_a_gpu():
    params, x, state0 = make_case("gru", steps=3, seed=21)
    assert analyse_chain("gru", params, x, state0, k=2).backend == "torch"
    from bpttbench.jacobians import cupy_backend

    if not cupy_backend.cupy_available()[0]:
        with pytest.raises(RuntimeError, match="cupy"):
            analyse_chain("gru", params, x, state0, k=2, backend="cupy")
    with pytest.raises(ValueError, match="backend"):
        analyse_chain("gru", params, x, state0, k=2, backend="jax")
    with pytest.raises(ValueError, match="qr_every"):
        analyse_chain("gru", params, x, state0, k=2, qr_every=0)
