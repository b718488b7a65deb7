"""The full-frame pass's kernels through the stand-in: full_frame_update (full_frame.cu) against
the float64 NumPy formula of bpttbench.jacobians.spectrum, the out-of-place QR
(mgs_qr_logdiag_out) against the in-place one, and the cupy backend's full-frame pass (the
fused step) against the numpy backend and against the generic formulas on the same backend.

Tolerances: full_frame_update computes in float64 what the reference computes in float64 (R
widened exactly, only the summation order differs): per entry of the unit columns the
dot-product bound 2 D eps (|triu R| |U|)_ij / ||V_j||, in the logs (2 D + 4) eps max(1, |c|);
zero columns exactly zero with -inf logs. The
out-of-place QR is the in-place kernel's arithmetic: bit-identical. The full-frame pass: 1e-9
in float64 (test_full_frame_transfers.py's bound); float32 1e-4 in ln sigma where sigma_i >
1e-3 sigma_1 (tests/test_spectrum.py's float32 bound; the QR input is float32).
"""

from __future__ import annotations

import numpy as np
import pytest

from bpttbench.jacobians import cupy_backend as cb
from bpttbench.jacobians import cupy_kernels as ck
from bpttbench.jacobians.backends import NumpyBackend
from bpttbench.jacobians.spectrum import _unit_columns, full_frame_chain, report_lags
from bpttbench.validation import kernels as vk

F32, F64 = np.float32, np.float64
pytestmark = pytest.mark.kernel_emulation


def _update_case(rng: np.random.Generator, batch: int, dim: int, dtype):
    """R in the working dtype with NaN below the diagonal (the kernel must not read it), U with
    columns spanning 200 decades and two zero columns, logs of either sign."""
    r = rng.standard_normal((batch, dim, dim)).astype(dtype)
    r[:, np.arange(dim)[:, None] > np.arange(dim)[None, :]] = np.nan
    u = rng.standard_normal((batch, dim, dim)) * 10.0 ** rng.uniform(-100, 100, (batch, 1, dim))
    u[0, :, dim // 2] = 0.0
    u[-1, :, 0] = 0.0
    logc = rng.uniform(-1e3, 1e3, (batch, dim))
    return r, u, logc


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize(("batch", "dim"), [(1, 1), (3, 5), (2, 8), (2, 13), (3, 40), (1, 130)])
def test_full_frame_update_against_numpy(emu, rng_seed, dtype, batch, dim):
    rng = np.random.default_rng(rng_seed)
    r, u, logc = _update_case(rng, batch, dim, dtype)
    with np.errstate(divide="ignore"):
        u_ref, c_ref = _unit_columns(np.triu(r.astype(F64)) @ u, logc)  # spectrum's formula
    u_out, c_out = np.empty_like(u), np.empty_like(logc)
    ck.full_frame_update(r, u, logc, u_out, c_out)
    assert [x.kernel for x in emu.launches] == [f"full_frame_update_{ck._suffix(dtype)}"]
    zero = ~np.isfinite(c_ref)
    assert zero[0, dim // 2] and zero[-1, 0] and zero.sum() == len({(0, dim // 2), (batch - 1, 0)})
    assert np.array_equal(zero, c_out == -np.inf), "zero columns: -inf logs"
    assert not np.any(u_out[np.broadcast_to(zero[:, None, :], u.shape)]), "zero columns kept zero"
    assert np.isfinite(u_out).all()
    # float64 dot products in another order: |err| <= 2 D eps (|triu R| |U|) / ||V col|| per entry
    eps = np.finfo(F64).eps
    nrm = np.sqrt(((np.triu(r.astype(F64)) @ u) ** 2).sum(axis=-2))[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = 2 * dim * eps * (np.abs(np.triu(r.astype(F64))) @ np.abs(u)) / nrm + 4 * eps
    bound[np.broadcast_to(zero[:, None, :], u.shape)] = 0.0
    err_u = np.abs(u_out - u_ref)
    err_c = (np.abs(c_out[~zero] - c_ref[~zero]) / np.maximum(1.0, np.abs(c_ref[~zero]))).max(
        initial=0.0)
    print(f"D={dim} {np.dtype(dtype)}: max |U err| {err_u.max():.1e} (bound {bound.max():.1e}), "
          f"max rel log err {err_c:.1e}")
    assert (err_u <= bound).all() and err_c <= (2 * dim + 4) * eps
    norms = np.sqrt((u_out * u_out).sum(axis=-2))
    assert np.abs(norms[~zero] - 1.0).max(initial=0.0) <= (dim + 4) * eps


def test_full_frame_update_thread_order_and_batch_slices(emu, monkeypatch, rng_seed):
    """Bit-identical under shuffled thread orders, and with the batch split over grid.y slices."""
    rng = np.random.default_rng(rng_seed)
    r, u, logc = _update_case(rng, 5, 19, F64)
    outs = []
    for order in (0, 1 + rng_seed % 1000, 2 + rng_seed % 1000):
        emu.order_seed = order
        u_out, c_out = np.empty_like(u), np.empty_like(logc)
        ck.full_frame_update(r, u, logc, u_out, c_out)
        outs.append((u_out, c_out))
    emu.order_seed = 0
    monkeypatch.setattr(ck, "MAX_GRID_YZ", 2)
    u_out, c_out = np.empty_like(u), np.empty_like(logc)
    ck.full_frame_update(r, u, logc, u_out, c_out)
    outs.append((u_out, c_out))
    assert [x.grid for x in emu.launches[-3:]] == [(3, 2, 1), (3, 2, 1), (3, 1, 1)]
    for got in outs[1:]:
        assert np.array_equal(got[0], outs[0][0]) and np.array_equal(got[1], outs[0][1])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 33, 20), (1, 64, 64), (2, 180, 170)])
def test_out_of_place_qr_is_the_in_place_qr(emu, rng_seed, dtype, shape):
    """mgs_qr_logdiag_out = copy + zeroed logs + mgs_qr_logdiag, bit for bit; src unchanged.
    (2, 180, 170) in float64 does not fit shared memory: the kernel works in global memory."""
    rng = np.random.default_rng(rng_seed)
    a = (rng.standard_normal(shape) * np.exp(np.linspace(0.0, -4.0, shape[2]))).astype(dtype)
    src = a.copy()
    q, logd = np.empty_like(a), np.full(shape[::2], np.nan)
    ck.mgs_qr_logdiag_out(src, q, logd)
    q_in, log_in = a.copy(), np.zeros(shape[::2])
    ck.mgs_qr_logdiag(q_in, log_in)
    assert np.array_equal(src, a) and np.array_equal(q, q_in) and np.array_equal(logd, log_in)
    q_ref, log_ref = NumpyBackend().qr_logdiag(a.astype(F64))
    tol = vk.KERNEL_TOLERANCES["mgs_qr_logdiag"][0 if dtype == F32 else 1]
    assert vk._rel_log_err(logd, log_ref) <= tol and vk._rel_norm_err(q, q_ref) <= tol


def _saved(model: str, hidden: int, steps: int, seed: int, dtype):
    return vk._round_saved(vk._random_model_saved(model, 2, hidden, steps, seed), dtype)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize(("model", "hidden"), [("rnn_tanh", 6), ("rnn_tanh", 35), ("lstm", 3),
                                               ("lstm", 20), ("gru", 5), ("gru", 40)])
def test_cupy_full_frame_pass_against_numpy(emu, monkeypatch, rng_seed, dtype, model, hidden):
    """The fused pass against the numpy backend (float64 reference on the same rounded inputs)
    and against the generic formulas on the same emulated backend (forced by a shared memory
    limit the update's tile does not fit): ln|diag R| and ln|det J| do not depend on the
    update (bit-identical), ln sigma within float64 rounding."""
    seed = rng_seed % 10_000
    steps = 12
    saved = _saved(model, hidden, steps, seed, dtype)
    lags = report_lags(steps)
    ref = full_frame_chain(saved, NumpyBackend(), lags)
    got = full_frame_chain(vk._to_cupy_saved(saved, dtype), cb.CupyBackend(dtype, "tiled"), lags)
    assert any(x.kernel.startswith("full_frame_update") for x in emu.launches)
    monkeypatch.setattr(ck, "max_optin_smem", lambda: ck.full_frame_smem_bytes(saved.dim) - 8)
    n = len(emu.launches)
    generic = full_frame_chain(vk._to_cupy_saved(saved, dtype), cb.CupyBackend(dtype, "tiled"),
                               lags)
    assert not any(x.kernel.startswith("full_frame_update") for x in emu.launches[n:])
    assert np.array_equal(got.logdiag, generic.logdiag)
    assert np.array_equal(got.log_det, generic.log_det)
    fin = np.isfinite(generic.log_sv)
    assert np.array_equal(fin, np.isfinite(got.log_sv))
    print(model, hidden, np.dtype(dtype), "fused vs generic ln sigma:",
          np.abs(got.log_sv - generic.log_sv)[fin].max())
    assert np.abs(got.log_sv - generic.log_sv)[fin].max() <= 1e-9
    if dtype == F64:  # NaN: a value the reference cannot resolve either (spread > SPAN)
        for name in ("log_sv", "logdiag", "log_det"):
            a, b = getattr(got, name), getattr(ref, name)
            ok = np.isfinite(b)
            assert np.array_equal(ok, np.isfinite(a)) and ok.mean() > 0.5, name
            print(f"  {name} vs numpy: {np.abs(a - b)[ok].max():.2e}")
            assert np.abs(a - b)[ok].max() < 1e-9, name
    else:
        ok = ref.log_sv - ref.log_sv[..., :1] > np.log(1e-3)
        err = np.abs(got.log_sv - ref.log_sv)[ok].max()
        print(f"  float32 ln sigma vs numpy (sigma > 1e-3 sigma_1): {err:.2e}")
        assert err < 1e-4
