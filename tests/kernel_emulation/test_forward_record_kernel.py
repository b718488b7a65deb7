"""The forward record kernel (kernels/forward_record.cu, launched by
bpttbench.jacobians.cupy_kernels.forward_record through bpttbench.jacobians.cupy_forward) on
the emulated cupy backend, against the float64 NumPy ``forward_saved`` (the oracle) and the
float64 torch one (the path the kernel replaces on CUDA).

Tolerances, every Saved field and the final state. Derivative factors (deriv, dgates, aux2:
relative error about twice the pre-activation's absolute error, well conditioned even where
tiny) elementwise, |got - ref| <= rtol |ref| + atol; the other fields (h, c, tanh c, gates:
some near 0 by cancellation) with |ref| + the field's largest |ref| in place of |ref|:
- float64: rtol 1e-13 (measured over 6 runs: at most 7.2e-15 on derivatives; values near 0
  up to 5e-12 elementwise, inside the bound); atol 0 (the NumPy backend's sigmoid, like the
  kernel's 1 / (1 + exp(-a)) and torch's, is relatively accurate on both tails);
- float32 against the float64 references on the same (float32-representable) inputs: rtol 5e-5
  (every operation rounds to float32, eps 6e-8; a derivative's relative error is about twice
  the pre-activation's absolute error, which grows with |a| and the rounded terms of the sum:
  measured over 6 runs at most 9.9e-6, on saturated units), atol 2e-38 (values under
  float32's smallest normal flush to 0).
rnn_relu's derivative is 0/1: it must match exactly except, in float32, at units whose
float64 pre-activation is within 1e-4 of the kink.
"""

from __future__ import annotations

import shutil

import emucupy
import numpy as np
import pytest
import torch

from bpttbench.jacobians import cupy_backend as cb
from bpttbench.jacobians import cupy_forward as cf
from bpttbench.jacobians import cupy_kernels as ck
from bpttbench.jacobians import registry
from bpttbench.jacobians.analytic import forward_saved
from bpttbench.jacobians.backends import NumpyBackend, TorchBackend
from bpttbench.validation.recurrent import random_cell

pytestmark = pytest.mark.kernel_emulation
MODELS = ("rnn_tanh", "rnn_relu", "rnn_linear", "lstm", "gru")
FIELDS = {m: ("deriv",) for m in MODELS[:3]} | {
    m: ("gates", "dgates", "prev", "aux", "aux2") for m in ("lstm", "gru")}
TORCH = {"float32": torch.float32, "float64": torch.float64}


def _problem(model, hidden, batch, steps, seed, w_scale, x_scale, dtype):
    """validation.recurrent.random_cell's params, inputs and nonzero state0 as torch tensors
    in ``dtype`` (they are rounded to it, so the float64 references see the same numbers)."""
    params, x, state0 = random_cell(model, hidden, batch, steps, seed, np.dtype(dtype),
                                    w_scale, x_scale)

    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=dtype))
    return {n: t(a) for n, a in params.items()}, t(x), tuple(t(s) for s in state0)


def _as64(params, x, state0):
    return ({n: p.double() for n, p in params.items()}, x.double(), tuple(s.double()
                                                                        for s in state0))


def _fields(model, saved):
    out = {n: np.asarray(getattr(saved, n), dtype=np.float64) for n in FIELDS[model]}
    for i, s in enumerate(saved.final_state):
        out[f"final_state[{i}]"] = np.asarray(s.numpy() if isinstance(s, torch.Tensor) else s,
                                              dtype=np.float64)
    return out


#: fields that are derivative factors, checked elementwise relative to themselves (their
#: relative error is about 2 x the absolute error of the pre-activation: well conditioned even
#: where they are tiny); the others are values, some near 0 by cancellation (h, c, tanh a),
#: checked relative to |ref| + the field's largest |ref|
DERIVATIVES = ("deriv", "dgates", "aux2")


def _excess(name, got, ref, rtol, atol):
    """max of |got - ref| / bound (<= 1 passes) and the max elementwise relative error."""
    diff = np.abs(got - ref)
    scale = np.abs(ref) if name in DERIVATIVES else np.abs(ref) + np.abs(ref).max()
    bound = rtol * scale + atol
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(ref))
        return float(np.where(diff == 0, 0.0, diff / bound).max()), float(rel.max())


def _relu_preacts(params, x, h0):
    """float64 pre-activations of rnn_relu, [T, B, H] (for the kink mask)."""
    w_ih, w_hh, b_ih, b_hh = (params[n].double().numpy() for n in
                              ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"))
    h, out = h0.double().numpy(), []
    for xt in x.double().numpy():
        a = xt @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        out.append(a)
        h = np.maximum(a, 0.0)
    return np.stack(out)


RTOL = {"float64": 1e-13, "float32": 5e-5}
#: float32: values under float32's smallest normal are flushed to 0 (-ftz=true)
ATOL = {("float64", "torch"): 0.0, ("float64", "numpy"): 0.0,
        ("float32", "torch"): 2e-38, ("float32", "numpy"): 2e-38}
SCALES = {"mild": (0.6, 0.5), "saturating": (1.0, 6.0)}  # (W_hh scale, W_ih scale)


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("model", MODELS)
def test_record_equals_forward_saved(emu, monkeypatch, model, dtype, scale):
    seed = int(np.random.SeedSequence().entropy % 100_000)
    print(f"seed={seed}")
    monkeypatch.setattr(cf, "STEPS_PER_LAUNCH", 7)  # T = 24: 4 launches, the state carried
    hidden, batch, steps = 9, 3, 24
    params, x, state0 = _problem(model, hidden, batch, steps, seed, *SCALES[scale], dtype)
    keep = [s.clone() for s in state0]
    before = len(emu.launches)
    got = forward_saved(model, params, x, state0, cb.CupyBackend(np.dtype(dtype)))
    assert len(emu.launches) - before == 4
    assert {ln.kernel for ln in emu.launches[before:]} == {f"forward_record_{model}_"
                                                           f"{dtype[0]}{dtype[-2:]}"}
    assert all(torch.equal(a, b) for a, b in zip(state0, keep, strict=True))  # not written
    assert (got.model, got.hidden, got.steps, got.batch) == (model, hidden, steps, batch)
    got_f = _fields(model, got)
    p64, x64, s64 = _as64(params, x, state0)
    refs = {"numpy": _fields(model, forward_saved(model, p64, x64, s64, NumpyBackend())),
            "torch": _fields(model, forward_saved(model, p64, x64, s64,
                                                  TorchBackend("cpu", torch.float64)))}
    rtol = RTOL[dtype]
    kink = None
    if model == "rnn_relu" and dtype == "float32":
        kink = np.abs(_relu_preacts(p64, x64, s64[0])) < 1e-4
    for which, ref in refs.items():
        atol = ATOL[(dtype, which)]
        for name, r in ref.items():
            g = got_f[name]
            assert g.shape == r.shape and np.isfinite(r).all(), name
            if model == "rnn_relu" and name == "deriv":
                bad = g != r
                assert not (bad & ~kink).any() if kink is not None else not bad.any(), name
                continue
            excess, rel = _excess(name, g, r, rtol, atol)
            print(f"{model} {dtype} {scale} vs {which}: {name} max rel err {rel:.2e}, "
                  f"tolerance used {excess:.2f}")
            assert excess <= 1.0, (name, rel)
    if scale == "saturating" and model in ("rnn_tanh", "lstm", "gru"):
        d = got_f["deriv" if model == "rnn_tanh" else "dgates"]
        assert d.min() < 1e-6  # some units saturate


@pytest.mark.parametrize("model", MODELS)
def test_launches_per_cell_not_per_step(emu, monkeypatch, model):
    """One launch per chunk of steps, none per step (costmodel: the cupy forward record);
    the emulator counts our kernels (the input matmul is a CuPy array op, once per call)."""
    from bpttbench.costmodel import CUPY_FORWARD_RECORD

    def launches(steps):
        params, x, state0 = _problem(model, 5, 2, steps, 0, 1.0, 1.0, "float32")
        before = len(emu.launches)
        forward_saved(model, params, x, state0, cb.CupyBackend(np.float32))
        return len(emu.launches) - before

    assert launches(8) == launches(24) == 1
    assert CUPY_FORWARD_RECORD == (launches(24) - launches(8)) / 16 == 0
    assert "#define NTHREADS" in emu.sources[f"forward_record_{model}_f32"]  # launch.cuh
    monkeypatch.setattr(cf, "STEPS_PER_LAUNCH", 5)
    assert (launches(8), launches(24)) == (2, 5)  # ceil(T / chunk)


@pytest.mark.parametrize("model", MODELS)
def test_bitwise_identical_in_any_thread_order(monkeypatch, model):
    """Threads of each barrier interval in order and in two shuffled orders: same bits
    (H > NTHREADS: threads own two units)."""
    if shutil.which(emucupy.CXX) is None:
        pytest.skip(f"no host C++ compiler {emucupy.CXX!r}")
    params, x, state0 = _problem(model, 270, 2, 5, 7, 1.0, 2.0, "float32")
    outs = []
    try:
        for order in (0, 1, 2):
            emucupy.install(monkeypatch, order_seed=order)
            got = forward_saved(model, params, x, state0, cb.CupyBackend(np.float32))
            outs.append(_fields(model, got))
    finally:
        ck._module.cache_clear()
        ck._optin_smem.cache_clear()
    for out in outs[1:]:
        for name, a in out.items():
            assert np.array_equal(a, outs[0][name]), name


def test_limits_and_fallback_reason():
    """The shared-memory limits (the kernel file's opening comment, cupy_forward's docstring,
    costmodel.CUPY_FORWARD_MAX_H) and the fallback's reasons."""
    from bpttbench.costmodel import CUPY_FORWARD_MAX_H

    limits = {"rnn_tanh": (6144, 3072), "rnn_relu": (6144, 3072), "rnn_linear": (6144, 3072),
              "gru": (6144, 3072), "lstm": (4096, 2048)}
    for model, (h32, h64) in limits.items():
        for dt, h_max in ((np.float32, h32), (np.float64, h64)):
            assert cf.max_hidden(model, dt) == h_max == CUPY_FORWARD_MAX_H[model][np.dtype(dt).name]
            assert ck.forward_record_smem_bytes(model, h_max, dt) <= cf.SMEM_LIMIT
            assert not cf.unusable_reason(model, h_max, dt)
            why = cf.unusable_reason(model, h_max + 1, dt)
            assert "shared memory" in why and str(h_max + 1) in why
    assert "float16" in cf.unusable_reason("gru", 8, torch.float16)
    assert "forward_record.cu" in ck.KERNEL_ENTRY_POINTS


def _chain_case(model, dtype, steps=14, seed=3):
    relu = model == "rnn_relu"  # all units live: a dead one makes J singular, and the chain's
    # backends resolve its -inf exponents differently (with torch's forward too)
    params, x, state0 = _problem(model, 6, 2, steps, seed, 0.1 if relu else 1.0, 1.5, dtype)
    if relu:
        params["bias_ih_l0"] += 10.0
    kw = {"k": 3, "qr_every": 1, "warmup_forward": 2, "warmup_align": 2}
    return params, x, state0, kw


def _chain_close(got, ref, tol):
    for name in ("exponents", "frame_log_stretch", "log_sv", "sum_exponents", "mean_log_det"):
        a, b = np.asarray(getattr(got, name)), np.asarray(getattr(ref, name))
        assert a.shape == b.shape and np.isfinite(b).all(), name
        err = float(np.abs(a - b).max())
        print(f"{got.backend} vs numpy {name}: {err:.2e}")
        assert err < tol, (name, err)


@pytest.mark.parametrize("model", MODELS)
def test_analyse_chain_cupy_equals_numpy(emu, monkeypatch, model):
    """analyse_chain on the emulated cupy backend (the forward record by the kernel, the chain
    and the full-frame pass by the others) equals the float64 NumPy backend: 1e-11 in every
    output (measured at most 1.3e-13; the MGS QR and gate-Jacobian kernels round differently
    from LAPACK)."""
    from bpttbench.jacobians import analyse_chain

    monkeypatch.setattr(registry, "_on_cuda", lambda params: True)  # CPU tensors stand in
    params, x, state0, kw = _chain_case(model, "float64")
    before = len(emu.launches)
    got = analyse_chain(model, params, x, state0, backend="cupy", **kw)
    kernels = [ln.kernel for ln in emu.launches[before:]]
    assert got.backend == "cupy" and kernels.count(f"forward_record_{model}_f64") == 1
    ref = analyse_chain(model, params, x, state0, backend="numpy", **kw)
    _chain_close(got, ref, 1e-11)


@pytest.mark.parametrize("model", ["rnn_tanh", "lstm"])
def test_past_the_limit_the_torch_forward_with_a_warning(emu, monkeypatch, model):
    """Past the shared-memory limit the cupy backend records by the torch forward (shared by
    DLPack), warns naming the limit, and analyse_chain's results stay the NumPy ones."""
    from bpttbench.jacobians import analyse_chain

    monkeypatch.setattr(registry, "_on_cuda", lambda params: True)
    monkeypatch.setattr(cf, "SMEM_LIMIT", 64)  # H = 6 needs more
    params, x, state0, kw = _chain_case(model, "float64")
    before = len(emu.launches)
    with pytest.warns(RuntimeWarning, match="shared memory"):
        got = analyse_chain(model, params, x, state0, backend="cupy", **kw)
    assert not [ln for ln in emu.launches[before:] if ln.kernel.startswith("forward_record")]
    _chain_close(got, analyse_chain(model, params, x, state0, backend="numpy", **kw), 1e-11)
