"""Synthetic long-range tasks, generated on the fly from a seeded generator (no downloads).

Both tasks are time-major, like the recurrent cells: inputs ``x`` of shape [L, B, input_size].

**Adding problem** (Hochreiter & Schmidhuber 1997; Le et al. 2015; Arjovsky et al. 2016).
Length T, two input channels per step: a value ~ U(0, 1) and a marker. Exactly two steps are
marked, one uniformly in the first half [0, floor(T/2)) and one in the second half
[floor(T/2), T). The target is the sum of the two marked values, read out at the last step;
the loss is the mean squared error. Predicting the mean 1 gives MSE Var(X1 + X2) = 1/6
(``theory.adding_problem_baseline_mse``).

**Copy memory** (Arjovsky et al. 2016). Alphabet 0 = blank, 1..8 = symbols, 9 = delimiter,
one-hot encoded (10 inputs). Input: 10 symbols uniform over 1..8, then T - 1 blanks, the
delimiter, then 10 blanks: length L = T + 20. Target: T + 10 blanks, then the 10 symbols
(9 classes, 0..8). The loss is the cross-entropy averaged over all L steps and the batch,
in nats per step; the memoryless baseline (blank, then uniform over the 8 symbols) scores
10 ln 8 / (T + 20) (``theory.copy_memory_baseline_xent``).

Draws are made on the CPU (float64 values) from a ``torch.Generator``, so a seed gives the
same batches on every device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .. import theory
from .spec import (
    COPY_BLANK,
    COPY_DELIM,
    COPY_N,
    COPY_SYMBOLS,
    TASK_INPUT_SIZE,
    check_seq_len,
    seq_steps,
)

__all__ = ["COPY_BLANK", "COPY_DELIM", "COPY_N", "COPY_SYMBOLS", "TASKS", "Task", "adding_batch",
           "check_seq_len", "copy_baseline_logits", "copy_batch", "get_task"]



@dataclass(frozen=True)
class Task:
    """A synthetic task: its shapes, its batch generator, its loss and its baseline loss."""

    name: str
    input_size: int
    output_size: int
    per_step: bool  # loss on every step (copy) or only on the last one (adding)
    description: str
    sample: Callable[[int, int, torch.Generator], tuple[Tensor, Tensor]]
    baseline: Callable[[int], float]

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean loss: MSE of [B, 1] outputs, or cross-entropy (nats/step) of [L, B, C] logits."""
        if self.per_step:
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return F.mse_loss(out, y)

    def seq_steps(self, seq_len: int) -> int:
        """Number of recurrent steps L of an input sequence for task length ``seq_len``."""
        return seq_steps(self.name, seq_len)


def adding_batch(seq_len: int, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """x [T, B, 2] (value, marker) and target y [B, 1] = sum of the two marked values."""
    check_seq_len("adding", seq_len)
    values = torch.rand(seq_len, batch, generator=gen, dtype=torch.float64)
    half = seq_len // 2
    first = torch.randint(0, half, (batch,), generator=gen)
    second = torch.randint(half, seq_len, (batch,), generator=gen)
    markers = torch.zeros(seq_len, batch, dtype=torch.float64)
    cols = torch.arange(batch)
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    y = (values[first, cols] + values[second, cols]).unsqueeze(-1)
    return torch.stack([values, markers], dim=-1), y


def copy_batch(seq_len: int, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """x [T+20, B, 10] one-hot and class targets y [T+20, B] (int64, 0 = blank)."""
    check_seq_len("copy", seq_len)
    length = seq_len + 2 * COPY_N
    symbols = torch.randint(1, COPY_SYMBOLS + 1, (COPY_N, batch), generator=gen)
    tokens = torch.full((length, batch), COPY_BLANK, dtype=torch.int64)
    tokens[:COPY_N] = symbols
    tokens[seq_len + COPY_N - 1] = COPY_DELIM
    y = torch.full((length, batch), COPY_BLANK, dtype=torch.int64)
    y[-COPY_N:] = symbols
    x = F.one_hot(tokens, COPY_DELIM + 1).to(torch.float64)
    return x, y


def copy_baseline_logits(seq_len: int, batch: int) -> Tensor:
    """Logits [T+20, B, 9] of the memoryless baseline: blank, then uniform over the symbols."""
    length = seq_len + 2 * COPY_N
    logits = torch.full((length, batch, COPY_SYMBOLS + 1), -torch.inf, dtype=torch.float64)
    logits[: length - COPY_N, :, COPY_BLANK] = 0.0
    logits[length - COPY_N :, :, 1:] = 0.0
    return logits


TASKS: dict[str, Task] = {
    "adding": Task(
        name="adding", input_size=TASK_INPUT_SIZE["adding"], output_size=1, per_step=False,
        description="sum of two marked values out of T (MSE at the last step)",
        sample=adding_batch,
        baseline=lambda seq_len: theory.adding_problem_baseline_mse(),
    ),
    "copy": Task(
        name="copy", input_size=TASK_INPUT_SIZE["copy"], output_size=COPY_SYMBOLS + 1, per_step=True,
        description="recall 10 symbols from 8 after a delay of T (cross-entropy, nats/step)",
        sample=copy_batch,
        baseline=lambda seq_len: theory.copy_memory_baseline_xent(seq_len, COPY_N, COPY_SYMBOLS),
    ),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown long_range task {name!r}; allowed: {', '.join(TASKS)}")
    return TASKS[name]
