"""CuPy backend of the Jacobian engine: NumPy-like operations from CuPy plus the custom kernels.

:class:`CupyBackend` is the NumPy backend with ``xp = cupy`` and the chain hooks of
:class:`~bpttbench.jacobians.backends.ArrayBackend` answered by the kernels of
:mod:`.cupy_kernels`: the tiled RNN step and the batched matmul apply J^T, the MGS QR and
the column-rescale kernel do the QR and rescale steps in place, the out-of-place QR, a
matmul and the full-frame update kernel do a step of the full-frame pass, the gate-Jacobian
kernels build the LSTM/GRU Jacobians, the persistent RNN kernel runs the whole chain
(:meth:`CupyBackend.fused_chain`) when the frame fits in shared memory, and the forward
record kernel runs forward_saved (:meth:`CupyBackend.forward_record`, :mod:`.cupy_forward`).
The chain loop itself is :func:`bpttbench.jacobians.loop.frame_loop`, the same for every
backend.

Names of the kernels module that callers used from here (``cupy_available``,
``cupy_dtype``, ``torch_stream``, the launch wrappers and constants) are re-exported; this
module itself calls them through the kernels module (``ck.name``), so a test that patches
:mod:`.cupy_kernels` reaches every launch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any

import numpy as np
import torch

from bpttbench.jacobians import cupy_forward
from bpttbench.jacobians import cupy_kernels as ck
from bpttbench.jacobians.analytic import Saved, forward_saved
from bpttbench.jacobians.backends import AdjointApply, NumpyBackend, TorchBackend
from bpttbench.jacobians.cupy_kernels import (  # noqa: F401 - re-exported for callers
    F64,
    KERNEL_DIR,
    KERNEL_ENTRY_POINTS,
    NTHREADS,
    NVRTC_OPTIONS,
    PERSISTENT_MAX_H,
    TILE,
    colnorm_rescale,
    cupy_available,
    cupy_dtype,
    full_frame_update,
    gru_jacobians,
    kernel_source,
    lstm_jacobians,
    max_optin_smem,
    mgs_qr_logdiag,
    mgs_qr_logdiag_out,
    persistent_smem_bytes,
    rnn_adjoint_step_tiled,
    rnn_chain_persistent,
    torch_stream,
)

RNN_PATHS = ("auto", "persistent", "tiled")


def saved_to_cupy(saved: Saved, dtype: Any = None) -> Saved:
    """The same Saved with every torch CUDA tensor shared into CuPy by DLPack (no copy)."""
    cp = ck.cp

    def conv(t: Any) -> Any:
        if t is None:
            return None
        a = cp.from_dlpack(t.detach().contiguous()) if isinstance(t, torch.Tensor) else t
        return a if dtype is None else a.astype(ck.cupy_dtype(dtype), copy=False)

    fields = {f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)}
    with ck.torch_stream():
        for name in ("w_hh", "deriv", "gates", "dgates", "prev", "aux", "aux2"):
            fields[name] = conv(fields[name])
        fields["final_state"] = tuple(conv(s) for s in saved.final_state)
    return Saved(**fields)


def warn_full_frame_float32(dtype: Any, k: int, dim: int, qr_every: int) -> None:
    """float32 with k = D and qr_every > 1 loses digits in the lowest exponents (any backend)."""
    if np.dtype(dtype) == np.dtype(np.float32) and k == dim and qr_every > 1:
        warnings.warn(
            f"float32 chain with k = D = {dim} and qr_every = {qr_every}: the full frame becomes "
            "ill-conditioned between QRs and the lowest exponents lose accuracy (1e-4..1e-1 "
            "relative, docs/NUMERICS.md); use qr_every = 1, k < D or float64",
            RuntimeWarning,
            stacklevel=4,
        )


class CupyBackend(NumpyBackend):
    """NumPy-like operations from CuPy plus the fused kernels for the chain.

    ``rnn_path``: "auto" (persistent kernel when H <= 128 and the frame fits in shared
    memory, tiled otherwise), "persistent" or "tiled" (for validation and benchmarks).
    """

    name = "cupy"

    def __init__(self, dtype: Any = np.float64, rnn_path: str = "auto") -> None:
        ck.require()
        if rnn_path not in RNN_PATHS:
            raise ValueError(f"rnn_path={rnn_path!r}; allowed: {', '.join(RNN_PATHS)}")
        super().__init__(ck.cp, ck.cupy_dtype(dtype))
        self.rnn_path = rnn_path

    def loop_context(self, elements: int) -> contextlib.AbstractContextManager[None]:
        return ck.torch_stream()  # every launch of the loop on torch's current stream

    def asarray(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return self.xp.from_dlpack(x.detach().contiguous()).astype(self.dtype, copy=False)
        return self.xp.asarray(x, dtype=self.dtype)

    def to_numpy(self, a: Any) -> np.ndarray:
        return self.xp.asnumpy(a)

    def qr_logdiag(self, a: Any) -> tuple[Any, Any]:
        """(Q, log|diag R|) by the out-of-place MGS kernel: one launch, ``a`` unchanged."""
        cp = self.xp
        src = cp.ascontiguousarray(a)
        q = cp.empty(a.shape, dtype=a.dtype)
        logd = cp.empty(a.shape[:-2] + (a.shape[-1],), dtype=ck.F64)
        ck.mgs_qr_logdiag_out(src.reshape(-1, *a.shape[-2:]), q.reshape(-1, *a.shape[-2:]),
                              logd.reshape(-1, a.shape[-1]))
        return q, logd

    def full_frame_step(self, m: Any, u: Any, logc: Any, mask: Any) -> tuple[Any, Any, Any, Any]:
        """The full-frame QR step in three launches: the out-of-place MGS QR (its logs written,
        M kept), R = Q^T M (one batched matmul) and full_frame_update (R's upper triangle only,
        so no mask; R widened to float64 inside; A = R A, unit columns, logs accumulated).
        The generic formulas (three more matmul-class ops and ~10 element-wise launches) when
        the update's U tile does not fit in shared memory."""
        batch, dim, _ = m.shape
        if ck.full_frame_smem_bytes(dim) > ck.max_optin_smem():
            return super().full_frame_step(m, u, logc, mask)
        cp = self.xp
        q, logd = self.qr_logdiag(m)
        r = cp.matmul(q.transpose(0, 2, 1), m)  # the R of M = Q R (read above the diagonal)
        u_new, logc_new = cp.empty_like(u), cp.empty_like(logc)
        ck.full_frame_update(r, u, logc, u_new, logc_new)
        return q, logd, u_new, logc_new

    def choose_rnn_path(self, hidden: int, k: int, dtype: Any) -> str:
        fits = hidden <= ck.PERSISTENT_MAX_H and ck.persistent_smem_bytes(hidden, k, dtype) <= (
            ck.max_optin_smem()
        )
        if self.rnn_path == "persistent" and not fits:
            raise ValueError(f"persistent RNN kernel does not fit H={hidden}, k={k}")
        if self.rnn_path == "auto":
            return "persistent" if fits else "tiled"
        return self.rnn_path

    # -- chain hooks ------------------------------------------------------------------------
    def adjoint_apply(self, saved: Saved) -> AdjointApply:
        """J^T Q into a new buffer: the tiled RNN kernel, or a batched matmul of the gated J."""
        cp = self.xp
        w = cp.ascontiguousarray(saved.w_hh)
        if saved.model.startswith("rnn_"):
            deriv = cp.ascontiguousarray(saved.deriv, dtype=w.dtype)

            def apply_rnn(i: int, q: Any, jac: Any, lo: int) -> Any:
                out = cp.empty_like(q)
                ck.rnn_adjoint_step_tiled(deriv[i], w, q, out)
                return out

            return apply_rnn

        def apply_gated(i: int, q: Any, jac: Any, lo: int) -> Any:
            out = cp.empty_like(q)
            cp.matmul(jac[i - lo].transpose(0, 2, 1), q, out=out)
            return out

        return apply_gated

    def qr_accumulate(self, m: Any, total: Any, scale: Any) -> tuple[Any, Any, Any]:
        """In place: m -> Q (MGS kernel), total += log|diag R| + scale, scale = 0."""
        ck.mgs_qr_logdiag(m, total)
        total += scale
        scale[...] = 0.0
        return m, total, scale

    def rescale_accumulate(self, m: Any, total: Any, scale: Any) -> tuple[Any, Any, Any]:
        """In place (one kernel): unit columns, scale += log norms; returns total + scale."""
        row = self.xp.empty(tuple(total.shape), dtype=ck.F64)
        ck.colnorm_rescale(m, scale, total, row)
        return m, scale, row

    def fused_chain(self, saved: Saved, k: int, qr_every: int, frame0: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The whole vanilla-RNN chain in the persistent kernel (chunks of steps per launch)
        when the frame fits in shared memory; None otherwise (the Python loop runs)."""
        cp = self.xp
        steps, batch, dim = saved.steps, saved.batch, saved.dim
        w = cp.ascontiguousarray(saved.w_hh)
        dt = w.dtype
        warn_full_frame_float32(dt, k, dim, qr_every)
        if not saved.model.startswith("rnn_") or self.choose_rnn_path(
                saved.hidden, k, dt) != "persistent":
            return None
        with ck.torch_stream():
            deriv = cp.ascontiguousarray(saved.deriv, dtype=dt)
            q = cp.ascontiguousarray(cp.broadcast_to(cp.asarray(frame0, dtype=dt), (batch, dim, k)))
            scale = cp.zeros((batch, k), dtype=ck.F64)
            total = cp.zeros((batch, k), dtype=ck.F64)
            rows = cp.empty((steps, k), dtype=ck.F64)
            chunk = max(1, ck.ROWS_CHUNK_BYTES // (batch * k * 8))
            lag0 = 0
            while lag0 < steps:
                n = min(chunk, steps - lag0)
                buf = cp.empty((n, batch, k), dtype=ck.F64)
                ck.rnn_chain_persistent(deriv, w, q, scale, total, buf, t_first=steps - 1 - lag0,
                                     n_steps=n, lag0=lag0, qr_every=qr_every, total_steps=steps)
                rows[lag0 : lag0 + n] = buf.mean(axis=1)
                lag0 += n
            return cp.asnumpy(total), cp.asnumpy(rows)

    def forward_record(self, model: str, params: Any, x: Any, state0: Any) -> Saved:
        """forward_saved's record by kernels/forward_record.cu (:mod:`.cupy_forward`) when it
        takes the H and dtype; else the torch forward on the params' device, shared into CuPy,
        with a warning naming why (once per reason)."""
        w = params["weight_hh_l0"]
        why = cupy_forward.unusable_reason(model, int(w.shape[1]), w.dtype)
        if not why:
            return cupy_forward.record(model, params, x, state0, self)
        warnings.warn(f"forward record by the torch path, not the CuPy kernel: {why}",
                      RuntimeWarning, stacklevel=3)
        torch_bk = TorchBackend(w.device, w.dtype)
        return saved_to_cupy(forward_saved(model, params, x, state0, torch_bk), self.dtype)

    def build_jacobians(self, saved: Saved, lo: int, hi: int) -> Any:
        """J_{i+1} for i in [lo, hi) with the gate-Jacobian kernels: [hi-lo, B, D, D]."""
        cp = self.xp
        n, batch, dim = hi - lo, saved.batch, saved.dim
        w = cp.ascontiguousarray(saved.w_hh)
        dt = w.dtype

        def flat(a: Any) -> Any:
            return cp.ascontiguousarray(a[lo:hi], dtype=dt).reshape(n * batch, -1)

        out = cp.empty((n * batch, dim, dim), dtype=dt)
        args = [flat(saved.gates), flat(saved.dgates), flat(saved.prev), flat(saved.aux),
                flat(saved.aux2), w, out]
        if saved.model == "lstm":
            ck.lstm_jacobians(*args)
        elif saved.model == "gru":
            ck.gru_jacobians(*args)
        else:
            raise ValueError(f"no gate-Jacobian kernel for {saved.model}")
        return out.reshape(n, batch, dim, dim)
