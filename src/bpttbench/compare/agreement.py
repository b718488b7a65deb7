"""Agreement maths: the rows of agreement.csv, one per (table, metric, row), with both
values, their difference and the tolerance (bpttbench.compare.policy)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..contract.gradient_flow import CELL_KEYS as _CELL_KEYS
from .policy import (
    ANY,
    CHAOS_THRESHOLD,
    CHAOTIC,
    EXACT,
    LINEAR_MODELS,
    NONFINITE,
    NONSMOOTH,
    NONSMOOTH_MODELS,
    REGIMES,
    REGULAR,
    STAT_Z,
    STATISTICAL_REGIMES,
    SUMMARY_METRICS,
    Tolerance,
    _within,
    generic_tolerance,
    is_performance_column,
    table_keys,
    tolerance_for,
)
from .resultset import ResultSet, ResultSetError

CELL_KEYS = list(_CELL_KEYS)

AGREEMENT_COLUMNS = [
    "table", "metric", "key", *CELL_KEYS, "regime", "value_a", "value_b", "abs_diff",
    "rel_diff", "tol_rel", "tol_abs", "tol_stat", "allowed_diff", "within", "note",
]


def _key_string(df: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    parts = [df[k].map(lambda v, k=k: f"{k}={_fmt_key(v)}") for k in keys]
    if not parts:
        return pd.Series([""] * len(df), index=df.index)
    out = parts[0]
    for p in parts[1:]:
        out = out + " " + p
    return out


def _fmt_key(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return f"{v:g}"
    return str(v)


def _cell_regimes(sa: pd.DataFrame, sb: pd.DataFrame) -> pd.DataFrame:
    """CELL_KEYS + regime, for the cells in both summaries."""
    cols = [*CELL_KEYS, "lyapunov_max", "status"]
    for s in (sa, sb):
        if "underflow_lag" not in s:
            s["underflow_lag"] = np.nan
    m = sa[[*cols, "underflow_lag"]].merge(sb[[*cols, "underflow_lag"]], on=CELL_KEYS,
                                           suffixes=("_a", "_b"))
    lmax = np.fmax(m["lyapunov_max_a"].astype(float), m["lyapunov_max_b"].astype(float))
    chaotic = (lmax > CHAOS_THRESHOLD) & ~m["model"].isin(LINEAR_MODELS)
    nonfinite = ((m["status_a"] != "ok") | (m["status_b"] != "ok")
                 | m["underflow_lag_a"].notna() | m["underflow_lag_b"].notna())
    nonsmooth = m["model"].isin(NONSMOOTH_MODELS)
    m["regime"] = np.select([nonfinite, chaotic, nonsmooth], [NONFINITE, CHAOTIC, NONSMOOTH],
                            REGULAR)
    return m[[*CELL_KEYS, "regime", "status_a", "status_b"]]


def _metric_rows(table: str, metric: str, merged: pd.DataFrame, keys: Sequence[str],
                 tolerances: Mapping[str, Tolerance] | Tolerance,
                 stat: np.ndarray | None = None, key: np.ndarray | None = None
                 ) -> pd.DataFrame:
    """Agreement rows of one metric; ``merged`` holds keys, <metric>_a, <metric>_b, regime.

    ``stat``: a statistical allowance per row (STAT_Z standard errors of the difference),
    used in STATISTICAL_REGIMES where it is larger than the fixed tolerance.
    """
    a = pd.to_numeric(merged[f"{metric}_a"], errors="coerce").astype(float).to_numpy()
    b = pd.to_numeric(merged[f"{metric}_b"], errors="coerce").astype(float).to_numpy()
    regime = merged["regime"].to_numpy() if "regime" in merged else np.full(len(a), ANY)
    if isinstance(tolerances, Tolerance):
        rel = np.full(len(a), tolerances.rel)
        abs_ = np.full(len(a), tolerances.abs)
    else:
        rel = np.array([tolerances[r].rel for r in regime], dtype=float)
        abs_ = np.array([tolerances[r].abs for r in regime], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(a - b)
        scale = np.maximum(np.abs(a), np.abs(b))
        rel_diff = np.where(diff == 0, 0.0, diff / scale)
    allowed = abs_ + rel * scale
    within = _within(a, b, rel, abs_)
    tol_stat = np.zeros(len(a))
    if stat is not None:
        use = np.isin(regime, list(STATISTICAL_REGIMES)) & np.isfinite(stat)
        tol_stat = np.where(use, stat, 0.0)
        with np.errstate(invalid="ignore"):
            within = within | (use & (diff <= tol_stat))
        allowed = np.fmax(allowed, tol_stat)
    out = pd.DataFrame({
        "table": table, "metric": metric,
        "key": _key_string(merged, keys).to_numpy() if key is None else key,
        "regime": regime, "value_a": a, "value_b": b, "abs_diff": diff, "rel_diff": rel_diff,
        "tol_rel": rel, "tol_abs": abs_, "tol_stat": tol_stat, "allowed_diff": allowed,
        "within": within,
        "note": "",
    })
    for k in CELL_KEYS:
        out[k] = merged[k].to_numpy() if k in merged else None
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    out.loc[nan_a & nan_b, "note"] = "undefined in both"
    out.loc[nan_a ^ nan_b, "note"] = "undefined in one set only"
    return out[AGREEMENT_COLUMNS]


def _regime_tolerances(table: str, metric: str) -> dict[str, Tolerance]:
    return {r: tolerance_for(table, metric, r) for r in REGIMES}


def _summary_rows(a: ResultSet, b: ResultSet, sa: pd.DataFrame, sb: pd.DataFrame
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    for s, rs in ((sa, a), (sb, b)):
        missing = [c for c in (*CELL_KEYS, "status", "lyapunov_max") if c not in s]
        if missing:
            raise ResultSetError(f"{rs.tables['summary']}: missing columns {', '.join(missing)}")
    regimes = _cell_regimes(sa, sb)
    if regimes.empty:
        # name the summary files: an empty or cut one is the usual cause
        raise ResultSetError(
            f"{a.path} and {b.path} have no common cells: no (model, init, hidden, seq_len, "
            f"weight_scale, seed) of one set is in the other ({len(sa)} cells in "
            f"{a.tables['summary']}, {len(sb)} in {b.tables['summary']})")
    metrics = [m for m in SUMMARY_METRICS if m in sa and m in sb]
    m = sa[[*CELL_KEYS, *metrics]].merge(sb[[*CELL_KEYS, *metrics]], on=CELL_KEYS,
                                         suffixes=("_a", "_b"))
    m = m.merge(regimes, on=CELL_KEYS)
    key = _key_string(m, CELL_KEYS).to_numpy()
    rows = [_metric_rows("summary", metric, m, CELL_KEYS, _regime_tolerances("summary", metric),
                         key=key) for metric in metrics]
    # status is categorical: its row carries no numbers, only whether it is equal and the note.
    same = (m["status_a"] == m["status_b"]).to_numpy()
    status = pd.DataFrame({
        "table": "summary", "metric": "status", "key": key,
        "regime": m["regime"].to_numpy(), "value_a": np.nan, "value_b": np.nan,
        "abs_diff": np.nan, "rel_diff": np.nan, "tol_rel": 0.0, "tol_abs": 0.0, "tol_stat": 0.0,
        "allowed_diff": np.nan, "within": same,
        "note": np.where(same, m["status_a"], m["status_a"] + " vs " + m["status_b"]),
    })
    for k in CELL_KEYS:
        status[k] = m[k].to_numpy()
    rows.append(status[AGREEMENT_COLUMNS])
    return pd.concat(rows, ignore_index=True), regimes


def _lyapunov_rows(a: ResultSet, b: ResultSet, regimes: pd.DataFrame
                   ) -> tuple[pd.DataFrame, str | None]:
    """Agreement rows of the Lyapunov spectra; a reason when they cannot be compared."""
    none = pd.DataFrame(columns=AGREEMENT_COLUMNS)
    if "lyapunov" not in a.tables or "lyapunov" not in b.tables:
        return none, None  # reported as a table only in one set
    keys = [*CELL_KEYS, "index"]
    la, lb = a.read("lyapunov"), b.read("lyapunov")
    for df, rs, label in ((la, a, "A"), (lb, b, "B")):
        broken = [c for c in (*keys, "exponent") if c not in df]
        if broken:
            return none, f"column {broken[0]} missing or mistyped in {label}"
        why = rs.empty_keys("lyapunov", df, keys)
        if why:
            return none, why
    cols = [*keys, "exponent", *(["exponent_std"] if "exponent_std" in la and
                                 "exponent_std" in lb else [])]
    m = la[cols].merge(lb[cols], on=keys, suffixes=("_a", "_b"))
    m = m.merge(regimes[[*CELL_KEYS, "regime"]], on=CELL_KEYS)
    stat = None
    if "exponent_std" in cols:
        # exponent is a batch mean and exponent_std its spread over the batch
        ba, bb = _batch_size(a), _batch_size(b)
        se2 = (m["exponent_std_a"].astype(float) ** 2 / ba
               + m["exponent_std_b"].astype(float) ** 2 / bb)
        stat = STAT_Z * np.sqrt(se2.to_numpy())
    return _metric_rows("lyapunov", "exponent", m, keys,
                        _regime_tolerances("lyapunov", "exponent"), stat), None


def _rows_only_in(ta: pd.DataFrame, tb: pd.DataFrame, keys: Sequence[str]) -> tuple[int, int]:
    """Rows of A whose key is not in B, and of B not in A (numbers matched by value, so an
    integer column read back as float still matches)."""
    def norm(df: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(index=df.index)
        for k in keys:
            col = df[k]
            numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
            out[k] = (pd.to_numeric(col, errors="coerce").astype(float).map(repr) if numeric
                      else col.astype(str))
        return out.drop_duplicates()

    m = norm(ta).merge(norm(tb), on=list(keys), how="outer", indicator=True)
    return int((m["_merge"] == "left_only").sum()), int((m["_merge"] == "right_only").sum())


def _only_text(table: str, n_a: int, n_b: int, what: str = "row(s)") -> str | None:
    parts = [f"{n} {what} only in {label}" for n, label in ((n_a, "A"), (n_b, "B")) if n]
    return f"{table}: {', '.join(parts)}" if parts else None


def _batch_size(rs: ResultSet) -> float:
    """The batch size of a set's gradient-flow cells (NaN when its manifest does not say)."""
    try:
        return float(rs.manifest["config"]["gradient_flow"]["batch"])
    except (KeyError, TypeError, ValueError):
        return math.nan


def _generic_rows(table: str, ta: pd.DataFrame, tb: pd.DataFrame
                  ) -> tuple[pd.DataFrame, str | None]:
    """Agreement rows of a claims / long-range table; a reason when it cannot be compared."""
    if ta.empty and tb.empty:  # e.g. long_range_precision of a sweep without precisions
        return pd.DataFrame(columns=AGREEMENT_COLUMNS), None
    keys = [k for k in table_keys(ta.columns, table) if k in tb.columns]
    if not keys:
        return pd.DataFrame(columns=AGREEMENT_COLUMNS), "no identifying columns in common"
    for df, label in ((ta, "A"), (tb, "B")):
        empty = [k for k in keys if df[k].isna().any() and k not in
                 ("clip", "k")]  # clip, k: empty means "none" (no clipping, no frame)
        if empty:
            return (pd.DataFrame(columns=AGREEMENT_COLUMNS),
                    f"rows of {label} with an empty key column {empty[0]}")
        if df.duplicated(keys).any():
            return (pd.DataFrame(columns=AGREEMENT_COLUMNS),
                    f"rows of {label} are not unique under the keys {', '.join(keys)}")
    metrics = [c for c in ta.columns if c in tb.columns and c not in keys
               and not is_performance_column(c, table)
               and (pd.api.types.is_numeric_dtype(ta[c]) or pd.api.types.is_bool_dtype(ta[c]))
               and (pd.api.types.is_numeric_dtype(tb[c]) or pd.api.types.is_bool_dtype(tb[c]))]
    if not metrics:
        return pd.DataFrame(columns=AGREEMENT_COLUMNS), "no numeric columns in common"
    try:
        m = ta[[*keys, *metrics]].merge(tb[[*keys, *metrics]], on=keys, suffixes=("_a", "_b"))
    except (ValueError, TypeError) as exc:  # key columns of incompatible types
        return pd.DataFrame(columns=AGREEMENT_COLUMNS), f"keys cannot be matched: {exc}"
    if m.empty:
        return pd.DataFrame(columns=AGREEMENT_COLUMNS), "no rows in common"
    tol = generic_tolerance(table)
    rows = []
    key = _key_string(m, keys).to_numpy()
    for metric in metrics:
        exact = pd.api.types.is_bool_dtype(ta[metric]) or pd.api.types.is_bool_dtype(tb[metric])
        mm = m.copy()
        if exact:
            for s in ("_a", "_b"):
                mm[metric + s] = mm[metric + s].astype(float)
        rows.append(_metric_rows(table, metric, mm, keys, EXACT if exact else tol, key=key))
    return pd.concat(rows, ignore_index=True), None

