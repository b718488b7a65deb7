"""Sentences about what one result set holds, for the intros of report.html's sections.

The intros in ``bpttbench.contract.report`` say what a section measures in general; these
say what this set contains (tasks run, variants timed or skipped, seed counts), read from
its tables, so that an intro never promises what the set lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from . import contract
from .tables import read_table


def _read(tables_dir: Path, name: str) -> pd.DataFrame | None:
    path = tables_dir / contract.twin_file(name)
    if not path.exists():
        return None
    df = read_table(path)
    return df if len(df) else None


def _list(values: pd.Series) -> str:
    """Sorted distinct values, numbers without trailing zeros."""
    uniq = sorted(values.dropna().unique())
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in uniq)


def _seeds(counts: pd.Series) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    n = f"{lo}" if lo == hi else f"{lo} to {hi}"
    return f"{n} seed{'s' * (hi != 1)}"


def claims_rows_for(df: pd.DataFrame, section: str) -> pd.DataFrame:
    """The rows of claims.csv shown in report section ``section``: a row's ``claim`` names its
    section (contract claims.CLAIM_SECTIONS); every other claim is under "Claims"."""
    where = contract.STAGES["claims"].CLAIM_SECTIONS
    return df[[where.get(str(c), "Claims") == section for c in df["claim"]]]


def _claims(df: pd.DataFrame, section: str) -> list[str]:
    rows = claims_rows_for(df, section)
    if rows.empty:
        return []
    kinds = rows["kind"].value_counts()
    passed = rows["passed"].astype("boolean").fillna(False).astype(bool)
    return [f"This set: {len(rows)} checks ("
            + ", ".join(f"{n} {k}" for k, n in kinds.items())
            + f"); {int(passed.sum())} pass, {int((~passed).sum())} fail."]


def claims_facts(tables_dir: Path) -> list[str]:
    df = _read(tables_dir, "claims")
    return [] if df is None else _claims(df, "Claims")


def precision_facts(tables_dir: Path) -> list[str]:
    df = _read(tables_dir, "claims")
    out = [] if df is None else _claims(df, "Reduced precision")
    lrp = tables_dir / contract.twin_file("long_range_precision")
    if lrp.exists() and read_table(lrp).empty:
        out.append("long_range_precision.csv has no rows in this set (long_range.precisions "
                   "swept no reduced precision).")
    return out


def gradient_flow_facts(tables_dir: Path) -> list[str]:
    df = _read(tables_dir, "summary")
    if df is None:
        return []
    cells = df.groupby(["model", "init", "hidden", "seq_len", "weight_scale"])["seed"].nunique()
    status = df["status"].astype(str).value_counts()
    return [f"This set: models {_list(df['model'])}; init {_list(df['init'])}; "
            f"H = {_list(df['hidden'])}; T = {_list(df['seq_len'])}; weight scales "
            f"{_list(df['weight_scale'].astype(float))}; {_seeds(cells)} per cell "
            f"({len(df)} runs, status " + ", ".join(f"{n} {k}" for k, n in status.items())
            + ")."]


def long_range_facts(tables_dir: Path) -> list[str]:
    df = _read(tables_dir, "long_range_summary")
    if df is None:
        return []
    clips = ["none" if pd.isna(c) else f"norm ≤ {c:g}" for c in
             sorted(df["clip"].astype("Float64").unique(), key=lambda c: (not pd.isna(c),
                                                                       0 if pd.isna(c) else c))]
    one = int(df["n_seeds"].max()) == 1
    return [f"This set: task{'s' * (df['task'].nunique() != 1)} {_list(df['task'])}; models "
            f"{_list(df['model'])}; T = {_list(df['seq_len'])}; clipping {', '.join(clips)}; "
            f"{_seeds(df['n_seeds'])} per configuration"
            + (" (a solved rate is 0 or 1, and the curves have no band across seeds)."
               if one else ".")]


def bench_facts(tables_dir: Path) -> list[str]:
    df = _read(tables_dir, "bench")
    if df is None:
        return []
    device = _list(df["device"]) if "device" in df else "?"
    status = df["status"].astype(str)
    timed = df[status == "ok"]
    out = [f"This set (device {device}): timed variants "
           + "; ".join(f"{v} ({_list(g['impl'])})" if g["impl"].notna().any() else str(v)
                       for v, g in timed.groupby("variant")) + "."] if len(timed) else []
    for st, g in df[status != "ok"].groupby(status[status != "ok"]):
        reasons = "; ".join(sorted({str(r) for r in g["reason"].dropna()})) if "reason" in g \
            else ""
        out.append(f"{st}: {_list(g['variant'])} ({len(g)} rows{': ' + reasons if reasons else ''}).")
    return out


FACTS: dict[str, Callable[[Path], list[str]]] = {
    "Claims": claims_facts,
    "Reduced precision": precision_facts,
    "Gradient flow through time": gradient_flow_facts,
    "Long-range dependencies in training": long_range_facts,
    "Performance": bench_facts,
}


def section_facts(title: str, tables_dir: Path) -> list[str]:
    """Sentences on what the set's tables hold for the section ``title`` (none if unknown)."""
    fn = FACTS.get(title)
    return fn(Path(tables_dir)) if fn else []
