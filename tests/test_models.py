"""The unrolled cells equal torch.nn's fused modules and their inits have the stated spectra."""

from __future__ import annotations

import math

import pytest
import torch

from bpttbench.models import (
    MODELS,
    RecurrentCell,
    cell_step,
    init_parameters,
    recurrent_blocks,
    spectral_stats,
)

FUSED = [m for m in MODELS if m != "rnn_linear"]


@pytest.mark.parametrize("model", FUSED)
def test_unrolled_cell_equals_torch_nn(model: str, rng_seed: int) -> None:
    torch.manual_seed(rng_seed)
    cell = RecurrentCell(model, 5, 7, dtype=torch.float64)  # torch's default U(±1/√H) init
    fused = cell.to_torch_nn()
    x = torch.randn(13, 4, 5, dtype=torch.float64)
    h0 = torch.randn(1, 4, 7, dtype=torch.float64)
    if model == "lstm":
        c0 = torch.randn(1, 4, 7, dtype=torch.float64)
        ref_out, (ref_h, ref_c) = fused(x, (h0, c0))
        out, states = cell(x, (h0[0], c0[0]))
        torch.testing.assert_close(states[-1][1], ref_c[0], rtol=0, atol=1e-12)
    else:
        ref_out, ref_h = fused(x, h0)
        out, states = cell(x, (h0[0],))
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(states[-1][0], ref_h[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("model", FUSED)
def test_weights_load_from_torch_nn(model: str, rng_seed: int) -> None:
    torch.manual_seed(rng_seed)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(model, torch.nn.RNN)
    kw = {"nonlinearity": model.removeprefix("rnn_")} if cls is torch.nn.RNN else {}
    fused = cls(3, 6, dtype=torch.float64, **kw)
    cell = RecurrentCell(model, 3, 6, dtype=torch.float64)
    cell.load_state_dict(fused.state_dict())
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(cell(x)[0], fused(x)[0], rtol=0, atol=1e-12)


def test_linear_rnn_is_affine(rng_seed: int) -> None:
    torch.manual_seed(rng_seed)
    cell = RecurrentCell("rnn_linear", 3, 4, dtype=torch.float64)
    p = cell.params()
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    expected = x @ p["weight_ih_l0"].T + p["bias_ih_l0"] + h @ p["weight_hh_l0"].T + p["bias_hh_l0"]
    torch.testing.assert_close(cell_step("rnn_linear", p, x, (h,))[0], expected)


@pytest.mark.parametrize("model", MODELS)
def test_orthogonal_init_has_every_singular_value_s(model: str, rng_seed: int) -> None:
    s = 0.5 + 2.0 * (rng_seed % 1000) / 1000
    cell = init_parameters(RecurrentCell(model, 4, 16, dtype=torch.float64), "orthogonal", s,
                           seed=rng_seed)
    for block in recurrent_blocks(model, cell.weight_hh_l0.detach()):
        sv = torch.linalg.svdvals(block)
        torch.testing.assert_close(sv, torch.full_like(sv, s), rtol=0, atol=1e-12)
    norm, radius = spectral_stats(model, cell.weight_hh_l0)
    assert norm == pytest.approx(s, abs=1e-12) and radius == pytest.approx(s, abs=1e-10)


def test_gaussian_init_variance_and_radius(rng_seed: int) -> None:
    hidden, s = 400, 1.3
    cell = init_parameters(RecurrentCell("rnn_tanh", 4, hidden, dtype=torch.float64), "gaussian", s,
                           seed=rng_seed)
    w = cell.weight_hh_l0.detach()
    # Var of the entries is s^2/H; its sample estimate over H^2 entries has relative s.e. sqrt(2)/H.
    rel_se = math.sqrt(2) / hidden
    assert (w.var().item() * hidden / s**2) == pytest.approx(1.0, abs=5 * rel_se)
    # Circular law: spectral radius -> s; at H = 400 the edge still fluctuates by a few
    # percent (O(sqrt(log H / H))), so 15 % separates it from any other scaling.
    assert spectral_stats("rnn_tanh", w)[1] == pytest.approx(s, rel=0.15)


def test_torch_default_init_bound_and_input_scale(rng_seed: int) -> None:
    hidden, inp, s = 64, 50, 2.0
    cell = init_parameters(RecurrentCell("gru", inp, hidden, dtype=torch.float64), "torch_default",
                           s, input_scale=0.7, bias_scale=0.3, seed=rng_seed)
    w = cell.weight_hh_l0.detach()
    assert w.abs().max().item() <= s / math.sqrt(hidden)
    assert w.abs().max().item() > 0.9 * s / math.sqrt(hidden)
    w_ih = cell.weight_ih_l0.detach()
    n = w_ih.numel()
    assert w_ih.var().item() == pytest.approx(0.7**2 / inp, rel=5 * math.sqrt(2 / n))
    b = cell.bias_ih_l0.detach()
    # Sample std of n normals: relative standard error 1/sqrt(2(n-1)); 5 of them.
    assert b.std().item() == pytest.approx(0.3, rel=5 / math.sqrt(2 * (b.numel() - 1)))


def test_same_seed_same_weights_any_dtype() -> None:
    a = init_parameters(RecurrentCell("lstm", 3, 8, dtype=torch.float64), "orthogonal", 1.1, seed=7)
    b = init_parameters(RecurrentCell("lstm", 3, 8, dtype=torch.float32), "orthogonal", 1.1, seed=7)
    torch.testing.assert_close(b.weight_hh_l0.double(), a.weight_hh_l0, rtol=0, atol=1e-7)


def test_forget_bias_shifts_only_the_forget_gate() -> None:
    a = init_parameters(RecurrentCell("lstm", 3, 5, dtype=torch.float64), "orthogonal", 1, seed=1)
    b = init_parameters(RecurrentCell("lstm", 3, 5, dtype=torch.float64), "orthogonal", 1, seed=1,
                        forget_bias=2.5)
    diff = (b.bias_ih_l0 - a.bias_ih_l0).detach()
    torch.testing.assert_close(diff[5:10], torch.full((5,), 2.5, dtype=torch.float64))
    assert diff[:5].abs().max() == 0 and diff[10:].abs().max() == 0


def test_bad_model_and_init_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model 'rnn_sigmoid'; allowed: rnn_tanh"):
        RecurrentCell("rnn_sigmoid", 3, 4)
    with pytest.raises(ValueError, match="unknown init 'xavier'; allowed: orthogonal"):
        init_parameters(RecurrentCell("gru", 3, 4), "xavier", 1.0)
