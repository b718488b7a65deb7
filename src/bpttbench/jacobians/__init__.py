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
"""

from bpttbench.jacobians.analytic import Saved, forward_saved, jacobians, step_jacobians
from bpttbench.jacobians.backends import (
    BACKENDS,
    ArrayBackend,
    NumpyBackend,
    TorchBackend,
    backend_for,
)
from bpttbench.jacobians.chain import (
    ChainResult,
    analyse_chain,
    apply_adjoint_chain,
    check_k,
    exponents_after_warmup,
    growth_rate,
    initial_frame,
    log_norm_adjoint_chain,
    resolve_backend,
    run_chain,
    slice_saved,
)
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
