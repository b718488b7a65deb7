"""Implementations of the benchmarked ops, registered by name in ONE factory table.

A variant function takes a :class:`~bpttbench.bench.ops.Problem`, does its set-up (copies,
conversions: not timed) and returns the closure that runs the op once (timed). The
closure's return value is the op's output (see :func:`bpttbench.bench.ops.summarise`).
Adding a variant is one function here and one line in :data:`FACTORY` (plus its name in
:data:`VARIANTS` if it is a new name).

Variants:

- ``cupy``: the Jacobian engine's CUDA kernels (``bpttbench.jacobians.cupy_backend``);
- ``torch``: a per-step torch loop (matmul/bmm, ``torch.linalg.qr``); for the Jacobian
  ops the engine's analytic formulas in torch over time chunks; for BPTT our unrolled
  cell under autograd with every dL/dh_t retained;
- ``torch_func``: autodiff by ``torch.func``: ``vmap(vjp)`` of the cell step for the
  chains, ``vmap(jacrev(step))`` for the Jacobians;
- ``numpy``: the same per-step loop in NumPy on the CPU;
- ``fused``: ``torch.nn.RNN/LSTM/GRU`` forward + backward (cuDNN on a GPU, ATen on a CPU),
  which gives parameter gradients but no per-step dL/dh_t.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bpttbench.bench.ops import OPS, Problem, bptt_autograd
from bpttbench.jacobians import analytic
from bpttbench.jacobians.backends import NumpyBackend, TorchBackend
from bpttbench.jacobians.chain import CHUNK_BYTES, run_chain
from bpttbench.models import RecurrentCell, cell_step

Runner = Callable[[], Any]
VariantFn = Callable[[Problem], Runner]


@dataclass(frozen=True)
class VariantInfo:
    """Where a variant runs (``device``: the bench device, ``cpu`` or ``cuda``) and what it is."""

    name: str
    runs_on: str
    description: str


VARIANTS: dict[str, VariantInfo] = {
    v.name: v
    for v in (
        VariantInfo("cupy", "cuda", "custom CUDA kernels of the Jacobian engine (CuPy RawModule)"),
        VariantInfo("torch", "device", "per-step torch loop (matmul, torch.linalg.qr); BPTT: "
                    "our unrolled cell under autograd"),
        VariantInfo("torch_func", "device", "torch.func autodiff: vmap(vjp) chains, "
                    "vmap(jacrev(step)) Jacobians"),
        VariantInfo("numpy", "cpu", "per-step NumPy loop on the CPU"),
        VariantInfo("fused", "device", "fused torch.nn.RNN/LSTM/GRU forward+backward (cuDNN on "
                    "a GPU); parameter gradients only"),
    )
}


# ----------------------------------------------------------------------------- chain ops


def _torch_frame(p: Problem) -> torch.Tensor:
    f = torch.as_tensor(p.frame0, dtype=p.dtype, device=p.device)
    return f.expand(p.batch, p.dim, p.k).contiguous()


def _torch_frame_loop(p: Problem, apply_jt: Callable[[int, torch.Tensor], torch.Tensor]) -> Runner:
    """The adjoint chain in torch, given ``apply_jt(i, q) = J_{i+1}^T q`` for q [B, D, k]."""
    q0, steps, qr_every = _torch_frame(p), p.seq_len, p.qr_every

    def run() -> torch.Tensor:
        q = q0
        scale = torch.zeros(p.batch, p.k, dtype=torch.float64, device=p.device)
        total = torch.zeros_like(scale)
        for lag in range(1, steps + 1):
            m = apply_jt(steps - lag, q)
            if lag % qr_every == 0 or lag == steps:
                q, r = torch.linalg.qr(m)
                d = torch.diagonal(r, dim1=-2, dim2=-1)
                total = total + torch.log(d.abs().double()) + scale
                scale = torch.zeros_like(scale)
            else:
                nrm = torch.linalg.vector_norm(m, dim=-2)
                scale = scale + torch.log(nrm.double())
                q = m / nrm.unsqueeze(-2)
        return total

    return run


def chain_torch(p: Problem) -> Runner:
    """M = W^T (phi'(a_t) * Q): one broadcast matmul [H, H] @ [B, H, k] per step."""
    deriv = p.saved.deriv
    w_t = p.saved.w_hh.T.contiguous()
    return _torch_frame_loop(p, lambda i, q: torch.matmul(w_t, deriv[i].unsqueeze(-1) * q))


def chain_torch_func(p: Problem) -> Runner:
    """J^T Q by autodiff: vjp of the cell step at h_t, vmapped over the k frame columns."""
    hs, x, params, model = p.states[0], p.x, p.params, p.model

    def apply_jt(i: int, q: torch.Tensor) -> torch.Tensor:
        _, vjp_fn = torch.func.vjp(lambda h: cell_step(model, params, x[i], (h,))[0], hs[i])
        return torch.func.vmap(vjp_fn, in_dims=2, out_dims=2)(q)[0]

    return _torch_frame_loop(p, apply_jt)


def chain_numpy(p: Problem) -> Runner:
    """The per-step loop in NumPy (np.matmul broadcast, batched np.linalg.qr)."""
    deriv = p.saved.deriv.cpu().numpy()
    w_t = np.ascontiguousarray(p.saved.w_hh.cpu().numpy().T)
    q0 = np.ascontiguousarray(
        np.broadcast_to(p.frame0.astype(deriv.dtype), (p.batch, p.dim, p.k))
    )
    steps, qr_every = p.seq_len, p.qr_every

    def run() -> np.ndarray:
        q = q0
        scale = np.zeros((p.batch, p.k))
        total = np.zeros((p.batch, p.k))
        for lag in range(1, steps + 1):
            m = np.matmul(w_t, deriv[steps - lag][..., None] * q)
            if lag % qr_every == 0 or lag == steps:
                q, r = np.linalg.qr(m)
                d = np.diagonal(r, axis1=-2, axis2=-1)
                total = total + np.log(np.abs(d).astype(np.float64)) + scale
                scale = np.zeros_like(scale)
            else:
                nrm = np.linalg.norm(m, axis=-2)
                scale = scale + np.log(nrm.astype(np.float64))
                q = m / nrm[..., None, :]
        return total

    return run


def _cupy_stream() -> contextlib.AbstractContextManager:
    from bpttbench.jacobians import cupy_backend

    return cupy_backend.torch_stream()


def chain_cupy(p: Problem) -> Runner:
    """The engine's fused RNN chain (persistent kernel for H <= 128, tiled otherwise) + MGS QR."""
    from bpttbench.jacobians import cupy_backend as cb

    saved = cb.saved_to_cupy(p.saved)
    bk = cb.CupyBackend(dtype=cb.cupy_dtype(p.dtype))

    def run() -> np.ndarray:
        return run_chain(saved, bk, p.k, p.qr_every, p.frame0)[0]

    return run


def cupy_chain_path(p: Problem) -> str:
    """Which RNN chain kernel the cupy variant uses at this problem's size."""
    from bpttbench.jacobians import cupy_backend as cb

    dt = cb.cupy_dtype(p.dtype)
    return cb.CupyBackend(dtype=dt).choose_rnn_path(p.hidden, p.k, dt)


# ------------------------------------------------------------------------- Jacobian ops


def chunk_steps(p: Problem) -> int:
    """Time steps of Jacobians built at once by every variant (64 MiB of output)."""
    return max(1, CHUNK_BYTES // max(1, p.batch * p.dim * p.dim * p.itemsize))


def _chunked(p: Problem, build: Callable[[int, int], Any]) -> Runner:
    steps, chunk = p.seq_len, chunk_steps(p)

    def run() -> Any:
        out = None
        for lo in range(0, steps, chunk):
            out = build(lo, min(steps, lo + chunk))
        return out

    return run


def jacobians_torch(p: Problem) -> Runner:
    """The engine's analytic formulas in torch, one time chunk [n, B, D, D] at a time."""
    saved, bk = p.saved, TorchBackend(p.device, p.dtype)
    return _chunked(p, lambda lo, hi: analytic.step_jacobians(saved, bk, lo, hi))


def jacobians_numpy(p: Problem) -> Runner:
    """The analytic formulas in NumPy (bench dtype) on the CPU."""
    import dataclasses

    fields = {f.name: getattr(p.saved, f.name) for f in dataclasses.fields(p.saved)}
    for name in ("w_hh", "deriv", "gates", "dgates", "prev", "aux", "aux2"):
        if isinstance(fields[name], torch.Tensor):
            fields[name] = fields[name].cpu().numpy()
    fields["final_state"] = ()
    saved = analytic.Saved(**fields)
    bk = NumpyBackend(np, saved.w_hh.dtype)
    return _chunked(p, lambda lo, hi: analytic.step_jacobians(saved, bk, lo, hi))


def jacobians_torch_func(p: Problem) -> Runner:
    """vmap(jacrev(step)) over all (t, b) of a chunk; step maps one state s_t [D] to s_{t+1}."""
    model, params, hidden = p.model, p.params, p.hidden
    states = p.states
    if model == "lstm":
        s_in = torch.cat([states[0][:-1], states[1][:-1]], dim=-1)  # [T, B, 2H]

        def step(s: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
            h, c = cell_step(model, params, x_t, (s[:hidden], s[hidden:]))
            return torch.cat([h, c])
    else:
        s_in = states[0][:-1]

        def step(s: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
            return cell_step(model, params, x_t, (s,))[0]

    jac = torch.func.vmap(torch.func.jacrev(step))
    x, dim, batch = p.x, p.dim, p.batch

    def build(lo: int, hi: int) -> torch.Tensor:
        n = hi - lo
        out = jac(s_in[lo:hi].reshape(n * batch, dim), x[lo:hi].reshape(n * batch, -1))
        return out.reshape(n, batch, dim, dim)

    return _chunked(p, build)


def jacobians_cupy(p: Problem) -> Runner:
    """The engine's gate-Jacobian kernels (one thread per Jacobian entry)."""
    from bpttbench.jacobians import cupy_backend as cb

    saved = cb.saved_to_cupy(p.saved)
    bk = cb.CupyBackend(dtype=cb.cupy_dtype(p.dtype))

    def build(lo: int, hi: int) -> Any:
        with _cupy_stream():
            return bk.build_jacobians(saved, lo, hi)

    return _chunked(p, build)


# ---------------------------------------------------------------------------------- BPTT


def bptt_torch(p: Problem) -> Runner:
    """Our unrolled cell: every h_t is a graph node; one backward gives dL/dh_t and dL/dW."""
    model, params, x = p.model, p.params, p.x
    w_out, target = p.readout
    return lambda: bptt_autograd(model, params, x, w_out, target)


def bptt_fused(p: Problem) -> Runner:
    """torch.nn.RNN/LSTM/GRU with the same weights: cuDNN on a GPU, ATen on a CPU."""
    cell = RecurrentCell(p.model, int(p.x.shape[2]), p.hidden, dtype=p.dtype, device=p.device)
    with torch.no_grad():
        for name, value in p.params.items():
            getattr(cell, name).copy_(value)
    module = cell.to_torch_nn()
    if hasattr(module, "flatten_parameters"):
        module.flatten_parameters()
    names = [n for n, _ in module.named_parameters()]
    weights = [w for _, w in module.named_parameters()]
    w_out, target = p.readout
    h0 = torch.zeros(1, p.batch, p.hidden, dtype=p.dtype, device=p.device)
    state0 = (h0, h0.clone()) if p.model == "lstm" else h0
    x = p.x

    def run() -> dict[str, Any]:
        out, _ = module(x, state0)
        loss = 0.5 * ((out[-1] @ w_out.T - target) ** 2).sum()
        grads = dict(zip(names, torch.autograd.grad(loss, weights), strict=True))
        return {"loss": loss.detach(), "grad_whh": grads["weight_hh_l0"]}

    return run


# ------------------------------------------------------------------------------ the table

#: (op, variant) -> function(problem) -> runner. Adding a variant: one function, one line.
FACTORY: dict[tuple[str, str], VariantFn] = {
    ("chain", "cupy"): chain_cupy,
    ("chain", "torch"): chain_torch,
    ("chain", "torch_func"): chain_torch_func,
    ("chain", "numpy"): chain_numpy,
    ("lyapunov", "cupy"): chain_cupy,
    ("lyapunov", "torch"): chain_torch,
    ("lyapunov", "torch_func"): chain_torch_func,
    ("lyapunov", "numpy"): chain_numpy,
    ("lstm_jacobians", "cupy"): jacobians_cupy,
    ("lstm_jacobians", "torch"): jacobians_torch,
    ("lstm_jacobians", "torch_func"): jacobians_torch_func,
    ("lstm_jacobians", "numpy"): jacobians_numpy,
    ("gru_jacobians", "cupy"): jacobians_cupy,
    ("gru_jacobians", "torch"): jacobians_torch,
    ("gru_jacobians", "torch_func"): jacobians_torch_func,
    ("gru_jacobians", "numpy"): jacobians_numpy,
    ("bptt_rnn", "torch"): bptt_torch,
    ("bptt_rnn", "fused"): bptt_fused,
    ("bptt_lstm", "torch"): bptt_torch,
    ("bptt_lstm", "fused"): bptt_fused,
    ("bptt_gru", "torch"): bptt_torch,
    ("bptt_gru", "fused"): bptt_fused,
}


def check_names(ops: list[str] | tuple[str, ...], variants: list[str] | tuple[str, ...]) -> None:
    """Raise ValueError naming any unknown op or variant and the allowed names."""
    bad_ops = [o for o in ops if o not in OPS]
    if bad_ops:
        raise ValueError(f"unknown bench op(s) {', '.join(map(repr, bad_ops))}; "
                         f"allowed: {', '.join(OPS)}")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown bench variant(s) {', '.join(map(repr, bad))}; "
                         f"allowed: {', '.join(VARIANTS)}")


def get_variant(op: str, variant: str) -> VariantFn:
    """The registered implementation of ``variant`` for ``op`` (clear errors otherwise)."""
    check_names([op], [variant])
    if (op, variant) not in FACTORY:
        have = [v for (o, v) in FACTORY if o == op]
        raise ValueError(f"variant {variant!r} is not registered for op {op!r}; "
                         f"registered for {op}: {', '.join(have)}")
    return FACTORY[(op, variant)]


def variant_device(variant: str, bench_device: str) -> str:
    """The device a variant's rows run on: 'cpu' or 'cuda'."""
    runs_on = VARIANTS[variant].runs_on
    return bench_device if runs_on == "device" else runs_on


def availability(variant: str, bench_device: str) -> tuple[bool, str]:
    """(usable, reason) for a variant on this machine with the bench on ``bench_device``."""
    if variant == "cupy":
        if bench_device != "cuda":
            return False, f"the cupy kernels need a CUDA device; this run's device is {bench_device}"
        from bpttbench.jacobians import cupy_backend

        return cupy_backend.cupy_available()
    return True, ""


def implementation(variant: str, p: Problem, device: str) -> str:
    """A short description of what ran (kernel path, cuDNN version, library versions)."""
    if variant == "cupy":
        if p.op.kind == "chain":
            return f"cupy kernels ({cupy_chain_path(p)} RNN chain, MGS QR)"
        return "cupy gate-Jacobian kernel"
    if variant == "fused":
        if device == "cuda" and torch.backends.cudnn.is_available():
            return f"torch.nn fused, cuDNN {torch.backends.cudnn.version()}"
        return f"torch.nn fused, ATen CPU (torch {torch.__version__})"
    if variant == "numpy":
        return f"numpy {np.__version__}"
    return f"torch {torch.__version__}"
