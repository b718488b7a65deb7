"""CuPy backend of the Jacobian engine: custom CUDA kernels loaded with ``cupy.RawModule``.

The kernels live in ``bpttbench/kernels/*.cu`` (each file documents its launch shape,
memory layout and limits in its opening comment):

- ``rnn_chain.cu``: the fused vanilla-RNN adjoint step M = W^T (phi'(a_t) * Q) with column
  rescaling; ``rnn_chain_persistent`` keeps the frame in shared memory and runs many steps
  (QR included) in one launch when H <= 128, ``rnn_adjoint_step_tiled`` + ``colnorm_rescale``
  otherwise;
- ``gate_jacobians.cu``: batched LSTM (2H x 2H) and GRU (H x H) Jacobians from saved gates;
- ``batched_qr.cu``: batched thin QR (modified Gram-Schmidt, twice) accumulating log|diag R|
  in float64.

The wrappers here only check shapes and dtypes and launch. Data from torch comes in by
DLPack (zero copy) and every launch goes to torch's current CUDA stream, so no extra
synchronisation is needed. CuPy is optional: without it (or without a GPU) importing this
module works and :func:`cupy_available` says why the backend is unusable.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bpttbench.jacobians.analytic import Saved, forward_saved, step_jacobians
from bpttbench.jacobians.backends import NumpyBackend

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
    "batched_qr.cu": ("mgs_qr_logdiag",),
}
NTHREADS = 256  # block size the kernels are written for (__launch_bounds__)
TILE = 16
PERSISTENT_MAX_H = 128
DEFAULT_SMEM = 48 * 1024  # dynamic shared memory available without opting in
MAX_GRID_YZ = 65535  # CUDA limit on gridDim.y and gridDim.z
ROWS_CHUNK_BYTES = 64 * 2**20  # per-launch [n, B, k] float64 row buffer of the persistent kernel
JAC_CHUNK_BYTES = 64 * 2**20  # LSTM/GRU Jacobians built at once
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


def _require() -> None:
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
    _require()
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


def rnn_chain_persistent(
    deriv,
    w_hh,
    frame,
    scale,
    total,
    rows,
    *,
    t_first: int,
    n_steps: int,
    lag0: int,
    qr_every: int,
    total_steps: int,
) -> None:
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
    args = (
        deriv,
        w_hh,
        frame,
        scale,
        total,
        rows,
        _i32(batch),
        _i32(hidden),
        _i32(k),
        _i32(t_first),
        _i32(n_steps),
        _i32(lag0),
        _i32(qr_every),
        _i32(total_steps),
    )
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


def mgs_qr_logdiag(a, logacc) -> None:
    """In place: a [B, D, k] -> Q (diag R > 0); logacc [B, k] += log|diag R| (float64)."""
    batch, dim, k = a.shape
    _check(a, (batch, dim, k), a.dtype, "a")
    _check(logacc, (batch, k), F64, "logacc")
    if k > dim:
        raise ValueError(f"QR needs k <= D, got k={k}, D={dim}")
    stage = dim * k * a.dtype.itemsize
    kern = _kernel("batched_qr.cu", "mgs_qr_logdiag", a.dtype)
    # stage the matrix in shared memory when it fits the opt-in maximum (opting in above 48 KB)
    use_smem = 32 * 8 + stage <= max_optin_smem()
    smem = 32 * 8 + (stage if use_smem else 0)
    if smem > DEFAULT_SMEM:
        kern.max_dynamic_shared_size_bytes = smem
    args = (a, logacc, _i32(batch), _i32(dim), _i32(k), _i32(int(use_smem)))
    kern((batch,), (NTHREADS,), args, shared_mem=smem)


def _grid_1d(total: int) -> tuple[int]:
    return (max(1, min(math.ceil(total / NTHREADS), 65535 * 8)),)


def lstm_jacobians(gates, dgates, c_prev, tanh_c, dtanh_c, w_hh, out) -> None:
    """out [N, 2H, 2H] from gates/dgates [N, 4H] and c_prev, tanh_c, dtanh_c [N, H]."""
    n, g4 = gates.shape
    hidden = g4 // 4
    dt = gates.dtype
    _check(dgates, (n, 4 * hidden), dt, "dgates")
    for a, name in ((c_prev, "c_prev"), (tanh_c, "tanh_c"), (dtanh_c, "dtanh_c")):
        _check(a, (n, hidden), dt, name)
    _check(w_hh, (4 * hidden, hidden), dt, "w_hh")
    _check(out, (n, 2 * hidden, 2 * hidden), dt, "out")
    kern = _kernel("gate_jacobians.cu", "lstm_jacobians", dt)
    args = (gates, dgates, c_prev, tanh_c, dtanh_c, w_hh, out, np.int64(n), _i32(hidden))
    kern(_grid_1d(n * 4 * hidden * hidden), (NTHREADS,), args)


def gru_jacobians(gates, dgates, h_prev, hn, omz, w_hh, out) -> None:
    """out [N, H, H] from gates/dgates [N, 3H] and h_prev, hn = W_hn h + b_hn, omz = 1-z [N, H]."""
    n, g3 = gates.shape
    hidden = g3 // 3
    dt = gates.dtype
    _check(dgates, (n, 3 * hidden), dt, "dgates")
    for a, name in ((h_prev, "h_prev"), (hn, "hn"), (omz, "omz")):
        _check(a, (n, hidden), dt, name)
    _check(w_hh, (3 * hidden, hidden), dt, "w_hh")
    _check(out, (n, hidden, hidden), dt, "out")
    kern = _kernel("gate_jacobians.cu", "gru_jacobians", dt)
    args = (gates, dgates, h_prev, hn, omz, w_hh, out, np.int64(n), _i32(hidden))
    kern(_grid_1d(n * hidden * hidden), (NTHREADS,), args)


# ---------------------------------------------------------------------------------- backend


def saved_to_cupy(saved: Saved, dtype: Any = None) -> Saved:
    """The same Saved with every torch CUDA tensor shared into CuPy by DLPack (no copy)."""

    def conv(t: Any) -> Any:
        if t is None:
            return None
        a = cp.from_dlpack(t.detach().contiguous()) if isinstance(t, torch.Tensor) else t
        return a if dtype is None else a.astype(cupy_dtype(dtype), copy=False)

    fields = {f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)}
    with torch_stream():
        for name in ("w_hh", "deriv", "gates", "dgates", "prev", "aux", "aux2"):
            fields[name] = conv(fields[name])
        fields["final_state"] = tuple(conv(s) for s in saved.final_state)
    return Saved(**fields)


def _warn_full_frame_float32(dtype: Any, k: int, dim: int, qr_every: int) -> None:
    """float32 with k = D and qr_every > 1 loses digits in the lowest exponents (any backend)."""
    if np.dtype(dtype) == np.dtype(np.float32) and k == dim and qr_every > 1:
        warnings.warn(
            f"float32 chain with k = D = {dim} and qr_every = {qr_every}: the full frame becomes "
            "ill-conditioned between QRs and the lowest exponents lose accuracy (1e-4..1e-1 "
            "relative, docs/NUMERICS.md); use qr_every = 1, k < D or float64",
            RuntimeWarning,
            stacklevel=3,
        )


class CupyBackend(NumpyBackend):
    """NumPy-like operations from CuPy plus the fused kernels for the chain.

    ``rnn_path``: "auto" (persistent kernel when H <= 128 and the frame fits in shared
    memory, tiled otherwise), "persistent" or "tiled" (for validation and benchmarks).
    """

    name = "cupy"

    def __init__(self, dtype: Any = np.float64, rnn_path: str = "auto") -> None:
        _require()
        if rnn_path not in ("auto", "persistent", "tiled"):
            raise ValueError(f"rnn_path={rnn_path!r}; allowed: auto, persistent, tiled")
        super().__init__(cp, cupy_dtype(dtype))
        self.rnn_path = rnn_path

    def asarray(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return cp.from_dlpack(x.detach().contiguous()).astype(self.dtype, copy=False)
        return cp.asarray(x, dtype=self.dtype)

    def to_numpy(self, a: Any) -> np.ndarray:
        return cp.asnumpy(a)

    def qr_logdiag(self, a: Any) -> tuple[Any, Any]:
        q = cp.array(a, dtype=a.dtype, order="C", copy=True)
        logd = cp.zeros(a.shape[:-2] + (a.shape[-1],), dtype=F64)
        mgs_qr_logdiag(q.reshape(-1, *a.shape[-2:]), logd.reshape(-1, a.shape[-1]))
        return q, logd

    def choose_rnn_path(self, hidden: int, k: int, dtype: Any) -> str:
        fits = hidden <= PERSISTENT_MAX_H and persistent_smem_bytes(hidden, k, dtype) <= (
            max_optin_smem()
        )
        if self.rnn_path == "persistent" and not fits:
            raise ValueError(f"persistent RNN kernel does not fit H={hidden}, k={k}")
        if self.rnn_path == "auto":
            return "persistent" if fits else "tiled"
        return self.rnn_path

    def run_chain(self, saved: Saved, k: int, qr_every: int, frame0: np.ndarray | None):
        from bpttbench.jacobians.chain import initial_frame

        with torch_stream():
            steps, batch, dim = saved.steps, saved.batch, saved.dim
            w = cp.ascontiguousarray(saved.w_hh)
            dt = w.dtype
            _warn_full_frame_float32(dt, k, dim, qr_every)
            if frame0 is None:
                frame0 = initial_frame(dim, k)
            q = cp.ascontiguousarray(cp.broadcast_to(cp.asarray(frame0, dtype=dt), (batch, dim, k)))
            scale = cp.zeros((batch, k), dtype=F64)
            total = cp.zeros((batch, k), dtype=F64)
            rows = cp.empty((steps, k), dtype=F64)
            rowbuf = cp.empty((batch, k), dtype=F64)
            m = cp.empty_like(q)

            def finish(m_: Any, lag: int) -> None:  # rescale or QR the new frame (in place)
                if lag % qr_every == 0 or lag == steps:
                    mgs_qr_logdiag(m_, total)
                    total[...] += scale
                    scale[...] = 0.0
                    rows[lag - 1] = total.mean(axis=0)
                else:
                    colnorm_rescale(m_, scale, total, rowbuf)
                    rows[lag - 1] = rowbuf.mean(axis=0)

            if saved.model.startswith("rnn_"):
                deriv = cp.ascontiguousarray(saved.deriv, dtype=dt)
                if self.choose_rnn_path(saved.hidden, k, dt) == "persistent":
                    chunk = max(1, ROWS_CHUNK_BYTES // (batch * k * 8))
                    lag0 = 0
                    while lag0 < steps:
                        n = min(chunk, steps - lag0)
                        buf = cp.empty((n, batch, k), dtype=F64)
                        rnn_chain_persistent(
                            deriv,
                            w,
                            q,
                            scale,
                            total,
                            buf,
                            t_first=steps - 1 - lag0,
                            n_steps=n,
                            lag0=lag0,
                            qr_every=qr_every,
                            total_steps=steps,
                        )
                        rows[lag0 : lag0 + n] = buf.mean(axis=1)
                        lag0 += n
                else:
                    for lag in range(1, steps + 1):
                        rnn_adjoint_step_tiled(deriv[steps - lag], w, q, m)
                        finish(m, lag)
                        q, m = m, q
            else:
                jchunk = max(1, JAC_CHUNK_BYTES // (batch * dim * dim * dt.itemsize))
                lag = 0
                for hi in range(steps, 0, -jchunk):
                    lo = max(0, hi - jchunk)
                    jac = self.build_jacobians(saved, lo, hi)
                    for i in range(hi - 1, lo - 1, -1):
                        cp.matmul(jac[i - lo].transpose(0, 2, 1), q, out=m)
                        lag += 1
                        finish(m, lag)
                        q, m = m, q
            return cp.asnumpy(total), cp.asnumpy(rows)

    def build_jacobians(self, saved: Saved, lo: int, hi: int) -> Any:
        """J_{i+1} for i in [lo, hi) with the gate-Jacobian kernels: [hi-lo, B, D, D]."""
        n, batch, dim = hi - lo, saved.batch, saved.dim
        w = cp.ascontiguousarray(saved.w_hh)
        dt = w.dtype

        def flat(a: Any) -> Any:
            return cp.ascontiguousarray(a[lo:hi], dtype=dt).reshape(n * batch, -1)

        out = cp.empty((n * batch, dim, dim), dtype=dt)
        args = [
            flat(saved.gates),
            flat(saved.dgates),
            flat(saved.prev),
            flat(saved.aux),
            flat(saved.aux2),
            w,
            out,
        ]
        if saved.model == "lstm":
            lstm_jacobians(*args)
        elif saved.model == "gru":
            gru_jacobians(*args)
        else:
            raise ValueError(f"no gate-Jacobian kernel for {saved.model}")
        return out.reshape(n, batch, dim, dim)


# ---------------------------------------------------------------------------------- validation

#: (float32, float64) tolerances on the max relative error (see validate_kernels)
TOLERANCES: dict[str, tuple[float, float]] = {
    "rnn_chain_persistent": (1e-4, 1e-10),
    "rnn_adjoint_step_tiled": (1e-4, 1e-10),
    "lstm_jacobians": (1e-5, 1e-12),
    "gru_jacobians": (1e-5, 1e-12),
    "mgs_qr_logdiag": (1e-4, 1e-10),
    "chain_lstm": (1e-4, 1e-10),
    "chain_gru": (1e-4, 1e-10),
}
KERNEL_SHAPES: dict[str, list[tuple[int, ...]]] = {
    # (B, H, k, T, qr_every)
    "rnn_chain_persistent": [
        (4, 16, 4, 50, 1),
        (3, 64, 16, 40, 3),
        (2, 128, 32, 30, 1),
        (2, 128, 64, 20, 2),
    ],
    "rnn_adjoint_step_tiled": [(4, 40, 8, 30, 1), (2, 200, 16, 20, 2), (2, 300, 5, 15, 4)],
    # (T, B, H)
    "lstm_jacobians": [(3, 4, 8), (2, 3, 64), (2, 2, 130)],
    "gru_jacobians": [(3, 4, 8), (2, 3, 64), (2, 2, 130)],
    # (B, D, k)
    "mgs_qr_logdiag": [(64, 8, 8), (32, 100, 20), (8, 256, 64), (2, 256, 256)],
    # (B, H, k, T, qr_every)
    "chain_lstm": [(3, 16, 8, 30, 1), (2, 64, 32, 20, 2)],
    "chain_gru": [(3, 16, 8, 30, 1), (2, 100, 20, 20, 3)],
}


def _rel_log_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max(1, |ref|), elementwise (for accumulated logs)."""
    got, ref = np.asarray(got, F64), np.asarray(ref, F64)
    if not (np.isfinite(got).all() and np.isfinite(ref).all()):
        return math.inf
    return float((np.abs(got - ref) / np.maximum(1.0, np.abs(ref))).max())


def _rel_norm_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref| (for matrices whose entries may be tiny)."""
    got, ref = np.asarray(got, F64), np.asarray(ref, F64)
    if not np.isfinite(got).all():
        return math.inf
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-300))


def _round(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """a rounded to dtype and back to float64: the reference sees the kernel's exact inputs."""
    return np.asarray(a, dtype=dtype).astype(F64)


def _random_model_saved(model: str, batch: int, hidden: int, steps: int, seed: int) -> Saved:
    from bpttbench.models import RecurrentCell, init_parameters

    cell = RecurrentCell(model, 4, hidden, dtype=torch.float64)
    init_parameters(cell, "gaussian", 1.3, bias_scale=0.3, seed=seed)
    params = {n: p.detach() for n, p in cell.params().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(steps, batch, 4, generator=gen, dtype=torch.float64)
    return forward_saved(model, params, x, None, NumpyBackend())


def _round_saved(saved: Saved, dtype: np.dtype) -> Saved:
    fields = {f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)}
    for name in ("w_hh", "deriv", "gates", "dgates", "prev", "aux", "aux2"):
        if fields[name] is not None:
            fields[name] = _round(fields[name], dtype)
    return Saved(**fields)


def _to_cupy_saved(saved: Saved, dtype: np.dtype) -> Saved:
    fields = {f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)}
    for name in ("w_hh", "deriv", "gates", "dgates", "prev", "aux", "aux2"):
        if fields[name] is not None:
            fields[name] = cp.asarray(fields[name], dtype=dtype)
    fields["final_state"] = ()
    return Saved(**fields)


def _validate_one(name: str, shape: tuple[int, ...], dtype: np.dtype, seed: int) -> float:
    from bpttbench.jacobians.chain import run_chain

    rng = np.random.default_rng(seed)
    ref_bk = NumpyBackend()
    if name in ("rnn_chain_persistent", "rnn_adjoint_step_tiled"):
        batch, hidden, k, steps, qr_every = shape
        w = _round(rng.standard_normal((hidden, hidden)) * 1.3 / math.sqrt(hidden), dtype)
        deriv = _round(rng.uniform(0.05, 1.0, (steps, batch, hidden)), dtype)
        ref = Saved("rnn_tanh", hidden, steps, batch, w, deriv=deriv)
        tot_ref, rows_ref = run_chain(ref, ref_bk, k, qr_every)
        path = "persistent" if name == "rnn_chain_persistent" else "tiled"
        got_bk = CupyBackend(dtype, rnn_path=path)
        tot, rows = got_bk.run_chain(_to_cupy_saved(ref, dtype), k, qr_every, None)
        return max(_rel_log_err(rows, rows_ref), _rel_log_err(tot, tot_ref))
    if name in ("lstm_jacobians", "gru_jacobians"):
        steps, batch, hidden = shape
        model = name.split("_")[0]
        ref = _round_saved(_random_model_saved(model, batch, hidden, steps, seed), dtype)
        jac_ref = step_jacobians(ref, ref_bk)
        jac = CupyBackend(dtype).build_jacobians(_to_cupy_saved(ref, dtype), 0, steps)
        return _rel_norm_err(cp.asnumpy(jac), jac_ref)
    if name == "mgs_qr_logdiag":
        batch, dim, k = shape
        a = rng.standard_normal((batch, dim, k)) * np.exp(np.linspace(0.0, -4.0, k))
        a = _round(a, dtype)
        q_ref, log_ref = ref_bk.qr_logdiag(a)
        q, logd = CupyBackend(dtype).qr_logdiag(cp.asarray(a, dtype=dtype))
        return max(_rel_log_err(cp.asnumpy(logd), log_ref), _rel_norm_err(cp.asnumpy(q), q_ref))
    if name in ("chain_lstm", "chain_gru"):
        batch, hidden, k, steps, qr_every = shape
        model = name.split("_")[1]
        ref = _round_saved(_random_model_saved(model, batch, hidden, steps, seed), dtype)
        tot_ref, rows_ref = run_chain(ref, ref_bk, k, qr_every)
        tot, rows = CupyBackend(dtype).run_chain(_to_cupy_saved(ref, dtype), k, qr_every, None)
        return max(_rel_log_err(rows, rows_ref), _rel_log_err(tot, tot_ref))
    raise ValueError(f"unknown kernel {name!r}; known: {', '.join(KERNEL_SHAPES)}")


def validate_kernels(
    kernels: Sequence[str] | None = None,
    dtypes: Sequence[str] = ("float32", "float64"),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every kernel against the numpy float64 reference on several shapes (needs a GPU).

    The reference gets the kernel's exact inputs (rounded to the kernel dtype), so the
    error measures the kernel's arithmetic. max_rel_err is max |got - ref| / max(1, |ref|)
    for accumulated logs (chains, QR log|diag R|) and max |got - ref| / max |ref| for
    matrices (Jacobians, Q). Returns one dict per (kernel, shape, dtype): kernel, shape,
    dtype, max_rel_err, tolerance, passed.
    """
    _require()
    names = list(KERNEL_SHAPES) if kernels is None else list(kernels)
    results = []
    for name in names:
        if name not in KERNEL_SHAPES:
            raise ValueError(f"unknown kernel {name!r}; known: {', '.join(KERNEL_SHAPES)}")
        for dtype_name in dtypes:
            dtype = cupy_dtype(np.dtype(dtype_name))
            tol = TOLERANCES[name][0 if dtype == np.dtype(np.float32) else 1]
            for i, shape in enumerate(KERNEL_SHAPES[name]):
                err = _validate_one(name, shape, dtype, seed + i)
                results.append(
                    {
                        "kernel": name,
                        "shape": "x".join(str(s) for s in shape),
                        "dtype": dtype_name,
                        "max_rel_err": err,
                        "tolerance": tol,
                        "passed": bool(err <= tol),
                    }
                )
    return results


def write_validation_csv(results: list[dict[str, Any]], path: str | Path) -> Path:
    """Write validate_kernels() output as CSV (atomically: temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    cols = ["kernel", "shape", "dtype", "max_rel_err", "tolerance", "passed"]
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for row in results:
            writer.writerow({c: row[c] for c in cols})
    tmp.replace(path)
    return path
