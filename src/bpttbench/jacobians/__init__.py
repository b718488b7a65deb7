"""Jacobian engine: analytic per-step Jacobians and their adjoint (BPTT) chains.

Public API:

- :func:`analyse_chain` -> :class:`ChainResult`: Lyapunov exponents (after forward and
  alignment warm-ups, with standard errors), the QR frame's stretching, and the true
  singular values of P_{T,t} = J_T ... J_{t+1} (full-frame pass, :mod:`.spectrum`),
  applied backward (as BPTT does) with float64 log accumulation;
- :func:`jacobians`, :func:`forward_saved`, :func:`step_jacobians`: the analytic J_t;
- :func:`apply_adjoint_chain`, :func:`log_norm_adjoint_chain`: the chain applied to a
  given vector (delta_t = P_{T,t}^T delta_T), for delta checks;
- backends ``numpy`` (float64 oracle), ``torch`` (any device), ``cupy`` (CUDA kernels).

Layers, each importing only from the ones above it (tests/test_jacobians_layers.py):
frame (NumPy utilities) -> backends (protocol; numpy, torch) -> analytic (J_t) ->
cupy_kernels (loader, launch wrappers) -> cupy_forward (the forward record kernel) ->
cupy_backend -> registry (every backend by name)
-> loop (the one chain loop) -> spectrum (full-frame pass) -> chain (analyse_chain).
"""

from bpttbench.jacobians.analytic import Saved, forward_saved, step_jacobians
from bpttbench.jacobians.backends import ArrayBackend, NumpyBackend, TorchBackend
from bpttbench.jacobians.chain import (
    ChainResult,
    analyse_chain,
    apply_adjoint_chain,
    check_k,
    exponents_after_warmup,
    growth_rate,
    jacobians,
    log_norm_adjoint_chain,
    run_chain,
    slice_saved,
)
from bpttbench.jacobians.frame import initial_frame
from bpttbench.jacobians.registry import BACKENDS, backend_for, resolve_backend
from bpttbench.jacobians.spectrum import FullFrame, full_frame_chain, report_lags

__all__ = [
    "BACKENDS",
    "ArrayBackend",
    "ChainResult",
    "FullFrame",
    "NumpyBackend",
    "Saved",
    "TorchBackend",
    "analyse_chain",
    "apply_adjoint_chain",
    "backend_for",
    "check_k",
    "exponents_after_warmup",
    "forward_saved",
    "full_frame_chain",
    "growth_rate",
    "initial_frame",
    "jacobians",
    "log_norm_adjoint_chain",
    "report_lags",
    "resolve_backend",
    "run_chain",
    "slice_saved",
    "step_jacobians",
]
