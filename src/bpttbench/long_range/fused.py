"""Long-range training on the fused modules (cuDNN on CUDA), measured with the unrolled cell.

The unrolled ``RecurrentCell`` makes every h_t a graph node, which the per-step gradient
measurement needs, but costs a few launches per time step and update. Training needs only
the weight gradients, so on CUDA the stage trains ``torch.nn.RNN``/``LSTM``/``GRU`` with the
SAME parameters: the layout is torch's in both (``weight_ih_l0``, ``weight_hh_l0``,
``bias_ih_l0``, ``bias_hh_l0``; gate order i, f, g, o and r, z, n; GRU's n with b_hn inside
r * (...)), the nonlinearity of ``rnn_tanh``/``rnn_relu`` is the RNN's ``nonlinearity``,
and the initial state is zero in both. ``rnn_linear`` has no fused module and stays
unrolled. The per-step gradients ||dL/dh_t|| are measured only at evaluation points (the
run's init and end), by copying the fused weights into the unrolled cell.

Config ``long_range.fused``: ``auto`` (fused on CUDA only, so CPU tables keep their
numbers), ``true`` (fused wherever a fused module exists) or ``false``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..models import RecurrentCell
from .spec import check_fused


def resolve_fused(setting: Any, model: str, device: str) -> bool:
    """Train the fused module? auto: on CUDA; never for rnn_linear (no fused module)."""
    check_fused(setting)
    if model == "rnn_linear":
        return False
    if setting == "auto":
        return torch.device(device).type == "cuda"
    return bool(setting)


class FusedSequenceModel(nn.Module):
    """A fused torch.nn recurrent module plus the linear readout of ``unrolled`` (a
    ``train.SequenceModel``), starting from its exact weights. ``cell`` is the unrolled cell
    with the current fused weights (for the per-step gradient measurement)."""

    def __init__(self, unrolled: nn.Module) -> None:
        super().__init__()
        self.per_step = unrolled.per_step
        self.rnn = unrolled.cell.to_torch_nn()  # same state dict: weights copied exactly
        self.readout = unrolled.readout
        self._unrolled = [unrolled.cell]  # a list: not a submodule, its weights not trained

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.rnn(x)
        return self.readout(outputs if self.per_step else outputs[-1])

    @property
    def cell(self) -> RecurrentCell:
        cell = self._unrolled[0]
        with torch.no_grad():
            for name, p in cell.named_parameters():
                p.copy_(getattr(self.rnn, name))
        return cell


def make_model(unrolled: nn.Module, fused: bool) -> nn.Module:
    """The network a run trains: ``unrolled`` itself, or its fused twin."""
    return FusedSequenceModel(unrolled) if fused else unrolled
