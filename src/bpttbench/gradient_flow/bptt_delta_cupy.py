"""The vanilla RNN's two-column BPTT chain as one persistent CUDA kernel (CuPy).

``bptt_deltas`` carries delta_T back as two columns, the working dtype unrescaled and a
column rescaled every step. For the vanilla RNNs, J_t^T v = W_hh^T (phi'(a_t) * v) needs no
Jacobian, and one block per batch element runs a whole chunk of steps without leaving the
kernel: 1 launch per chunk of steps (by default every step of the cell), 0 per step, where the
torch path costs 6 launches a step. Per step and column: scale by phi', product with W_hh
(the columns in shared memory), the float64 norm (block reduction), and for column 1 the
rescale, in float64 then rounded. Per-lag outputs are float64 rows: the raw column's norm, the
norm the rescaled column was divided by, and whether the raw column's first entry is 0.

The kernel lives here (its own entry point; the engine's kernels are untouched), is compiled
by CuPy's NVRTC with the options the engine uses, and is tested on the CPU through the kernel
emulation stand-in (tests/kernel_emulation/test_bptt_delta_kernel.py). Limits: the two
columns and their scaled copies (4 H values) plus 4 KB fit the 48 KB of shared memory without
opt-in: H <= 2816 in float32, 1408 in float64; the caller falls back to torch beyond.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

try:  # CuPy is optional: without it (or a GPU) the torch path runs
    import cupy as cp
except Exception:  # pragma: no cover - depends on the environment
    cp = None

NTHREADS = 256
SMEM_LIMIT = 48 * 1024
NVRTC_OPTIONS = ("-std=c++17",)
#: steps per launch (a launch runs them all without returning)
STEPS_PER_LAUNCH = 4096

SOURCE = r"""
#define NTHREADS 256

template <typename T>
__device__ void delta_rnn_impl(const T* __restrict__ deriv, const T* __restrict__ w_hh,
                               T* __restrict__ frame, double* __restrict__ norm_raw,
                               double* __restrict__ scale, double* __restrict__ zero0, int B,
                               int H, int t_first, int n_steps) {
    extern __shared__ double smem[];
    double* red = smem;                               // [2 * NTHREADS] partial sums
    T* v = reinterpret_cast<T*>(red + 2 * NTHREADS);  // [2H] the columns (raw, rescaled)
    T* vd = v + 2 * H;                                // [2H] phi' * v
    const int b = blockIdx.x, tid = threadIdx.x;
    for (int o = tid; o < 2 * H; o += NTHREADS) v[o] = frame[(size_t)b * 2 * H + o];
    __syncthreads();
    for (int s = 0; s < n_steps; ++s) {
        const T* d = deriv + ((size_t)(t_first - s) * B + b) * H;
        for (int j = tid; j < H; j += NTHREADS) {
            const T dj = d[j];
            vd[j] = dj * v[j];
            vd[H + j] = dj * v[H + j];
        }
        __syncthreads();
        double p0 = 0.0, p1 = 0.0;
        for (int r = tid; r < H; r += NTHREADS) {  // (W^T vd)_r = sum_j W[j][r] vd_j
            T m0 = T(0), m1 = T(0);
            for (int j = 0; j < H; ++j) {
                const T w = w_hh[(size_t)j * H + r];
                m0 += w * vd[j];
                m1 += w * vd[H + j];
            }
            v[r] = m0;
            v[H + r] = m1;
            p0 += (double)m0 * (double)m0;
            p1 += (double)m1 * (double)m1;
        }
        red[tid] = p0;
        red[NTHREADS + tid] = p1;
        __syncthreads();
        for (int w = NTHREADS / 2; w > 0; w >>= 1) {
            if (tid < w) {
                red[tid] += red[tid + w];
                red[NTHREADS + tid] += red[NTHREADS + tid + w];
            }
            __syncthreads();
        }
        const double n1 = sqrt(red[NTHREADS]);
        if (tid == 0) {
            norm_raw[(size_t)s * B + b] = sqrt(red[0]);
            scale[(size_t)s * B + b] = n1;
            zero0[(size_t)s * B + b] = v[0] == T(0) ? 1.0 : 0.0;
        }
        for (int r = tid; r < H; r += NTHREADS) v[H + r] = (T)((double)v[H + r] / n1);
        __syncthreads();  // the partial sums and the columns are reused by the next step
    }
    for (int o = tid; o < 2 * H; o += NTHREADS) frame[(size_t)b * 2 * H + o] = v[o];
}

#define DELTA_RNN_KERNEL(T, SUFFIX)                                                          \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                   \
        bptt_delta_rnn_##SUFFIX(const T* deriv, const T* w_hh, T* frame, double* norm_raw,   \
                                double* scale, double* zero0, int B, int H, int t_first,     \
                                int n_steps) {                                               \
        delta_rnn_impl<T>(deriv, w_hh, frame, norm_raw, scale, zero0, B, H, t_first,         \
                          n_steps);                                                          \
    }

DELTA_RNN_KERNEL(float, f32)
DELTA_RNN_KERNEL(double, f64)
"""

SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def smem_bytes(hidden: int, dtype: Any) -> int:
    return 2 * NTHREADS * 8 + 4 * hidden * np.dtype(dtype).itemsize


def usable(hidden: int, dtype: Any) -> bool:
    """CuPy with a GPU is here, and the kernel takes this H and dtype."""
    if cp is None or np.dtype(dtype) not in SUFFIX or smem_bytes(hidden, dtype) > SMEM_LIMIT:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver
        return False


@functools.cache
def _module(device_id: int) -> Any:
    return cp.RawModule(code=SOURCE, options=NVRTC_OPTIONS)


def _kernel(dtype: Any) -> Any:
    return _module(cp.cuda.Device().id).get_function(f"bptt_delta_rnn_{SUFFIX[np.dtype(dtype)]}")


def rnn_delta_rows(deriv: Any, w_hh: Any, delta_t: Any) -> tuple[np.ndarray, ...]:
    """Per lag 0..T: (norm of the raw column, norm the rescaled column was divided by, raw
    column's first entry is 0), float64 [T+1, B] NumPy arrays, read back once.

    ``deriv`` [T, B, H] (phi'(a_t), index i for J_{i+1}), ``w_hh`` [H, H] and ``delta_t``
    [B, H] are CuPy arrays of one float dtype.
    """
    steps, batch, hidden = (int(n) for n in deriv.shape)
    dt = np.dtype(deriv.dtype)
    if tuple(w_hh.shape) != (hidden, hidden) or tuple(delta_t.shape) != (batch, hidden):
        raise ValueError(f"shapes: deriv {deriv.shape}, w_hh {w_hh.shape}, delta {delta_t.shape}")
    if smem_bytes(hidden, dt) > SMEM_LIMIT:
        raise ValueError(f"H = {hidden} in {dt} needs {smem_bytes(hidden, dt)} B of shared "
                         f"memory; the kernel takes {SMEM_LIMIT}")
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
    kern = _kernel(dt)
    lag0 = 0
    while lag0 < steps:
        n = min(STEPS_PER_LAUNCH, steps - lag0)
        out = [r[lag0 + 1:lag0 + 1 + n] for r in rows]
        args = (deriv, w, frame, *out, np.int32(batch), np.int32(hidden),
                np.int32(steps - 1 - lag0), np.int32(n))
        kern((batch,), (NTHREADS,), args, shared_mem=smem_bytes(hidden, dt))
        lag0 += n
    return tuple(cp.asnumpy(r) for r in rows)
