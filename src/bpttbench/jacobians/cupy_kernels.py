"""CuPy kernels of the Jacobian engine: loading, cache, launch constants and launch wrappers.

The kernels live in ``bpttbench/kernels/*.cu`` (each file documents its launch shape,
memory layout and limits in its opening comment; ``launch.cuh`` holds the launch
constants and the one dtype instantiation, ``FOR_FLOAT_TYPES``, that every file uses):

- ``rnn_chain.cu``: the fused vanilla-RNN adjoint step M = W^T (phi'(a_t) * Q) with column
  rescaling; ``rnn_chain_persistent`` keeps the frame in shared memory and runs many steps
  (QR included) in one launch when H <= 128, ``rnn_adjoint_step_tiled`` + ``colnorm_rescale``
  otherwise;
- ``gate_jacobians.cu``: batched LSTM (2H x 2H) and GRU (H x H) Jacobians from saved gates;
- ``batched_qr.cu``: batched thin QR (modified Gram-Schmidt, twice) accumulating log|diag R|
  in float64 (in place, or out of place writing the logs);
- ``full_frame.cu``: the full-frame pass's float64 step A = triu(R) A with unit columns and
  accumulated column logs, in one launch;
- ``bptt_delta.cu``: the vanilla RNN's two-column BPTT chain (working dtype and rescaled) as
  one persistent kernel per chunk of steps (used by ``bpttbench.gradient_flow.bptt_delta_cupy``);
- ``bptt_delta_gated.cu``: the same chain for the LSTM and GRU (coefficient products, W_hh^T,
  LSTM's dL/dc carry, norms and rescale), one persistent kernel per chunk of steps;
- ``forward_record.cu``: the cell's forward pass with the record ``analytic.forward_saved``
  keeps, one persistent kernel per chunk of steps (driven by :mod:`.cupy_forward`).

The wrappers here only check shapes and dtypes and launch (every launch of the engine goes
through them; the kernel-emulation tests put a stand-in ``cupy`` in :data:`cp`). Data from
torch comes in by DLPack (zero copy) and every launch goes to torch's current CUDA stream
(:func:`torch_stream`), so no extra synchronisation is needed. CuPy is optional: without it
(or without a GPU) importing this module works and :func:`cupy_available` says why the
kernels are unusable. No imports from the package: the CuPy backend class
(:mod:`.cupy_backend`) sits on top of this module.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # optional dependency: pip install "bpttbench[cuda]"
    import cupy as cp
except Exception as exc:  # ImportError, or a CuPy build that cannot find its CUDA libraries
    cp = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _IMPORT_ERROR = ""

KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernels"
#: kernel file -> entry points (each exists as ``<name>_f32`` and ``<name>_f64``)
KERNEL_ENTRY_POINTS: dict[str, tuple[str, ...]] = {
    "rnn_chain.cu": ("rnn_chain_persistent", "rnn_adjoint_step_tiled", "colnorm_rescale"),
    "gate_jacobians.cu": ("lstm_jacobians", "gru_jacobians"),
    "batched_qr.cu": ("mgs_qr_logdiag", "mgs_qr_logdiag_out"),
    "full_frame.cu": ("full_frame_update",),
    "bptt_delta.cu": ("bptt_delta_rnn",),
    "bptt_delta_gated.cu": ("bptt_delta_lstm", "bptt_delta_gru"),
    "forward_record.cu": ("forward_record_rnn_tanh", "forward_record_rnn_relu",
                          "forward_record_rnn_linear", "forward_record_lstm",
                          "forward_record_gru"),
}
_DEFINE = re.compile(r"^#define ([A-Z_]+) (\d+)$", re.M)


def _launch_constants() -> dict[str, int]:
    """The ``#define NAME <int>`` lines of kernels/launch.cuh (their one written place)."""
    return {m.group(1): int(m.group(2)) for m in _DEFINE.finditer(
        (KERNEL_DIR / "launch.cuh").read_text())}


_LAUNCH = _launch_constants()
NTHREADS = _LAUNCH["NTHREADS"]  # block size the kernels are written for (__launch_bounds__)
TILE = _LAUNCH["TILE"]  # side of the tiled RNN step's 2-D block
GRID_STRIDE_BLOCKS_MAX = _LAUNCH["GRID_STRIDE_BLOCKS_MAX"]  # most blocks of a 1-D launch
FULL_FRAME_COLS = _LAUNCH["FULL_FRAME_COLS"]  # columns per block of full_frame_update
PERSISTENT_MAX_H = 128
DEFAULT_SMEM = 48 * 1024  # dynamic shared memory available without opting in


def _within_default_smem(kernel: str, hidden: int, dtype: Any, need: int) -> int:
    """``need`` bytes of dynamic shared memory, or a ValueError naming the kernel, H and
    dtype when that is more than the kernels without opt-in may use (DEFAULT_SMEM)."""
    if need > DEFAULT_SMEM:
        raise ValueError(f"{kernel}: H = {hidden} in {np.dtype(dtype)} needs {need} B of shared "
                         f"memory; the kernel takes {DEFAULT_SMEM}")
    return need
MAX_GRID_YZ = 65535  # CUDA limit on gridDim.y and gridDim.z
ROWS_CHUNK_BYTES = 64 * 2**20  # per-launch [n, B, k] float64 row buffer of the persistent kernel
NVRTC_OPTIONS = ("-std=c++17",)  # CuPy adds -ftz=true, -arch and --device-as-default-execution-space


def cupy_available() -> tuple[bool, str]:
    """(usable, reason): CuPy importable and at least one CUDA device visible to it."""
    if cp is None:
        return False, f"cupy is not importable ({_IMPORT_ERROR})"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device
        return False, f"cupy finds no usable CUDA device ({type(exc).__name__}: {exc})"
    if n < 1:
        return False, "cupy sees no CUDA device"
    return True, f"cupy {cp.__version__} with {n} CUDA device(s)"


def require() -> None:
    ok, why = cupy_available()
    if not ok:
        raise RuntimeError(f"the cupy backend is not usable here: {why}")


def cupy_dtype(dtype: Any) -> np.dtype:
    """float32/float64 (torch or numpy spelling) -> numpy dtype; anything else is refused."""
    mapping = {torch.float32: np.float32, torch.float64: np.float64}
    dt = np.dtype(mapping.get(dtype, dtype))
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"the cupy kernels support float32 and float64, not {dtype}")
    return dt


def _suffix(dtype: Any) -> str:
    return "f32" if cupy_dtype(dtype) == np.dtype(np.float32) else "f64"


_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_]+\.cuh)"$', re.M)


@functools.cache
def kernel_source(fname: str) -> str:
    """The kernel file with its local ``#include "x.cuh"`` headers inlined.

    Inlined rather than passed as ``-I``: CuPy caches compiled modules by source text, so a
    header edit would otherwise be served from a stale cache.
    """
    text = (KERNEL_DIR / fname).read_text()
    return _INCLUDE.sub(lambda m: (KERNEL_DIR / m.group(1)).read_text(), text)


@functools.cache
def _module(fname: str, device_id: int) -> Any:
    require()
    with cp.cuda.Device(device_id):
        return cp.RawModule(code=kernel_source(fname), options=NVRTC_OPTIONS)


def _kernel(fname: str, base: str, dtype: Any) -> Any:
    assert base in KERNEL_ENTRY_POINTS[fname], base
    return _module(fname, cp.cuda.Device().id).get_function(f"{base}_{_suffix(dtype)}")


@contextlib.contextmanager
def torch_stream() -> Iterator[None]:
    """Run CuPy work on torch's current CUDA stream and device (no-op without torch CUDA)."""
    with contextlib.ExitStack() as stack:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            dev = torch.cuda.current_device()
            stack.enter_context(cp.cuda.Device(dev))
            # Stream.from_external (CuPy >= 14) replaces the deprecated ExternalStream; torch
            # streams speak the CUDA stream protocol (__cuda_stream__)
            stream = torch.cuda.current_stream(dev)
            if hasattr(cp.cuda.Stream, "from_external"):
                stack.enter_context(cp.cuda.Stream.from_external(stream))
            else:  # CuPy 13
                stack.enter_context(cp.cuda.ExternalStream(stream.cuda_stream, dev))
        yield


def _check(a: Any, shape: tuple[int, ...], dtype: Any, name: str) -> None:
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: shape {tuple(a.shape)}, expected {tuple(shape)}")
    if a.dtype != np.dtype(dtype):
        raise ValueError(f"{name}: dtype {a.dtype}, expected {np.dtype(dtype)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")


def _i32(v: int) -> np.int32:
    return np.int32(int(v))


@functools.cache
def _optin_smem(device_id: int) -> int:
    # Device.attributes queries every attribute: once per device, not once per QR launch
    return int(cp.cuda.Device(device_id).attributes.get("MaxSharedMemoryPerBlockOptin", DEFAULT_SMEM))


def max_optin_smem() -> int:
    """Dynamic shared memory a block may opt in to on the current device (bytes)."""
    return _optin_smem(cp.cuda.Device().id)


def persistent_smem_bytes(hidden: int, k: int, dtype: Any) -> int:
    return (3 * k + 32) * 8 + (2 * hidden * k + hidden) * cupy_dtype(dtype).itemsize


# ---------------------------------------------------------------------------------- launches

F64 = np.float64


def rnn_chain_persistent(deriv, w_hh, frame, scale, total, rows, *, t_first: int, n_steps: int,
                         lag0: int, qr_every: int, total_steps: int) -> None:
    """n_steps fused adjoint steps J_{t_first+1}^T, J_{t_first}^T, ... on every frame [B, H, k]."""
    steps, batch, hidden = deriv.shape
    k = frame.shape[2]
    dt = deriv.dtype
    _check(w_hh, (hidden, hidden), dt, "w_hh")
    _check(frame, (batch, hidden, k), dt, "frame")
    _check(scale, (batch, k), F64, "scale")
    _check(total, (batch, k), F64, "total")
    _check(rows, (n_steps, batch, k), F64, "rows")
    _check(deriv, (steps, batch, hidden), dt, "deriv")
    if hidden > PERSISTENT_MAX_H:
        raise ValueError(f"persistent kernel needs H <= {PERSISTENT_MAX_H}, got {hidden}")
    if not (0 <= t_first < steps and 1 <= n_steps <= t_first + 1):
        raise ValueError(f"bad step range t_first={t_first}, n_steps={n_steps} for T={steps}")
    smem = persistent_smem_bytes(hidden, k, dt)
    kern = _kernel("rnn_chain.cu", "rnn_chain_persistent", dt)
    if smem > DEFAULT_SMEM:
        if smem > max_optin_smem():
            raise ValueError(
                f"frame needs {smem} B of shared memory, device allows {max_optin_smem()}"
            )
        kern.max_dynamic_shared_size_bytes = smem
    ints = (batch, hidden, k, t_first, n_steps, lag0, qr_every, total_steps)
    args = (deriv, w_hh, frame, scale, total, rows, *(_i32(v) for v in ints))
    kern((batch,), (NTHREADS,), args, shared_mem=smem)


def rnn_adjoint_step_tiled(deriv_t, w_hh, frame, out) -> None:
    """out[b] = W^T (deriv_t[b] * frame[b]) for every batch element (any H)."""
    batch, hidden, k = frame.shape
    dt = frame.dtype
    _check(deriv_t, (batch, hidden), dt, "deriv_t")
    _check(w_hh, (hidden, hidden), dt, "w_hh")
    _check(out, (batch, hidden, k), dt, "out")
    if math.ceil(hidden / TILE) > MAX_GRID_YZ:
        raise ValueError(f"tiled kernel needs H <= {MAX_GRID_YZ * TILE}, got {hidden}")
    kern = _kernel("rnn_chain.cu", "rnn_adjoint_step_tiled", dt)
    # the batch is grid.z (at most 65,535): larger batches go in several launches
    for b0 in range(0, batch, MAX_GRID_YZ):
        nb = min(MAX_GRID_YZ, batch - b0)
        grid = (math.ceil(k / TILE), math.ceil(hidden / TILE), nb)
        args = (deriv_t[b0 : b0 + nb], w_hh, frame[b0 : b0 + nb], out[b0 : b0 + nb], _i32(nb),
                _i32(hidden), _i32(k))  # fmt: skip
        kern(grid, (TILE, TILE), args)


def colnorm_rescale(mat, scale, total, row_out) -> None:
    """Columns of mat [B, D, k] to unit norm in place; scale += log norms; row_out = total+scale."""
    batch, dim, k = mat.shape
    _check(mat, (batch, dim, k), mat.dtype, "mat")
    for a, name in ((scale, "scale"), (total, "total"), (row_out, "row_out")):
        _check(a, (batch, k), F64, name)
    kern = _kernel("rnn_chain.cu", "colnorm_rescale", mat.dtype)
    kern((batch,), (NTHREADS,), (mat, scale, total, row_out, _i32(batch), _i32(dim), _i32(k)))


def _launch_qr(base: str, args: tuple, a) -> None:
    """Launch batched_qr.cu's ``base`` on a [B, D, k]: one block per matrix, staged in shared
    memory when it fits the opt-in maximum (opting in above 48 KB)."""
    batch, dim, k = a.shape
    if k > dim:
        raise ValueError(f"QR needs k <= D, got k={k}, D={dim}")
    stage = dim * k * a.dtype.itemsize
    kern = _kernel("batched_qr.cu", base, a.dtype)
    use_smem = 32 * 8 + stage <= max_optin_smem()
    smem = 32 * 8 + (stage if use_smem else 0)
    if smem > DEFAULT_SMEM:
        kern.max_dynamic_shared_size_bytes = smem
    ints = (_i32(batch), _i32(dim), _i32(k), _i32(int(use_smem)))
    kern((batch,), (NTHREADS,), (*args, *ints), shared_mem=smem)


def mgs_qr_logdiag(a, logacc) -> None:
    """In place: a [B, D, k] -> Q (diag R > 0); logacc [B, k] += log|diag R| (float64)."""
    batch, dim, k = a.shape
    _check(a, (batch, dim, k), a.dtype, "a")
    _check(logacc, (batch, k), F64, "logacc")
    _launch_qr("mgs_qr_logdiag", (a, logacc), a)


def mgs_qr_logdiag_out(src, q, logd) -> None:
    """q [B, D, k] = Q of src (diag R > 0), logd [B, k] = log|diag R| (float64, overwritten);
    src is left as it is. The same arithmetic as :func:`mgs_qr_logdiag` on a copy of src with
    zeroed logs (bit-identical), in one launch."""
    batch, dim, k = src.shape
    _check(src, (batch, dim, k), src.dtype, "src")
    _check(q, (batch, dim, k), src.dtype, "q")
    _check(logd, (batch, k), F64, "logd")
    _launch_qr("mgs_qr_logdiag_out", (src, q, logd), src)


def full_frame_smem_bytes(dim: int) -> int:
    """Dynamic shared memory of full_frame_update: the U tile, per-warp sums, reciprocals."""
    return (dim + NTHREADS // 32 + 1) * FULL_FRAME_COLS * 8


def full_frame_update(r, u, logc, u_out, logc_out) -> None:
    """The full-frame pass's float64 step (full_frame.cu): V = triu(r) u, u_out = V with unit
    columns (a zero column stays zero), logc_out = logc + ln of V's column norms (-inf for a
    zero column). r [B, D, D] in the working dtype; u, u_out [B, D, D] and logc, logc_out
    [B, D] float64."""
    batch, dim, _ = r.shape
    _check(r, (batch, dim, dim), r.dtype, "r")
    for arr, name in ((u, "u"), (u_out, "u_out")):
        _check(arr, (batch, dim, dim), F64, name)
    for arr, name in ((logc, "logc"), (logc_out, "logc_out")):
        _check(arr, (batch, dim), F64, name)
    smem = full_frame_smem_bytes(dim)
    kern = _kernel("full_frame.cu", "full_frame_update", r.dtype)
    if smem > DEFAULT_SMEM:
        if smem > max_optin_smem():
            raise ValueError(f"full_frame_update: D = {dim} needs {smem} B of shared memory, "
                             f"the device allows {max_optin_smem()}")
        kern.max_dynamic_shared_size_bytes = smem
    cols = math.ceil(dim / FULL_FRAME_COLS)
    for b0 in range(0, batch, MAX_GRID_YZ):  # the batch is grid.y (at most 65,535)
        nb = min(MAX_GRID_YZ, batch - b0)
        sl = slice(b0, b0 + nb)
        args = (r[sl], u[sl], logc[sl], u_out[sl], logc_out[sl], _i32(nb), _i32(dim))
        kern((cols, nb), (NTHREADS,), args, shared_mem=smem)


def _grid_1d(total: int) -> tuple[int]:
    return (max(1, min(math.ceil(total / NTHREADS), GRID_STRIDE_BLOCKS_MAX)),)


def _gate_jacobians(base: str, gates, dgates, a, b, c, w_hh, out) -> None:
    """Launch ``base`` (lstm_jacobians or gru_jacobians): out [N, D, D] from gates/dgates
    [N, G*H] and three per-unit arrays a, b, c [N, H] (G = 4, D = 2H; or G = 3, D = H)."""
    gate_count, dim_per_h, names = {"lstm_jacobians": (4, 2, ("c_prev", "tanh_c", "dtanh_c")),
                                    "gru_jacobians": (3, 1, ("h_prev", "hn", "omz"))}[base]
    n, width = gates.shape
    hidden = width // gate_count
    dim = dim_per_h * hidden
    dt = gates.dtype
    _check(dgates, (n, gate_count * hidden), dt, "dgates")
    for arr, name in zip((a, b, c), names, strict=True):
        _check(arr, (n, hidden), dt, name)
    _check(w_hh, (gate_count * hidden, hidden), dt, "w_hh")
    _check(out, (n, dim, dim), dt, "out")
    kern = _kernel("gate_jacobians.cu", base, dt)
    args = (gates, dgates, a, b, c, w_hh, out, np.int64(n), _i32(hidden))
    kern(_grid_1d(n * dim * dim), (NTHREADS,), args)


def lstm_jacobians(gates, dgates, c_prev, tanh_c, dtanh_c, w_hh, out) -> None:
    """out [N, 2H, 2H] from gates/dgates [N, 4H] and c_prev, tanh_c, dtanh_c [N, H]."""
    _gate_jacobians("lstm_jacobians", gates, dgates, c_prev, tanh_c, dtanh_c, w_hh, out)


def gru_jacobians(gates, dgates, h_prev, hn, omz, w_hh, out) -> None:
    """out [N, H, H] from gates/dgates [N, 3H] and h_prev, hn = W_hn h + b_hn, omz = 1-z [N, H]."""
    _gate_jacobians("gru_jacobians", gates, dgates, h_prev, hn, omz, w_hh, out)


def bptt_delta_smem_bytes(hidden: int, dtype: Any) -> int:
    """Dynamic shared memory of bptt_delta_rnn: the partial sums and 4 H values."""
    return 2 * NTHREADS * 8 + 4 * hidden * cupy_dtype(dtype).itemsize


def bptt_delta_rnn(deriv, w_hh, frame, norm_raw, scale, zero0, *, t_first: int,
                   n_steps: int) -> None:
    """n_steps steps of the two-column RNN BPTT chain on frame [B, 2, H] in one launch:
    step s reads deriv[t_first - s]; rows s of norm_raw, scale, zero0 [n_steps, B] (float64)."""
    steps, batch, hidden = deriv.shape
    dt = deriv.dtype
    _check(w_hh, (hidden, hidden), dt, "w_hh")
    _check(frame, (batch, 2, hidden), dt, "frame")
    _check(deriv, (steps, batch, hidden), dt, "deriv")
    for a, name in ((norm_raw, "norm_raw"), (scale, "scale"), (zero0, "zero0")):
        _check(a, (n_steps, batch), F64, name)
    if not (0 <= t_first < steps and 1 <= n_steps <= t_first + 1):
        raise ValueError(f"bad step range t_first={t_first}, n_steps={n_steps} for T={steps}")
    smem = _within_default_smem("bptt_delta_rnn", hidden, dt, bptt_delta_smem_bytes(hidden, dt))
    kern = _kernel("bptt_delta.cu", "bptt_delta_rnn", dt)
    args = (deriv, w_hh, frame, norm_raw, scale, zero0, _i32(batch), _i32(hidden),
            _i32(t_first), _i32(n_steps))
    kern((batch,), (NTHREADS,), args, shared_mem=smem)


#: rows per step of the gated kernels (bptt_delta_gated.cu's opening comment)
GATED_ROWS = {"lstm": 6, "gru": 4}
_GATES = {"lstm": 4, "gru": 3}


def bptt_delta_gated_smem_bytes(model: str, hidden: int, dtype: Any) -> int:
    """Dynamic shared memory of bptt_delta_lstm/gru: 3 x NTHREADS partial sums, the two
    columns (2 D) and their coefficient products (2 G)."""
    dim = 2 * hidden if model == "lstm" else hidden
    return 3 * NTHREADS * 8 + (2 * dim + 2 * _GATES[model] * hidden) * cupy_dtype(dtype).itemsize


def bptt_delta_gated(model: str, k, a, f, w_hh, frame, rows, *, t_first: int,
                     n_steps: int) -> None:
    """n_steps steps of the LSTM's (``a`` = oc, ``f`` the forget gate) or GRU's (``a`` = z,
    ``f`` None) two-column BPTT chain on frame [B, 2, D] in one launch: step s reads index
    t_first - s of k [T, B, G], a, f [T, B, H]; rows [n_steps, K, B] float64 out."""
    if model not in _GATES:
        raise ValueError(f"gated BPTT delta kernel: model {model!r}; allowed: lstm, gru")
    steps, batch, hidden = a.shape
    dt = a.dtype
    dim = 2 * hidden if model == "lstm" else hidden
    _check(k, (steps, batch, _GATES[model] * hidden), dt, "k")
    _check(a, (steps, batch, hidden), dt, "oc" if model == "lstm" else "z")
    if model == "lstm":
        _check(f, (steps, batch, hidden), dt, "f")
    elif f is not None:
        raise ValueError("gru: f must be None (the GRU step has no forget-gate carry)")
    _check(w_hh, (_GATES[model] * hidden, hidden), dt, "w_hh")
    _check(frame, (batch, 2, dim), dt, "frame")
    _check(rows, (n_steps, GATED_ROWS[model], batch), F64, "rows")
    if not (0 <= t_first < steps and 1 <= n_steps <= t_first + 1):
        raise ValueError(f"bad step range t_first={t_first}, n_steps={n_steps} for T={steps}")
    smem = _within_default_smem(f"bptt_delta_{model}", hidden, dt,
                                bptt_delta_gated_smem_bytes(model, hidden, dt))
    kern = _kernel("bptt_delta_gated.cu", f"bptt_delta_{model}", dt)
    coef = (k, a, f) if model == "lstm" else (k, a)
    args = (*coef, w_hh, frame, rows, _i32(batch), _i32(hidden), _i32(t_first), _i32(n_steps))
    kern((batch,), (NTHREADS,), args, shared_mem=smem)


#: the Saved fields forward_record.cu writes, in its argument order
FORWARD_FIELDS = {"rnn": ("deriv",), "lstm": ("gates", "dgates", "prev", "aux", "aux2"),
                  "gru": ("gates", "dgates", "prev", "aux", "aux2")}
_FORWARD_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "rnn_linear": 1, **_GATES}


def forward_record_smem_bytes(model: str, hidden: int, dtype: Any) -> int:
    """Dynamic shared memory of forward_record_<model>: h twice (read one half, write the
    other) and, for the LSTM, c."""
    return (3 if model == "lstm" else 2) * hidden * cupy_dtype(dtype).itemsize


def forward_record(model: str, gi, w_hh_t, b_hh, h, c, outs: dict[str, Any], *, t_first: int,
                   n_steps: int) -> None:
    """Steps t_first .. t_first + n_steps - 1 of the cell's forward in one launch: the state
    h (and the LSTM's c) [B, H] in place, the record rows t of ``outs`` (FORWARD_FIELDS of the
    model: [T, B, G] gates/dgates, [T, B, H] the rest) from gi [T, B, G] = x W_ih^T + b_ih,
    w_hh_t [H, G] = W_hh^T and b_hh [G] (forward_record.cu's opening comment)."""
    if model not in _FORWARD_GATES:
        raise ValueError(f"forward record kernel: model {model!r}; allowed: "
                         f"{', '.join(_FORWARD_GATES)}")
    steps, batch, width = gi.shape
    dt = gi.dtype
    hidden = width // _FORWARD_GATES[model]
    _check(gi, (steps, batch, _FORWARD_GATES[model] * hidden), dt, "gi")
    _check(w_hh_t, (hidden, width), dt, "w_hh_t")
    _check(b_hh, (width,), dt, "b_hh")
    _check(h, (batch, hidden), dt, "h")
    if model == "lstm":
        _check(c, (batch, hidden), dt, "c")
    elif c is not None:
        raise ValueError(f"{model}: c must be None (only the LSTM carries a cell state)")
    fields = FORWARD_FIELDS["rnn" if model.startswith("rnn_") else model]
    if set(outs) != set(fields):
        raise ValueError(f"{model}: outs must be {', '.join(fields)}, got {', '.join(outs)}")
    for name in fields:
        wide = name in ("gates", "dgates")
        _check(outs[name], (steps, batch, width if wide else hidden), dt, name)
    if not (0 <= t_first and 1 <= n_steps and t_first + n_steps <= steps):
        raise ValueError(f"bad step range t_first={t_first}, n_steps={n_steps} for T={steps}")
    smem = _within_default_smem(f"forward_record_{model}", hidden, dt,
                                forward_record_smem_bytes(model, hidden, dt))
    kern = _kernel("forward_record.cu", f"forward_record_{model}", dt)
    state = (h, c) if model == "lstm" else (h,)
    args = (gi, w_hh_t, b_hh, *state, *(outs[n] for n in fields), _i32(batch), _i32(hidden),
            _i32(t_first), _i32(n_steps))
    kern((batch,), (NTHREADS,), args, shared_mem=smem)
