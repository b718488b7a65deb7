"""The forward record of a BPTT-delta chain, rebuilt from autograd's own trajectory.

:func:`saved_from_states` turns the unrolled states s_0..s_T (``models.unroll``, the
arithmetic autograd differentiates) into the Jacobian engine's :class:`~bpttbench.jacobians.
Saved`, for chunks of steps at once (a few launches per chunk, none per step). The BPTT-delta
chain (:mod:`.bptt_deltas`) reads it, and a gradient-flow cell hands the same record to its
Lyapunov chain (``analyse_chain(saved=...)``): one forward pass per cell.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..jacobians import Saved
from ..models import Params, State

#: bytes of per-step temporaries (forward-record and adjoint-coefficient chunks, the frame
#: rows of a chunk of lags) held at once, here and in bptt_deltas
CHUNK_BYTES = 16 * 2**20
#: and at most 1/PARTS of the steps: temporaries stay a fraction of the per-step arrays
#: (memory.estimate_cell bounds the cell; a few launches per chunk, none per step)
PARTS = 8


def _sech2(a: Tensor) -> Tensor:
    e = torch.exp(-2.0 * a.abs())
    return 4.0 * e / ((1.0 + e) * (1.0 + e))


def _dsigmoid(a: Tensor) -> Tensor:
    return torch.sigmoid(a) * torch.sigmoid(-a)


def saved_from_states(model: str, params: Params, x: Tensor, states: list[State], *,
                      chunk_bytes: int = CHUNK_BYTES, parts: int = PARTS) -> Saved:
    """The Jacobian engine's forward record (:class:`~bpttbench.jacobians.Saved`) rebuilt
    from the unrolled states s_0..s_T, for chunks of steps at once.

    Pre-activations are recomputed from h_{t-1} and x_t (the states themselves are
    autograd's); the derivative factors follow ``forward_saved`` (from pre-activations:
    accurate when units saturate). Temporaries are bounded by ``chunk_bytes`` and 1/``parts``
    of the steps.
    """
    w_ih, w_hh = params["weight_ih_l0"], params["weight_hh_l0"].detach()  # a record, no graph
    b_ih, b_hh = params["bias_ih_l0"], params["bias_hh_l0"]
    steps, batch = int(x.shape[0]), int(x.shape[1])
    hidden, width = int(w_hh.shape[1]), int(w_hh.shape[0])
    h0 = states[0][0]
    kw = {"dtype": h0.dtype, "device": h0.device}
    rnn, lstm = model.startswith("rnn_"), model == "lstm"
    if rnn:
        out = {"deriv": torch.empty(steps, batch, hidden, **kw)}
    else:
        out = {f: torch.empty(steps, batch, width, **kw) for f in ("gates", "dgates")}
        out.update({f: torch.empty(steps, batch, hidden, **kw) for f in ("prev", "aux", "aux2")})
    n = min(chunk_bytes // (10 * batch * width * h0.element_size()), -(-steps // parts))
    n = max(1, n)
    for lo in range(0, steps, n):
        hi = min(steps, lo + n)
        h_prev = torch.stack([states[t][0] for t in range(lo, hi)])
        gi = x[lo:hi] @ w_ih.T + b_ih
        gh = h_prev @ w_hh.T + b_hh
        if rnn:
            a = gi + gh
            if model == "rnn_tanh":
                out["deriv"][lo:hi] = _sech2(a)
            elif model == "rnn_relu":  # from h_t, as autograd's relu backward: the same 0/1
                out["deriv"][lo:hi] = torch.stack([states[t + 1][0] for t in range(lo, hi)]) > 0
            else:
                out["deriv"][lo:hi] = 1.0
        elif lstm:
            a_i, a_f, a_g, a_o = (gi + gh).chunk(4, dim=-1)
            out["gates"][lo:hi] = torch.cat([torch.sigmoid(a_i), torch.sigmoid(a_f),
                                             torch.tanh(a_g), torch.sigmoid(a_o)], dim=-1)
            out["dgates"][lo:hi] = torch.cat([_dsigmoid(a_i), _dsigmoid(a_f), _sech2(a_g),
                                              _dsigmoid(a_o)], dim=-1)
            out["prev"][lo:hi] = torch.stack([states[t][1] for t in range(lo, hi)])
            c = torch.stack([states[t + 1][1] for t in range(lo, hi)])
            out["aux"][lo:hi] = torch.tanh(c)
            out["aux2"][lo:hi] = _sech2(c)
        else:  # gru
            i_r, i_z, i_n = gi.chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            a_r, a_z = i_r + h_r, i_z + h_z
            r = torch.sigmoid(a_r)
            a_n = i_n + r * h_n
            out["gates"][lo:hi] = torch.cat([r, torch.sigmoid(a_z), torch.tanh(a_n)], dim=-1)
            out["dgates"][lo:hi] = torch.cat([_dsigmoid(a_r), _dsigmoid(a_z), _sech2(a_n)], -1)
            out["prev"][lo:hi] = h_prev
            out["aux"][lo:hi] = h_n
            out["aux2"][lo:hi] = torch.sigmoid(-a_z)  # 1 - z without cancellation
    return Saved(model, hidden, steps, batch, w_hh, final_state=tuple(states[-1]), **out)
