"""Norm bounds (Pascanu et al. 2013) and the exact gate chains of an LSTM / GRU (section 4)."""

from __future__ import annotations

import math

import numpy as np

# --------------------------------------------------------------------------------------
# 4. Norm bounds and exact gate chains
# --------------------------------------------------------------------------------------


def pascanu_bound_log(
    lambda1: float, lag: float | np.ndarray, gamma: float = 1.0
) -> float | np.ndarray:
    """ln of the Pascanu et al. (2013) bound ||dh_T/dh_t||_2 <= (gamma lambda_1)^(T - t).

    For h_{s+1} = phi(W_hh h_s + W_ih x_s + b), dh_{s+1}/dh_s = diag(phi'(a_s)) W_hh and
    ||diag(phi') W_hh||_2 <= gamma ||W_hh||_2, with lambda_1 = ||W_hh||_2 (largest singular
    value) and gamma = sup|phi'|: 1 for tanh (the default), 1/4 for the sigmoid
    (Pascanu et al. 2013, Sec. 3.1). Returns lag * ln(gamma * lambda_1); -inf if the product
    is 0 (and lag > 0).
    """
    if lambda1 < 0.0 or gamma <= 0.0:
        raise ValueError("need lambda1 >= 0 and gamma > 0")
    lag_arr = np.asarray(lag, dtype=float)
    if np.any(lag_arr < 0):
        raise ValueError("lag must be >= 0")
    g = gamma * lambda1
    with np.errstate(divide="ignore", invalid="ignore"):
        lg = math.log(g) if g > 0.0 else -math.inf
        out = np.where(lag_arr == 0, 0.0, lag_arr * lg)
    return out if np.ndim(lag) else float(out)


def log_sigmoid(x: float | np.ndarray) -> float | np.ndarray:
    """ln sigmoid(x) = -ln(1 + e^{-x}), computed stably as -logaddexp(0, -x)."""
    out = -np.logaddexp(0.0, -np.asarray(x, dtype=float))
    return out if np.ndim(x) else float(out)


def lstm_forget_chain_log(b_f: float | np.ndarray, lag: float) -> float | np.ndarray:
    """ln of dc_T/dc_t = prod_s diag(f_s) = sigmoid(b_f)^(T - t) for an LSTM with W_hh = 0.

    With c_s = f_s * c_{s-1} + i_s * g_s (torch.nn.LSTM) and all recurrent weights zero,
    the gates do not depend on the state; if moreover the input contribution to the
    forget gate is zero (W_if = 0, or x = 0), f_s = sigmoid(b_f) with
    b_f = bias_ih[f] + bias_hh[f] (torch has two bias vectors). The Jacobian is then
    exactly diagonal, entries sigmoid(b_f)^lag; returns lag * ln sigmoid(b_f)
    elementwise. For a vector b_f its spectral norm is the max entry. (With W_hh = 0,
    dh_T/dh_t itself is 0 for lag >= 1: memory is carried only by c.)
    """
    if lag < 0:
        raise ValueError("lag must be >= 0")
    ls = log_sigmoid(b_f)
    return lag * ls


def gru_update_chain_log(b_z: float | np.ndarray, lag: float) -> float | np.ndarray:
    """ln of dh_T/dh_t = sigmoid(b_z)^(T - t) for a GRU with W_hh = 0.

    torch.nn.GRU: h' = (1 - z) * n + z * h with r, z, n depending on h only through
    W_hr, W_hz, W_hn (n = tanh(W_in x + b_in + r * (W_hn h + b_hn))). With W_hh = 0,
    dh'/dh = diag(z) exactly, and z = sigmoid(b_z), b_z = bias_ih[z] + bias_hh[z] when the
    input contribution W_iz x is zero. Returns lag * ln sigmoid(b_z) elementwise. (In
    the Cho et al. 2014 convention h' = z * h + (1 - z) * h~ the same holds; in the
    Chung et al. 2014 convention h' = (1 - z) * h + z * h~ replace b_z by -b_z.)
    """
    if lag < 0:
        raise ValueError("lag must be >= 0")
    return lag * log_sigmoid(b_z)
