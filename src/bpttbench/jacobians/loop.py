"""The adjoint chain loop, written once: apply J^T to a frame, then QR or rescale.

BPTT propagates the error backward with the transposed Jacobians,

    delta_t = J_{t+1}^T delta_{t+1} = P_{T,t}^T delta_T,    P_{T,t} = J_T ... J_{t+1},

so a frame Q is carried through J_T^T, J_{T-1}^T, ..., J_1^T in that order (lag = T - t
= 1..T). After each step the new frame M = J^T Q is either re-orthonormalised by a QR
(every ``qr_every`` lags and at the last lag) or rescaled to unit columns in between; what
is done with the QR's or the rescale's logs is the caller's (``on_qr`` / ``on_rescale``):
the k-frame chain (:func:`bpttbench.jacobians.chain.run_chain`) accumulates them, the
full-frame pass (:mod:`.spectrum`) keeps every step's R. The Jacobians of the gated cells
are built in time chunks (by the backend's kernels where it has them, else by the analytic
formulas); the vanilla RNNs apply W^T (phi'(a) * Q) without forming J.
"""

from __future__ import annotations

from collections.abc import Callable

from bpttbench.jacobians.analytic import Saved, step_jacobians
from bpttbench.jacobians.backends import Array, ArrayBackend
from bpttbench.jacobians.frame import is_qr_lag

#: (lag, time index i of the Jacobian J_{i+1} just applied, new frame M) -> the next frame
StepFn = Callable[[int, int, Array], Array]
#: (lo, hi, the Jacobians of steps [lo, hi) or None for the vanilla RNNs), once per chunk
ChunkFn = Callable[[int, int, Array | None], None]


def jacobian_chunk(saved: Saved, bk: ArrayBackend, lo: int, hi: int) -> Array:
    """J_{i+1} for i in [lo, hi): [hi - lo, B, D, D], by the backend's kernels if it has them."""
    jac = bk.build_jacobians(saved, lo, hi)
    return step_jacobians(saved, bk, lo, hi) if jac is None else jac


def frame_loop(saved: Saved, bk: ArrayBackend, q: Array, on_qr: StepFn,
               on_rescale: StepFn | None = None, *, qr_every: int = 1, chunk: int = 1,
               on_chunk: ChunkFn | None = None) -> Array:
    """Carry the frame ``q`` [B, D, k] through all T adjoint steps of ``saved``; returns the
    last frame. ``on_qr`` runs at the QR lags, ``on_rescale`` at the others (it may be None
    only with qr_every = 1); each returns the frame for the next step. ``chunk``: time steps
    of gated Jacobians built at once."""
    steps = saved.steps
    if on_rescale is None and qr_every != 1:
        raise ValueError("frame_loop: on_rescale is needed when qr_every > 1")
    rnn = saved.model.startswith("rnn_")
    apply = bk.adjoint_apply(saved)
    lag = 0
    for hi in range(steps, 0, -chunk):
        lo = max(0, hi - chunk)
        jac = None if rnn else jacobian_chunk(saved, bk, lo, hi)
        if on_chunk is not None:
            on_chunk(lo, hi, jac)
        for i in range(hi - 1, lo - 1, -1):
            m = apply(i, q, jac, lo)
            lag += 1
            step = on_qr if is_qr_lag(lag, qr_every, steps) else on_rescale
            q = step(lag, i, m)
    return q
