"""The tables of the long-range stage, from the finished run records.

- ``long_range.parquet`` (+ CSV twin): one row per run;
- ``long_range_trace.parquet``: one row per run and evaluation step (loss and gradient norms);
- ``long_range_summary.csv``: one row per task, model, init, seq_len and clip, over seeds.

Column docs live in ``bpttbench.tables.COLUMNS``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..precision import Precision

RUN_KEYS = ["task", "model", "init", "hidden", "seq_len", "clip", "seed", "precision"]
SPEC_COLUMNS = ["weight_scale", "optimizer", "lr", "steps", "batch", "solved_fraction"]
RUN_COLUMNS = RUN_KEYS + [
    "final_loss", "baseline_loss", "final_loss_ratio", "solved", "steps_to_solve", "best_loss",
    "n_updates", "n_clipped", "n_skipped", "grad_norm_max", "horizon_init", "growth_rate_init",
    "horizon_final", "growth_rate_final", "status", *SPEC_COLUMNS, "device", "wall_s", "error",
    "loss_scale_final", "loss_scale_backoffs", "fused",
]
TRACE_COLUMNS = RUN_KEYS + [
    "step", "eval_loss", "eval_loss_ratio", "train_loss", "log_grad_norm_mean", "grad_norm_max",
    "n_updates", "n_clipped", "n_skipped", "solved_fraction",
]
GROUP_KEYS = ["task", "model", "init", "seq_len", "clip", "precision"]
NULLABLE_INT = ("steps_to_solve", "horizon_init", "horizon_final", "n_updates", "n_clipped",
                "n_skipped")


def precision_label(spec: Mapping[str, Any]) -> str:
    """float32, float16, autocast-float16, "float16, S=1024", "autocast-float16, S dynamic"."""
    return Precision(spec.get("dtype", "float32"), spec.get("autocast"),
                     spec.get("loss_scale", 1.0)).label


def _keys(record: Mapping[str, Any]) -> dict[str, Any]:
    spec = record["spec"]
    return {**{k: spec[k] for k in RUN_KEYS if k != "precision"},
            "precision": precision_label(spec)}


def runs_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    rows = []
    for rec in records:
        spec = rec["spec"]
        row = {**_keys(rec), **{k: spec[k] for k in SPEC_COLUMNS}, **rec["summary"]}
        row.update(device=rec.get("device"), wall_s=rec.get("wall_s"), error=rec.get("error"))
        rows.append(row)
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for col in NULLABLE_INT:
        df[col] = df[col].astype("Float64").astype("Int64")
    df["clip"] = df["clip"].astype("Float64")  # empty (<NA>) = no clipping
    df["solved"] = df["solved"].astype("boolean")
    df["fused"] = df["fused"].astype("boolean")  # empty: a record from before the option
    if len(df):
        df = df.sort_values(RUN_KEYS, na_position="first").reset_index(drop=True)
    return df


def trace_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    frames = []
    for rec in records:
        if "trace" not in rec:
            continue
        df = pd.DataFrame(rec["trace"])
        df["eval_loss_ratio"] = df["eval_loss"] / rec["summary"]["baseline_loss"]
        df["solved_fraction"] = rec["spec"]["solved_fraction"]
        for key, value in reversed(list(_keys(rec).items())):
            df.insert(0, key, value)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=TRACE_COLUMNS)
    out = pd.concat(frames, ignore_index=True)[TRACE_COLUMNS]
    out["clip"] = out["clip"].astype("Float64")
    return out.sort_values(RUN_KEYS + ["step"], na_position="first").reset_index(drop=True)


def _median(values: pd.Series) -> float:
    v = values.astype("Float64").astype(float)
    v = v[np.isfinite(v)]
    return float(v.median()) if len(v) else np.nan


def max_norm(values: Iterable[float]) -> float:
    """Largest gradient norm, NaN if any is NaN (else inf if any is inf); NaN if none.

    Order-independent, unlike ``max`` (max([1, nan, 2]) is 2, max([nan, 1, 2]) is nan)."""
    v = np.asarray(list(values), dtype=np.float64)
    return float(v.max()) if v.size else np.nan


def _fraction(g: pd.DataFrame, where: str) -> float:
    """The one solved_fraction of a group of runs (a mix has no single solved rate)."""
    values = g["solved_fraction"].astype(float).unique()
    if len(values) != 1:
        raise ValueError(f"{where}: runs with different long_range.solved_fraction "
                         f"({', '.join(f'{v:g}' for v in values)}) in one group; allowed: one "
                         "value per result set")
    return float(values[0])


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task, model, init, seq_len and clip: solved rate and medians over seeds."""
    rows = []
    for keys, g in runs.groupby(GROUP_KEYS, dropna=False, sort=True):
        row = dict(zip(GROUP_KEYS, keys, strict=True))
        solved = g["solved"].fillna(False).astype(bool)
        finished = g["status"].isin(["ok", "diverged"])  # an error run has no norms
        row.update(
            n_seeds=len(g),
            n_solved=int(solved.sum()),
            solved_rate=float(solved.mean()),
            solved_fraction=_fraction(g, ", ".join(map(str, keys))),
            baseline_loss=float(g["baseline_loss"].iloc[0]),
            final_loss_median=_median(g["final_loss"]),
            final_loss_ratio_median=_median(g["final_loss_ratio"]),
            # a seed can cross the threshold once and end above it: only solved seeds count
            steps_to_solve_median=_median(g.loc[solved, "steps_to_solve"]),
            n_skipped_total=int(g["n_skipped"].fillna(0).sum()),
            n_clipped_total=int(g["n_clipped"].fillna(0).sum()),
            grad_norm_max=max_norm(g.loc[finished, "grad_norm_max"].astype(float)),
            growth_rate_init_median=_median(g["growth_rate_init"]),
            growth_rate_final_median=_median(g["growth_rate_final"]),
            wall_s_total=float(g["wall_s"].sum()),
        )
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out["clip"] = out["clip"].astype("Float64")
    return out


def largest_solved(summary: pd.DataFrame, min_rate: float = 0.5) -> pd.DataFrame:
    """Per task, model, init and clip: the largest seq_len solved by >= ``min_rate`` of seeds.

    ``largest_solved_seq_len`` is empty when no length was solved; ``max_seq_len`` is the
    largest length tried.
    """
    rows = []
    keys = ["task", "model", "init", "clip"]
    for k, g in summary.groupby(keys, dropna=False, sort=True):
        ok = g.loc[g["solved_rate"] >= min_rate, "seq_len"]
        rows.append({**dict(zip(keys, k, strict=True)),
                     "largest_solved_seq_len": int(ok.max()) if len(ok) else None,
                     "max_seq_len": int(g["seq_len"].max())})
    out = pd.DataFrame(rows, columns=[*keys, "largest_solved_seq_len", "max_seq_len"])
    out["largest_solved_seq_len"] = out["largest_solved_seq_len"].astype("Int64")
    return out


PRECISION_COLUMNS = ["task", "model", "init", "seq_len", "clip", "precision", "solved_rate",
                     "reference", "solved_rate_reference", "unscaled", "solved_rate_unscaled",
                     "lost_vs_reference", "restored_by_scaling"]


def precision_outcomes(summary: pd.DataFrame, min_rate: float = 0.5) -> pd.DataFrame:
    """Which lengths a reduced precision fails that the reference solves, and whether loss
    scaling restores them.

    Per task, model, init, seq_len, clip and each precision other than the reference
    (float32 if it ran, else float64): solved (solved_rate >= ``min_rate``) against the
    reference, and for a loss-scaled setting against the same setting without the scale.
    Empty when only one precision ran.
    """
    rows = []
    keys = ["task", "model", "init", "seq_len", "clip"]
    labels = set(summary["precision"]) if len(summary) else set()
    ref = "float32" if "float32" in labels else ("float64" if "float64" in labels else None)
    if ref is None or len(labels) < 2:
        return pd.DataFrame(columns=PRECISION_COLUMNS)
    for k, g in summary.groupby(keys, dropna=False, sort=True):
        rates = dict(zip(g["precision"], g["solved_rate"], strict=True))
        if ref not in rates:
            continue
        for label, rate in rates.items():
            if label == ref:
                continue
            base = label.split(", S")[0]
            unscaled = base if base != label else None
            r_un = rates.get(unscaled, np.nan) if unscaled else np.nan
            solved, ref_solved = rate >= min_rate, rates[ref] >= min_rate
            rows.append({**dict(zip(keys, k, strict=True)), "precision": label,
                         "solved_rate": rate, "reference": ref,
                         "solved_rate_reference": rates[ref], "unscaled": unscaled,
                         "solved_rate_unscaled": r_un,
                         "lost_vs_reference": bool(ref_solved and not solved),
                         "restored_by_scaling": (bool(solved and ref_solved and r_un < min_rate)
                                                 if unscaled and unscaled in rates else None)})
    out = pd.DataFrame(rows, columns=PRECISION_COLUMNS)
    out["clip"] = out["clip"].astype("Float64")
    out["restored_by_scaling"] = out["restored_by_scaling"].astype("boolean")
    return out


def collect(records: list[Mapping[str, Any]]) -> dict[str, pd.DataFrame]:
    runs = runs_table(records)
    summary = summary_table(runs)
    return {"long_range": runs, "long_range_trace": trace_table(records),
            "long_range_summary": summary,
            "long_range_precision": precision_outcomes(summary)}
