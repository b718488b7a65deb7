"""Products of Gaussian random matrices; tied versus untied products (sections 2-3)."""

from __future__ import annotations

import math

import numpy as np
from scipy import special

# --------------------------------------------------------------------------------------
# 2. Products of Gaussian random matrices
# --------------------------------------------------------------------------------------


def _check_n(n: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def newman_lyapunov_spectrum(n: int, sigma: float = 1.0) -> np.ndarray:
    """Exact Lyapunov spectrum of products of i.i.d. n x n matrices with N(0, sigma^2/n) entries.

        lambda_i = ln(sigma) + 0.5 [ln(2/n) + digamma((n - i + 1)/2)],   i = 1..n,

    in decreasing order (Newman 1986; Isopi & Newman 1992). Derivation: by rotation
    invariance, the QR recursion W_k Q_{k-1} = Q_k R_k has W_k Q_{k-1} again Gaussian, and
    R_ii^2 ~ (sigma^2/n) chi^2_{n-i+1} independently; E ln chi^2_m = ln 2 + digamma(m/2).
    The top exponent is the exact mean growth of ln||P_k v|| for any fixed v
    (:func:`gaussian_product_log_norm_mean_rate`).
    """
    _check_n(n)
    if not sigma > 0.0:
        raise ValueError("sigma must be > 0")
    i = np.arange(1, n + 1)
    return math.log(sigma) + 0.5 * (math.log(2.0 / n) + special.digamma((n - i + 1) / 2.0))


def gaussian_log_abs_det_mean(n: int, sigma: float = 1.0) -> float:
    """E ln|det W| for W with i.i.d. N(0, sigma^2/n) entries; equals sum_i lambda_i.

    |det W|^2 = (sigma^2/n)^n prod_{m=1}^n chi^2_m (independent; Bartlett decomposition),
    so E ln|det W| = n ln(sigma) + 0.5 sum_{m=1}^n [ln(2/n) + digamma(m/2)], which is
    the sum of :func:`newman_lyapunov_spectrum` (Lyapunov exponents add up to the mean
    log volume growth, ln|det P_k| = sum_j ln|det W_j|).
    """
    _check_n(n)
    if not sigma > 0.0:
        raise ValueError("sigma must be > 0")
    m = np.arange(1, n + 1)
    return float(n * math.log(sigma) + 0.5 * np.sum(math.log(2.0 / n) + special.digamma(m / 2.0)))


def gaussian_log_abs_det_variance(n: int) -> float:
    """Var ln|det W| = 0.25 sum_{m=1}^n trigamma(m/2) (independent of sigma)."""
    _check_n(n)
    m = np.arange(1, n + 1)
    return float(0.25 * np.sum(special.polygamma(1, m / 2.0)))


# --------------------------------------------------------------------------------------
# 3. Tied versus untied products
# --------------------------------------------------------------------------------------


def gaussian_product_log_norm_mean_rate(n: int, sigma: float = 1.0) -> float:
    """E ln||W v|| for unit v, W with N(0, sigma^2/n) entries = Newman's lambda_1.

    ||W v||^2 ~ (sigma^2/n) chi^2_n, so E ln||W v|| = ln(sigma) + 0.5 [ln(2/n) +
    digamma(n/2)] = ln(sigma) - 1/(2n) + O(1/n^2).
    """
    return float(newman_lyapunov_spectrum(n, sigma)[0])


def gaussian_product_log_norm_variance_rate(n: int) -> float:
    """Per-step variance of ln||P_k v||, P_k = W_k ... W_1 i.i.d. Gaussian n x n: trigamma(n/2)/4.

    Derivation (exact, every k, not only asymptotically). Write
    ln||P_k v|| = sum_{j=1}^k ln||W_j u_{j-1}|| with u_{j-1} = P_{j-1} v / ||P_{j-1} v||
    (unit, a function of W_1..W_{j-1}). W_j is independent of u_{j-1} and rotation
    invariant, so conditionally on the past ||W_j u_{j-1}||^2 ~ (sigma^2/n) chi^2_n whatever
    u_{j-1} is; the terms are therefore i.i.d. copies of 0.5 ln((sigma^2/n) chi^2_n). With
    chi^2_n = 2 G, G ~ Gamma(n/2, 1), and Var ln G = trigamma(n/2):

        Var ln||P_k v|| = k * 0.25 * trigamma(n/2) = k * (1/(2n) + 1/(2n^2) + O(n^-3)),

    independent of sigma. (Mean: k * lambda_1, :func:`gaussian_product_log_norm_mean_rate`.)
    This is the Gaussian case of the Furstenberg-Kesten CLT for products.
    """
    _check_n(n)
    return float(0.25 * special.polygamma(1, n / 2.0))


def untied_product_log_norm_variance(k: float | np.ndarray, rate: float) -> float | np.ndarray:
    """Var ln||W_k ... W_1 v|| ~ rate * k for i.i.d. (untied) factors (CLT for products).

    Exact for Gaussian factors with ``rate = gaussian_product_log_norm_variance_rate(n)``;
    for other i.i.d. factors it is the asymptotic (k -> inf) form, with an O(1) offset.
    Across draws the std grows like sqrt(k).
    """
    return rate * np.asarray(k, dtype=float) if np.ndim(k) else rate * float(k)


def tied_product_log_norm_variance(
    k: float | np.ndarray, var_log_spectral_radius: float
) -> float | np.ndarray:
    """Leading-order Var over draws of W of ln||W^k v|| for one matrix repeated: k^2 Var ln rho(W).

    For a diagonalisable W, W^k v = sum_j c_j mu_j^k r_j (eigenvalues mu_j, right
    eigenvectors r_j); with rho = max |mu_j|, ln||W^k v|| = k ln rho(W) + O(1), where the
    O(1) term (ln of the projection of v on the top eigenspace, and for a complex pair a
    bounded oscillation) does not grow with k. Across draws of W the growth rate ln rho(W)
    itself is random, so std ln||W^k v|| ~ k std ln rho(W) and the variance grows like k^2
    (corrections O(k) from the covariance with the O(1) term), against linearly in k for
    untied factors (:func:`untied_product_log_norm_variance`). Neither mean rate is the
    same: E ln rho(W) (tied) versus lambda_1 (untied). For Gaussian W no finite-n closed
    form of the law of rho(W) is used here; estimate it with
    :func:`ginibre_log_spectral_radius_moments`.
    """
    return var_log_spectral_radius * np.asarray(k, dtype=float) ** 2 if np.ndim(k) else (
        var_log_spectral_radius * float(k) ** 2
    )


def ginibre_log_spectral_radius_moments(
    n: int, sigma: float = 1.0, n_samples: int = 20_000, seed: int = 0
) -> tuple[float, float, float]:
    """Monte Carlo (mean, variance, standard error of the mean) of ln rho(W), W ~ N(0, sigma^2/n).

    Real Gaussian (real Ginibre) matrices, eigenvalues by ``numpy.linalg.eigvals``,
    deterministic given ``seed``. For n -> infinity rho(W) -> sigma (circular law), with
    fluctuations O(1/sqrt(n ln n)) (Rider 2003 for the complex case); for small n no closed
    form is implemented, hence the sampling.
    """
    _check_n(n)
    rng = np.random.default_rng(seed)
    out = np.empty(n_samples)
    batch = 4096
    for start in range(0, n_samples, batch):
        m = min(batch, n_samples - start)
        w = rng.standard_normal((m, n, n)) * (sigma / math.sqrt(n))
        out[start : start + m] = np.log(np.abs(np.linalg.eigvals(w)).max(axis=-1))
    var = float(out.var(ddof=1))
    return float(out.mean()), var, math.sqrt(var / n_samples)
