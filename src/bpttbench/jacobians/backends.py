"""A tiny array-backend interface for the Jacobian engine.

The analytic Jacobians and the chain are written once against this interface, so
the same formulas run on

- ``numpy``: float64 on the CPU, the reference (oracle) every other backend is tested against;
- ``torch``: any device and dtype (the params' own);
- ``cupy``: CuPy arrays plus custom CUDA kernels (see :mod:`bpttbench.jacobians.cupy_backend`).

Only what the engine needs is here: elementwise functions, batched matmul via ``@``,
swapping the last two axes, reduced batched QR, and float64 conversion for the
log accumulators. Arithmetic operators (``+ - * / @``) work on every backend's arrays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

Array = Any  # np.ndarray | torch.Tensor | cupy.ndarray

BACKENDS: tuple[str, ...] = ("auto", "numpy", "torch", "cupy")
#: frames up to this many elements (B * D * k) run their CPU torch loop on one thread
SMALL_PROBLEM_ELEMENTS = 1 << 16


class ArrayBackend:
    """Base class; subclasses provide the array operations used by the engine."""

    name: str = "base"

    @contextlib.contextmanager
    def small_problem(self, elements: int) -> Iterator[None]:
        """Context for a long loop of small ops (lets the torch CPU backend use one thread)."""
        yield

    # -- conversion -------------------------------------------------------------------
    def asarray(self, x: Any) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_numpy(self, a: Array) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def f64(self, a: Array) -> Array:
        """The same values as float64 on the same device (for log accumulators)."""
        raise NotImplementedError  # pragma: no cover

    def like(self, a: Array, ref: Array) -> Array:
        """``a`` cast to the dtype of ``ref``."""
        raise NotImplementedError  # pragma: no cover

    # -- construction -----------------------------------------------------------------
    def zeros(self, shape: tuple[int, ...], ref: Array) -> Array:  # pragma: no cover
        raise NotImplementedError

    def zeros64(self, shape: tuple[int, ...], ref: Array) -> Array:  # pragma: no cover
        raise NotImplementedError

    def eye(self, n: int, ref: Array) -> Array:  # pragma: no cover
        raise NotImplementedError

    # -- elementwise and shape ops --------------------------------------------------------
    def exp(self, a: Array) -> Array:  # pragma: no cover
        raise NotImplementedError

    def tanh(self, a: Array) -> Array:  # pragma: no cover
        raise NotImplementedError

    def sigmoid(self, a: Array) -> Array:  # pragma: no cover
        raise NotImplementedError

    def log(self, a: Array) -> Array:  # pragma: no cover
        raise NotImplementedError

    def sqrt(self, a: Array) -> Array:  # pragma: no cover
        raise NotImplementedError

    def abs(self, a: Array) -> Array:  # pragma: no cover
        raise NotImplementedError

    def where(self, cond: Array, a: Array, b: Array) -> Array:  # pragma: no cover
        raise NotImplementedError

    def mT(self, a: Array) -> Array:  # pragma: no cover
        """Swap the last two axes (a view where the backend allows)."""
        raise NotImplementedError

    def cat(self, arrays: list[Array], axis: int) -> Array:  # pragma: no cover
        raise NotImplementedError

    def stack(self, arrays: list[Array], axis: int) -> Array:  # pragma: no cover
        raise NotImplementedError

    def split(self, a: Array, parts: int, axis: int) -> list[Array]:  # pragma: no cover
        raise NotImplementedError

    def diagonal(self, a: Array) -> Array:  # pragma: no cover
        """Diagonal of the last two axes."""
        raise NotImplementedError

    def diag_embed(self, v: Array) -> Array:  # pragma: no cover
        """[..., n] -> [..., n, n] with v on the diagonal."""
        raise NotImplementedError

    def sum(self, a: Array, axis: int) -> Array:  # pragma: no cover
        raise NotImplementedError

    def mean(self, a: Array, axis: int) -> Array:  # pragma: no cover
        raise NotImplementedError

    def isfinite_all(self, a: Array, axes: tuple[int, ...]) -> Array:  # pragma: no cover
        raise NotImplementedError

    # -- linear algebra ---------------------------------------------------------------------
    def qr(self, a: Array) -> tuple[Array, Array]:  # pragma: no cover
        """Reduced QR of a batch [..., m, n] (m >= n)."""
        raise NotImplementedError

    def logabsdet(self, a: Array) -> Array:  # pragma: no cover
        """ln|det a| of a batch [..., n, n] by LU (-inf for a singular matrix)."""
        raise NotImplementedError

    # -- shared helpers built on the primitives ------------------------------------------------
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


class NumpyBackend(ArrayBackend):
    """NumPy (or any NumPy-compatible module ``xp``, e.g. CuPy), float64 by default."""

    name = "numpy"

    def __init__(self, xp: Any = np, dtype: Any = np.float64) -> None:
        self.xp = xp
        self.dtype = dtype

    def asarray(self, x: Any) -> Array:
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float64).numpy()
        return self.xp.asarray(x, dtype=self.dtype)

    def to_numpy(self, a: Array) -> np.ndarray:
        return np.asarray(a)

    def f64(self, a: Array) -> Array:
        return a.astype(self.xp.float64, copy=False)

    def like(self, a: Array, ref: Array) -> Array:
        return a.astype(ref.dtype, copy=False)

    def zeros(self, shape: tuple[int, ...], ref: Array) -> Array:
        return self.xp.zeros(shape, dtype=ref.dtype)

    def zeros64(self, shape: tuple[int, ...], ref: Array) -> Array:
        return self.xp.zeros(shape, dtype=self.xp.float64)

    def eye(self, n: int, ref: Array) -> Array:
        return self.xp.eye(n, dtype=ref.dtype)

    def exp(self, a: Array) -> Array:
        return self.xp.exp(a)

    def tanh(self, a: Array) -> Array:
        return self.xp.tanh(a)

    def sigmoid(self, a: Array) -> Array:
        # numerically safe for both signs: 0.5 * (1 + tanh(a / 2))
        return 0.5 * (1.0 + self.xp.tanh(0.5 * a))

    def log(self, a: Array) -> Array:
        return self.xp.log(a)

    def sqrt(self, a: Array) -> Array:
        return self.xp.sqrt(a)

    def abs(self, a: Array) -> Array:
        return self.xp.abs(a)

    def where(self, cond: Array, a: Array, b: Array) -> Array:
        return self.xp.where(cond, a, b)

    def mT(self, a: Array) -> Array:
        return self.xp.swapaxes(a, -1, -2)

    def cat(self, arrays: list[Array], axis: int) -> Array:
        return self.xp.concatenate(arrays, axis=axis)

    def stack(self, arrays: list[Array], axis: int) -> Array:
        return self.xp.stack(arrays, axis=axis)

    def split(self, a: Array, parts: int, axis: int) -> list[Array]:
        return list(self.xp.split(a, parts, axis=axis))

    def diagonal(self, a: Array) -> Array:
        return self.xp.diagonal(a, axis1=-2, axis2=-1)

    def diag_embed(self, v: Array) -> Array:
        n = v.shape[-1]
        return v[..., :, None] * self.xp.eye(n, dtype=v.dtype)

    def sum(self, a: Array, axis: int) -> Array:
        return a.sum(axis=axis)

    def mean(self, a: Array, axis: int) -> Array:
        return a.mean(axis=axis)

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

    def logabsdet(self, a: Array) -> Array:
        return self.xp.linalg.slogdet(a)[1]


class TorchBackend(ArrayBackend):
    """PyTorch on any device, in the dtype of the data it is given."""

    name = "torch"

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype

    @contextlib.contextmanager
    def small_problem(self, elements: int) -> Iterator[None]:
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

    def asarray(self, x: Any) -> Array:
        t = torch.as_tensor(x)
        return t.detach().to(device=self.device or t.device, dtype=self.dtype or t.dtype)

    def to_numpy(self, a: Array) -> np.ndarray:
        return a.detach().cpu().numpy()

    def f64(self, a: Array) -> Array:
        return a.to(torch.float64)

    def like(self, a: Array, ref: Array) -> Array:
        return a.to(ref.dtype)

    def zeros(self, shape: tuple[int, ...], ref: Array) -> Array:
        return torch.zeros(shape, dtype=ref.dtype, device=ref.device)

    def zeros64(self, shape: tuple[int, ...], ref: Array) -> Array:
        return torch.zeros(shape, dtype=torch.float64, device=ref.device)

    def eye(self, n: int, ref: Array) -> Array:
        return torch.eye(n, dtype=ref.dtype, device=ref.device)

    def exp(self, a: Array) -> Array:
        return torch.exp(a)

    def tanh(self, a: Array) -> Array:
        return torch.tanh(a)

    def sigmoid(self, a: Array) -> Array:
        return torch.sigmoid(a)

    def log(self, a: Array) -> Array:
        return torch.log(a)

    def sqrt(self, a: Array) -> Array:
        return torch.sqrt(a)

    def abs(self, a: Array) -> Array:
        return torch.abs(a)

    def where(self, cond: Array, a: Array, b: Array) -> Array:
        return torch.where(cond, a, b)

    def mT(self, a: Array) -> Array:
        return a.transpose(-1, -2)

    def cat(self, arrays: list[Array], axis: int) -> Array:
        return torch.cat(arrays, dim=axis)

    def stack(self, arrays: list[Array], axis: int) -> Array:
        return torch.stack(arrays, dim=axis)

    def split(self, a: Array, parts: int, axis: int) -> list[Array]:
        return list(a.chunk(parts, dim=axis))

    def diagonal(self, a: Array) -> Array:
        return torch.diagonal(a, dim1=-2, dim2=-1)

    def diag_embed(self, v: Array) -> Array:
        return torch.diag_embed(v)

    def sum(self, a: Array, axis: int) -> Array:
        return a.sum(dim=axis)

    def mean(self, a: Array, axis: int) -> Array:
        return a.mean(dim=axis)

    def isfinite_all(self, a: Array, axes: tuple[int, ...]) -> Array:
        return torch.isfinite(a).flatten(start_dim=a.dim() + min(axes)).all(dim=-1)

    def qr(self, a: Array) -> tuple[Array, Array]:
        # torch.linalg.qr propagates NaN without raising, so no masking is needed here
        return torch.linalg.qr(a, mode="reduced")

    def logabsdet(self, a: Array) -> Array:
        return torch.linalg.slogdet(a)[1]


def numpy_backend() -> NumpyBackend:
    return NumpyBackend()


def torch_backend(device: torch.device | str | None = None, dtype: torch.dtype | None = None):
    return TorchBackend(device, dtype)


def backend_for(a: Array) -> ArrayBackend:
    """The backend owning array ``a`` (numpy float64 for NumPy arrays)."""
    if isinstance(a, torch.Tensor):
        return TorchBackend(a.device, a.dtype)
    if isinstance(a, np.ndarray):
        return NumpyBackend(np, a.dtype)
    mod = type(a).__module__
    if mod.startswith("cupy"):
        from bpttbench.jacobians.cupy_backend import CupyBackend

        return CupyBackend(dtype=a.dtype)
    raise TypeError(f"no Jacobian-engine backend for arrays of type {type(a).__name__}")
