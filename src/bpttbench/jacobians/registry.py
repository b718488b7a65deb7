"""The one place that knows every backend of the Jacobian engine, by name.

Callers ask the registry (:func:`resolve_backend`, :func:`chain_backends`,
:func:`array_backend`, :func:`backend_for`); nothing else in the engine names a backend
class. Each :class:`BackendEntry` says where the forward pass that saves the gates runs,
how its record is handed to the chain's backend, which arrays it owns and whether it is
usable for a given set of parameters. ``auto`` picks the first entry of :data:`AUTO_ORDER`
that prefers the parameters (CuPy's kernels for parameters on a CUDA device where CuPy
works), else ``torch``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from bpttbench.jacobians import cupy_kernels
from bpttbench.jacobians.analytic import Saved
from bpttbench.jacobians.backends import Array, ArrayBackend, NumpyBackend, TorchBackend
from bpttbench.jacobians.cupy_backend import CupyBackend, saved_to_cupy

Params = Mapping[str, torch.Tensor]


def _torch_for(params: Params) -> TorchBackend:
    w = params["weight_hh_l0"]
    return TorchBackend(w.device, w.dtype)


def _same(saved: Saved) -> Saved:
    return saved


def _usable_anywhere(params: Params) -> None:
    return None


def _on_cuda(params: Params) -> bool:
    return params["weight_hh_l0"].device.type == "cuda"


def _cupy_check(params: Params) -> None:
    ok, why = cupy_kernels.cupy_available()
    if not ok:
        raise RuntimeError(f"backend 'cupy' is not usable here: {why}")
    if not _on_cuda(params):
        raise ValueError("backend 'cupy' needs params on a CUDA device")


def _cupy_chain(params: Params) -> ArrayBackend:
    return CupyBackend(dtype=cupy_kernels.cupy_dtype(params["weight_hh_l0"].dtype))


def _cupy_from_array(a: Array) -> ArrayBackend:
    return CupyBackend(dtype=a.dtype)


@dataclass(frozen=True)
class BackendEntry:
    """One backend: how to build it and where its forward pass runs.

    chain:     the backend the chain runs on, for these params
    forward:   the backend forward_saved runs on (the params' device and dtype, or float64;
               CuPy: its forward kernel, or torch's forward shared by DLPack past its limits)
    adopt:     the forward record moved to the chain backend's arrays (CuPy: torch tensors
               shared by DLPack, zero copy; the kernel's record is CuPy already)
    check:     raises, naming why, when the backend cannot run these params here
    prefers:   whether ``auto`` picks this backend for these params
    owns:      whether an array belongs to this backend (for :func:`backend_for`)
    from_array: the backend of such an array (in its dtype)
    """

    name: str
    chain: Callable[[Params], ArrayBackend]
    forward: Callable[[Params], ArrayBackend]
    adopt: Callable[[Saved], Saved]
    check: Callable[[Params], None]
    prefers: Callable[[Params], bool]
    owns: Callable[[Array], bool]
    from_array: Callable[[Array], ArrayBackend]


REGISTRY: dict[str, BackendEntry] = {
    e.name: e
    for e in (
        BackendEntry("numpy", lambda p: NumpyBackend(), lambda p: NumpyBackend(), _same,
                     _usable_anywhere, lambda p: False, lambda a: isinstance(a, np.ndarray),
                     lambda a: NumpyBackend(np, a.dtype)),
        BackendEntry("torch", _torch_for, _torch_for, _same, _usable_anywhere, lambda p: True,
                     lambda a: isinstance(a, torch.Tensor),
                     lambda a: TorchBackend(a.device, a.dtype)),
        BackendEntry("cupy", _cupy_chain, _cupy_chain, saved_to_cupy, _cupy_check,
                     lambda p: _on_cuda(p) and cupy_kernels.cupy_available()[0],
                     lambda a: type(a).__module__.startswith("cupy"), _cupy_from_array),
    )
}
#: the config's ``jacobian_backend`` values
BACKENDS: tuple[str, ...] = ("auto", *REGISTRY)
#: ``auto``: the first of these that prefers the params
AUTO_ORDER: tuple[str, ...] = ("cupy", "torch")


def resolve_backend(backend: str, params: Params) -> str:
    """'auto' -> 'cupy' when params live on CUDA and CuPy with a GPU is usable, else 'torch'."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return next(n for n in AUTO_ORDER if REGISTRY[n].prefers(params))


def chain_backends(name: str, params: Params
                   ) -> tuple[ArrayBackend, ArrayBackend, Callable[[Saved], Saved]]:
    """(forward backend, chain backend, adopt) of a resolved backend name for these params;
    raises with the reason when the backend cannot run them here."""
    entry = REGISTRY[resolve_backend(name, params)]
    entry.check(params)
    return entry.forward(params), entry.chain(params), entry.adopt


def array_backend(name: str, params: Params) -> ArrayBackend:
    """numpy (float64 CPU) or torch (params' dtype and device): the backends whose arrays
    :func:`bpttbench.jacobians.jacobians` returns."""
    if name not in ("numpy", "torch"):
        raise ValueError(f"unknown array backend {name!r}; allowed here: numpy, torch")
    return REGISTRY[name].chain(params)


def backend_for(a: Array) -> ArrayBackend:
    """The backend owning array ``a`` (numpy in the array's dtype for NumPy arrays)."""
    for entry in REGISTRY.values():
        if entry.owns(a):
            return entry.from_array(a)
    raise TypeError(f"no Jacobian-engine backend for arrays of type {type(a).__name__}")
