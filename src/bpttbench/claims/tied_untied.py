"""Claim 2: the same factor repeated (an RNN) against independent factors (a deep net).

Seed text (Cause 2): in an unrolled RNN the gradient is a product "that contains many
instances of the same term", which makes it "much more unstable" than the product of
different terms of a feed-forward net. Measured on the bare matrix products: W has
i.i.d. N(0, sigma^2/n) entries, v is a unit vector, and over ``draws`` independent draws

* tied (RNN):           P_k = W^k,             one W per draw;
* untied (deep net):    P_k = W_k ... W_1,     a fresh W_j every step.

Theory (``bpttbench.theory``): for tied products ln||W^k v|| = k ln rho(W) + O(1), so the
spread across draws grows like k (variance ~ k^2 Var ln rho(W)); for untied Gaussian
products ln||P_k v|| is a sum of k i.i.d. terms, variance exactly k trigamma(n/2)/4, and
the Lyapunov spectrum is Newman's. The mean rates differ as well: E ln rho(W) for tied,
lambda_1 = ln sigma + (ln(2/n) + digamma(n/2))/2 < ln sigma for untied.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import theory as th
from .checks import check_section
from .common import ClaimResult, Curves, bootstrap, fmt, mean_se, row, z_family
from .settings import Context

SOURCE = "seed text, Cause 2; Furstenberg-Kesten; Newman (1986)"


def record_steps(steps: int, fit_from: int, points: int = 40) -> np.ndarray:
    """Log-spaced product lengths 1..steps, always holding fit_from and steps."""
    ks = np.unique(np.round(np.geomspace(1, steps, points)).astype(int))
    return np.unique(np.concatenate([ks, [min(fit_from, steps), steps]]))


def simulate(n: int, sigma: float, draws: int, steps: int, ks: np.ndarray, seed: int,
             device: str) -> dict[str, np.ndarray]:
    """ln||P_k v|| of tied and untied products at the steps ``ks``, untied QR exponents.

    Float64 throughout; vectors are renormalised every step and the logs summed, so any
    length is safe. The untied product carries a full orthonormal frame (QR every step)
    whose first column is the tracked vector, so one run gives both ln||P_k v|| and the
    Lyapunov spectrum. Returns arrays: tied [len(ks), draws], untied [len(ks), draws],
    untied_exponents [draws, n], log_rho [draws] (ln of the spectral radius of each W).
    """
    f64 = torch.float64
    gen = torch.Generator(device=device).manual_seed(7_919 * (int(seed) + 1))
    scale = sigma / math.sqrt(n)
    w = torch.randn(draws, n, n, generator=gen, dtype=f64, device=device) * scale
    frame = torch.linalg.qr(torch.randn(draws, n, n, generator=gen, dtype=f64, device=device))[0]
    v = frame[:, :, 0].clone()
    log_tied = torch.zeros(draws, dtype=f64, device=device)
    acc = torch.zeros(draws, n, dtype=f64, device=device)
    want = set(int(k) for k in ks)
    tied_rec, untied_rec = [], []
    for k in range(1, steps + 1):
        v = (w @ v[..., None])[..., 0]
        nv = torch.linalg.vector_norm(v, dim=1)
        log_tied += torch.log(nv)
        v = v / nv[:, None]
        w_k = torch.randn(draws, n, n, generator=gen, dtype=f64, device=device) * scale
        frame, r = torch.linalg.qr(w_k @ frame)
        acc += torch.log(torch.diagonal(r, dim1=-2, dim2=-1).abs())
        if k in want:
            tied_rec.append(log_tied.clone())
            untied_rec.append(acc[:, 0].clone())
    log_rho = torch.log(torch.linalg.eigvals(w).abs().amax(dim=-1))
    return {
        "tied": torch.stack(tied_rec).cpu().numpy(),
        "untied": torch.stack(untied_rec).cpu().numpy(),
        "untied_exponents": (acc / steps).cpu().numpy(),
        "log_rho": log_rho.cpu().numpy(),
    }


def loglog_slope(ks: np.ndarray, var: np.ndarray) -> float:
    return float(np.polyfit(np.log(ks), np.log(var), 1)[0])


def tied_slope_bias_bound(k: float, var_log_rho: float, var_r: float) -> float:
    """Bound on |d ln Var / d ln k - 2| at product length k for tied products.

    Var ln||W^k v|| = k^2 a + 2 k b + c with a = Var ln rho(W), b = Cov(ln rho, r),
    c = Var r, r = ln||W^k v|| - k ln rho(W) the O(1) remainder. The local slope is
    2 - (2 k b + 2 c) / Var, and |b| <= sqrt(a c) (Cauchy-Schwarz), so
    |slope - 2| <= 2 (k sqrt(a c) + c) / (k sqrt(a) - sqrt(c))^2 (inf when the
    denominator's base is <= 0: k too short for the k^2 term to dominate).
    """
    base = k * math.sqrt(var_log_rho) - math.sqrt(var_r)
    if base <= 0:
        return math.inf
    return 2.0 * (k * math.sqrt(var_log_rho * var_r) + var_r) / base**2


def run(sec: dict, ctx: Context) -> ClaimResult:
    n, sigma, draws, steps = sec["n"], float(sec["sigma"]), sec["draws"], sec["steps"]
    fit_from, n_boot, z = sec["fit_from"], sec["bootstrap"], ctx.z
    check_section("tied_untied", sec, ctx.seeds)
    seed = ctx.seeds[0]
    ks = record_steps(steps, fit_from)
    sim = simulate(n, sigma, draws, steps, ks, seed, ctx.device)
    tied, untied, log_rho = sim["tied"], sim["untied"], sim["log_rho"]
    fit = ks >= fit_from
    kf = ks[fit]
    big_k = float(steps)
    cond = f"n={n}, sigma={sigma:g}, {draws} draws, k<={steps}"
    rows, curves = [], Curves()

    def stats_for(idx: np.ndarray) -> np.ndarray:
        vt = tied[fit][:, idx].var(axis=1, ddof=1)
        vu = untied[fit][:, idx].var(axis=1, ddof=1)
        return np.array([loglog_slope(kf, vt), loglog_slope(kf, vu), vu[-1] / big_k,
                         vt[-1] / big_k**2])

    point = stats_for(np.arange(draws))
    boot = bootstrap(draws, stats_for, n_boot, seed=seed + 101)
    se = boot.std(axis=0, ddof=1)
    var_t, var_u = tied.var(axis=1, ddof=1), untied.var(axis=1, ddof=1)

    # O(1) remainder of the tied product and the theory's Monte Carlo moments of ln rho(W)
    remainder = tied[-1] - big_k * log_rho
    var_r = float(remainder.var(ddof=1))
    var_lr = float(log_rho.var(ddof=1))
    mc_n = max(4 * draws, 20_000)
    mc_mean, mc_var, mc_se = th.ginibre_log_spectral_radius_moments(n, sigma, mc_n, seed + 202)
    centred = log_rho - log_rho.mean()
    kurt_term = float(np.mean(centred**4)) - var_lr**2  # m4 - var^2, for se of a variance
    mc_var_se = math.sqrt(max(kurt_term, 0.0) / mc_n)

    bias = tied_slope_bias_bound(float(fit_from), var_lr, var_r)
    rows.append(row(
        "2a", "tied products (one W repeated, an RNN): Var ln||W^k v|| across draws grows like "
        "k^2 (log-log slope)", point[0], 2.0, z * se[0] + bias, condition=cond, n=draws,
        stderr=se[0], unit="d ln Var / d ln k", source=SOURCE,
        note=(f"fit over k={fit_from}..{steps}; tolerance {z:g} bootstrap standard errors + "
              f"{fmt(bias)}, the Cauchy-Schwarz bound on the finite-k correction at "
              f"k={fit_from} (Var ln rho={fmt(var_lr)}, Var of the O(1) remainder="
              f"{fmt(var_r)}). The spread (std) grows like k, not sqrt(k)."),
    ))
    rows.append(row(
        "2b", "untied products (independent W_k, a deep net): Var ln||W_k...W_1 v|| grows like "
        "k (log-log slope)", point[1], 1.0, z * se[1], condition=cond, n=draws, stderr=se[1],
        unit="d ln Var / d ln k", source=SOURCE,
        note=f"fit over k={fit_from}..{steps}; exact for every k for Gaussian factors; "
             f"tolerance {z:g} bootstrap standard errors.",
    ))
    rate_var = th.gaussian_product_log_norm_variance_rate(n)
    rows.append(row(
        "2c", "untied: Var ln||P_k v|| / k = trigamma(n/2)/4 (exact Gaussian CLT rate)",
        point[2], rate_var, z * se[2], condition=cond, n=draws, stderr=se[2],
        unit="nats^2/step", source="theory.gaussian_product_log_norm_variance_rate",
        note=f"at k={steps}; tolerance {z:g} bootstrap standard errors.",
    ))
    lam = th.newman_lyapunov_spectrum(n, sigma)
    u_rate, u_se = mean_se(untied[-1] / big_k)
    rows.append(row(
        "2d", "untied: mean growth rate of ln||P_k v|| = Newman's top exponent lambda_1",
        u_rate, float(lam[0]), z * u_se, condition=cond, n=draws, stderr=u_se,
        unit="nats/step", source="theory.newman_lyapunov_spectrum",
        note=f"mean of ln||P_k v||/k at k={steps}; exact (unbiased) for every k; tolerance "
             f"{z:g} standard errors.",
    ))
    exps = sim["untied_exponents"]
    e_mean = exps.mean(axis=0)
    e_se = exps.std(axis=0, ddof=1) / math.sqrt(draws)
    zs = np.abs(e_mean - lam) / e_se
    rows.append(row(
        "2e", "untied: the whole Lyapunov spectrum (QR) is Newman's exact formula; largest "
        "deviation over the n exponents", float(zs.max()), 0.0, z_family(z, n), "m<=p+tol",
        condition=cond, n=draws, stderr=1.0, unit="standard errors",
        source="theory.newman_lyapunov_spectrum",
        note=(f"max_i |lambda_i - Newman_i| / se_i over i=1..{n} (worst i={int(zs.argmax()) + 1}"
              f", deviation {fmt(e_mean[zs.argmax()] - lam[zs.argmax()])}); tolerance: "
              f"Bonferroni z for {n} comparisons at z={z:g}."),
    ))
    t_rate, t_se = mean_se(tied[-1] / big_k)
    finite_k = math.sqrt(float(np.mean(remainder**2))) / big_k
    rows.append(row(
        "2f", "tied: mean growth rate of ln||W^k v|| is E ln rho(W), not lambda_1",
        t_rate, mc_mean, z * math.hypot(t_se, mc_se) + finite_k, condition=cond, n=draws,
        stderr=math.hypot(t_se, mc_se), unit="nats/step",
        source="theory.ginibre_log_spectral_radius_moments",
        note=(f"at k={steps}; predicted by an independent Monte Carlo of {mc_n} matrices; "
              f"tolerance {z:g} standard errors + rms(O(1) remainder)/k={fmt(finite_k)}. "
              f"The typical rates differ: tied {fmt(t_rate)} vs untied {fmt(u_rate)} "
              f"(lambda_1={fmt(lam[0])}): one repeated W grows when rho(W) > 1, which happens "
              f"for {100 * float(np.mean(log_rho > 0)):.0f} % of draws."),
    ))
    bias_v = (2.0 * big_k * math.sqrt(var_lr * var_r) + var_r) / big_k**2
    rows.append(row(
        "2g", "tied: Var ln||W^k v|| / k^2 -> Var ln rho(W) (the rate itself is random)",
        point[3], mc_var, z * math.hypot(se[3], mc_var_se) + bias_v, condition=cond, n=draws,
        stderr=math.hypot(se[3], mc_var_se), unit="nats^2/step^2",
        source="theory.tied_product_log_norm_variance",
        note=(f"at k={steps}; tolerance {z:g} standard errors + the bound (2k sqrt(a c) + c)/k^2"
              f"={fmt(bias_v)} on the finite-k terms."),
    ))

    labels = {"tied": "tied: W^k (RNN)", "untied": "untied: W_k...W_1 (deep net)"}
    curves.add("variance", labels["tied"], "measured", ks, var_t)
    curves.add("variance", labels["untied"], "measured", ks, var_u)
    curves.add("variance", labels["tied"], "predicted", ks, ks.astype(float) ** 2 * mc_var)
    curves.add("variance", labels["untied"], "predicted", ks, ks * rate_var)
    curves.add("mean", labels["tied"], "band", ks, tied.mean(axis=1), np.sqrt(var_t))
    curves.add("mean", labels["untied"], "band", ks, untied.mean(axis=1), np.sqrt(var_u))
    curves.add("mean", labels["tied"], "predicted", ks, ks * mc_mean)
    curves.add("mean", labels["untied"], "predicted", ks, ks * lam[0])
    idx = np.arange(1, n + 1)
    curves.add("spectrum", labels["untied"], "points", idx, e_mean, ctx.z * e_se)
    curves.add("spectrum", labels["untied"], "predicted", idx, lam)
    return ClaimResult(rows, curves)
