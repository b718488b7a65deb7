"""The BPTT-delta kernel tests' problem: one gradient-flow cell's delta_chain arguments."""

from __future__ import annotations

from bpttbench.config import CellSpec
from bpttbench.gradient_flow.cells import cell_problem


def delta_args(model, dtype, hidden, batch, steps, seed, scale=1.0):
    """(model, params, x, state0, w_out, target) of a gaussian-init CPU cell, as
    ``bptt_deltas.delta_chain`` takes them."""
    cell, x, w_out, target = cell_problem(
        CellSpec(model, "gaussian", hidden, steps, scale, seed, 4, 1.0, 0.0, batch, 4, 1, "cpu",
                 dtype, False, True, "torch"), "cpu")
    return model, cell.params(), x, cell.initial_state(batch), w_out, target
