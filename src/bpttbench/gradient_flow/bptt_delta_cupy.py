"""The vanilla RNN's two-column BPTT chain as one persistent CUDA kernel (CuPy).

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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..jacobians import cupy_kernels as ck

#: dynamic shared memory the kernel may use (no opt-in)
SMEM_LIMIT = ck.DEFAULT_SMEM
#: steps per launch (a launch runs them all without returning)
STEPS_PER_LAUNCH = 4096


def smem_bytes(hidden: int, dtype: Any) -> int:
    return ck.bptt_delta_smem_bytes(hidden, dtype)


def usable(hidden: int, dtype: Any) -> bool:
    """CuPy with a GPU is here, and the kernel takes this H and dtype."""
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        return False
    return smem_bytes(hidden, dtype) <= SMEM_LIMIT and ck.cupy_available()[0]


def from_torch(t: Any) -> Any:
    """A torch tensor shared into CuPy by DLPack (no copy)."""
    return ck.cp.from_dlpack(t.detach().contiguous())


def rnn_delta_rows(deriv: Any, w_hh: Any, delta_t: Any) -> tuple[np.ndarray, ...]:
    """Per lag 0..T: (norm of the raw column, norm the rescaled column was divided by, raw
    column's first entry is 0), float64 [T+1, B] NumPy arrays, read back once.

    ``deriv`` [T, B, H] (phi'(a_t), index i for J_{i+1}), ``w_hh`` [H, H] and ``delta_t``
    [B, H] are CuPy arrays of one float dtype.
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
        lag0 = 0
        while lag0 < steps:
            n = min(STEPS_PER_LAUNCH, steps - lag0)
            out = [r[lag0 + 1:lag0 + 1 + n] for r in rows]
            ck.bptt_delta_rnn(deriv, w, frame, *out, t_first=steps - 1 - lag0, n_steps=n)
            lag0 += n
        return tuple(cp.asnumpy(r) for r in rows)
