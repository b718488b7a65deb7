"""The LSTM's and GRU's two-column BPTT chain kernel (kernels/bptt_delta_gated.cu, launched by
bpttbench.jacobians.cupy_kernels.bptt_delta_gated for bpttbench.gradient_flow.bptt_delta_cupy)
through the kernel emulation stand-in, against the torch path of bptt_deltas (its
gated_adjoint_step is tested against step_jacobians and autograd in tests/test_bptt_deltas.py).

Tolerances on ||dL/dh_t|| and the LSTM's ||dL/dc_t|| (relative, max over lags and batch, raw
and log-scale columns): float64 1e-12, float32 2e-5 (the kernel sums the W_hh^T products in
another order than the BLAS).
"""

from __future__ import annotations

import shutil

import emucupy
import numpy as np
import pytest
import torch
from delta_cases import delta_args

from bpttbench.config import CellSpec
from bpttbench.gradient_flow import bptt_delta_cupy as kc
from bpttbench.gradient_flow.bptt_deltas import delta_chain, log_abs_err, norm_rel_err
from bpttbench.jacobians import cupy_kernels as ck

pytestmark = pytest.mark.kernel_emulation


def _errors(got, ref):
    """max relative error of the raw and log-scale norms, h and (LSTM) c."""
    errs = [norm_rel_err(got.flow.log_norm_h, ref.flow.log_norm_h),
            log_abs_err(got.log_norm_h_true, ref.log_norm_h_true)]
    if ref.log_norm_c_true is not None:
        errs += [norm_rel_err(got.flow.log_norm_c, ref.flow.log_norm_c),
                 log_abs_err(got.log_norm_c_true, ref.log_norm_c_true)]
    return errs


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("model,hidden,batch", [("lstm", 8, 3), ("gru", 33, 2),
                                                ("lstm", 300, 1), ("gru", 260, 1)])
def test_kernel_equals_torch_path(emu, model, hidden, batch, dtype, tol, monkeypatch):
    seed = int(np.random.SeedSequence().entropy % 10_000)
    print(f"seed={seed}")
    monkeypatch.setattr(kc, "STEPS_PER_LAUNCH", 7)  # several launches, lag offsets > 0
    args = delta_args(model, dtype, hidden, batch, 20, seed)
    ref = delta_chain(*args, backend="torch")
    got = delta_chain(*args, backend="cupy")
    errs = _errors(got, ref)
    print(model, hidden, dtype, "rel err h, h log-scale[, c, c log-scale]:",
          ", ".join(f"{e:.2e}" for e in errs))
    assert np.isfinite(ref.flow.log_norm_h).all()
    assert (got.log_norm_c_true is None) == (model == "gru")
    assert max(errs) < tol
    assert (got.flow.first_zero_h == ref.flow.first_zero_h).all()
    assert got.flow.loss == ref.flow.loss and got.flow.first_nonfinite_step is None


@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_kernel_overflows_like_bptt(emu, model):
    """float32 with W_hh scaled up until BPTT overflows: inf at the same lag as the torch
    path, the log-scale column finite."""
    args = delta_args(model, "float32", 16, 2, 200, 3)
    with torch.no_grad():
        args[1]["weight_hh_l0"].mul_(60.0)
        args[1]["weight_ih_l0"].mul_(0.0)  # small inputs: gates stay off saturation
    ref = delta_chain(*args, backend="torch")
    got = delta_chain(*args, backend="cupy")
    first = []
    for f in (ref.flow, got.flow):
        bad = np.flatnonzero(np.isposinf(f.log_norm_h).any(axis=1))
        first.append(int(bad[0]) if bad.size else -1)
    print(model, "first inf lag (torch, kernel):", first)
    assert first[0] == first[1] > 0
    assert np.isfinite(got.log_norm_h_true).all()
    assert log_abs_err(got.log_norm_h_true, ref.log_norm_h_true) < 1e-4


@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_one_launch_per_cell_none_per_step(emu, model):
    """Launches do not grow with T within a chunk: 0 per step (costmodel.CUPY_DELTAS)."""
    from bpttbench.costmodel import CUPY_DELTAS

    def launches(steps):
        before = len(emu.launches)
        delta_chain(*delta_args(model, "float32", 8, 2, steps, 0), backend="cupy")
        return len(emu.launches) - before

    assert launches(8) == launches(24) == 1
    assert {launch.kernel for launch in emu.launches} == {f"bptt_delta_{model}_f32"}
    assert "#define NTHREADS" in emu.sources[f"bptt_delta_{model}_f32"]  # launch.cuh, inlined
    assert CUPY_DELTAS[model] == (launches(24) - launches(8)) / 16 == 0


@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_bitwise_identical_in_any_thread_order(monkeypatch, model):
    """Threads of each barrier interval in order and in two shuffled orders: same bits."""
    if shutil.which(emucupy.CXX) is None:
        pytest.skip(f"no host C++ compiler {emucupy.CXX!r}")
    args = delta_args(model, "float32", 270, 2, 6, 5, scale=1.3)  # H > 256: threads loop
    outs = []
    try:
        for order in (0, 1, 2):
            emucupy.install(monkeypatch, order_seed=order)
            got = delta_chain(*args, backend="cupy")
            outs.append([got.flow.log_norm_h, got.log_norm_h_true, got.log_norm_c_true])
    finally:
        ck._module.cache_clear()
        ck._optin_smem.cache_clear()
    for out in outs[1:]:
        for a, b in zip(out, outs[0], strict=True):
            assert (a is None and b is None) or np.array_equal(a, b)


def test_limits_and_fallback_reason():
    """The shared-memory limits (the file's opening comment, costmodel.CUPY_DELTAS_MAX_H),
    and the fallback's reason."""
    from bpttbench.costmodel import CUPY_DELTAS_MAX_H

    limits = (("lstm", np.float32, 896), ("lstm", np.float64, 448),
              ("gru", np.float32, 1344), ("gru", np.float64, 672))
    for model, dt, h_max in limits:
        assert CUPY_DELTAS_MAX_H[model][np.dtype(dt).name] == h_max
        assert ck.bptt_delta_gated_smem_bytes(model, h_max, dt) <= kc.SMEM_LIMIT
        assert ck.bptt_delta_gated_smem_bytes(model, h_max + 1, dt) > kc.SMEM_LIMIT
    why = kc.unusable_reason("lstm", 897, np.float32)
    assert "shared memory" in why and "897" in why
    assert "float16" in kc.unusable_reason("gru", 8, np.float16)
    assert "bptt_delta_gated.cu" in ck.KERNEL_ENTRY_POINTS


@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_measure_cell_runs_the_kernel_or_says_why_not(emu, model, monkeypatch):
    """On CUDA (the emulated CuPy stands for one) a jacobian_chain cell runs the kernel; past
    the shared-memory limit it falls back to the torch path with a warning naming the limit,
    and both give the same norms (float64, 1e-12)."""
    import dataclasses

    from bpttbench.gradient_flow.bptt_deltas import measure_cell

    spec = CellSpec(model, "gaussian", 8, 12, 1.0, 11, 4, 1.0, 0.0, 2, 4, 1, "cpu", "float64",
                    False, True, "auto", bptt_method="jacobian_chain",
                    autograd_reference_every=0)
    _, params, x, state0, w_out, target = delta_args(model, "float64", 8, 2, 12, 11)
    before = len(emu.launches)
    flow_k = measure_cell(spec, params, x, state0, w_out, target, "cuda").flow
    assert len(emu.launches) - before == 1
    monkeypatch.setattr(kc, "SMEM_LIMIT", 1024)
    with pytest.warns(RuntimeWarning, match="shared memory"):
        flow_t = measure_cell(dataclasses.replace(spec), params, x, state0, w_out, target,
                              "cuda").flow
    assert len(emu.launches) - before == 1  # no kernel: the torch path
    assert norm_rel_err(flow_k.log_norm_h, flow_t.log_norm_h) < 1e-12
