"""Analytic per-step Jacobians J_t = ds_t/ds_{t-1} in PyTorch's conventions.

The state is s = h for the vanilla RNNs and the GRU, and s = [h; c] (h first) for
the LSTM, so J_t is [D, D] with D = H, or 2H for the LSTM. Gate order is
torch's: i, f, g, o for the LSTM and r, z, n for the GRU. With a_t the
pre-activation and W_* the H x H row blocks of ``weight_hh_l0``:

- RNN:  J = diag(phi'(a_t)) W_hh
- GRU:  J = diag(z) + diag((h - n) z (1 - z)) W_hz
        + diag((1 - z)(1 - n^2)) [diag(r) W_hn + diag((W_hn h + b_hn) r (1 - r)) W_hr]
- LSTM: dc'/dc = diag(f)
        dc'/dh = diag(c f (1 - f)) W_hf + diag(g i (1 - i)) W_hi + diag(i (1 - g^2)) W_hg
        dh'/dc = diag(o (1 - tanh^2 c')) diag(f)
        dh'/dh = diag(tanh c' o (1 - o)) W_ho + diag(o (1 - tanh^2 c')) dc'/dh
        J = [[dh'/dh, dh'/dc], [dc'/dh, dc'/dc]]

where h, c are the previous state and c' the new cell state. Everything is a pure
function of the saved forward quantities (:class:`Saved`), written once against
the small backend interface of :mod:`bpttbench.jacobians.backends`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from bpttbench.jacobians.backends import Array, ArrayBackend
from bpttbench.models import check_model, gate_count, state_size

PARAM_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


@dataclass
class Saved:
    """Forward quantities from which every J_t is built (arrays of one backend).

    Time index i = 0..T-1 holds what J_{i+1} = ds_{i+1}/ds_i needs.

    - rnn_*: ``deriv`` [T, B, H] = phi'(a_t);
    - lstm: ``gates`` [T, B, 4H] = (i, f, g, o) after their activations, ``dgates`` the
      activations' derivatives (i(1-i), f(1-f), 1-g^2, o(1-o)), ``prev`` [T, B, H] = c_{t-1},
      ``aux`` [T, B, H] = tanh(c_t), ``aux2`` [T, B, H] = 1 - tanh^2(c_t);
    - gru: ``gates`` [T, B, 3H] = (r, z, n), ``dgates`` (r(1-r), z(1-z), 1-n^2),
      ``prev`` [T, B, H] = h_{t-1}, ``aux`` [T, B, H] = W_hn h_{t-1} + b_hn,
      ``aux2`` [T, B, H] = 1 - z.

    The derivative factors are computed from the pre-activations (sigmoid(a) sigmoid(-a),
    sech^2(a)), not as 1 - tanh^2 or s(1 - s) of the rounded activations: in float32 those
    lose every digit once a unit saturates (1 - tanh^2 a = 3e-5 comes out 3e-3 wrong).
    """

    model: str
    hidden: int
    steps: int
    batch: int
    w_hh: Array
    deriv: Array | None = None
    gates: Array | None = None
    dgates: Array | None = None
    prev: Array | None = None
    aux: Array | None = None
    aux2: Array | None = None
    final_state: tuple[Array, ...] = ()

    @property
    def dim(self) -> int:
        return state_size(self.model, self.hidden)


def _check_shapes(model: str, params: Mapping[str, torch.Tensor], x, state0) -> tuple[int, int]:
    missing = [n for n in PARAM_NAMES if n not in params]
    if missing:
        raise ValueError(f"params lack {', '.join(missing)}; expected torch names {PARAM_NAMES}")
    w_hh = params["weight_hh_l0"]
    hidden = int(w_hh.shape[1])
    if tuple(w_hh.shape) != (gate_count(model) * hidden, hidden):
        raise ValueError(
            f"weight_hh_l0 has shape {tuple(w_hh.shape)}; {model} needs "
            f"({gate_count(model)} * H, H)"
        )
    if len(x.shape) != 3:
        raise ValueError(f"x must be time-major [T, B, input_size], got shape {tuple(x.shape)}")
    if state0 is not None:
        want = 2 if model == "lstm" else 1
        if len(state0) != want:
            raise ValueError(f"{model} state is a tuple of {want} tensor(s), got {len(state0)}")
    return hidden, int(x.shape[1])


def forward_saved(
    model: str,
    params: Mapping[str, torch.Tensor],
    x: Array,
    state0: tuple[Array, ...] | None,
    bk: ArrayBackend,
) -> Saved:
    """Run the cell over x [T, B, input] on backend ``bk`` and keep what the Jacobians need.

    A backend with a forward kernel answers :meth:`ArrayBackend.forward_record` (the cupy
    backend: kernels/forward_record.cu, the same formulas); the others run the loop below."""
    check_model(model)
    hidden, batch = _check_shapes(model, params, x, state0)
    record = bk.forward_record(model, params, x, state0)  # the cupy backend's kernel
    if record is not None:
        return record
    with torch.no_grad():
        w_ih, w_hh, b_ih, b_hh = (bk.asarray(params[n]) for n in PARAM_NAMES)
        xs = bk.asarray(x)
        steps = int(xs.shape[0])
        if state0 is None:
            z0 = bk.zeros((batch, hidden), w_hh)
            state = (z0, z0 + 0) if model == "lstm" else (z0,)
        else:
            state = tuple(bk.asarray(s) for s in state0)
        gi_all = xs @ bk.mT(w_ih) + b_ih  # input part of every gate, all steps at once
        w_hh_t = bk.mT(w_hh)
        # rows written into preallocated [T, ...] arrays: no list of T arrays stacked at the
        # end, which held every saved quantity twice at the peak (bpttbench.memory)
        deriv, gates, dgates, prev, aux, aux2 = (_Rows(bk, steps) for _ in range(6))
        h = state[0]
        c = state[1] if model == "lstm" else None
        for t in range(steps):
            gi = gi_all[t]
            gh = h @ w_hh_t + b_hh
            if model.startswith("rnn_"):
                a = gi + gh
                if model == "rnn_tanh":
                    h = bk.tanh(a)
                    deriv.append(sech2(bk, a))
                elif model == "rnn_relu":
                    pos = bk.like((a > 0) * 1.0, a)
                    h = a * pos
                    deriv.append(pos)
                else:
                    h = a
                    deriv.append(bk.zeros((batch, hidden), w_hh) + 1.0)  # 1 even if h overflows
            elif model == "lstm":
                a = gi + gh
                a_i, a_f, a_g, a_o = bk.split(a, 4, axis=-1)
                i, f, g, o = bk.sigmoid(a_i), bk.sigmoid(a_f), bk.tanh(a_g), bk.sigmoid(a_o)
                prev.append(c)
                c = f * c + i * g
                tc = bk.tanh(c)
                h = o * tc
                gates.append(bk.cat([i, f, g, o], axis=-1))
                dgates.append(
                    bk.cat(
                        [dsigmoid(bk, a_i), dsigmoid(bk, a_f), sech2(bk, a_g), dsigmoid(bk, a_o)],
                        axis=-1,
                    )
                )
                aux.append(tc)
                aux2.append(sech2(bk, c))
            else:  # gru
                i_r, i_z, i_n = bk.split(gi, 3, axis=-1)
                h_r, h_z, h_n = bk.split(gh, 3, axis=-1)
                a_r, a_z = i_r + h_r, i_z + h_z
                r, z = bk.sigmoid(a_r), bk.sigmoid(a_z)
                a_n = i_n + r * h_n
                n = bk.tanh(a_n)
                prev.append(h)
                aux.append(h_n)
                aux2.append(bk.sigmoid(-a_z))  # 1 - z without cancellation
                gates.append(bk.cat([r, z, n], axis=-1))
                dgates.append(bk.cat([dsigmoid(bk, a_r), dsigmoid(bk, a_z), sech2(bk, a_n)], -1))
                h = (1.0 - z) * n + z * h
        final = (h, c) if model == "lstm" else (h,)

        def stk(rows_):
            return rows_.array

        return Saved(
            model,
            hidden,
            steps,
            batch,
            w_hh,
            deriv=stk(deriv),
            gates=stk(gates),
            dgates=stk(dgates),
            prev=stk(prev),
            aux=stk(aux),
            aux2=stk(aux2),
            final_state=final,
        )


class _Rows:
    """Append-only [T, ...] array of one backend, allocated at the first row."""

    def __init__(self, bk: ArrayBackend, steps: int) -> None:
        self.bk, self.steps, self.n, self.array = bk, steps, 0, None

    def append(self, row: Array) -> None:
        if self.array is None:
            self.array = self.bk.zeros((self.steps, *tuple(row.shape)), row)
        self.array[self.n] = row
        self.n += 1


def sech2(bk: ArrayBackend, a: Array) -> Array:
    """1 - tanh^2(a) = 4 e / (1 + e)^2 with e = exp(-2|a|): accurate and overflow-free."""
    e = bk.exp(-2.0 * bk.abs(a))
    return 4.0 * e / ((1.0 + e) * (1.0 + e))


def dsigmoid(bk: ArrayBackend, a: Array) -> Array:
    """sigmoid'(a) = sigmoid(a) sigmoid(-a), accurate on both tails."""
    return bk.sigmoid(a) * bk.sigmoid(-a)


def step_jacobians(
    saved: Saved, bk: ArrayBackend, start: int = 0, stop: int | None = None
) -> Array:
    """J_{i+1} for i in [start, stop): an array [n, B, D, D] (n = stop - start)."""
    stop = saved.steps if stop is None else stop
    sl = slice(start, stop)
    model, w = saved.model, saved.w_hh
    if model.startswith("rnn_"):
        return saved.deriv[sl][..., :, None] * w
    if model == "gru":
        w_r, w_z, w_n = bk.split(w, 3, axis=0)
        r, z, n = bk.split(saved.gates[sl], 3, axis=-1)
        dr, dz, dn = bk.split(saved.dgates[sl], 3, axis=-1)
        h, hn, omz = saved.prev[sl], saved.aux[sl], saved.aux2[sl]
        u = omz * dn  # (1 - z)(1 - n^2)
        return (
            bk.diag_embed(z)
            + ((h - n) * dz)[..., :, None] * w_z
            + (u * r)[..., :, None] * w_n
            + (u * hn * dr)[..., :, None] * w_r
        )
    if model == "lstm":
        w_i, w_f, w_g, w_o = bk.split(w, 4, axis=0)
        i, f, g, o = bk.split(saved.gates[sl], 4, axis=-1)
        di, df, dg, do = bk.split(saved.dgates[sl], 4, axis=-1)
        c, tc, dtc = saved.prev[sl], saved.aux[sl], saved.aux2[sl]
        dc_dh = (
            (c * df)[..., :, None] * w_f
            + (g * di)[..., :, None] * w_i
            + (i * dg)[..., :, None] * w_g
        )
        oc = o * dtc  # o (1 - tanh^2 c')
        dh_dh = (tc * do)[..., :, None] * w_o + oc[..., :, None] * dc_dh
        dh_dc = bk.diag_embed(oc * f)
        dc_dc = bk.diag_embed(f)
        top = bk.cat([dh_dh, dh_dc], axis=-1)
        bottom = bk.cat([dc_dh, dc_dc], axis=-1)
        return bk.cat([top, bottom], axis=-2)
    check_model(model)
    raise AssertionError("unreachable")
