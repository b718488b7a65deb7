"""The CUDA kernels against the numpy float64 reference (needs CuPy and an NVIDIA GPU).

Each kernel runs on several shapes in float32 and float64 through
``cupy_backend.validate_kernels`` (the same function a GPU run uses to write
validation.csv); tolerances are in ``cupy_backend.TOLERANCES``. Skipped, with the
reason, where CuPy or a GPU is absent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bpttbench.jacobians import analyse_chain, cupy_backend
from bpttbench.models import RecurrentCell, init_parameters

AVAILABLE, REASON = cupy_backend.cupy_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not AVAILABLE, reason=REASON)]


@pytest.mark.parametrize("kernel", list(cupy_backend.KERNEL_SHAPES))
def test_kernel_matches_numpy_reference(kernel):
    results = cupy_backend.validate_kernels([kernel])
    assert len(results) == 2 * len(cupy_backend.KERNEL_SHAPES[kernel])
    bad = [r for r in results if not r["passed"]]
    assert not bad, "\n".join(str(r) for r in bad)


def test_validation_csv(tmp_path):
    results = cupy_backend.validate_kernels(["mgs_qr_logdiag"], dtypes=("float32",))
    path = cupy_backend.write_validation_csv(results, tmp_path / "validation.csv")
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


def test_cupy_ten_thousand_steps_at_scale_two_float32():
    cell = RecurrentCell("rnn_linear", 2, 32, dtype=torch.float32, device="cuda")
    init_parameters(cell, "orthogonal", 2.0, seed=5)
    params = {n: p.detach() for n, p in cell.params().items()}
    x = torch.randn(10_000, 2, 2, device="cuda")
    res = analyse_chain("rnn_linear", params, x, k=32, backend="cupy")
    assert np.isfinite(res.exponents).all()
    assert np.abs(res.exponents - math.log(2.0)).max() < 1e-5


def test_dlpack_shares_memory_with_torch():
    t = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    a = cupy_backend.CupyBackend(np.float32).asarray(t)
    assert a.data.ptr == t.data_ptr()
