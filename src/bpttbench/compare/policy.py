"""The comparison's policy: when two values agree (tolerances per table, metric and regime)
and what each column is to it (key, science, timing, rate: read from bpttbench.contract)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import contract

# ---------------------------------------------------------------------------------------
# Tolerances: the one place where "agree" is defined.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """Two values agree when |a - b| <= abs + rel * max(|a|, |b|) (symmetric in a and b)."""

    rel: float
    abs: float

    def allowed(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.abs + self.rel * np.maximum(np.abs(a), np.abs(b))


#: Regimes of a gradient-flow cell, first match wins:
#:
#: - "nonfinite": in either set inf/NaN appeared (status not ok) or ||delta|| underflowed to 0
#:   (underflow_lag set). Where that happens depends on the dtype (float32 underflows at
#:   ln||delta|| ~ -103, float64 at ~ -745), so the growth-rate fit covers different lags.
#: - "chaotic": a nonlinear cell whose largest Lyapunov exponent is > CHAOS_THRESHOLD in
#:   either set: rounding differences grow like exp(lambda t), the runs agree statistically.
#: - "nonsmooth": rnn_relu. phi' jumps from 0 to 1, and at a step where fewer than k units
#:   are on, the k-frame of the chain is rank deficient and its smallest R_ii is rounding
#:   noise (ln eps of the dtype), which shifts the lowest Lyapunov exponents by ~1e-2.
#: - "regular": everything else; differences stay at rounding level.
REGULAR, CHAOTIC, NONSMOOTH, NONFINITE, ANY = (
    "regular", "chaotic", "nonsmooth", "nonfinite", "any")
REGIMES = (REGULAR, NONSMOOTH, CHAOTIC, NONFINITE)
CHAOS_THRESHOLD = 0.0
#: Cells whose Jacobian does not depend on the trajectory: never chaotic.
LINEAR_MODELS = frozenset({"rnn_linear"})
#: Cells whose Jacobian jumps with the sign of a unit's pre-activation.
NONSMOOTH_MODELS = frozenset({"rnn_relu"})

#: (table, metric, regime) -> Tolerance, for the gradient-flow tables. Sized for the
#: hardest comparison the suite expects to pass: float32 on one device against float32 on
#: another or against float64 (see docs/compare.md for the measured differences).
TOLERANCES: dict[tuple[str, str, str], Tolerance] = {
    # growth rate and Lyapunov exponents: natural log per step
    ("summary", "growth_rate", REGULAR): Tolerance(rel=1e-4, abs=1e-5),
    ("summary", "growth_rate", NONSMOOTH): Tolerance(rel=1e-4, abs=1e-5),
    ("summary", "growth_rate", CHAOTIC): Tolerance(rel=5e-2, abs=2e-2),
    ("summary", "growth_rate", NONFINITE): Tolerance(rel=5e-2, abs=2e-2),
    ("summary", "lyapunov_max", REGULAR): Tolerance(rel=1e-4, abs=1e-5),
    ("summary", "lyapunov_max", NONSMOOTH): Tolerance(rel=1e-4, abs=1e-5),
    ("summary", "lyapunov_max", CHAOTIC): Tolerance(rel=5e-2, abs=2e-2),
    ("summary", "lyapunov_max", NONFINITE): Tolerance(rel=5e-2, abs=2e-2),
    ("lyapunov", "exponent", REGULAR): Tolerance(rel=1e-4, abs=1e-5),
    ("lyapunov", "exponent", NONSMOOTH): Tolerance(rel=5e-2, abs=2e-2),
    ("lyapunov", "exponent", CHAOTIC): Tolerance(rel=5e-2, abs=2e-2),
    ("lyapunov", "exponent", NONFINITE): Tolerance(rel=5e-2, abs=2e-2),
    # horizon: steps; the first crossing of 1e-6 may move by one lag
    ("summary", "horizon", REGULAR): Tolerance(rel=0.0, abs=1.0),
    ("summary", "horizon", NONSMOOTH): Tolerance(rel=0.0, abs=1.0),
    ("summary", "horizon", CHAOTIC): Tolerance(rel=0.1, abs=2.0),
    ("summary", "horizon", NONFINITE): Tolerance(rel=0.1, abs=2.0),
    # spectral norm / radius of W_hh: functions of the weights alone (drawn in float64 on
    # the CPU, then cast), so only the dtype's rounding and the eigen-solver differ
    ("summary", "spectral_norm_whh", ANY): Tolerance(rel=1e-5, abs=0.0),
    ("summary", "spectral_radius_whh", ANY): Tolerance(rel=1e-4, abs=0.0),
}

#: Per stage, for its tables compared row by row (contract compare mode "rows": every
#: numeric science column). Booleans must be equal.
GENERIC_TOLERANCES: dict[str, Tolerance] = {
    # claims: measured quantities of the gradient-flow kind
    "claims": Tolerance(rel=1e-3, abs=1e-6),
    # training runs: SGD amplifies rounding, so two devices agree only statistically
    "long_range": Tolerance(rel=0.1, abs=0.05),
}
EXACT = Tolerance(rel=0.0, abs=0.0)

#: In these regimes two runs agree statistically, not to rounding: a Lyapunov exponent (a
#: mean over the batch) also agrees when |A - B| <= STAT_Z * sqrt(std_A^2/B_A + std_B^2/B_B),
#: the standard error of the difference of two batch means (exponent_std, batch size B).
STATISTICAL_REGIMES = frozenset({CHAOTIC, NONSMOOTH, NONFINITE})
STAT_Z = 3.0


def tolerance_for(table: str, metric: str, regime: str = REGULAR) -> Tolerance:
    """The tolerance of one metric of one table in one regime (raises KeyError if none)."""
    for key in ((table, metric, regime), (table, metric, ANY)):
        if key in TOLERANCES:
            return TOLERANCES[key]
    if compare_mode(table) == "rows" and contract.TABLES[table].stage in GENERIC_TOLERANCES:
        return generic_tolerance(table)
    raise KeyError(f"no tolerance for {table}.{metric} in regime {regime}")


def generic_tolerance(table: str) -> Tolerance:
    """The tolerance of every column of a table compared row by row: its stage's, else exact."""
    spec = contract.TABLES.get(table)
    return GENERIC_TOLERANCES.get(spec.stage, EXACT) if spec else EXACT


def within_tolerance(a: Any, b: Any, tol: Tolerance) -> np.ndarray:
    """Elementwise agreement; two NaNs agree (both undefined), equal infinities agree."""
    return _within(a, b, tol.rel, tol.abs)


def _within(a: Any, b: Any, rel: Any, abs_: Any) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    with np.errstate(invalid="ignore"):
        close = ((np.abs(a - b) <= abs_ + rel * np.maximum(np.abs(a), np.abs(b)))
                 & np.isfinite(a) & np.isfinite(b))
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    return close | both_nan | same_inf


# ---------------------------------------------------------------------------------------
# Which tables are compared, and how: the contract's table modes and column roles.
# ---------------------------------------------------------------------------------------

#: The gradient-flow metrics compared per cell (summary.csv) and the Lyapunov spectrum.
SUMMARY_METRICS = ("growth_rate", "lyapunov_max", "horizon", "spectral_norm_whh",
                   "spectral_radius_whh")
LYAPUNOV_METRICS = ("exponent",)
#: Units, for the figure's axes.
UNITS = {
    "growth_rate": "natural log per step",
    "lyapunov_max": "natural log per step",
    "exponent": "natural log per step",
    "horizon": "steps",
    "spectral_norm_whh": "dimensionless",
    "spectral_radius_whh": "dimensionless",
}

#: Tables of other stages compared column by column ("where both have them"): every


def compare_mode(table: str) -> str:
    """How the comparison treats a table: cells, rows, timing or none (bpttbench.contract)."""
    spec = contract.TABLES.get(table)
    return "none" if spec is None or spec.intermediate else spec.compare


def column_role(column: str, table: str | None = None) -> str | None:
    """The role of a column in ``table`` (key, science, timing, rate, ratio), or None when
    the contract does not declare it. Without a table: its role in any table declaring it
    (timing, rate and ratio first)."""
    if table is not None:
        col = contract.TABLES[table].column(column) if table in contract.TABLES else None
        return col.role if col else None
    roles = {c.role for t in contract.TABLES.values() for c in t.columns if c.name == column}
    return next((r for r in ("timing", "rate", "ratio", "key", "science") if r in roles), None)


def is_timing_column(name: str, table: str | None = None) -> bool:
    """A wall/elapsed time column (``wall_s``, ``median_ms`` ...), as the contract declares it.

    Timing columns are excluded from the science comparison and from the determinism
    check ("identical tables apart from timing columns"); they give timing ratios.
    """
    return column_role(name, table) == "timing"


def is_rate_column(name: str, table: str | None = None) -> bool:
    """A throughput column (GFLOP/s, GB/s): higher is faster."""
    return column_role(name, table) == "rate"


def is_performance_column(name: str, table: str | None = None) -> bool:
    """A timing, a rate or a ratio of timings: never compared as science."""
    return column_role(name, table) in ("timing", "rate", "ratio")


def table_keys(columns: Sequence[str], table: str) -> list[str]:
    """The contract keys of a table that ``columns`` (a frame's columns) has, in order."""
    spec = contract.TABLES.get(table)
    return [k for k in spec.keys if k in columns] if spec else []
