"""CuPy launches per step of the chain, counted through the kernel-emulation stand-in, against
the cost model's tables (bpttbench.costmodel.CUPY_CUSTOM_KERNELS: our kernels;
CUPY_STEP_LAUNCHES: ours and CuPy's own, the latter counted by the stand-in's counting arrays,
emuarrays.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bpttbench.costmodel import CUPY_CUSTOM_KERNELS, CUPY_STEP_LAUNCHES
from bpttbench.jacobians import cupy_backend as cb
from bpttbench.jacobians.chain import run_chain
from bpttbench.jacobians.spectrum import full_frame_chain
from bpttbench.validation import kernels as vk

F32, F64 = np.float32, np.float64
pytestmark = pytest.mark.kernel_emulation  # runs the kernels through the stand-in (g++)


def _launches(emu, run) -> int:
    before = len(emu.launches)
    run()
    return len(emu.launches) - before


def _both(emu, run) -> tuple[int, int]:
    """(our kernels, CuPy's own launches) of run() on the counting stand-in (emu_ops)."""
    ops = len(emu.array_ops)
    own = _launches(emu, run)
    return own, len(emu.array_ops) - ops


def _per_step(emu, run) -> tuple[float, float]:
    """Launches per step, (ours, CuPy's): T = 16 less T = 8 (per-call work drops out), / 8."""
    (o16, a16), (o8, a8) = _both(emu, run(16)), _both(emu, run(8))
    assert o8 > 0 or a8 > 0  # something did run
    return (o16 - o8) / 8, (a16 - a8) / 8


@pytest.mark.parametrize("model", ["lstm", "gru"])
@pytest.mark.parametrize("qr_every", [1, 1000])
def test_gated_chain_launches_per_step(emu_ops, model, qr_every):
    def run(steps):
        saved = vk._round_saved(vk._random_model_saved(model, 2, 6, steps, 0), F32)
        return lambda: run_chain(vk._to_cupy_saved(saved, F32), cb.CupyBackend(F32), 3, qr_every)
    key = "gated_qr" if qr_every == 1 else "gated_rescale"
    assert _per_step(emu_ops, run) == CUPY_STEP_LAUNCHES[key]


@pytest.mark.parametrize("path", ["tiled", "persistent"])
@pytest.mark.parametrize("qr_every", [1, 1000])
def test_rnn_chain_launches_per_step(emu_ops, path, qr_every):
    rng = np.random.default_rng(0)
    hidden, batch, k = 12, 2, 3

    def run(steps):
        w = vk._round(rng.standard_normal((hidden, hidden)) / math.sqrt(hidden), F32)
        deriv = vk._round(rng.uniform(0.2, 1.0, (steps, batch, hidden)), F32)
        saved = cb.Saved("rnn_tanh", hidden, steps, batch, w, deriv=deriv)
        return lambda: run_chain(
            vk._to_cupy_saved(saved, F32), cb.CupyBackend(F32, rnn_path=path), k, qr_every)
    key = "persistent" if path == "persistent" else (
        "tiled_qr" if qr_every == 1 else "tiled_rescale")
    assert _per_step(emu_ops, run) == CUPY_STEP_LAUNCHES[key]


def test_persistent_limit_is_the_cost_models(emu_ops):
    """The backend and the cost model put the vanilla RNN's persistent/tiled boundary at the
    same hidden size (128)."""
    from bpttbench import costmodel
    from bpttbench.jacobians import cupy_kernels as ck

    assert ck.PERSISTENT_MAX_H == costmodel.CUPY_PERSISTENT_MAX_H == 128
    bk = cb.CupyBackend(F32)
    for hidden, path in ((128, "persistent"), (129, "tiled")):
        assert bk.choose_rnn_path(hidden, 3, F32) == path
        assert ("persistent" in costmodel.cupy_chain_parts("rnn_tanh", hidden, 1000)) == (
            path == "persistent")


@pytest.mark.parametrize(("model", "hidden", "persistent_max_h"),
                         [("lstm", 4, 128), ("gru", 6, 128), ("rnn_tanh", 6, 128),
                          ("rnn_tanh", 10, 8)])
@pytest.mark.parametrize("qr_every", [1, 1000])
def test_analyse_chain_launches_per_step(emu_ops, monkeypatch, model, hidden, persistent_max_h,
                                         qr_every):
    """analyse_chain itself on the emulated cupy backend (forward in torch on the CPU, its
    record shared into the stand-in by DLPack): our kernels and CuPy's own launches per step
    of the k-frame chain, its window rerun (qr_every > 1) and the full-frame pass, against the
    cost model's parts.
    The persistent kernel's limit lowered to 8, in the backend and the cost model alike, takes
    the vanilla RNN at hidden = 10 onto the tiled path, as H > 128 does (the real boundary:
    test_persistent_limit_is_the_cost_models; H = 130 here took a minute of emulation)."""
    import torch

    from bpttbench import costmodel
    from bpttbench.costmodel import cupy_chain_parts
    from bpttbench.jacobians import analyse_chain, registry
    from bpttbench.jacobians import cupy_kernels as ck
    from bpttbench.models import RecurrentCell, init_parameters

    monkeypatch.setattr(registry, "_on_cuda", lambda params: True)  # CPU tensors stand in
    monkeypatch.setattr(ck, "PERSISTENT_MAX_H", persistent_max_h)
    monkeypatch.setattr(costmodel, "CUPY_PERSISTENT_MAX_H", persistent_max_h)
    cell = RecurrentCell(model, 3, hidden, dtype=torch.float32)
    init_parameters(cell, "gaussian", 1.1, seed=1)
    params = {n: p.detach() for n, p in cell.params().items()}

    def run(steps):
        x = torch.randn(steps, 2, 3, generator=torch.Generator().manual_seed(2))
        return lambda: analyse_chain(model, params, x, k=3, qr_every=qr_every, backend="cupy",
                                     warmup_forward=2, warmup_align=2)
    assert run(8)().backend == "cupy"
    per_step = _per_step(emu_ops, run)
    parts = cupy_chain_parts(model, hidden, qr_every)
    print(model, hidden, qr_every, "launches per step (ours, CuPy's)", per_step, parts)
    assert per_step[0] == sum(n * CUPY_CUSTOM_KERNELS[p] for p, n in parts.items())
    # the model spreads a QR over every qr_every steps (0.002 of a step's QR here) where these
    # short chains QR only at their last lag: CuPy's own launches agree to that share
    other = sum(n * CUPY_STEP_LAUNCHES[p][1] for p, n in parts.items())
    assert per_step[1] == pytest.approx(other, abs=0.01 if qr_every > 1 else 0)
    assert any(p.startswith("full_frame") for p in parts)


#: the fused full-frame step (CupyBackend.full_frame_step), pinned here as well as in the cost
#: model: the unfused step counted (2, 14) and (1, 15), float32 (2, 15) and (1, 16)
FULL_FRAME_FUSED = {"full_frame_rnn": (3, 1), "full_frame_gated": (2, 2)}


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize(("model", "hidden"), [("rnn_tanh", 6), ("rnn_tanh", 37), ("lstm", 3),
                                               ("gru", 5)])
def test_full_frame_launches_per_step(emu_ops, rng_seed, dtype, model, hidden):
    """The full-frame pass per step on the emulated cupy backend: our kernels (J^T F for the
    RNNs, the out-of-place QR, full_frame_update) and CuPy's own launches (the matmuls; no
    copy of M, no memset, no mask, no float32 cast, no element-wise ops), the same in float32
    and float64, against CUPY_STEP_LAUNCHES. (Before the fused step: (2, 14) and (1, 15),
    float32 one more.) The difference of T = 16 and T = 8 leaves out the per-cell and
    per-chunk work (ln|det|, Jacobian build, read-backs)."""
    seed = rng_seed % 10_000
    emu = emu_ops

    def count(steps):
        saved = vk._random_model_saved(model, 2, hidden, steps, seed)
        saved = vk._to_cupy_saved(vk._round_saved(saved, dtype), dtype)
        bk = cb.CupyBackend(dtype, rnn_path="tiled")
        n_own, n_ops = len(emu.launches), len(emu.array_ops)
        full_frame_chain(saved, bk, np.array([steps]))
        return len(emu.launches) - n_own, emu.array_ops[n_ops:]

    (own16, ops16), (own8, ops8) = count(16), count(8)
    per_step = ((own16 - own8) / 8, (len(ops16) - len(ops8)) / 8)
    extra = sorted(set(ops16) - {"matmul"})
    print(model, hidden, np.dtype(dtype), "launches per step (ours, CuPy's):", per_step,
          "per-cell ops:", sorted(set(ops8)))
    key = "full_frame_rnn" if model.startswith("rnn_") else "full_frame_gated"
    assert per_step == FULL_FRAME_FUSED[key] == CUPY_STEP_LAUNCHES[key]
    assert all(ops16.count(op) == ops8.count(op) for op in extra), extra  # none per step


def test_counting_arrays_count_one_launch_per_cupy_op(emu_ops, rng_seed):
    """The counting stand-in (emuarrays.py) records one launch per op CuPy runs on the device
    and none for views, allocations and no-op casts; values are numpy's."""
    from bpttbench.jacobians import cupy_kernels as ck

    cp, ops = ck.cp, emu_ops.array_ops
    host = np.random.default_rng(rng_seed).standard_normal((2, 3, 3))
    a = cp.asarray(host, dtype=F64)
    assert ops == ["h2d"]
    cases = [  # (operation, the ops it records)
        (lambda: cp.empty((2, 3)), []), (lambda: cp.empty_like(a), []),
        (lambda: a.transpose(0, 2, 1), []), (lambda: cp.swapaxes(a, -1, -2), []),
        (lambda: a[0], []), (lambda: a.reshape(6, 3), []), (lambda: a.astype(F64, copy=False), []),
        (lambda: a[..., None, :], []), (lambda: cp.diagonal(a, 0, -2, -1), []),
        (lambda: cp.zeros((2, 3)), ["memset"]), (lambda: cp.eye(3), ["eye"]),
        (lambda: a * a, ["multiply"]), (lambda: 1.0 / a, ["divide"]), (lambda: a > 0, ["greater"]),
        (lambda: a @ a, ["matmul"]), (lambda: cp.matmul(a, a, out=cp.empty_like(a)), ["matmul"]),
        (lambda: a.sum(-2), ["add.reduce"]), (lambda: a.mean(1), ["mean"]),
        (lambda: cp.where(a > 0, a, 0.0), ["greater", "where"]), (lambda: cp.log(cp.abs(a)),
                                                                   ["absolute", "log"]),
        (lambda: a.astype(F32), ["astype"]), (lambda: a.copy(), ["copy"]),
        (lambda: cp.array(a, copy=True), ["copy"]), (lambda: cp.stack([a, a], 0), ["stack"]),
        (lambda: a[np.array([1, 0])], ["take"]),
        (lambda: cp.ascontiguousarray(a.transpose(0, 2, 1)), ["copy"]),
        (lambda: cp.ascontiguousarray(a), []),
    ]
    for op, want in cases:
        del ops[:]
        out = op()
        assert ops == want, (want, ops)
        assert isinstance(out, np.ndarray) and type(out).__name__ == "DeviceArray"
    del ops[:]
    b = cp.zeros((2, 3))
    b[...] = 0.5
    assert ops == ["memset", "setitem"]
    got = cp.asnumpy(cp.where(a > 0, a, 0.0) @ a)
    assert type(got) is np.ndarray and np.array_equal(got, np.where(host > 0, host, 0.0) @ host)
