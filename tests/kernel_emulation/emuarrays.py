"""Device arrays of the kernel-emulation stand-in that count CuPy's own launches (tests only).

With ``install(monkeypatch, count_ops=True)`` (emucupy.py) the stand-in ``cupy`` hands out
:class:`DeviceArray`\\ s, numpy arrays that record, in ``Emulator.array_ops``, every operation
CuPy would run on the device as one launch of its own (an element-wise or reduction kernel, a
cuBLAS matmul, a memset, a device copy), so the array ops of a code path are counted the way
the stand-in's RawKernel counts our kernels (``Emulator.launches``):

- one per ufunc call (``a * b``, ``1.0 / a``, ``a > 0``, ``log``, ``a @ b``, ``cp.matmul``),
  reduction (``a.sum(axis)``, ``max``, ``all``) and ``mean`` (one reduction kernel in CuPy);
- one per array function that computes or copies (``where``, ``concatenate``, ``stack``,
  ``linalg.*``...); none for views and metadata (:data:`VIEWS`);
- one per ``zeros``/``eye``/``array`` copy/``ascontiguousarray`` copy/``astype`` conversion,
  ``copy()``, ``fill()``, item assignment and advanced (array) indexing; none for ``empty``,
  ``empty_like``, basic indexing, ``reshape`` of a contiguous array, ``from_dlpack`` and the
  host transfers (``asnumpy``; ``asarray`` of host data is recorded as ``"h2d"``).

A matmul is one launch as written (CuPy may add a copy for an operand it cannot hand to
cuBLAS as it is; not modelled).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: array functions that make a view or read metadata: no launch
VIEWS = frozenset({
    np.swapaxes, np.transpose, np.diagonal, np.reshape, np.broadcast_to, np.squeeze,
    np.expand_dims, np.moveaxis, np.shape, np.ndim, np.size, np.result_type, np.can_cast,
    np.may_share_memory, np.shares_memory, np.empty_like,
})  # fmt: skip


def host(a: Any) -> Any:
    """``a`` as a plain numpy array (recursively in lists and tuples); anything else as is."""
    if isinstance(a, DeviceArray):
        return a.view(np.ndarray)
    if isinstance(a, list | tuple) and not hasattr(a, "_fields"):
        return type(a)(host(x) for x in a)
    return a


def device(a: Any) -> Any:
    """Arrays (and scalars from full reductions) as DeviceArrays, recursively in tuples."""
    if isinstance(a, DeviceArray):
        return a
    if isinstance(a, np.ndarray):
        return a.view(DeviceArray)
    if isinstance(a, np.generic):
        return np.asarray(a).view(DeviceArray)
    if isinstance(a, tuple):
        items = [device(x) for x in a]
        return type(a)(*items) if hasattr(a, "_fields") else tuple(items)
    return a


def _advanced(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, list) or (isinstance(k, np.ndarray) and k.ndim > 0) for k in keys)


class DeviceArray(np.ndarray):
    """A numpy array standing in for a CuPy array; see the module docstring."""

    ops: list[str] | None = None  # the Emulator's array_ops (set by emucupy.install)

    @classmethod
    def record(cls, name: str) -> None:
        if cls.ops is not None:
            cls.ops.append(name)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if out is not None:
            kwargs["out"] = host(tuple(out))
        result = getattr(ufunc, method)(*host(inputs), **kwargs)
        self.record(ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}")
        if out is not None:
            return out[0] if len(out) == 1 else tuple(out)
        return device(result)

    def __array_function__(self, func, types, args, kwargs):
        result = func(*host(args), **{k: host(v) for k, v in kwargs.items()})
        if func not in VIEWS:
            self.record(func.__name__)
        return device(result)

    def __getitem__(self, key: Any) -> Any:
        if _advanced(key):
            self.record("take")
        return device(self.view(np.ndarray)[host(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self.view(np.ndarray)[host(key)] = host(value)
        self.record("setitem")

    def astype(self, dtype: Any, *args: Any, copy: bool = True, **kwargs: Any) -> Any:
        if copy or np.dtype(dtype) != self.dtype:
            self.record("astype")
        return device(self.view(np.ndarray).astype(dtype, *args, copy=copy, **kwargs))

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        self.record("copy")
        return device(self.view(np.ndarray).copy(*args, **kwargs))

    def fill(self, value: Any) -> None:
        self.view(np.ndarray).fill(value)
        self.record("fill")

    def mean(self, *args: Any, **kwargs: Any) -> Any:
        self.record("mean")
        return device(self.view(np.ndarray).mean(*args, **kwargs))


class Creation:
    """The stand-in cupy's creation functions that hand out DeviceArrays (count_ops=True)."""

    @staticmethod
    def zeros(shape: Any, dtype: Any = float, **kw: Any) -> DeviceArray:
        DeviceArray.record("memset")
        return device(np.zeros(shape, dtype=dtype, **kw))

    @staticmethod
    def zeros_like(a: Any, dtype: Any = None) -> DeviceArray:
        DeviceArray.record("memset")
        return device(np.zeros_like(host(a), dtype=dtype))

    @staticmethod
    def empty(shape: Any, dtype: Any = float, **kw: Any) -> DeviceArray:
        return device(np.empty(shape, dtype=dtype, **kw))

    @staticmethod
    def empty_like(a: Any, dtype: Any = None) -> DeviceArray:
        return device(np.empty_like(host(a), dtype=dtype))

    @staticmethod
    def eye(n: int, dtype: Any = float, **kw: Any) -> DeviceArray:
        DeviceArray.record("eye")
        return device(np.eye(n, dtype=dtype, **kw))

    @staticmethod
    def array(a: Any, dtype: Any = None, copy: bool = True, order: str = "K") -> DeviceArray:
        DeviceArray.record("copy" if isinstance(a, DeviceArray) else "h2d")
        return device(np.array(host(a), dtype=dtype, copy=True, order=order))

    @staticmethod
    def asarray(a: Any, dtype: Any = None, order: Any = None) -> DeviceArray:
        if not isinstance(a, DeviceArray):
            DeviceArray.record("h2d")
        elif dtype is not None and np.dtype(dtype) != a.dtype:
            DeviceArray.record("astype")
        return device(np.asarray(host(a), dtype=dtype, order=order))

    @staticmethod
    def ascontiguousarray(a: Any, dtype: Any = None) -> DeviceArray:
        out = np.ascontiguousarray(host(a), dtype=dtype)
        if not isinstance(a, DeviceArray):
            DeviceArray.record("h2d")
        elif not np.shares_memory(out, host(a)):
            DeviceArray.record("copy")
        return device(out)

    @staticmethod
    def from_dlpack(x: Any) -> DeviceArray:  # zero copy (torch shares its buffer)
        return device(np.from_dlpack(x))
