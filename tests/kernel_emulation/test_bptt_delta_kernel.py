"""The RNN's two-column BPTT chain kernel (kernels/bptt_delta.cu, launched by
bpttbench.jacobians.cupy_kernels.bptt_delta_rnn for bpttbench.gradient_flow.bptt_delta_cupy)
through the kernel emulation stand-in, against the torch path of bptt_deltas (itself tested
against autograd). NVRTC compiles the file with the engine's others (tests/test_kernels_compile.py).

Tolerances on ||delta_t|| (relative, max over lags and batch): float64 1e-12, float32 2e-5
(the kernel sums its products in another order than the BLAS; observed below 2e-6).
"""

from __future__ import annotations

import shutil

import emucupy
import numpy as np
import pytest
import torch
from delta_cases import delta_args

from bpttbench.gradient_flow import bptt_delta_cupy as kc
from bpttbench.gradient_flow.bptt_deltas import delta_chain, log_abs_err, norm_rel_err
from bpttbench.jacobians import cupy_kernels as ck

pytestmark = pytest.mark.kernel_emulation


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("model,hidden,batch", [("rnn_tanh", 8, 3), ("rnn_relu", 33, 1),
                                                ("rnn_linear", 300, 2)])
def test_kernel_equals_torch_path(emu, model, hidden, batch, dtype, tol, monkeypatch):
    seed = int(np.random.SeedSequence().entropy % 10_000)
    print(f"seed={seed}")
    monkeypatch.setattr(kc, "STEPS_PER_LAUNCH", 7)  # several launches, lag offsets > 0
    args = delta_args(model, dtype, hidden, batch, 20, seed)
    ref = delta_chain(*args, backend="torch")
    got = delta_chain(*args, backend="cupy")
    err = norm_rel_err(got.flow.log_norm_h, ref.flow.log_norm_h)
    err_log = log_abs_err(got.log_norm_h_true, ref.log_norm_h_true)
    print(model, hidden, dtype, f"rel err {err:.2e}, log-scale {err_log:.2e}")
    assert np.isfinite(ref.flow.log_norm_h).all()
    assert err < tol and err_log < tol
    assert (got.flow.first_zero_h == ref.flow.first_zero_h).all()
    assert got.flow.loss == ref.flow.loss and got.flow.first_nonfinite_step is None


def test_kernel_overflows_like_bptt(emu):
    """float32 exploding linear RNN: inf at the same lag as the torch path, log scale finite."""
    args = delta_args("rnn_linear", "float32", 16, 2, 100, 3, scale=2.0)
    with torch.no_grad():  # W = 2 Q: the orthogonal init, scaled
        args[1]["weight_hh_l0"].copy_(2 * torch.linalg.qr(torch.randn(16, 16))[0])
    ref = delta_chain(*args, backend="torch")
    got = delta_chain(*args, backend="cupy")
    first = [int(np.flatnonzero(np.isposinf(f.log_norm_h).any(axis=1))[0]) for f in
             (ref.flow, got.flow)]
    print("first inf lag (torch, kernel):", first)
    assert first[0] == first[1] > 0
    assert np.isfinite(got.log_norm_h_true).all()
    assert log_abs_err(got.log_norm_h_true, ref.log_norm_h_true) < 1e-5


def test_one_launch_per_chunk_none_per_step(emu):
    """Launches do not grow with T within a chunk: 0 per step (costmodel.CUPY_DELTAS)."""
    from bpttbench.costmodel import CUPY_DELTAS

    def launches(steps):
        before = len(emu.launches)
        delta_chain(*delta_args("rnn_tanh", "float32", 8, 2, steps, 0), backend="cupy")
        return len(emu.launches) - before

    assert launches(8) == launches(24) == 1
    assert {launch.kernel for launch in emu.launches} == {"bptt_delta_rnn_f32"}
    assert "#define NTHREADS" in emu.sources["bptt_delta_rnn_f32"]  # launch.cuh, inlined
    assert CUPY_DELTAS["rnn"] == (launches(24) - launches(8)) / 16 == 0


def test_bitwise_identical_in_any_thread_order(monkeypatch):
    """Threads of each barrier interval in order and in two shuffled orders: same bits."""
    if shutil.which(emucupy.CXX) is None:
        pytest.skip(f"no host C++ compiler {emucupy.CXX!r}")
    args = delta_args("rnn_tanh", "float32", 300, 2, 9, 5, scale=1.3)  # H > 256: threads loop
    outs = []
    try:
        for order in (0, 1, 2):
            emucupy.install(monkeypatch, order_seed=order)
            got = delta_chain(*args, backend="cupy")
            outs.append((got.flow.log_norm_h, got.log_norm_h_true))
    finally:
        ck._module.cache_clear()
        ck._optin_smem.cache_clear()
    for a, b in outs[1:]:
        assert np.array_equal(a, outs[0][0]) and np.array_equal(b, outs[0][1])


def test_kernel_is_the_engines_file():
    """The kernel is kernels/bptt_delta.cu, loaded by the engine's loader: no inline source,
    launch constants or compiler options of its own in the wrapper module."""
    assert "bptt_delta.cu" in ck.KERNEL_ENTRY_POINTS
    for name in ("SOURCE", "NTHREADS", "NVRTC_OPTIONS", "_module", "_kernel"):
        assert not hasattr(kc, name), name
    assert kc.smem_bytes(300, np.float32) == 2 * ck.NTHREADS * 8 + 4 * 300 * 4
