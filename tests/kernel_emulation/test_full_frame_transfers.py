"""The full-frame pass (true singular values) on the emulated CuPy backend: device-to-host
transfers per cell do not grow with T (the accumulated A and its logs stay on the device,
bpttbench.jacobians.spectrum), and its results equal the float64 NumPy pass.

Transfers are counted at the stand-in's ``cupy.asnumpy`` (the backend's one read-back,
``CupyBackend.to_numpy``; a ``.get()`` or an implicit conversion fails on CuPy and, here,
on the stand-in's arrays, which have no ``.get``). Tolerance against NumPy: 1e-9 in every
output (float64 kernels: the MGS QR and the gate-Jacobian kernel round differently from
LAPACK, well inside that).
"""

from __future__ import annotations

import numpy as np
import pytest

from bpttbench.jacobians import cupy_backend as cb
from bpttbench.jacobians import cupy_kernels as ck
from bpttbench.jacobians.backends import NumpyBackend
from bpttbench.jacobians.spectrum import full_frame_chain, report_lags
from bpttbench.validation import kernels as vk

F64 = np.float64
pytestmark = pytest.mark.kernel_emulation


def _count_reads(monkeypatch) -> list[int]:
    calls = [0]
    real = ck.cp.asnumpy

    def asnumpy(a, *args, **kwargs):
        calls[0] += 1
        return real(a, *args, **kwargs)

    monkeypatch.setattr(ck.cp, "asnumpy", asnumpy, raising=False)
    return calls


def _saved(model: str, steps: int, seed: int):
    if model == "rnn_tanh":
        rng = np.random.default_rng(seed)
        hidden, batch = 6, 2
        w = rng.standard_normal((hidden, hidden)) * 1.2 / np.sqrt(hidden)
        deriv = rng.uniform(0.2, 1.0, (steps, batch, hidden))
        return cb.Saved("rnn_tanh", hidden, steps, batch, w, deriv=deriv)
    return vk._random_model_saved(model, 2, 3, steps, seed)


@pytest.mark.parametrize("model", ["rnn_tanh", "lstm", "gru"])
def test_full_frame_transfers_per_cell_do_not_grow_with_t(emu, monkeypatch, model):
    seed = int(np.random.SeedSequence().entropy % 10_000)
    print(f"seed={seed}")
    calls = _count_reads(monkeypatch)
    counts = {}
    for steps in (8, 24):
        saved = _saved(model, steps, seed)
        bk = cb.CupyBackend(F64, rnn_path="tiled")
        before = calls[0]
        got = full_frame_chain(vk._to_cupy_saved(saved, F64), bk, report_lags(steps))
        counts[steps] = calls[0] - before
        ref = full_frame_chain(saved, NumpyBackend(), report_lags(steps))
        for name in ("log_sv", "logdiag", "log_det"):
            a, b = getattr(got, name), getattr(ref, name)
            assert a.shape == b.shape and np.isfinite(b).all(), name
            assert np.abs(a - b).max() < 1e-9, (name, np.abs(a - b).max())
    print(model, "device-to-host transfers per cell (T=8, T=24):", counts)
    assert 0 < counts[8] == counts[24] <= 5
