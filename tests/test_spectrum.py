"""True singular values of the chain products, warm-ups and the determinant check.

References and tolerances:
- ln sigma_i of the explicit float64 product P = J_T ... J_{T-lag+1} (short chains, no
  overflow): 1e-7 absolute where sigma_i > 1e-6 sigma_1 (the explicit product's own SVD
  has an absolute error ~ lag eps sigma_1, so smaller values are not a reference);
- the same against a 200-digit mpmath product (graded spectra over > 50 nats):
  10 D eps exp(SPAN), the bound of a block SVD (values within SPAN nats of the block's
  largest; typically the error is 1e-11);
- sum of all exponents vs mean ln|det J_t| by LU (float64): 10 D eps max cond(J_t)
  max(1, |ln det|) per step (both factorisations are backward stable);
- exponents with warm-ups from the full frame vs from the k-frame chains: 1e-10.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bpttbench.jacobians import analyse_chain, forward_saved, step_jacobians
from bpttbench.jacobians.backends import NumpyBackend
from bpttbench.jacobians.spectrum import (
    SPAN,
    full_frame_chain,
    log_singular_values,
    report_lags,
)

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}


def random_case(model: str, hidden: int, steps: int, batch: int, scale: float, seed: int):
    print(f"random seed {seed}")
    rng = np.random.default_rng(seed)
    g, inp = GATES[model], 3
    params = {
        "weight_hh_l0": torch.tensor(rng.standard_normal((g * hidden, hidden)) * scale
                                     / math.sqrt(hidden)),
        "weight_ih_l0": torch.tensor(rng.standard_normal((g * hidden, inp))),
        "bias_ih_l0": torch.tensor(0.1 * rng.standard_normal(g * hidden)),
        "bias_hh_l0": torch.tensor(0.1 * rng.standard_normal(g * hidden)),
    }
    x = torch.tensor(rng.standard_normal((steps, batch, inp)))
    return params, x


def explicit_products(jac: np.ndarray):
    """P_lag = J_T ... J_{T-lag+1} for lag = 1..T (float64, no rescaling)."""
    steps = jac.shape[0]
    p = np.broadcast_to(np.eye(jac.shape[-1]), jac.shape[1:]).copy()
    for lag in range(1, steps + 1):
        p = p @ jac[steps - lag]
        yield lag, p


@pytest.mark.parametrize("model", ["rnn_tanh", "lstm", "gru"])
def test_singular_values_match_svd_of_explicit_product(model):
    seed = int(np.random.default_rng().integers(1 << 31))
    params, x = random_case(model, hidden=5, steps=25, batch=3, scale=1.4, seed=seed)
    bk = NumpyBackend()
    saved = forward_saved(model, params, x, None, bk)
    ff = full_frame_chain(saved, bk)
    worst = 0.0
    for lag, p in explicit_products(step_jacobians(saved, bk)):
        ref = np.log(np.linalg.svd(p, compute_uv=False))
        ok = ref - ref[:, :1] > math.log(1e-6)
        got = ff.log_sv[lag - 1]
        assert np.isfinite(got[ok]).all()
        worst = max(worst, float(np.abs(got - ref)[ok].max()))
    print(f"largest |ln sigma error| vs explicit float64 SVD: {worst:.2e}")
    assert worst < 1e-7


def test_singular_values_match_high_precision_over_a_graded_spectrum():
    """ln sigma of a 60-step tanh chain spanning hundreds of nats against 200-digit SVDs of the
    same float64 Jacobians' product. Tolerance per batch element: 10 H eps times the larger of
    e^SPAN (the resolution the full frame keeps within a block) and sum_t kappa_2(J_t) (each
    step's QR is exact for J_t + dJ_t with |dJ_t| ~ eps |J_t|, which moves ln sigma_i of the
    product by up to ~ kappa_2(J_t) eps: a saturated unit makes J_t nearly singular; one CI
    seed had kappa 1.2e12 and an error of 1.4e-5 in the smallest ln sigma, at -458 nats)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 200
    seed = int(np.random.default_rng().integers(1 << 31))
    params, x = random_case("rnn_tanh", hidden=6, steps=60, batch=2, scale=1.3, seed=seed)
    bk = NumpyBackend()
    saved = forward_saved("rnn_tanh", params, x, None, bk)
    ff = full_frame_chain(saved, bk)
    jac = step_jacobians(saved, bk)
    spread = 0.0
    for b in range(2):
        conditioning = sum(np.linalg.cond(jac[t, b]) for t in range(60))
        tol = 10 * 6 * np.finfo(float).eps * max(math.exp(SPAN), conditioning)
        p, worst = mpmath.eye(6), 0.0
        for lag in range(1, 61):
            p = p * mpmath.matrix(jac[60 - lag, b].tolist())
            if lag % 15:
                continue
            ref = sorted((float(mpmath.log(v)) for v in mpmath.svd_r(p, compute_uv=False)),
                         reverse=True)
            got = ff.log_sv[lag - 1, b]
            assert np.isfinite(got).all()
            worst = max(worst, float(np.abs(got - np.array(ref)).max()))
            spread = max(spread, ref[0] - ref[-1])
        print(f"element {b}: sum kappa(J_t) {conditioning:.2e}, largest |ln sigma error| vs "
              f"200 digits {worst:.2e} (tolerance {tol:.2e})")
        assert worst < tol
    print(f"spread {spread:.1f} nats")
    assert spread > 50


def test_frame_stretching_is_not_the_singular_values_but_sums_to_them():
    # the example: tanh RNN, H = 8, Gaussian s = 1.5
    seed = int(np.random.default_rng().integers(1 << 31))
    params, x = random_case("rnn_tanh", hidden=8, steps=30, batch=8, scale=1.5, seed=seed)
    res = analyse_chain("rnn_tanh", params, x, k=8, backend="numpy")
    true, frame = res.log_sv, res.frame_log_stretch[res.sv_lags - 1]
    print(f"lag 1: ln sigma_1 {true[0, 0]:.3f}, frame column 1 {frame[0, 0]:.3f}; "
          f"lag 10: {true[9, 0]:.3f} vs {frame[9, 0]:.3f}")
    assert np.all(np.diff(true, axis=1) <= 1e-12)  # true values descend
    assert np.all(true[:, 0] >= frame[:, 0] - 1e-12)  # sigma_1 bounds any stretching
    assert np.abs(true[:, 0] - frame[:, 0]).max() > 0.1  # and here is far from it
    np.testing.assert_allclose(true.sum(axis=1), frame.sum(axis=1), atol=1e-9)  # ln|det|


@pytest.mark.parametrize("model", ["rnn_tanh", "lstm", "gru"])
def test_sum_of_exponents_equals_mean_log_det(model):
    seed = int(np.random.default_rng().integers(1 << 31))
    params, x = random_case(model, hidden=6, steps=40, batch=4, scale=1.2, seed=seed)
    dim = 12 if model == "lstm" else 6
    res = analyse_chain(model, params, x, k=dim, backend="numpy", warmup_forward=5,
                        warmup_align=5)
    # QR and LU are backward stable: each ln|det J_t| is off by ~ D eps cond(J_t)
    bk = NumpyBackend()
    kappa = float(np.linalg.cond(step_jacobians(forward_saved(model, params, x, None, bk),
                                                bk)).max())
    tol = 10 * dim * np.finfo(float).eps * kappa * max(1.0, abs(res.mean_log_det))
    print(f"sum {res.sum_exponents:.6f}, mean ln|det J| {res.mean_log_det:.6f}, "
          f"gap {res.det_gap:.2e}, tolerance {tol:.2e} (largest cond(J_t) {kappa:.3g})")
    assert np.isfinite(res.sum_exponents) and abs(res.det_gap) < tol
    assert abs(res.exponents.sum() - res.sum_exponents) < 1e-10  # k = D: the same sum


@pytest.mark.parametrize("model", ["rnn_tanh", "gru"])
def test_warmup_exponents_full_frame_equal_k_frame_chains(model):
    seed = int(np.random.default_rng().integers(1 << 31))
    params, x = random_case(model, hidden=6, steps=50, batch=5, scale=1.3, seed=seed)
    kw = dict(k=3, backend="numpy", warmup_forward=7, warmup_align=9)
    full = analyse_chain(model, params, x, **kw)
    kframe = analyse_chain(model, params, x, singular_values=False, **kw)
    assert kframe.log_sv is None and math.isnan(kframe.sum_exponents)
    np.testing.assert_allclose(full.exponents, kframe.exponents, atol=1e-10)
    np.testing.assert_allclose(full.exponents_se, kframe.exponents_se, atol=1e-10)
    # the window: lags 10 .. 43 of the batch-mean frame stretching
    s = np.concatenate([np.zeros((1, 3)), full.frame_log_stretch])
    first = (s[9 + 17] - s[9]) / 17
    np.testing.assert_allclose(full.exponents_half[0], first, atol=1e-12)
    assert full.exponents_se.shape == (3,) and np.all(full.exponents_se > 0)
    with pytest.raises(ValueError, match="warmup"):
        analyse_chain(model, params, x, k=3, warmup_forward=30, warmup_align=20)


def test_log_singular_values_of_a_diagonal_beyond_float_range():
    # diag(e^1000, e^0, e^-1000) as U = I, c = (1000, 0, -1000): nothing overflows
    got = log_singular_values(np.eye(3)[None], np.array([[0.0, 1000.0, -1000.0]]))
    np.testing.assert_allclose(got[0], [1000.0, 0.0, -1000.0], atol=1e-12)


def test_report_lags():
    lags = report_lags(200)
    assert lags[0] == 1 and lags[-1] == 200 and np.all(np.diff(lags) > 0) and lags.size <= 20
    np.testing.assert_array_equal(report_lags(10), np.arange(1, 11))


#: tensor methods that read a value back to the host (on CUDA each is a device-to-host copy
#: and a synchronisation; on the CPU they are counted the same way)
HOST_READS = {"__bool__", "__float__", "__int__", "__index__", "item", "cpu", "numpy", "tolist"}


def _host_reads_of_full_frame(model: str, steps: int) -> tuple[int, object]:
    from torch.overrides import TorchFunctionMode

    from bpttbench.jacobians.backends import TorchBackend

    class Count(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.reads = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.reads += getattr(func, "__name__", "") in HOST_READS
            return func(*args, **(kwargs or {}))

    params, x = random_case(model, hidden=4, steps=steps, batch=2, scale=1.2, seed=11)
    params = {n: p.float() for n, p in params.items()}
    bk = TorchBackend()
    saved = forward_saved(model, params, x.float(), None, bk)
    with Count() as count:
        ff = full_frame_chain(saved, bk, report_lags(steps))
    return count.reads, ff


@pytest.mark.parametrize("model", ["rnn_tanh", "lstm", "gru"])
def test_torch_full_frame_reads_back_per_cell_not_per_step(model):
    """The torch backend's full-frame pass keeps A and its logs on the device: the tensor
    reads to the host (.cpu(), .item(), .numpy(), bool(), float()) do not grow with T, and the
    float32 pass's singular values match the float64 numpy pass (1e-4 absolute in ln sigma
    where sigma_i > 1e-3 sigma_1: float32 Jacobians, float64 accumulation)."""
    short, _ = _host_reads_of_full_frame(model, 8)
    long, ff = _host_reads_of_full_frame(model, 40)
    print(model, "host reads per cell: T=8", short, "T=40", long)
    assert short == long <= 8
    params, x = random_case(model, hidden=4, steps=40, batch=2, scale=1.2, seed=11)
    bk = NumpyBackend()
    ref = full_frame_chain(forward_saved(model, params, x, None, bk), bk, report_lags(40))
    ok = ref.log_sv - ref.log_sv[..., :1] > math.log(1e-3)
    assert np.abs(ff.log_sv - ref.log_sv)[ok].max() < 1e-4


@pytest.mark.parametrize("model", ["rnn_tanh", "gru"])
def test_read_back_in_small_pieces_and_one_step_chunks_change_nothing(monkeypatch, model):
    """Results read back from the device in many small transfers (RESULT_BYTES of one step)
    and Jacobians built one step at a time give bit-identical output (NumPy backend)."""
    from bpttbench.jacobians import spectrum

    params, x = random_case(model, hidden=4, steps=30, batch=2, scale=1.3, seed=5)
    bk = NumpyBackend()
    saved = forward_saved(model, params, x, None, bk)
    ref = full_frame_chain(saved, bk, report_lags(30))
    monkeypatch.setattr(spectrum, "RESULT_BYTES", 1)
    got = full_frame_chain(saved, bk, report_lags(30), chunk=1)
    for name in ("lags", "log_sv", "logdiag", "log_det"):
        assert np.array_equal(getattr(got, name), getattr(ref, name), equal_nan=True), name


def test_the_log_sv_column_doc_states_the_code_s_resolution_limit():
    """The chain_spectrum column doc quotes SPAN (nats and factor) as the code uses it."""
    from bpttbench.contract.gradient_flow import CHAIN_SPECTRUM_DOCS

    doc = CHAIN_SPECTRUM_DOCS["log_sv"]
    assert f"{SPAN:g} nats" in doc and f"{math.exp(-SPAN):.1e}".replace("e-0", "e-") in doc
    assert "any batch element" in doc  # chain.py: the batch mean is NaN if one element is
