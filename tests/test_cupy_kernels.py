"""The CUDA kernels against the numpy float64 reference (needs CuPy and an NVIDIA GPU).

Each kernel runs on several shapes in float32 and float64 through
``bpttbench.validation.kernels.validate_kernels`` (the same function a GPU run uses to write
validation.csv); tolerances are in its ``KERNEL_TOLERANCES``. Skipped, with the
reason, where CuPy or a GPU is absent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bpttbench.jacobians import analyse_chain, cupy_backend, cupy_kernels
from bpttbench.models import RecurrentCell, init_parameters
from bpttbench.validation import kernels as vk

AVAILABLE, REASON = cupy_kernels.cupy_available()


def gpu(test):
    """Mark a test as needing CuPy and a GPU (skipped with the reason otherwise)."""
    return pytest.mark.cuda(pytest.mark.skipif(not AVAILABLE, reason=REASON)(test))


@gpu
@pytest.mark.parametrize("kernel", list(vk.KERNEL_SHAPES))
def test_kernel_matches_numpy_reference(kernel):
    results = vk.validate_kernels([kernel])
    assert len(results) == 2 * len(vk.KERNEL_SHAPES[kernel])
    bad = [r for r in results if not r["passed"]]
    assert not bad, "\n".join(str(r) for r in bad)


@gpu
def test_validation_csv(tmp_path):
    results = vk.validate_kernels(["mgs_qr_logdiag"], dtypes=("float32",))
    path = vk.write_validation_csv(results, tmp_path / "validation.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "kernel,shape,dtype,max_rel_err,tolerance,passed"
    assert len(lines) == 1 + len(results)


def _cuda_case(model, dtype, hidden=16, steps=40, batch=3):
    cell = RecurrentCell(model, 4, hidden, dtype=torch.float64)
    init_parameters(cell, "gaussian", 1.3, bias_scale=0.3, seed=3)
    params = {n: p.detach() for n, p in cell.params().items()}
    x = torch.randn(
        steps, batch, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    cuda = {n: p.to("cuda", dtype) for n, p in params.items()}
    return params, x, cuda, x.to("cuda", dtype)


@gpu
@pytest.mark.parametrize("model", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_analyse_chain_cupy_matches_numpy(model, dtype):
    params, x, cuda_params, cuda_x = _cuda_case(model, dtype)
    ref = analyse_chain(model, params, x, k=4, backend="numpy")
    got = analyse_chain(model, cuda_params, cuda_x, k=4, qr_every=1, backend="auto")
    assert got.backend == "cupy"
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert np.abs(got.exponents - ref.exponents).max() < tol
    assert np.all(np.abs(got.log_sv - ref.log_sv) <= tol * np.maximum(1.0, np.abs(ref.log_sv)))


@gpu
@pytest.mark.parametrize("model", ["rnn_tanh", "rnn_relu", "rnn_linear", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_record_kernel_matches_numpy(model, dtype):
    """forward_saved on the cupy backend (kernels/forward_record.cu, chunks of 7 steps) against
    the float64 NumPy record of the same (rounded) inputs, normwise per field: float64 1e-12,
    float32 1e-5 (elementwise checks: tests/kernel_emulation/test_forward_record_kernel.py)."""
    from bpttbench.jacobians import cupy_forward
    from bpttbench.jacobians.analytic import forward_saved
    from bpttbench.jacobians.backends import NumpyBackend

    _, _, cuda_params, cuda_x = _cuda_case(model, dtype, hidden=300, steps=30)
    state0 = tuple(torch.randn(3, 300, generator=torch.Generator().manual_seed(5 + i),
                               dtype=torch.float64).to("cuda", dtype)
                   for i in range(2 if model == "lstm" else 1))
    p64 = {n: p.to("cpu", torch.float64) for n, p in cuda_params.items()}
    ref = forward_saved(model, p64, cuda_x.to("cpu", torch.float64),
                        tuple(s.to("cpu", torch.float64) for s in state0), NumpyBackend())
    mp = pytest.MonkeyPatch()
    mp.setattr(cupy_forward, "STEPS_PER_LAUNCH", 7)
    try:
        got = forward_saved(model, cuda_params, cuda_x, state0,
                            cupy_backend.CupyBackend(cupy_kernels.cupy_dtype(dtype)))
    finally:
        mp.undo()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    names = ["deriv"] if model.startswith("rnn_") else ["gates", "dgates", "prev", "aux", "aux2"]
    pairs = [(getattr(got, n), getattr(ref, n)) for n in names]
    pairs += list(zip(got.final_state, ref.final_state, strict=True))
    for a, b in pairs:
        a = cupy_kernels.cp.asnumpy(a).astype(np.float64)
        if model == "rnn_relu" and a.shape == b.shape and a.ndim == 3:  # 0/1: kinks may flip
            assert (a != b).mean() < 1e-3
            continue
        assert np.abs(a - b).max() <= tol * np.abs(b).max()


@gpu
def test_cupy_ten_thousand_steps_at_scale_two_float32():
    cell = RecurrentCell("rnn_linear", 2, 32, dtype=torch.float32, device="cuda")
    init_parameters(cell, "orthogonal", 2.0, seed=5)
    params = {n: p.detach() for n, p in cell.params().items()}
    x = torch.randn(10_000, 2, 2, device="cuda")
    res = analyse_chain("rnn_linear", params, x, k=32, backend="cupy")
    assert np.isfinite(res.exponents).all()
    assert np.abs(res.exponents - math.log(2.0)).max() < 1e-5


@gpu
@pytest.mark.parametrize("model", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bptt_delta_kernels_match_the_numpy_chain(model, dtype):
    """The persistent BPTT-delta kernels (kernels/bptt_delta*.cu) on a GPU against the same
    chain in float64 NumPy from the same trajectory: tolerances as tests/test_bptt_deltas.py
    (float64 1e-12, float32 2e-4 on ||delta_t|| at every lag)."""
    from bpttbench.config import CellSpec
    from bpttbench.gradient_flow.bptt_deltas import delta_chain, log_abs_err, norm_rel_err
    from bpttbench.gradient_flow.cells import cell_problem

    spec = CellSpec(model, "orthogonal", 64, 300, 1.0, 7, 4, 1.0, 0.0, 8, 4, 1, "cuda", dtype,
                    False, True, "auto")
    cell, x, w_out, target = cell_problem(spec, "cuda")
    args = (model, cell.params(), x, cell.initial_state(spec.batch), w_out, target)
    got, ref = delta_chain(*args, backend="cupy"), delta_chain(*args, backend="numpy")
    tol = 1e-12 if dtype == "float64" else 2e-4
    err = norm_rel_err(got.flow.log_norm_h, ref.flow.log_norm_h)
    err_log = log_abs_err(got.log_norm_h_true, ref.log_norm_h_true)
    print(model, dtype, f"rel err {err:.2e}, log-scale abs err {err_log:.2e}")
    assert err < tol and err_log < tol


@gpu
@pytest.mark.parametrize("model", ["rnn_tanh", "lstm"])
def test_gpu_cell_runs_one_forward_and_matches_autograd(model):
    """A float32 gradient-flow cell on the GPU: the chain method by the CuPy kernels, the
    Lyapunov chain on the shared forward record, and autograd (the reference cell) agreeing
    with the chain to 2e-4."""
    from bpttbench.config import CellSpec
    from bpttbench.gradient_flow.cells import run_cell

    spec = CellSpec(model, "orthogonal", 32, 200, 1.0, 3, 4, 1.0, 0.0, 4, 4, 1, "cuda",
                    "float32", False, True, "auto", autograd_reference_every=1)
    rec = run_cell(spec)
    summary = rec["summary"]
    print(model, {k: summary.get(k) for k in ("status", "bptt_method",
                                               "grad_norm_rel_err_vs_autograd")})
    assert summary["status"] != "error", rec.get("error") or rec.get("chain_error")
    assert (rec["jacobian_backend"], rec["chain_forward"]) == ("cupy", "shared")
    assert summary["bptt_method"] == "jacobian_chain"
    assert summary["grad_norm_rel_err_vs_autograd"] < 2e-4


@gpu
def test_dlpack_shares_memory_with_torch():
    t = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    a = cupy_backend.CupyBackend(np.float32).asarray(t)
    assert a.data.ptr == t.data_ptr()


# ------------------------------------------------------------------------------------------
# Without a GPU: the wrapper's orchestration (argument packing, shape checks, time chunking,
# QR / rescale schedule) with NumPy stand-ins that do what each kernel's comment block says.


def _mgs2(a, logacc):
    for _ in range(2):
        for j in range(a.shape[-1]):
            nrm = np.linalg.norm(a[..., j], axis=-1)
            logacc[..., j] += np.log(nrm)
            a[..., j] /= nrm[..., None]
            for p in range(j + 1, a.shape[-1]):
                dot = (a[..., j] * a[..., p]).sum(-1)
                a[..., p] -= dot[..., None] * a[..., j]


def _standin(base):
    def persistent(grid, block, args, shared_mem=0):
        deriv, w, frame, scale, total, rows, *ints = args
        assert all(isinstance(i, np.int32) for i in ints) and shared_mem > 0
        batch, hidden, k, t_first, n_steps, lag0, qr_every, total_steps = map(int, ints)
        assert grid == (batch,) and block == (cupy_kernels.NTHREADS,)
        for step in range(n_steps):
            m = w.T @ (deriv[t_first - step][..., None] * frame)
            lag = lag0 + step + 1
            if lag % qr_every and lag != total_steps:
                nrm = np.linalg.norm(m, axis=1)
                scale += np.log(nrm)
                frame[...] = m / nrm[:, None, :]
                rows[step] = total + scale
            else:
                _mgs2(m, total)
                frame[...] = m
                total += scale
                scale[...] = 0.0
                rows[step] = total

    def tiled(grid, block, args, shared_mem=0):
        deriv_t, w, frame, out, *ints = args
        assert block == (16, 16) and all(isinstance(i, np.int32) for i in ints)
        out[...] = w.T @ (deriv_t[..., None] * frame)

    def colnorm(grid, block, args, shared_mem=0):
        mat, scale, total, row_out, *_ = args
        nrm = np.linalg.norm(mat, axis=1)
        mat /= nrm[:, None, :]
        scale += np.log(nrm)
        row_out[...] = total + scale

    def qr(grid, block, args, shared_mem=0):
        a, logacc, *ints = args
        assert all(isinstance(i, np.int32) for i in ints)
        _mgs2(a, logacc)

    def lstm(grid, block, args, shared_mem=0):
        gates, dgates, c, tc, dtc, w, out, n, hidden = args
        assert isinstance(n, np.int64) and isinstance(hidden, np.int32)
        h = int(hidden)
        i, f, g, o = np.split(gates, 4, -1)
        di, df, dg, do = np.split(dgates, 4, -1)
        wi, wf, wg, wo = np.split(w, 4, 0)
        dcdh = (c * df)[..., None] * wf + (g * di)[..., None] * wi + (i * dg)[..., None] * wg
        oc = o * dtc
        out[:, :h, :h] = (tc * do)[..., None] * wo + oc[..., None] * dcdh
        out[:, :h, h:] = (oc * f)[..., None] * np.eye(h)
        out[:, h:, :h] = dcdh
        out[:, h:, h:] = f[..., None] * np.eye(h)

    def gru(grid, block, args, shared_mem=0):
        gates, dgates, hp, hn, omz, w, out, n, hidden = args
        r, z, nn = np.split(gates, 3, -1)
        dr, dz, dn = np.split(dgates, 3, -1)
        wr, wz, wn = np.split(w, 3, 0)
        u = omz * dn
        out[...] = (z[..., None] * np.eye(int(hidden)) + ((hp - nn) * dz)[..., None] * wz
                    + (u * r)[..., None] * wn + (u * hn * dr)[..., None] * wr)  # fmt: skip

    return {"rnn_chain_persistent": persistent, "rnn_adjoint_step_tiled": tiled,
            "colnorm_rescale": colnorm, "mgs_qr_logdiag": qr, "lstm_jacobians": lstm,
            "gru_jacobians": gru}[base]  # fmt: skip


@pytest.fixture
def numpy_as_cupy(monkeypatch):
    import types

    fake = types.SimpleNamespace(**{n: getattr(np, n) for n in dir(np) if not n.startswith("_")})
    fake.asnumpy = np.asarray
    monkeypatch.setattr(cupy_kernels, "cp", fake)
    monkeypatch.setattr(cupy_kernels, "cupy_available", lambda: (True, "numpy stand-in"))
    monkeypatch.setattr(cupy_kernels, "max_optin_smem", lambda: 100 * 1024)
    monkeypatch.setattr(cupy_kernels, "_kernel", lambda fname, base, dtype: _standin(base))
    return fake


@pytest.mark.parametrize(
    ("model", "hidden", "path", "qr_every"),
    [("rnn_tanh", 8, "persistent", 1), ("rnn_tanh", 8, "persistent", 3),
     ("rnn_tanh", 8, "tiled", 2), ("rnn_relu", 200, "auto", 1), ("lstm", 5, "auto", 2),
     ("gru", 6, "auto", 1)],
)  # fmt: skip
def test_wrapper_orchestration_with_numpy_standins(numpy_as_cupy, monkeypatch, model, hidden,
                                                   path, qr_every):  # fmt: skip
    from bpttbench.jacobians import chain
    from bpttbench.jacobians.analytic import forward_saved
    from bpttbench.jacobians.backends import NumpyBackend

    cell = RecurrentCell(model, 3, hidden, dtype=torch.float64)
    init_parameters(cell, "gaussian", 1.2, bias_scale=0.3, seed=7)
    params = {n: p.detach() for n, p in cell.params().items()}
    x = torch.randn(23, 2, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    saved = forward_saved(model, params, x, None, NumpyBackend())
    k = 3
    tot_ref, rows_ref = chain.run_chain(saved, NumpyBackend(), k, qr_every)
    monkeypatch.setattr(cupy_kernels, "ROWS_CHUNK_BYTES", 5 * 2 * k * 8)  # 5 steps per launch
    monkeypatch.setattr(chain, "CHUNK_BYTES", 7 * 2 * (2 * hidden) ** 2 * 8)
    bk = cupy_backend.CupyBackend(np.float64, rnn_path=path)
    tot, rows = chain.run_chain(saved, bk, k, qr_every)
    np.testing.assert_allclose(rows, rows_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(tot, tot_ref, rtol=0, atol=1e-10)
