"""Exact constant-predictor baselines of the adding and copy-memory tasks (section 6)."""

from __future__ import annotations

import math

# --------------------------------------------------------------------------------------
# 6. Task baselines
# --------------------------------------------------------------------------------------


def adding_problem_baseline_mse(low: float = 0.0, high: float = 1.0) -> float:
    """Best constant-prediction MSE on the adding problem: Var(X1 + X2) = (high - low)^2 / 6.

    The target is the sum of two independent U(low, high) values (Hochreiter & Schmidhuber
    1997; Le et al. 2015; Arjovsky et al. 2016 use U(0, 1)); predicting its mean
    (low + high) gives MSE 2 (high - low)^2 / 12 = 1/6 = 0.1667 for U(0, 1).
    """
    if not high > low:
        raise ValueError("need high > low")
    return (high - low) ** 2 / 6.0


def copy_memory_baseline_xent(t_delay: int, n_copy: int = 10, n_symbols: int = 8) -> float:
    """Cross-entropy (nats per time step) of the memoryless baseline on copy memory.

    Arjovsky et al. (2016): inputs are n_copy = 10 symbols drawn from n_symbols = 8, then
    T - 1 blanks, a delimiter and n_copy blanks (length T + 2 n_copy); the target is blanks
    then the n_copy symbols. Predicting blank for the first T + n_copy steps and the
    uniform distribution over the n_symbols for the last n_copy gives

        n_copy ln(n_symbols) / (T + 2 n_copy) = 10 ln 8 / (T + 20).
    """
    if t_delay < 0 or n_copy < 1 or n_symbols < 1:
        raise ValueError("need t_delay >= 0, n_copy >= 1, n_symbols >= 1")
    return n_copy * math.log(n_symbols) / (t_delay + 2 * n_copy)
