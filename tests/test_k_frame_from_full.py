"""The k-frame chain read off the full-frame pass (QR every step) equals a second k-frame run.

``analyse_chain`` with the full-frame pass and ``qr_every = 1`` takes the k-frame's logs from
the full frame's first k columns (``chain.k_frame_from_full``) instead of running the k-frame
chain again. Tolerances on the exponents and the per-lag frame stretching (nats): float64
1e-10, float32 1e-4 x max(1, |value|) (two QRs of different widths round differently).
rnn_relu is left out: where a unit is dead its Jacobian is singular and the logs of the
lost directions are rounding noise (or -inf) in either run, so they need not agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bpttbench.jacobians import analyse_chain
from bpttbench.models import RecurrentCell, init_parameters

TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


@pytest.fixture
def seed():
    s = int(np.random.SeedSequence().entropy % 100_000)
    print(f"seed={s}")
    return s


def _case(model, dtype, seed, scale):
    cell = RecurrentCell(model, 3, 10, dtype=torch.float64)
    init_parameters(cell, "gaussian", scale, bias_scale=0.2, seed=seed)
    params = {n: p.detach().to(dtype) for n, p in cell.params().items()}
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(50, 4, 3, generator=gen, dtype=torch.float64).to(dtype)
    return params, x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("scale", [0.8, 1.6])
@pytest.mark.parametrize("model", ["rnn_tanh", "rnn_linear", "lstm", "gru"])
def test_k_frame_from_the_full_frame_equals_a_k_frame_run(model, scale, backend, dtype, seed):
    params, x = _case(model, dtype, seed, scale)
    kw = {"k": 4, "qr_every": 1, "backend": backend}
    from_full = analyse_chain(model, params, x, singular_values=True, **kw)
    own_run = analyse_chain(model, params, x, singular_values=False, **kw)
    tol = TOL[dtype if backend == "torch" else torch.float64]
    for name in ("exponents", "frame_log_stretch", "exponents_half"):
        a, b = getattr(from_full, name), getattr(own_run, name)
        fin = np.isfinite(a)
        assert np.array_equal(fin, np.isfinite(b)), name
        assert np.array_equal(a[~fin], b[~fin], equal_nan=True), name
        err = np.abs(a[fin] - b[fin]) / np.maximum(1.0, np.abs(b[fin]))
        print(model, scale, backend, dtype, name, f"max err {err.max(initial=0):.2e}")
        assert (err <= tol).all(), name
