"""Mean-field theory of a random tanh / linear / ReLU RNN (section 1 of :mod:`bpttbench.theory`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from scipy import optimize, special

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
