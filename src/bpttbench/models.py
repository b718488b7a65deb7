"""Recurrent cells in PyTorch's conventions, unrolled one step at a time.

Parameter names, shapes and gate order are exactly those of ``torch.nn.RNN``,
``torch.nn.LSTM`` and ``torch.nn.GRU`` (single layer, time-major), so a state dict
loads in both directions. Unlike the fused modules, every hidden state h_t (and
cell state c_t) is its own node of the autograd graph, which is what lets the
gradient-flow measurement read the total derivative dL/dh_t at every step.

A state is a tuple: ``(h,)`` for the vanilla RNNs and the GRU, ``(h, c)`` for the LSTM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .planning.shapes import INITS, MODELS, check_model, gate_count, state_size

__all__ = ["INITS", "MODELS", "Params", "RecurrentCell", "State", "cell_step", "check_model",
           "gate_count", "init_parameters", "recurrent_blocks", "spectral_stats", "state_size",
           "unroll"]

State = tuple[Tensor, ...]
Params = Mapping[str, Tensor]


def _activation(model: str, a: Tensor) -> Tensor:
    if model == "rnn_tanh":
        return torch.tanh(a)
    if model == "rnn_relu":
        return torch.relu(a)
    return a  # rnn_linear


def cell_step(model: str, params: Params, x_t: Tensor, state: State) -> State:
    """One step of the cell: a pure function of (params, x_t, state), usable by torch.func.

    x_t has shape [B, input_size] (or [input_size]); every state tensor [B, H] (or [H]).
    """
    w_ih, w_hh = params["weight_ih_l0"], params["weight_hh_l0"]
    b_ih, b_hh = params["bias_ih_l0"], params["bias_hh_l0"]
    h = state[0]
    gi = x_t @ w_ih.T + b_ih
    gh = h @ w_hh.T + b_hh
    if model.startswith("rnn_"):
        return (_activation(model, gi + gh),)
    if model == "lstm":
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * state[1] + i * g
        return (o * torch.tanh(c), c)
    if model == "gru":
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return ((1 - z) * n + z * h,)
    check_model(model)
    raise AssertionError("unreachable")


def unroll(model: str, params: Params, x: Tensor, state0: State) -> list[State]:
    """States s_0..s_T for inputs x of shape [T, B, input_size]; s_0 is ``state0``."""
    states = [state0]
    for t in range(x.shape[0]):
        states.append(cell_step(model, params, x[t], states[-1]))
    return states


class RecurrentCell(nn.Module):
    """A single-layer RNN, LSTM or GRU, unrolled step by step (torch.nn parameter layout)."""

    def __init__(
        self,
        model: str,
        input_size: int,
        hidden_size: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_model(model)
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(
                f"input_size and hidden_size must be positive, got {input_size}, {hidden_size}"
            )
        self.model, self.input_size, self.hidden_size = model, input_size, hidden_size
        gh = gate_count(model) * hidden_size
        kw = {"dtype": dtype, "device": device}
        self.weight_ih_l0 = nn.Parameter(torch.empty(gh, input_size, **kw))
        self.weight_hh_l0 = nn.Parameter(torch.empty(gh, hidden_size, **kw))
        self.bias_ih_l0 = nn.Parameter(torch.empty(gh, **kw))
        self.bias_hh_l0 = nn.Parameter(torch.empty(gh, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default: every parameter U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.model}, input_size={self.input_size}, hidden_size={self.hidden_size}"

    def params(self) -> dict[str, Tensor]:
        return dict(self.named_parameters())

    def initial_state(self, batch: int) -> State:
        p = self.weight_hh_l0
        zeros = torch.zeros(batch, self.hidden_size, dtype=p.dtype, device=p.device)
        return (zeros, zeros.clone()) if self.model == "lstm" else (zeros,)

    def step(self, x_t: Tensor, state: State) -> State:
        return cell_step(self.model, self.params(), x_t, state)

    def forward(self, x: Tensor, state0: State | None = None) -> tuple[Tensor, list[State]]:
        """Run over x [T, B, input_size]; returns (outputs h_1..h_T as [T, B, H], states s_0..s_T)."""
        if state0 is None:
            state0 = self.initial_state(x.shape[1])
        states = unroll(self.model, self.params(), x, state0)
        return torch.stack([s[0] for s in states[1:]]), states

    def to_torch_nn(self) -> nn.Module:
        """The equivalent fused torch.nn module (cuDNN on CUDA), with the same weights."""
        cls = {"lstm": nn.LSTM, "gru": nn.GRU}.get(self.model, nn.RNN)
        kw = {}
        if cls is nn.RNN:
            if self.model == "rnn_linear":
                raise ValueError("torch.nn.RNN has no linear nonlinearity; rnn_linear has no fused twin")
            kw["nonlinearity"] = self.model.removeprefix("rnn_")
        p = self.weight_hh_l0
        fused = cls(self.input_size, self.hidden_size, dtype=p.dtype, device=p.device, **kw)
        fused.load_state_dict(self.state_dict())
        return fused


def _haar_orthogonal(n: int, generator: torch.Generator) -> Tensor:
    """A Haar-distributed orthogonal matrix: QR of a Gaussian with the signs of diag(R) fixed."""
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


@torch.no_grad()
def init_parameters(
    cell: RecurrentCell,
    init: str,
    weight_scale: float,
    *,
    input_scale: float = 1.0,
    bias_scale: float = 0.0,
    forget_bias: float = 0.0,
    seed: int = 0,
) -> RecurrentCell:
    """Initialise ``cell`` in place (see the design notes) and return it.

    Draws happen in float64 on the CPU from one seeded generator, then are cast to
    the cell's dtype and device, so the same seed gives the same weights on any machine.

    - ``orthogonal``: each gate block of W_hh is s*Q with Q Haar-orthogonal;
    - ``gaussian``: W_hh entries N(0, s^2/H), spectral radius -> s for large H;
    - ``torch_default``: U(-1/sqrt(H), 1/sqrt(H)) times s.
    W_ih entries are N(0, input_scale^2/input_size); biases N(0, bias_scale^2), plus
    ``forget_bias`` on the LSTM forget gate (b_ih rows H..2H).
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    gen = torch.Generator().manual_seed(int(seed))
    hidden, inp = cell.hidden_size, cell.input_size
    blocks = gate_count(cell.model)
    f64 = torch.float64
    if init == "orthogonal":
        w_hh = torch.cat([_haar_orthogonal(hidden, gen) for _ in range(blocks)]) * weight_scale
    elif init == "gaussian":
        w_hh = torch.randn(blocks * hidden, hidden, generator=gen, dtype=f64)
        w_hh *= weight_scale / math.sqrt(hidden)
    else:
        bound = 1.0 / math.sqrt(hidden)
        w_hh = (torch.rand(blocks * hidden, hidden, generator=gen, dtype=f64) * 2 - 1) * bound
        w_hh *= weight_scale
    w_ih = torch.randn(blocks * hidden, inp, generator=gen, dtype=f64) * (input_scale / math.sqrt(inp))
    b_ih = torch.randn(blocks * hidden, generator=gen, dtype=f64) * bias_scale
    b_hh = torch.randn(blocks * hidden, generator=gen, dtype=f64) * bias_scale
    if cell.model == "lstm":
        b_ih[hidden : 2 * hidden] += forget_bias
    for name, value in (
        ("weight_hh_l0", w_hh),
        ("weight_ih_l0", w_ih),
        ("bias_ih_l0", b_ih),
        ("bias_hh_l0", b_hh),
    ):
        param = getattr(cell, name)
        param.copy_(value.to(dtype=param.dtype, device=param.device))
    return cell


def recurrent_blocks(model: str, w_hh: Tensor) -> list[Tensor]:
    """The square H x H gate blocks of W_hh (one for the vanilla RNNs)."""
    return list(w_hh.chunk(gate_count(model), dim=0))


def spectral_stats(model: str, w_hh: Tensor) -> tuple[float, float]:
    """(max spectral norm, max spectral radius) over the gate blocks of W_hh, in float64."""
    norms, radii = [], []
    for block in recurrent_blocks(model, w_hh.detach().to("cpu", torch.float64)):
        norms.append(torch.linalg.matrix_norm(block, ord=2).item())
        radii.append(torch.linalg.eigvals(block).abs().max().item())
    return max(norms), max(radii)
