"""The two-column BPTT chain as one persistent CUDA kernel per chunk of steps (CuPy).

``bptt_deltas`` carries delta_T back as two columns, the working dtype unrescaled and a
column rescaled every step. For the vanilla RNNs, J_t^T v = W_hh^T (phi'(a_t) * v) needs no
Jacobian, and one block per batch element runs a whole chunk of steps without leaving the
kernel: 1 launch per chunk of steps (by default every step of the cell), 0 per step, where the
torch path costs 6 launches a step. Per-lag outputs are float64 rows: the raw column's norm,
the norm the rescaled column was divided by, and whether the raw column's first entry is 0.

The kernel is ``bpttbench/kernels/bptt_delta.cu`` (its opening comment gives the launch shape,
layout and limits), loaded, compiled and launched like every kernel of the package through
:mod:`bpttbench.jacobians.cupy_kernels` (one loader and cache, the launch constants of
``launch.cuh``, the float32/float64 entry points from ``FOR_FLOAT_TYPES``); this module only
lays out the columns and rows and reads them back once. Tested on the CPU through the kernel
emulation stand-in (tests/kernel_emulation/test_bptt_delta_kernel.py). Limits: the two
columns and their scaled copies (4 H values) plus 4 KB fit the 48 KB of shared memory without
opt-in: H <= 2816 in float32, 1408 in float64; the caller falls back to torch beyond.

LSTM and GRU (``bpttbench/kernels/bptt_delta_gated.cu``, :func:`gated_delta_rows`): the
per-step coefficients of ``bptt_deltas.adjoint_coefficients`` are computed by torch for the
steps of a launch (a few launches per chunk of steps, none per step); the kernel does the rest
of ``gated_adjoint_step`` (coefficient products, W_hh^T, the LSTM's dL/dc carry), the norms
and the rescale: 1 kernel launch per chunk, 0 per step, where the torch path's chain costs 10
(LSTM) and 8 (GRU) launches a step.
Its rows add the rescaled column's h-part norm and, for the LSTM, autograd's ||dL/dc_t|| of
both columns. Limits (48 KB of shared memory, W_hh read from global memory): LSTM H <= 896 in
float32, 448 in float64; GRU H <= 1344 in float32, 672 in float64 (beyond, measure_cell runs
the torch path and warns with :func:`unusable_reason`). Tested on the CPU through the kernel
emulation stand-in (tests/kernel_emulation/test_bptt_delta_gated_kernel.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..jacobians import cupy_kernels as ck

#: dynamic shared memory the kernel may use (no opt-in)
SMEM_LIMIT = ck.DEFAULT_SMEM
#: steps per launch (a launch runs them all without returning)
STEPS_PER_LAUNCH = 4096
#: bytes of the gated kernels' per-launch coefficients (k, oc/z, f and their torch temporaries,
#: counted 10 B H items a step as bptt_deltas counts them): the Lyapunov chain's Jacobian chunk
#: (planning.memory.CHAIN_CHUNK_BYTES), so the cell's memory estimate still bounds the peak
COEF_CHUNK_BYTES = 64 * 2**20


def smem_bytes(hidden: int, dtype: Any) -> int:
    return ck.bptt_delta_smem_bytes(hidden, dtype)


def unusable_reason(model: str, hidden: int, dtype: Any) -> str:
    """Why the model's kernel cannot run this H and dtype here ("" when it can): the dtype,
    the shared-memory limit, or no CuPy with a GPU (the caller falls back to torch)."""
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        return f"the kernels take float32 and float64, not {dtype}"
    gated = model in ck.GATED_ROWS
    need = (ck.bptt_delta_gated_smem_bytes(model, hidden, dtype) if gated
            else smem_bytes(hidden, dtype))
    if need > SMEM_LIMIT:
        return (f"{model} H = {hidden} in {np.dtype(dtype)} needs {need} B of shared memory, "
                f"the kernel takes {SMEM_LIMIT}")
    ok, why = ck.cupy_available()
    return "" if ok else why


def usable(hidden: int, dtype: Any, model: str = "rnn_tanh") -> bool:
    """CuPy with a GPU is here, and the model's kernel takes this H and dtype."""
    return not unusable_reason(model, hidden, dtype)


def from_torch(t: Any) -> Any:
    """A torch tensor shared into CuPy by DLPack (no copy); a CuPy array as it is (made
    C-contiguous: the kernel validation passes CuPy arrays)."""
    if not hasattr(t, "detach"):
        return ck.cp.ascontiguousarray(t)
    return ck.cp.from_dlpack(t.detach().contiguous())


def rnn_delta_rows(deriv: Any, w_hh: Any, delta_t: Any, chunk: int | None = None
                   ) -> tuple[np.ndarray, ...]:
    """Per lag 0..T: (norm of the raw column, norm the rescaled column was divided by, raw
    column's first entry is 0), float64 [T+1, B] NumPy arrays, read back once.

    ``deriv`` [T, B, H] (phi'(a_t), index i for J_{i+1}), ``w_hh`` [H, H] and ``delta_t``
    [B, H] are CuPy arrays of one float dtype. ``chunk``: steps per launch (default
    :data:`STEPS_PER_LAUNCH`; the kernel validation passes a small one).
    """
    cp = ck.cp
    steps, batch, hidden = (int(n) for n in deriv.shape)
    dt = np.dtype(deriv.dtype)
    if tuple(w_hh.shape) != (hidden, hidden) or tuple(delta_t.shape) != (batch, hidden):
        raise ValueError(f"shapes: deriv {deriv.shape}, w_hh {w_hh.shape}, delta {delta_t.shape}")
    if smem_bytes(hidden, dt) > SMEM_LIMIT:
        raise ValueError(f"H = {hidden} in {dt} needs {smem_bytes(hidden, dt)} B of shared "
                         f"memory; the kernel takes {SMEM_LIMIT}")
    with ck.torch_stream():  # every launch on torch's current stream
        deriv = cp.ascontiguousarray(deriv)
        w = cp.ascontiguousarray(w_hh)
        d64 = delta_t.astype(np.float64)
        n0 = cp.sqrt((d64 * d64).sum(axis=1))
        frame = cp.empty((batch, 2, hidden), dtype=dt)
        frame[:, 0] = delta_t
        frame[:, 1] = (d64 / n0[:, None]).astype(dt)
        rows = [cp.empty((steps + 1, batch), dtype=np.float64) for _ in range(3)]
        rows[0][0], rows[1][0] = n0, n0
        rows[2][0] = (delta_t[:, 0] == 0).astype(np.float64)
        per_launch = STEPS_PER_LAUNCH if chunk is None else int(chunk)
        lag0 = 0
        while lag0 < steps:
            n = min(per_launch, steps - lag0)
            out = [r[lag0 + 1:lag0 + 1 + n] for r in rows]
            ck.bptt_delta_rnn(deriv, w, frame, *out, t_first=steps - 1 - lag0, n_steps=n)
            lag0 += n
        return tuple(cp.asnumpy(r) for r in rows)


def gated_delta_rows(model: str, w_hh: Any, delta_t: Any, steps: int,
                     coefficients: Callable[[int, int], dict[str, Any]],
                     chunk: int | None = None) -> np.ndarray:
    """The LSTM's or GRU's per-lag rows, float64 [T+1, K, B] NumPy, read back once (row
    order: bptt_delta_gated.cu's opening comment; lag 0 from delta_T here).

    ``w_hh`` [G, H] and ``delta_t`` [B, H] are torch tensors (or CuPy arrays) of one float
    dtype on the GPU; ``coefficients(lo, hi)`` gives ``adjoint_coefficients`` of indices
    [lo, hi) as torch tensors or CuPy arrays (LSTM k, oc, f; GRU k, z). ``chunk``: steps per
    launch (default: as many as :data:`COEF_CHUNK_BYTES` of coefficients allow, at most
    :data:`STEPS_PER_LAUNCH`; the kernel validation passes a small one). A launch over
    [lo, hi) also gets index lo - 1: the LSTM's dL/dc row of step lo reads oc[lo - 1] (index 0
    of a launch is taken as t = 0).
    """
    cp = ck.cp
    batch, hidden = (int(n) for n in delta_t.shape)
    lstm = model == "lstm"
    dim, nrow = (2 * hidden if lstm else hidden), ck.GATED_ROWS[model]
    dt = np.dtype(str(delta_t.dtype).removeprefix("torch."))
    per_step = batch * 10 * hidden * dt.itemsize
    if chunk is None:
        chunk = max(1, min(STEPS_PER_LAUNCH, COEF_CHUNK_BYTES // per_step))
    with ck.torch_stream():  # every launch on torch's current stream
        w = from_torch(w_hh)
        d = from_torch(delta_t)
        d64 = d.astype(np.float64)
        n0 = cp.sqrt((d64 * d64).sum(axis=1))
        frame = cp.zeros((batch, 2, dim), dtype=dt)
        frame[:, 0, :hidden] = d
        frame[:, 1, :hidden] = (d64 / n0[:, None]).astype(dt)
        rows = cp.empty((steps + 1, nrow, batch), dtype=np.float64)
        unit = frame[:, 1, :hidden].astype(np.float64)
        rows[0, 0], rows[0, 1] = n0, n0
        rows[0, 2] = cp.sqrt((unit * unit).sum(axis=1))
        rows[0, 3] = (d[:, 0] == 0).astype(np.float64)
        if lstm:  # dL/dc_T = o_T (1 - tanh^2 c_T) delta_T (the c part of the state is 0)
            oc = from_torch(coefficients(steps - 1, steps)["oc"][0])
            for col in (0, 1):
                y = (oc * frame[:, col, :hidden]).astype(np.float64)
                rows[0, 4 + col] = cp.sqrt((y * y).sum(axis=1))
        hi = steps
        while hi > 0:  # record indices [lo, hi), applied from hi - 1 down to lo
            lo = max(0, hi - chunk)
            first = max(0, lo - 1)
            coef = coefficients(first, hi)
            names = ("k", "oc", "f") if lstm else ("k", "z")
            args = [from_torch(coef[n]) for n in names] + ([] if lstm else [None])
            ck.bptt_delta_gated(model, *args, w, frame, rows[steps - hi + 1:steps - lo + 1],
                                t_first=hi - 1 - first, n_steps=hi - lo)
            hi = lo
        return cp.asnumpy(rows)
