"""Theory for vanishing and exploding gradients in RNNs, to compare measurements with.

All functions are pure (no global state; the one Monte Carlo helper takes an explicit
seed), use numpy/scipy only, and natural logarithms throughout.

Contents
--------
1. Mean-field theory of a random tanh (or linear / ReLU) RNN
   ``h_{t+1} = phi(W h_t + U x_t + b)``: the variance map, its fixed point q*, the
   mean-square Jacobian gain chi_1, the predicted rate 0.5 ln chi_1 of ln||delta|| per step
   and the critical sigma_w (Poole et al. 2016; Schoenholz et al. 2017; Chen, Pennington &
   Schoenholz 2018).
2. Exact Lyapunov spectrum of products of i.i.d. Gaussian matrices (Newman 1986;
   Isopi & Newman 1992) and the identity sum_i lambda_i = E ln|det W|.
3. Tied (W^k) versus untied (W_k ... W_1) products: growth of the spread of ln||P v||.
4. Norm bounds: Pascanu et al. (2013) for the vanilla RNN and the exact gate chains of an
   LSTM / GRU with W_hh = 0.
5. Float32 overflow / underflow onset of an exponentially growing / decaying product.
6. Exact constant-predictor baselines of the adding and copy-memory tasks.

References
----------
* B. Poole, S. Lahiri, M. Raghu, J. Sohl-Dickstein, S. Ganguli, "Exponential
  expressivity in deep neural networks through transient chaos", NeurIPS 2016.
* S. S. Schoenholz, J. Gilmer, S. Ganguli, J. Sohl-Dickstein, "Deep information
  propagation", ICLR 2017.
* M. Chen, J. Pennington, S. S. Schoenholz, "Dynamical isometry and a mean field theory of
  RNNs: gating enables signal propagation in recurrent neural networks", ICML 2018.
* C. M. Newman, "The distribution of Lyapunov exponents: exact results for random
  matrices", Commun. Math. Phys. 103, 121-126 (1986).
* M. Isopi, C. M. Newman, "The triangle law for Lyapunov exponents of large random
  matrices", Commun. Math. Phys. 143, 591-598 (1992).
* H. Furstenberg, H. Kesten, "Products of random matrices", Ann. Math. Stat. 31 (1960)
  (law of large numbers and central limit theorem for ln||P_k v||).
* R. Pascanu, T. Mikolov, Y. Bengio, "On the difficulty of training recurrent neural
  networks", ICML 2013.
* M. Arjovsky, A. Shah, Y. Bengio, "Unitary evolution recurrent neural networks",
  ICML 2016 (adding and copy-memory task conventions).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from scipy import optimize, special

__all__ = [
    "FLOAT32_MAX",
    "FLOAT32_TINY",
    "FLOAT32_SMALLEST_SUBNORMAL",
    "LOG_FLOAT32_MAX",
    "PHIS",
    "gauss_hermite_rule",
    "default_gauss_hermite_nodes",
    "gaussian_expectation",
    "variance_map",
    "q_star",
    "chi1_at_q",
    "chi1",
    "log_norm_rate",
    "gradient_timescale",
    "critical_sigma_w",
    "newman_lyapunov_spectrum",
    "gaussian_log_abs_det_mean",
    "gaussian_log_abs_det_variance",
    "gaussian_product_log_norm_mean_rate",
    "gaussian_product_log_norm_variance_rate",
    "untied_product_log_norm_variance",
    "tied_product_log_norm_variance",
    "ginibre_log_spectral_radius_moments",
    "pascanu_bound_log",
    "log_sigmoid",
    "lstm_forget_chain_log",
    "gru_update_chain_log",
    "float32_overflow_lag",
    "float32_underflow_lag",
    "adding_problem_baseline_mse",
    "copy_memory_baseline_xent",
]

# --------------------------------------------------------------------------------------
# float32 limits (IEEE 754 binary32)
# --------------------------------------------------------------------------------------

FLOAT32_MAX: float = float(np.finfo(np.float32).max)  # 3.4028234663852886e38
FLOAT32_TINY: float = float(np.finfo(np.float32).tiny)  # smallest normal, 1.1754944e-38
FLOAT32_SMALLEST_SUBNORMAL: float = float(np.float32(1.401298464324817e-45))
LOG_FLOAT32_MAX: float = math.log(FLOAT32_MAX)  # 88.72283905206835

# --------------------------------------------------------------------------------------
# 1. Mean-field theory
# --------------------------------------------------------------------------------------

PHIS: tuple[str, ...] = ("tanh", "linear", "relu")

#: Above this many nodes the automatic rule stops growing (q beyond ~400); see
#: :func:`default_gauss_hermite_nodes`.
_MAX_AUTO_NODES = 60_000
_RTOL = 4.0 * float(np.finfo(float).eps)  # brentq's smallest allowed relative tolerance


def _check_phi(phi: str) -> None:
    if phi not in PHIS:
        raise ValueError(f"unknown phi {phi!r}; allowed: {', '.join(PHIS)}")


def _check_nonneg(**kwargs: float) -> None:
    for name, value in kwargs.items():
        if not (value >= 0.0 and math.isfinite(value)):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


@lru_cache(maxsize=64)
def gauss_hermite_rule(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z_k and weights w_k with sum_k w_k f(z_k) ~= E[f(z)], z ~ N(0, 1).

    Probabilists' Gauss-Hermite rule (``scipy.special.roots_hermitenorm``; Golub-Welsch
    below 150 nodes, the asymptotic O(n) method of Townsend, Trogdon & Olver above), with
    the weights divided by sqrt(2 pi) so that they sum to 1. The rule is exact for
    polynomials of degree <= 2 n - 1. Arrays are cached and read-only.
    """
    if n_nodes < 1:
        raise ValueError("n_nodes must be >= 1")
    z, w = special.roots_hermitenorm(int(n_nodes))
    w = w / math.sqrt(2.0 * math.pi)
    z.setflags(write=False)
    w.setflags(write=False)
    return z, w


def default_gauss_hermite_nodes(q: float) -> int:
    """Node count used by :func:`gaussian_expectation` for variance q: 200 + 150 * ceil(q).

    Why it grows with q: for z ~ N(0, 1) the integrands tanh(sqrt(q) z)^2 and
    sech(sqrt(q) z)^4 have poles at z = +-i pi / (2 sqrt(q)), so Gauss-Hermite converges
    like exp(-c sqrt(n / q)) and needs n proportional to q for a fixed accuracy.
    Measured against adaptive ``scipy.integrate.quad`` (tolerance 1e-14): absolute error
    <= 2e-13 for both integrands at q in {1e-4, 0.1, 1, 3, 10, 30, 100, 300} with this
    rule, whereas a fixed 200 nodes gives 2e-8 at q = 3 and 2e-4 at q = 10. Capped at
    60 000 nodes (q ~ 400); beyond that :func:`gaussian_expectation` warns.
    """
    return int(min(200 + 150 * math.ceil(max(q, 0.0)), _MAX_AUTO_NODES))


def gaussian_expectation(
    f: Callable[[np.ndarray], np.ndarray], q: float, n_nodes: int | None = None
) -> float:
    """E[f(sqrt(q) z)] for z ~ N(0, 1), by Gauss-Hermite quadrature.

    ``f`` must be vectorised. ``n_nodes=None`` picks :func:`default_gauss_hermite_nodes`
    (absolute error ~1e-13 for the tanh integrands of this module up to q ~ 300).
    """
    _check_nonneg(q=q)
    if n_nodes is None:
        if 200 + 150 * math.ceil(q) > _MAX_AUTO_NODES:
            warnings.warn(
                f"q = {q:g} is beyond the calibrated range of the automatic Gauss-Hermite "
                f"rule ({_MAX_AUTO_NODES} nodes); the result may be inaccurate",
                RuntimeWarning,
                stacklevel=2,
            )
        n_nodes = default_gauss_hermite_nodes(q)
    z, w = gauss_hermite_rule(n_nodes)
    return float(np.dot(w, f(math.sqrt(q) * z)))


def _tanh_sq(x: np.ndarray) -> np.ndarray:
    return np.tanh(x) ** 2


def _sech_sq(x: np.ndarray) -> np.ndarray:
    """sech(x)^2 = 4 e^{-2|x|} / (1 + e^{-2|x|})^2, without overflow or cancellation."""
    e = np.exp(-2.0 * np.abs(x))
    return 4.0 * e / (1.0 + e) ** 2


def _sech_4(x: np.ndarray) -> np.ndarray:
    return _sech_sq(x) ** 2


def _tanh_ratio_sq(x: np.ndarray, s: float) -> np.ndarray:
    """(tanh(s x) / s)^2, accurate as s -> 0 (limit x^2)."""
    return (np.tanh(s * x) / s) ** 2


def variance_map(
    q: float,
    sigma_w: float,
    sigma_u: float = 0.0,
    sigma_b: float = 0.0,
    phi: str = "tanh",
    n_nodes: int | None = None,
) -> float:
    """One step of the mean-field pre-activation variance map.

    For ``h_{t+1} = phi(a_t)``, ``a_t = W h_t + U x_t + b`` with W_ij ~ N(0, sigma_w^2/H),
    (U x_t)_i ~ N(0, sigma_u^2) and b_i ~ N(0, sigma_b^2), the pre-activation variance
    q_t = (1/H) sum_i a_{t,i}^2 obeys, for H -> infinity (Poole et al. 2016, eq. 3),

        q_{t+1} = V(q_t) = sigma_w^2 E_z[phi(sqrt(q_t) z)^2] + sigma_u^2 + sigma_b^2.

    Closed forms: linear, E[(sqrt(q) z)^2] = q; ReLU, E[relu(sqrt(q) z)^2] = q / 2.
    tanh uses :func:`gaussian_expectation`.
    """
    _check_phi(phi)
    _check_nonneg(q=q, sigma_w=sigma_w, sigma_u=sigma_u, sigma_b=sigma_b)
    c = float(sigma_u) ** 2 + float(sigma_b) ** 2
    if phi == "linear":
        return sigma_w**2 * q + c
    if phi == "relu":
        return 0.5 * sigma_w**2 * q + c
    if q == 0.0:
        return c
    return sigma_w**2 * gaussian_expectation(_tanh_sq, q, n_nodes) + c


def q_star(
    sigma_w: float,
    sigma_u: float = 0.0,
    sigma_b: float = 0.0,
    phi: str = "tanh",
    n_nodes: int | None = None,
) -> float:
    """Fixed point q* = V(q*) of :func:`variance_map` that attracts every start q_0 > 0.

    tanh. V(q)/q = sigma_w^2 E[z^2 (tanh(u)/u)^2] (u = sqrt(q) z) + c/q with
    c = sigma_u^2 + sigma_b^2 is strictly decreasing in q (tanh(u)/u decreases in |u|), so
    V(q) = q has at most one root in q > 0, and since V is increasing that root is
    globally attracting:

    * c > 0: the unique root lies in (0, sigma_w^2 + c] (V(0) = c > 0 and
      V(q) < sigma_w^2 + c); found by ``brentq`` on V(q) - q to machine precision.
    * c = 0 and sigma_w <= 1: V(q)/q < sigma_w^2 <= 1 for q > 0, so q* = 0 exactly.
    * c = 0 and sigma_w > 1: q = 0 is an unstable fixed point; the returned q* > 0 is the
      root of V(q)/q - 1 = sigma_w^2 E[(tanh(sqrt(q) z)/sqrt(q))^2] - 1, which tends to
      sigma_w^2 - 1 > 0 as q -> 0 (no 0/0 cancellation near criticality; near sigma_w = 1,
      q* ~ (sigma_w^2 - 1) / (2 sigma_w^2)).

    linear: q* = c / (1 - sigma_w^2) for sigma_w < 1; ``inf`` (divergence) for
    sigma_w > 1, or sigma_w = 1 with c > 0. ReLU: q* = c / (1 - sigma_w^2 / 2) for
    sigma_w^2 < 2; ``inf`` above. In the neutral cases (linear sigma_w = 1 or ReLU
    sigma_w^2 = 2, with c = 0) every q is a fixed point; 0.0 is returned by convention
    (chi_1 does not depend on q there).
    """
    _check_phi(phi)
    _check_nonneg(sigma_w=sigma_w, sigma_u=sigma_u, sigma_b=sigma_b)
    c = float(sigma_u) ** 2 + float(sigma_b) ** 2
    s2 = float(sigma_w) ** 2
    if phi in ("linear", "relu"):
        gain = s2 if phi == "linear" else 0.5 * s2
        if gain < 1.0:
            return c / (1.0 - gain)
        if gain == 1.0 and c == 0.0:
            return 0.0
        return math.inf
    # tanh
    if s2 == 0.0:
        return c
    if c > 0.0:
        upper = s2 + c

        def residual(q: float) -> float:
            return variance_map(q, sigma_w, sigma_u, sigma_b, "tanh", n_nodes) - q

        return float(optimize.brentq(residual, 0.0, upper, xtol=1e-300, rtol=_RTOL, maxiter=500))
    if s2 <= 1.0:
        return 0.0

    def ratio_minus_one(q: float) -> float:
        s = math.sqrt(q)
        nn = n_nodes if n_nodes is not None else default_gauss_hermite_nodes(q)
        z, w = gauss_hermite_rule(nn)
        return s2 * float(np.dot(w, _tanh_ratio_sq(z, s))) - 1.0

    lower = 1e-300
    if ratio_minus_one(lower) <= 0.0:  # sigma_w^2 - 1 below quadrature round-off: critical
        return 0.0
    return float(optimize.brentq(ratio_minus_one, lower, s2, xtol=1e-300, rtol=_RTOL, maxiter=500))


def chi1_at_q(q: float, sigma_w: float, phi: str = "tanh", n_nodes: int | None = None) -> float:
    """chi_1(q) = sigma_w^2 E_z[phi'(sqrt(q) z)^2], the mean-square gain of one Jacobian.

    For D = diag(phi'(a)) W with a_i ~ N(0, q) and W_ij ~ N(0, sigma_w^2/H),
    E||D^T delta||^2 = chi_1 ||delta||^2 (and likewise for D delta) as H -> infinity
    (Schoenholz et al. 2017, eq. 5; Chen et al. 2018). Closed forms: linear, sigma_w^2;
    ReLU, sigma_w^2 / 2 (phi' = 1{a > 0}, taken for q > 0 -- at q = 0 every
    pre-activation would be exactly 0, where torch's relu'(0) = 0). tanh:
    phi'(a)^2 = sech(a)^4, by :func:`gaussian_expectation`; exactly sigma_w^2 at q = 0.
    """
    _check_phi(phi)
    _check_nonneg(sigma_w=sigma_w)
    if not q >= 0.0:
        raise ValueError(f"q must be >= 0, got {q!r}")
    s2 = float(sigma_w) ** 2
    if phi == "linear":
        return s2
    if phi == "relu":
        return 0.5 * s2
    if q == 0.0:
        return s2
    if math.isinf(q):
        return 0.0
    return s2 * gaussian_expectation(_sech_4, q, n_nodes)


def chi1(
    sigma_w: float,
    sigma_u: float = 0.0,
    sigma_b: float = 0.0,
    phi: str = "tanh",
    n_nodes: int | None = None,
) -> float:
    """chi_1 = sigma_w^2 E_z[phi'(sqrt(q*) z)^2] at the fixed point q* of :func:`q_star`.

    chi_1 < 1: ordered phase, gradients vanish; chi_1 > 1: chaotic phase, they explode
    (Poole et al. 2016; Schoenholz et al. 2017). With sigma_u = sigma_b = 0 and
    sigma_w <= 1 (tanh), q* = 0 and chi_1 = sigma_w^2 exactly. Accuracy (tanh): absolute
    error ~1e-13 for q* up to ~300 (see :func:`default_gauss_hermite_nodes`).
    """
    q = q_star(sigma_w, sigma_u, sigma_b, phi, n_nodes)
    return chi1_at_q(q, sigma_w, phi, n_nodes)


def log_norm_rate(
    sigma_w: float,
    sigma_u: float = 0.0,
    sigma_b: float = 0.0,
    phi: str = "tanh",
    n_nodes: int | None = None,
) -> float:
    """Predicted per-step rate of ln||delta||: 0.5 ln chi_1 (-inf if chi_1 = 0).

    Mean field gives E||delta_{t-1}||^2 = chi_1 E||delta_t||^2, i.e. this is the rate of
    0.5 ln E||delta||^2 (the "annealed" rate). The typical rate E ln||delta|| of a finite
    network is smaller by Jensen's inequality, by O(1/H) per step: for the linear RNN with
    fresh Gaussian W every step the exact typical rate is Newman's top exponent
    ln(sigma_w) + 0.5 [ln(2/H) + digamma(H/2)] = ln(sigma_w) - 1/(2H) + O(1/H^2)
    (:func:`gaussian_product_log_norm_mean_rate`), against ln(sigma_w) here.
    """
    c1 = chi1(sigma_w, sigma_u, sigma_b, phi, n_nodes)
    return 0.5 * math.log(c1) if c1 > 0.0 else -math.inf


def gradient_timescale(chi_1: float) -> float:
    """xi = -1 / ln chi_1: steps for E||delta||^2 to change by a factor e.

    Schoenholz et al. (2017), xi_nabla; ln||delta|| changes by 1 over 2 xi steps.
    Returned positive for vanishing (chi_1 < 1), negative for exploding, ``inf`` at 1.
    """
    if not chi_1 > 0.0:
        raise ValueError("chi_1 must be > 0")
    lc = math.log(chi_1)
    return math.inf if lc == 0.0 else -1.0 / lc


def critical_sigma_w(
    sigma_u: float = 0.0,
    sigma_b: float = 0.0,
    phi: str = "tanh",
    n_nodes: int | None = None,
    xtol: float = 1e-12,
) -> float:
    """sigma_w at which chi_1 = 1 (edge of chaos) for given sigma_u, sigma_b.

    linear: 1; ReLU: sqrt(2) -- for any sigma_u, sigma_b (there chi_1 does not depend on
    q*; note that at these points q* = inf whenever sigma_u^2 + sigma_b^2 > 0).
    tanh: exactly 1 if sigma_u = sigma_b = 0 (chi_1 = sigma_w^2 < 1 below 1, and above 1
    chi_1 = 1 + (4/3) q*^2 + O(q*^3) > 1 from the small-q expansion). Otherwise
    chi_1(sigma_w = 1) = E[sech^4(sqrt(q*) z)] < 1 because q* > 0, so the root lies above 1;
    the upper end is doubled until chi_1 > 1 (chi_1 ~ 0.53 sigma_w^2 / sqrt(q*) -> inf)
    and ``brentq`` finds the crossing to ``xtol``. (Uniqueness of the crossing is not
    proven here; ``brentq`` returns one crossing in the bracket.) For tiny
    sigma_u^2 + sigma_b^2 the crossing is nearly tangential and the root is only
    determined to about sqrt(machine eps) relative.
    """
    _check_phi(phi)
    _check_nonneg(sigma_u=sigma_u, sigma_b=sigma_b)
    if phi == "linear":
        return 1.0
    if phi == "relu":
        return math.sqrt(2.0)
    if sigma_u == 0.0 and sigma_b == 0.0:
        return 1.0

    def gap(sw: float) -> float:
        return chi1(sw, sigma_u, sigma_b, "tanh", n_nodes) - 1.0

    lo, hi = 1.0, 2.0
    while gap(hi) <= 0.0:
        lo, hi = hi, 2.0 * hi
        if hi > 1e4:
            raise RuntimeError("no chi_1 = 1 crossing found below sigma_w = 1e4")
    return float(optimize.brentq(gap, lo, hi, xtol=xtol, maxiter=500))


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


# --------------------------------------------------------------------------------------
# 5. Float32 overflow / underflow onset
# --------------------------------------------------------------------------------------


def float32_overflow_lag(
    rate: float,
    log_start: float,
    *,
    squared: bool = False,
    hidden_size: int | None = None,
) -> float:
    """Lag L at which ln||delta|| = log_start + rate * L reaches the float32 overflow threshold.

    Threshold on ln||delta||:

    * default: ln(FLOAT32_MAX) = 88.7228... -- the norm itself is not representable; also
      the earliest lag at which one float32 element can overflow (max_i |delta_i| <=
      ||delta||), reached when delta is concentrated on one coordinate;
    * ``squared=True``: 0.5 ln(FLOAT32_MAX) = 44.3614... -- a norm computed as sqrt of a
      float32 sum of squares overflows there (``torch.linalg.vector_norm`` on a float32
      CPU tensor does: ||(1e20,)*4|| -> inf). bpttbench.gradients casts to float64
      before taking norms, so there the element criterion applies instead;
    * ``hidden_size=H``: ln(FLOAT32_MAX) + 0.5 ln H -- the latest lag: even a perfectly
      spread delta (all |delta_i| = ||delta|| / sqrt(H)) has overflowed elements.

    Returns the continuous crossing (threshold - log_start) / rate; the first integer lag
    with ||delta|| strictly above threshold is floor(L) + 1. 0.0 if log_start is already
    at or above the threshold, ``inf`` if rate <= 0 (never overflows).
    """
    if squared and hidden_size is not None:
        raise ValueError("squared and hidden_size are exclusive criteria")
    thr = LOG_FLOAT32_MAX
    if squared:
        thr = 0.5 * LOG_FLOAT32_MAX
    elif hidden_size is not None:
        _check_n(hidden_size)
        thr = LOG_FLOAT32_MAX + 0.5 * math.log(hidden_size)
    if log_start >= thr:
        return 0.0
    if rate <= 0.0:
        return math.inf
    return (thr - log_start) / rate


def float32_underflow_lag(
    rate: float, log_start: float, *, subnormal: bool = True, squared: bool = False
) -> float:
    """Lag at which ln||delta|| = log_start + rate * L (rate < 0) falls to float32 underflow.

    Threshold: ln of the smallest positive subnormal 1.4e-45 (-103.28; values below round
    to 0), or with ``subnormal=False`` of the smallest normal 1.18e-38 (-87.34; precision
    degrades below). ``squared=True`` halves the threshold (a float32 sum of squares
    underflows first: ||(1e-30,)*4|| -> 0 in float32). Note: the elements of a spread
    delta are ~||delta|| / sqrt(H), so they underflow about 0.5 ln H earlier in ln||delta||.
    Returns the continuous lag; 0.0 if already below, ``inf`` if rate >= 0.
    """
    thr = math.log(FLOAT32_SMALLEST_SUBNORMAL if subnormal else FLOAT32_TINY)
    if squared:
        thr *= 0.5
    if log_start <= thr:
        return 0.0
    if rate >= 0.0:
        return math.inf
    return (thr - log_start) / rate


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
