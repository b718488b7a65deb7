"""What every claim shares: result rows and verdicts, plotted curves, statistics, set-up.

A claim experiment returns a :class:`ClaimResult`: table rows (one per checked
statement, built with :func:`row`) and the curves its figure draws (tidy records built
with :class:`Curves`). Verdicts are computed here, once, from the comparison named in
the row, so that no claim module decides its own pass/fail.

Tolerances are never free parameters: each row's tolerance is a multiple ``z`` of a
standard error (the ``claims.z`` key, 3 by default), a floating-point error bound, a
finite-size or finite-length correction, or a sum of these; the row's ``note`` says
which.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from ..models import RecurrentCell, init_parameters

#: The comparisons a row can state (m = measured, p = predicted, tol = tolerance).
COMPARISONS: dict[str, str] = {
    "|m-p|<=tol": "measured equals predicted within the tolerance",
    "m<=p+tol": "measured is at most predicted (plus tolerance): an upper bound or a count",
    "m>=p-tol": "measured is at least predicted (minus tolerance): a lower bound",
    "p<=m<=p+tol": "measured lies in the predicted interval [predicted, predicted + tolerance]",
}

#: Columns of claims.csv in order (the contract: claim_id .. passed first).
ROW_COLUMNS: tuple[str, ...] = (
    "claim_id", "description", "measured", "predicted", "tolerance", "passed",
    "comparison", "kind", "score", "claim", "condition", "n", "stderr", "unit", "source", "note",
)

#: What a row is. The rule: a row is a **prediction** when a correct implementation could
#: fail it (the theory's assumptions or approximations could be wrong for this system); an
#: **exactness** check when only a bug, round-off beyond its stated bound or a sampling
#: accident could fail it (an identity, a theorem or a rigorous bound, also when it is
#: checked by Monte Carlo); a **method agreement** compares two numerical methods for one
#: quantity.
KINDS: tuple[str, ...] = ("prediction", "exactness", "method agreement")
#: Rows that are not predictions, and why. Keys are claim-id prefixes (the parts before a
#: '.', e.g. "8c.overflow"); the longest one that matches decides (:func:`row_kind`).
ROW_KINDS: dict[str, str] = {
    "1b": "method agreement",  # BPTT growth rate vs the chain's top exponent
    # 2a stays a prediction: its finite-k bound takes the O(1) remainder's variance at the
    # largest k for every k of the fit (an approximation that could be wrong)
    "2b": "exactness",  # untied Gaussian: ln||P_k v|| is a sum of k i.i.d. terms, every k
    "2c": "exactness",  # ... whose variance is exactly trigamma(n/2)/4 per step
    "2d": "exactness",  # ... and whose mean is exactly Newman's lambda_1 per step
    "2e": "exactness",  # QR of a Gaussian times a frame: Newman's spectrum, every k
    "2f": "exactness",  # ln||W^k v||/k - ln rho(W) = r/k with |mean r| <= rms r (same draws)
    "2g": "exactness",  # Var(k ln rho + r)/k^2 - Var ln rho bounded by Cauchy-Schwarz
    "3a": "exactness",  # W = sQ: the singular values of W^k are s^k
    "3b": "exactness",  # the same for BPTT norms
    "3c": "exactness",  # full frame: sum of the exponents = mean ln|det J| (QR vs LU)
    "4a": "exactness",  # ||prod J|| <= prod ||J|| (submultiplicativity)
    "4b": "exactness",  # the same bound through the sweep
    "6a": "exactness",  # max_i |d_i| <= ||d|| and >= ||d||/sqrt(H): both ends are theorems
    "6b": "exactness",  # the log-scale engine does not overflow
    "6c": "exactness",
    "6d": "exactness",
    "7a": "exactness",  # W_hh = 0 gate chains are diagonal: sigmoid(b)^k
    "7b": "exactness",
    # claim 8: the overflow intervals are theorems at both ends (element <= norm, largest
    # element >= norm / sqrt(H), rate within the round-off bound); the underflow ones are
    # not (their latest lag is a prediction), so 8a, 8c.underflow, 8d, 8g are predictions
    "8b": "exactness",  # float16 first inf in [norm > 65504, norm > sqrt(H) 65520]
    "8c.overflow": "exactness",  # difference of two such lags
    "8e": "exactness",  # halvings between 'surely safe' and 'possibly safe'
    "8f": "exactness",  # bfloat16 rate within u + H u_32 + ln cond(W), a bound (like 6b)
    "8h": "exactness",  # autocast deltas are exact float16/bfloat16 numbers
    "8i": "exactness",  # TF32 rate within 2 u_tf32 + FP32 round-off + ln cond(W)
}


def row_kind(claim_id: str) -> str:
    """The kind of a row from its id: the longest ROW_KINDS prefix, else prediction."""
    parts = claim_id.split(".")
    for i in range(len(parts), 0, -1):
        kind = ROW_KINDS.get(".".join(parts[:i]))
        if kind is not None:
            return kind
    return "prediction"


def headline(table) -> str:
    """'N of M predictions hold; K of L exactness checks pass; ...' from a claims table."""
    kinds = table["kind"] if "kind" in table else table["claim_id"].map(row_kind)  # old sets
    parts = []
    for kind, verb, plural in (("prediction", "hold", "predictions"),
                               ("exactness", "pass", "exactness checks"),
                               ("method agreement", "agree", "method agreements")):
        sel = table[kinds == kind]
        if len(sel):
            parts.append(f"{int(sel['passed'].sum())} of {len(sel)} {plural} {verb}")
    return "; ".join(parts) if parts else "no claim rows"



def verdict(measured: float, predicted: float, tolerance: float, comparison: str) -> bool:
    """Whether a row passes; NaN anywhere (a measurement that could not be made) fails."""
    if comparison not in COMPARISONS:
        raise ValueError(f"unknown comparison {comparison!r}; allowed: {', '.join(COMPARISONS)}")
    m, p, tol = float(measured), float(predicted), float(tolerance)
    if math.isnan(m) or math.isnan(p) or math.isnan(tol) or tol < 0:
        return False
    if comparison == "|m-p|<=tol":
        return abs(m - p) <= tol
    if comparison == "m<=p+tol":
        return m <= p + tol
    if comparison == "m>=p-tol":
        return m >= p - tol
    return p <= m <= p + tol


def score(measured: float, predicted: float, tolerance: float, comparison: str) -> float:
    """How far a row is from failing, >= 0; a row passes exactly when score <= 1.

    By comparison: ``|m-p|<=tol``: |m - p| / tol; ``m<=p+tol``: max(m - p, 0) / tol;
    ``m>=p-tol``: max(p - m, 0) / tol; ``p<=m<=p+tol``: the distance of m from the centre
    p + tol/2 of the interval in half-widths, |m - p - tol/2| / (tol/2) (so an interval
    row at either end scores 1, not |m - p| / tol).

    With a zero tolerance (counts that must be zero) the score is 0 when the row passes
    and +inf when it fails. NaN for a measurement that could not be made.
    """
    m, p, tol = float(measured), float(predicted), float(tolerance)
    if math.isnan(m) or math.isnan(p) or math.isnan(tol):
        return math.nan
    if comparison == "|m-p|<=tol":
        excess = abs(m - p)
    elif comparison == "m<=p+tol":
        excess = max(m - p, 0.0)
    elif comparison == "m>=p-tol":
        excess = max(p - m, 0.0)
    elif comparison == "p<=m<=p+tol":
        # distance from the centre of the interval, in half-widths
        if tol == 0:
            return 0.0 if m == p else math.inf
        return abs(m - (p + 0.5 * tol)) / (0.5 * tol)
    else:
        raise ValueError(f"unknown comparison {comparison!r}")
    if tol == 0:
        return 0.0 if excess == 0 else math.inf
    return excess / tol


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def row(
    claim_id: str,
    description: str,
    measured: float,
    predicted: float,
    tolerance: float,
    comparison: str = "|m-p|<=tol",
    *,
    condition: str = "",
    n: int | None = None,
    stderr: float | None = None,
    unit: str = "",
    source: str = "",
    note: str = "",
) -> dict[str, Any]:
    """One line of claims.csv with its verdict and score filled in."""
    m, p, tol = _num(measured), _num(predicted), _num(tolerance)
    return {
        "claim_id": claim_id,
        "description": description,
        "measured": m,
        "predicted": p,
        "tolerance": tol,
        "passed": verdict(m, p, tol, comparison),
        "comparison": comparison,
        "kind": row_kind(claim_id),
        "score": score(m, p, tol, comparison),
        "condition": condition,
        "n": n,
        "stderr": _num(stderr),
        "unit": unit,
        "source": source,
        "note": note,
    }


@dataclass
class Curves:
    """Tidy plot data of one claim: panel, group (colour and legend), kind, x, y, y_err.

    kind: ``measured`` (solid line), ``predicted`` (dashed line), ``bound`` (dotted line),
    ``points`` (markers with error bars), ``band`` (y +- y_err shaded).
    """

    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, panel: str, group: str, kind: str, x: Iterable[float], y: Iterable[float],
            y_err: Iterable[float] | None = None) -> None:
        xs = np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=float).ravel()
        ys = np.asarray(list(y) if not isinstance(y, np.ndarray) else y, dtype=float).ravel()
        if xs.shape != ys.shape:
            raise ValueError(f"curve {panel}/{group}: x has {xs.size} values, y {ys.size}")
        es = (np.full(xs.shape, np.nan) if y_err is None
              else np.asarray(list(y_err) if not isinstance(y_err, np.ndarray) else y_err,
                              dtype=float).ravel())
        for xi, yi, ei in zip(xs, ys, es, strict=True):
            self.records.append({"panel": panel, "group": group, "kind": kind,
                                 "x": float(xi), "y": float(yi), "y_err": float(ei)})


@dataclass
class ClaimResult:
    rows: list[dict[str, Any]]
    curves: Curves


# ----------------------------------------------------------------------------------------
# statistics


def z_family(z: float, m: int) -> float:
    """The z of a Bonferroni-corrected family of m two-sided tests at the level of one z-test.

    z = 3 (two-sided p = 0.0027) over m = 8 comparisons gives 3.55, so that the chance
    that any of them fails by sampling noise alone stays 0.27 %.
    """
    if m <= 1:
        return float(z)
    p = 2.0 * stats.norm.sf(z)
    return float(stats.norm.isf(p / (2.0 * m)))


def mean_se(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and its standard error (ddof=1); se NaN for fewer than 2 values."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    if v.size < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def t_factor(z: float, dof: float, m: int = 1) -> float:
    """Multiplier of a standard error estimated with ``dof`` degrees of freedom.

    The Student-t quantile at the two-sided level of ``z`` (z = 3: 0.27 %), so that a
    standard error estimated from a few seeds widens the tolerance as it should
    (z = 3 and dof = 7: 4.53; dof = 31: 3.26; dof -> inf: 3). With ``m`` > 1 the level
    is Bonferroni-corrected for a family of m comparisons (as :func:`z_family`).
    """
    tail = stats.norm.sf(z) / max(int(m), 1)
    if not dof or dof <= 0 or not math.isfinite(dof):
        return float(stats.norm.isf(tail))
    return float(stats.t.isf(tail, dof))


def seed_mean_se(per_sample: np.ndarray) -> tuple[float, float, int]:
    """Mean, standard error and degrees of freedom of samples [seeds, batch].

    Batch elements of one seed share the weights, so they are not independent: the
    standard error is that of the seed means (std / sqrt(seeds), seeds - 1 degrees of
    freedom). With a single seed it falls back to the batch (batch - 1 degrees of
    freedom), which understates the error by the weight-to-weight variation.
    """
    a = np.asarray(per_sample, dtype=float)
    if a.ndim == 1:
        a = a[:, None]
    if a.shape[0] >= 2:
        means = np.nanmean(a, axis=1)
        mean, se = mean_se(means)
        return mean, se, int(np.isfinite(means).sum()) - 1
    mean, se = mean_se(a.ravel())
    return mean, se, int(np.isfinite(a).sum()) - 1


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R^2 of y against x (finite points only)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2:
        return math.nan, math.nan, math.nan
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return float(slope), float(intercept), r2


def slopes(lags: np.ndarray, log_norms: np.ndarray) -> np.ndarray:
    """Least-squares slope of every column of log_norms [L, n] against lags [L] (vectorised)."""
    k = np.asarray(lags, dtype=float)
    y = np.asarray(log_norms, dtype=float)
    kc = k - k.mean()
    return (kc[:, None] * (y - y.mean(axis=0))).sum(axis=0) / (kc**2).sum()


def weighted_line(x: np.ndarray, y: np.ndarray, se: np.ndarray
                  ) -> tuple[float, float, float, float]:
    """Weighted least squares y = a + b x with known standard errors: (a, se_a, b, se_b).

    Used for the finite-size extrapolation y(H) = y_inf + c / H (x = 1/H). With a single
    point the intercept is that point and the slope is NaN.
    """
    x, y, se = (np.asarray(v, dtype=float) for v in (x, y, se))
    if x.size == 1:
        return float(y[0]), float(se[0]), math.nan, math.nan
    w = 1.0 / np.maximum(se, 1e-300) ** 2
    design = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.inv(design.T @ (design * w[:, None]))
    a, b = cov @ (design.T @ (w * y))
    return float(a), float(math.sqrt(cov[0, 0])), float(b), float(math.sqrt(cov[1, 1]))


def bootstrap(draws: int, stat, n_boot: int, seed: int) -> np.ndarray:
    """``stat(index)`` over ``n_boot`` resamples (with replacement) of range(draws)."""
    rng = np.random.default_rng(seed)
    return np.array([stat(rng.integers(0, draws, draws)) for _ in range(n_boot)])


# ----------------------------------------------------------------------------------------
# set-up: weights, inputs, devices



def generator(seed: int, salt: int) -> torch.Generator:
    """A CPU generator for (seed, purpose): draws are float64 on the CPU, then moved."""
    return torch.Generator().manual_seed(1_000_003 * (int(seed) + 1) + int(salt))


def gaussian_inputs(steps: int, batch: int, size: int, seed: int, *, device: str,
                    dtype: torch.dtype, salt: int = 0) -> torch.Tensor:
    """x_t ~ N(0, 1) [T, B, size], drawn in float64 on the CPU (same numbers on any device)."""
    x = torch.randn(steps, batch, size, generator=generator(seed, salt), dtype=torch.float64)
    return x.to(device=device, dtype=dtype)


def make_cell(model: str, input_size: int, hidden: int, init: str, scale: float, seed: int, *,
              device: str, dtype: torch.dtype, input_scale: float = 1.0, bias_scale: float = 0.0,
              forget_bias: float = 0.0) -> RecurrentCell:
    cell = RecurrentCell(model, input_size, hidden, dtype=dtype, device=device)
    return init_parameters(cell, init, scale, input_scale=input_scale, bias_scale=bias_scale,
                           forget_bias=forget_bias, seed=seed)


def detached(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in params.items()}


def fmt(x: float, digits: int = 4) -> str:
    """A number for notes: 4 significant digits, 'nan' for NaN."""
    return "nan" if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}g}"
