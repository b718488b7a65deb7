"""The forward record (:class:`~bpttbench.jacobians.analytic.Saved`) on the CuPy backend.

``analytic.forward_saved`` on the torch backend costs 23 (rnn_tanh) to 67 (LSTM,
deterministic) launches a time step (costmodel.TORCH_LAUNCHES "saved" + DETERMINISTIC_FILLS).
Here the input part of every gate comes for all steps at once (gi = x W_ih^T + b_ih: one
matmul and its bias, as forward_saved does), then ``kernels/forward_record.cu`` runs the cell
with one block per batch element carrying the state in shared memory: 1 launch per chunk of
:data:`STEPS_PER_LAUNCH` steps, 0 per step (counted through the kernel-emulation stand-in by
tests/kernel_emulation/test_forward_record_kernel.py). The record has the same fields and
formulas as forward_saved's (the kernel file's opening comment), as CuPy arrays in the
params' dtype, so ``registry``'s cupy entry hands it to the chain without a copy.

Limits (48 KB of shared memory, :func:`unusable_reason`): rnn_* and GRU H <= 6144 in float32,
3072 in float64; LSTM H <= 4096 in float32, 2048 in float64. Beyond them, and for other
dtypes, :meth:`bpttbench.jacobians.cupy_backend.CupyBackend.forward_record` runs the torch
forward and warns with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bpttbench.jacobians import cupy_kernels as ck
from bpttbench.jacobians.analytic import PARAM_NAMES, Saved
from bpttbench.jacobians.backends import Array, ArrayBackend
from bpttbench.models import gate_count

#: dynamic shared memory the kernel may use (no opt-in)
SMEM_LIMIT = ck.DEFAULT_SMEM
#: steps per launch (a launch runs them all without returning; the state carries over)
STEPS_PER_LAUNCH = 4096


def unusable_reason(model: str, hidden: int, dtype: Any) -> str:
    """Why the kernel cannot record this model's H and dtype ("" when it can)."""
    try:
        dt = ck.cupy_dtype(dtype)
    except TypeError:
        return f"the forward kernel takes float32 and float64, not {dtype}"
    need = ck.forward_record_smem_bytes(model, hidden, dt)
    if need > SMEM_LIMIT:
        return (f"{model} H = {hidden} in {dt} needs {need} B of shared memory, the forward "
                f"kernel takes {SMEM_LIMIT}")
    return ""


def max_hidden(model: str, dtype: Any) -> int:
    """The largest H the kernel records for this model and dtype."""
    return SMEM_LIMIT // ck.forward_record_smem_bytes(model, 1, dtype)


def record(model: str, params: Mapping[str, Any], x: Array, state0: tuple[Array, ...] | None,
           bk: ArrayBackend, chunk: int | None = None) -> Saved:
    """forward_saved's record by the kernel (shapes already checked by forward_saved); ``bk``
    is the CuPy backend, whose dtype every array takes. state0 is copied, never written.
    ``chunk``: steps per launch (default :data:`STEPS_PER_LAUNCH`; the kernel validation
    passes a small one)."""
    cp = ck.cp
    with ck.torch_stream():  # every launch on torch's current stream
        w_ih, w_hh, b_ih, b_hh = (bk.asarray(params[n]) for n in PARAM_NAMES)
        dt = np.dtype(w_hh.dtype)
        hidden = int(w_hh.shape[1])
        width = gate_count(model) * hidden
        xs = bk.asarray(x)
        steps, batch = int(xs.shape[0]), int(xs.shape[1])
        gi = cp.ascontiguousarray(xs @ bk.mT(w_ih) + b_ih)  # input part, all steps at once
        w_hh_t = cp.ascontiguousarray(bk.mT(w_hh))  # coalesced reads in the kernel
        b = cp.ascontiguousarray(b_hh)
        if state0 is None:
            state = [cp.zeros((batch, hidden), dtype=dt) for _ in range(2 if model == "lstm"
                                                                         else 1)]
        else:  # the kernel writes the state in place: a copy, the caller's stays
            state = [cp.array(bk.asarray(s), dtype=dt, order="C", copy=True) for s in state0]
        fields = ck.FORWARD_FIELDS["rnn" if model.startswith("rnn_") else model]
        outs = {n: cp.empty((steps, batch, width if n in ("gates", "dgates") else hidden),
                            dtype=dt) for n in fields}
        c = state[1] if model == "lstm" else None
        per_launch = STEPS_PER_LAUNCH if chunk is None else int(chunk)
        t0 = 0
        while t0 < steps:
            n = min(per_launch, steps - t0)
            ck.forward_record(model, gi, w_hh_t, b, state[0], c, outs, t_first=t0, n_steps=n)
            t0 += n
    return Saved(model, hidden, steps, batch, w_hh, **outs, final_state=tuple(state))
