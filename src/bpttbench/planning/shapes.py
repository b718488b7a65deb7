"""The shapes of the recurrent cells by name, without torch: which models exist, how many
gate blocks W_hh stacks, and the size of the recurrent state. ``bpttbench.models`` builds
the cells; the memory estimates and the cost model only need these numbers."""

from __future__ import annotations

MODELS: tuple[str, ...] = ("rnn_tanh", "rnn_relu", "rnn_linear", "lstm", "gru")
INITS: tuple[str, ...] = ("orthogonal", "gaussian", "torch_default")


def check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; allowed: {', '.join(MODELS)}")


def gate_count(model: str) -> int:
    """Number of stacked gate blocks in weight_hh_l0 (torch layout)."""
    check_model(model)
    return {"lstm": 4, "gru": 3}.get(model, 1)


def state_size(model: str, hidden: int) -> int:
    """Dimension of the recurrent state s_t: H, or 2H for the LSTM's (h, c)."""
    return 2 * hidden if model == "lstm" else hidden
