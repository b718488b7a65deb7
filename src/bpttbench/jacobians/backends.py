"""The array-backend protocol of the Jacobian engine and its NumPy and PyTorch implementations.

The analytic Jacobians (:mod:`.analytic`), the chain loop (:mod:`.loop`) and the full-frame
pass (:mod:`.spectrum`) are written once against :class:`ArrayBackend`, so the same
formulas run on

- ``numpy``: float64 on the CPU, the reference (oracle) every other backend is tested against;
- ``torch``: any device and dtype (the params' own);
- ``cupy``: CuPy arrays plus custom CUDA kernels (:mod:`.cupy_backend`, on top of this one).

One generic implementation, :class:`XpBackend`, holds every operation on which NumPy (or
CuPy) and PyTorch agree, called through the array namespace ``xp`` (``numpy``, ``torch``,
``cupy``); :class:`NumpyBackend` and :class:`TorchBackend` override only what the
namespaces spell differently (casts, placement, split, diag_embed, sigmoid, the finite
test, torch's transpose) or do differently (NumPy masks non-finite QR inputs; torch runs
small CPU loops on one thread). Arithmetic operators (``+ - * / @``) work on every backend's arrays.

The chain hooks (:meth:`ArrayBackend.qr_accumulate`, :meth:`~ArrayBackend.rescale_accumulate`,
:meth:`~ArrayBackend.adjoint_apply`, and the full-frame pass's
:meth:`~ArrayBackend.full_frame_step`) are the steps of the one chain loop; a backend with
kernels overrides them, and answers :meth:`~ArrayBackend.build_jacobians` and
:meth:`~ArrayBackend.fused_chain` and :meth:`~ArrayBackend.forward_record` (``None`` here: no
kernels, use the generic formulas).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

Array = Any  # np.ndarray | torch.Tensor | cupy.ndarray
#: a :class:`bpttbench.jacobians.analytic.Saved` (one layer up: not imported here)
Saved = Any
#: applies one transposed Jacobian: (time index i, frame q [B, D, k], J chunk or None,
#: first time index of the chunk) -> J_{i+1}^T q
AdjointApply = Callable[[int, Array, Array | None, int], Array]

#: frames up to this many elements (B * D * k) run their CPU torch loop on one thread
SMALL_PROBLEM_ELEMENTS = 1 << 16


class ArrayBackend(Protocol):
    """What the engine needs of an array library (see the module docstring)."""

    name: str

    def loop_context(self, elements: int) -> contextlib.AbstractContextManager[None]:
        """Context for a long loop over frames of ``elements`` elements (threads, streams)."""
        ...

    def asarray(self, x: Any) -> Array: ...
    def to_numpy(self, a: Array) -> np.ndarray: ...
    def f64(self, a: Array) -> Array: ...
    def like(self, a: Array, ref: Array) -> Array: ...
    def zeros(self, shape: tuple[int, ...], ref: Array) -> Array: ...
    def zeros64(self, shape: tuple[int, ...], ref: Array) -> Array: ...
    def eye(self, n: int, ref: Array) -> Array: ...
    def exp(self, a: Array) -> Array: ...
    def tanh(self, a: Array) -> Array: ...
    def sigmoid(self, a: Array) -> Array: ...
    def log(self, a: Array) -> Array: ...
    def sqrt(self, a: Array) -> Array: ...
    def abs(self, a: Array) -> Array: ...
    def where(self, cond: Array, a: Array, b: Array) -> Array: ...
    def mT(self, a: Array) -> Array: ...  # noqa: N802 - the array API's name
    def cat(self, arrays: list[Array], axis: int) -> Array: ...
    def stack(self, arrays: list[Array], axis: int) -> Array: ...
    def split(self, a: Array, parts: int, axis: int) -> list[Array]: ...
    def diagonal(self, a: Array) -> Array: ...
    def diag_embed(self, v: Array) -> Array: ...
    def sum(self, a: Array, axis: int) -> Array: ...
    def mean(self, a: Array, axis: int) -> Array: ...
    def isfinite_all(self, a: Array, axes: tuple[int, ...]) -> Array: ...
    def qr(self, a: Array) -> tuple[Array, Array]: ...
    def logabsdet(self, a: Array) -> Array: ...
    def colnorm64(self, m: Array) -> Array: ...
    def qr_logdiag(self, a: Array) -> tuple[Array, Array]: ...
    def unit_columns64(self, v: Array) -> tuple[Array, Array]: ...
    def itemsize(self, a: Array) -> int: ...

    # -- chain hooks (the steps of bpttbench.jacobians.loop.frame_loop) -------------------
    def adjoint_apply(self, saved: Saved) -> AdjointApply: ...
    def build_jacobians(self, saved: Saved, lo: int, hi: int) -> Array | None: ...
    def qr_accumulate(self, m: Array, total: Array, scale: Array) -> tuple[Array, Array, Array]: ...
    def rescale_accumulate(self, m: Array, total: Array, scale: Array
                           ) -> tuple[Array, Array, Array]: ...
    def fused_chain(self, saved: Saved, k: int, qr_every: int, frame0: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray] | None: ...
    def forward_record(self, model: str, params: Any, x: Array, state0: Any) -> Saved | None:
        """analytic.forward_saved's record by a backend's own kernel, or None (the formulas)."""
        ...

    def full_frame_step(self, m: Array, u: Array, logc: Array, mask: Array
                        ) -> tuple[Array, Array, Array, Array]: ...


class XpBackend:
    """Every operation NumPy, CuPy and PyTorch spell alike, through the namespace ``xp``.

    Subclasses set ``xp`` and provide the namespace-specific primitives ``_cast`` and
    ``_place`` (and the other methods marked there)."""

    name = "xp"
    xp: Any

    def loop_context(self, elements: int) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    # -- namespace-specific primitives (overridden) ----------------------------------------
    def _cast(self, a: Array, dtype: Any) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def _place(self, ref: Array, dtype: Any) -> dict[str, Any]:  # pragma: no cover - abstract
        """Keyword arguments that allocate an array of ``dtype`` where ``ref`` lives."""
        raise NotImplementedError

    # -- conversion and construction ---------------------------------------------------------
    def f64(self, a: Array) -> Array:
        """The same values as float64 on the same device (for log accumulators)."""
        return self._cast(a, self.xp.float64)

    def like(self, a: Array, ref: Array) -> Array:
        """``a`` cast to the dtype of ``ref``."""
        return self._cast(a, ref.dtype)

    def zeros(self, shape: tuple[int, ...], ref: Array) -> Array:
        return self.xp.zeros(shape, **self._place(ref, ref.dtype))

    def zeros64(self, shape: tuple[int, ...], ref: Array) -> Array:
        return self.xp.zeros(shape, **self._place(ref, self.xp.float64))

    def eye(self, n: int, ref: Array) -> Array:
        return self.xp.eye(n, **self._place(ref, ref.dtype))

    # -- elementwise and shape ops -------------------------------------------------------------
    def exp(self, a: Array) -> Array:
        return self.xp.exp(a)

    def tanh(self, a: Array) -> Array:
        return self.xp.tanh(a)

    def log(self, a: Array) -> Array:
        return self.xp.log(a)

    def sqrt(self, a: Array) -> Array:
        return self.xp.sqrt(a)

    def abs(self, a: Array) -> Array:
        return self.xp.abs(a)

    def where(self, cond: Array, a: Array, b: Array) -> Array:
        return self.xp.where(cond, a, b)

    def mT(self, a: Array) -> Array:  # noqa: N802
        """Swap the last two axes (a view)."""
        return self.xp.swapaxes(a, -1, -2)

    def cat(self, arrays: list[Array], axis: int) -> Array:
        return self.xp.concatenate(arrays, axis)

    def stack(self, arrays: list[Array], axis: int) -> Array:
        return self.xp.stack(arrays, axis)

    def diagonal(self, a: Array) -> Array:
        """Diagonal of the last two axes."""
        return self.xp.diagonal(a, 0, -2, -1)

    def sum(self, a: Array, axis: int) -> Array:
        return a.sum(axis)

    def mean(self, a: Array, axis: int) -> Array:
        return a.mean(axis)

    # -- linear algebra ------------------------------------------------------------------------
    def qr(self, a: Array) -> tuple[Array, Array]:
        """Reduced QR of a batch [..., m, n] (m >= n)."""
        return self.xp.linalg.qr(a, mode="reduced")

    def logabsdet(self, a: Array) -> Array:
        """ln|det a| of a batch [..., n, n] by LU (-inf for a singular matrix)."""
        return self.xp.linalg.slogdet(a)[1]

    def colnorm64(self, m: Array) -> Array:
        """2-norms of the columns of [..., m, n], computed in float64 (no float32 underflow)."""
        m64 = self.f64(m)
        return self.sqrt(self.sum(m64 * m64, axis=-2))

    def qr_logdiag(self, a: Array) -> tuple[Array, Array]:
        """Sign-fixed reduced QR: returns (Q with diag(R) >= 0, log|diag R| in float64).

        Batch elements containing inf/NaN give a NaN frame and NaN logs instead of
        an exception, so exploding chains are recorded as data.
        """
        q, r = self.qr(a)
        d = self.diagonal(r)
        sign = self.like(1.0 - 2.0 * (d < 0), q)
        q = q * sign[..., None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            logd = self.log(self.abs(self.f64(d)))
        return q, logd

    def unit_columns64(self, v: Array) -> tuple[Array, Array]:
        """(v with unit columns, ln of its column norms) for a float64 v [..., m, n], on v's
        device; a zero column stays zero (ln 0 = -inf)."""
        nrm = self.sqrt(self.sum(v * v, -2))
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = self.where(nrm > 0, 1.0 / nrm, 0.0)
            return v * inv[..., None, :], self.log(nrm)

    def itemsize(self, a: Array) -> int:
        """Bytes per element of ``a`` (numpy, cupy and torch dtypes all say it)."""
        return int(a.dtype.itemsize)

    # -- chain hooks -------------------------------------------------------------------------------
    def adjoint_apply(self, saved: Saved) -> AdjointApply:
        """J_{i+1}^T q: for the vanilla RNNs W^T (phi'(a) * q), no D x D matrix per step."""
        if saved.model.startswith("rnn_"):
            w_t, deriv = self.mT(saved.w_hh), saved.deriv
            return lambda i, q, jac, lo: w_t @ (deriv[i][..., :, None] * q)
        return lambda i, q, jac, lo: self.mT(jac[i - lo]) @ q

    def build_jacobians(self, saved: Saved, lo: int, hi: int) -> Array | None:
        """None: no Jacobian kernels here, the chain uses the analytic formulas."""
        return None

    def fused_chain(self, saved: Saved, k: int, qr_every: int, frame0: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """None: no fused whole-chain kernel here, the chain runs the Python loop."""
        return None

    def forward_record(self, model: str, params: Any, x: Array, state0: Any) -> Saved | None:
        """None: no forward kernel here, forward_saved runs the cell step by step."""
        return None

    def qr_accumulate(self, m: Array, total: Array, scale: Array) -> tuple[Array, Array, Array]:
        """QR step: (Q of m, total + log|diag R| + scale, zeroed scale)."""
        q, logd = self.qr_logdiag(m)
        return q, total + logd + scale, self.zeros64(tuple(scale.shape), scale)

    def full_frame_step(self, m: Array, u: Array, logc: Array, mask: Array
                        ) -> tuple[Array, Array, Array, Array]:
        """One QR step of the full-frame pass (:mod:`.spectrum`): M = Q R, and the float64
        update A_lag = R A_{lag-1} of A = U diag(e^logc) with U's columns made unit again.
        Returns (Q with diag R >= 0, ln|diag R| float64, new U, new logc); ``mask`` is the
        D x D upper-triangle mask in M's dtype (R = (Q^T M) * mask)."""
        q, logd = self.qr_logdiag(m)
        r = (self.mT(q) @ m) * mask  # the R of m = Q R (upper triangle, diag >= 0)
        u, lognrm = self.unit_columns64(self.f64(r) @ u)  # R_lag A_{lag-1}
        return q, logd, u, logc + lognrm

    def rescale_accumulate(self, m: Array, total: Array, scale: Array
                           ) -> tuple[Array, Array, Array]:
        """Rescale step: (m with unit columns, scale + log norms, total + new scale);
        the log scales stay in float64, zero columns stay zero."""
        nrm = self.colnorm64(m)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = scale + self.log(nrm)
            inv = self.where(nrm > 0, 1.0 / nrm, 0.0 * nrm)
        return m * self.like(inv, m)[..., None, :], scale, total + scale


class NumpyBackend(XpBackend):
    """NumPy (or any NumPy-compatible module ``xp``, e.g. CuPy), float64 by default."""

    name = "numpy"

    def __init__(self, xp: Any = np, dtype: Any = np.float64) -> None:
        self.xp = xp
        self.dtype = dtype

    def _cast(self, a: Array, dtype: Any) -> Array:
        return a.astype(dtype, copy=False)

    def _place(self, ref: Array, dtype: Any) -> dict[str, Any]:
        return {"dtype": dtype}

    def asarray(self, x: Any) -> Array:
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float64).numpy()
        return self.xp.asarray(x, dtype=self.dtype)

    def to_numpy(self, a: Array) -> np.ndarray:
        return np.asarray(a)

    def sigmoid(self, a: Array) -> Array:
        # relatively accurate on both tails and overflow-free: with e = exp(-|a|),
        # 1 / (1 + e) for a >= 0 and e / (1 + e) below (0.5 (1 + tanh(a / 2)) loses every
        # digit of sigmoid(a) for a << 0)
        e = self.xp.exp(-self.xp.abs(a))
        return self.xp.where(a >= 0, 1.0, e) / (1.0 + e)

    def split(self, a: Array, parts: int, axis: int) -> list[Array]:
        return list(self.xp.split(a, parts, axis=axis))

    def diag_embed(self, v: Array) -> Array:
        """[..., n] -> [..., n, n] with v on the diagonal."""
        return v[..., :, None] * self.xp.eye(v.shape[-1], dtype=v.dtype)

    def isfinite_all(self, a: Array, axes: tuple[int, ...]) -> Array:
        return self.xp.isfinite(a).all(axis=axes)

    def qr(self, a: Array) -> tuple[Array, Array]:
        finite = self.isfinite_all(a, (-2, -1))
        if bool(finite.all()):
            return self.xp.linalg.qr(a, mode="reduced")
        # LAPACK on NaN/inf is undefined behaviour: factor the finite batch elements only
        m, n = a.shape[-2:]
        q = self.xp.full(a.shape[:-2] + (m, n), self.xp.nan, dtype=a.dtype)
        r = self.xp.full(a.shape[:-2] + (n, n), self.xp.nan, dtype=a.dtype)
        if bool(finite.any()):
            qf, rf = self.xp.linalg.qr(a[finite], mode="reduced")
            q[finite], r[finite] = qf, rf
        return q, r


class TorchBackend(XpBackend):
    """PyTorch on any device, in the dtype of the data it is given."""

    name = "torch"
    xp = torch

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype

    @contextlib.contextmanager
    def loop_context(self, elements: int) -> Iterator[None]:
        # Intra-op threading of tiny CPU kernels (batched QR of [B, D, k] frames) costs far
        # more than it saves, by 100x on a loaded 2-core machine: run such loops on one
        # thread and restore the setting afterwards.
        on_cpu = self.device is None or self.device.type == "cpu"
        if not on_cpu or elements > SMALL_PROBLEM_ELEMENTS:
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _cast(self, a: Array, dtype: Any) -> Array:
        return a.to(dtype)

    def _place(self, ref: Array, dtype: Any) -> dict[str, Any]:
        return {"dtype": dtype, "device": ref.device}

    def asarray(self, x: Any) -> Array:
        t = torch.as_tensor(x)
        return t.detach().to(device=self.device or t.device, dtype=self.dtype or t.dtype)

    def to_numpy(self, a: Array) -> np.ndarray:
        return a.detach().cpu().numpy()

    def mT(self, a: Array) -> Array:  # noqa: N802
        # the same view as torch.swapaxes, without the alias op the profiler would count
        return a.transpose(-1, -2)

    def sigmoid(self, a: Array) -> Array:
        return torch.sigmoid(a)

    def split(self, a: Array, parts: int, axis: int) -> list[Array]:
        return list(a.chunk(parts, dim=axis))

    def diag_embed(self, v: Array) -> Array:
        return torch.diag_embed(v)

    def isfinite_all(self, a: Array, axes: tuple[int, ...]) -> Array:
        return torch.isfinite(a).flatten(start_dim=a.dim() + min(axes)).all(dim=-1)
