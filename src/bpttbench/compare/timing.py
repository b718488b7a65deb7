"""Timing maths: B/A for every timing and rate column both sets have, and whether two
tables are identical apart from their timing columns."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import contract
from ..tablecheck import read_table
from .agreement import _key_string
from .policy import is_rate_column, is_timing_column

TIMING_COLUMNS_OUT = ["table", "metric", "kind", "key", "value_a", "value_b", "ratio_b_over_a",
                      "speedup_b_vs_a"]


def _timing_rows(table: str, ta: pd.DataFrame, tb: pd.DataFrame, keys: Sequence[str]
                 ) -> pd.DataFrame:
    cols = [c for c in ta.columns if c in tb.columns and c not in keys
            and (is_timing_column(c, table) or is_rate_column(c, table))
            and pd.api.types.is_numeric_dtype(ta[c]) and pd.api.types.is_numeric_dtype(tb[c])]
    keys = [k for k in keys if k in ta.columns and k in tb.columns]
    if not cols or not keys:
        return pd.DataFrame(columns=TIMING_COLUMNS_OUT)
    # Repeated measurements of one configuration: their median.
    ga = ta.groupby(keys, dropna=False)[cols].median().reset_index()
    gb = tb.groupby(keys, dropna=False)[cols].median().reset_index()
    m = ga.merge(gb, on=keys, suffixes=("_a", "_b"))
    rows = []
    key = _key_string(m, keys).to_numpy()
    for c in cols:
        va, vb = m[c + "_a"].astype(float).to_numpy(), m[c + "_b"].astype(float).to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = vb / va
        rate = is_rate_column(c, table)
        rows.append(pd.DataFrame({
            "table": table, "metric": c, "kind": "rate" if rate else "time", "key": key,
            "value_a": va, "value_b": vb, "ratio_b_over_a": ratio,
            "speedup_b_vs_a": ratio if rate else 1.0 / ratio,
        }))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=TIMING_COLUMNS_OUT)


def identical_apart_from_timings(fa: Path, fb: Path, max_bytes: int = 512 * 2**20) -> bool | None:
    """True if two tables are equal once timing columns are dropped (None: too large)."""
    if _sha256(fa) == _sha256(fb):
        return True
    if fa.stat().st_size > max_bytes or fb.stat().st_size > max_bytes:
        return None
    da, db = read_table(fa), read_table(fb)
    # the table's declared timing columns (any table's, for a file the contract lacks)
    table = fa.stem if fa.stem in contract.TABLES else None
    da = da[[c for c in da.columns if not is_timing_column(c, table)]]
    db = db[[c for c in db.columns if not is_timing_column(c, table)]]
    return bool(da.shape == db.shape and list(da.columns) == list(db.columns) and da.equals(db))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()



def timing_overview(timing: pd.DataFrame) -> pd.DataFrame:
    if timing.empty:
        return pd.DataFrame(columns=["table", "metric", "kind", "rows", "geomean_speedup_b_vs_a",
                                     "min_speedup", "max_speedup"])
    t = timing[np.isfinite(timing["speedup_b_vs_a"].astype(float))
               & (timing["speedup_b_vs_a"].astype(float) > 0)]
    return t.groupby(["table", "metric", "kind"], sort=False).agg(
        rows=("speedup_b_vs_a", "size"),
        geomean_speedup_b_vs_a=("speedup_b_vs_a", lambda s: float(np.exp(np.log(s).mean()))),
        min_speedup=("speedup_b_vs_a", "min"), max_speedup=("speedup_b_vs_a", "max"),
    ).reset_index()
