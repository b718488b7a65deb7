"""Block outputs that scale: per-lag rows thinned to log-spaced lags, Parquet per table.

A gradient-flow job (block) writes a folder with one Parquet file per contract table
(``summary``, ``gradient_flow``, ``lyapunov``, ``chain_spectrum``), not an indented JSON of
its records: at T = 10^4 a cell's per-lag rows are ~10^4 (gradient_flow) and T k
(chain_spectrum), and JSON made a block of the GPU sweep ~0.7 GB. ``collect`` then streams
the blocks (``bpttbench.gradient_flow.collect``).

Per-lag tables keep ``reported_lags`` by default: every lag up to ``DENSE_UNTIL``, then
``PER_DECADE`` log-spaced lags per decade up to T, and T itself (~200 rows at T = 10^4
instead of 10^4 + 1); ``lags: full`` keeps all. The summary's growth rate, horizon and
first non-finite lag are computed from every lag before the rows are thinned.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LAG_RESOLUTIONS = ("log", "full")
DENSE_UNTIL = 100
PER_DECADE = 50
TABLES = ("summary", "gradient_flow", "lyapunov", "chain_spectrum")


def reported_lags(seq_len: int, resolution: str = "log") -> np.ndarray:
    """Lags 0..T kept in the per-lag tables (sorted, unique, always 0 and T)."""
    if resolution not in LAG_RESOLUTIONS:
        raise ValueError(f"lags {resolution!r}: allowed {', '.join(LAG_RESOLUTIONS)}")
    if resolution == "full" or seq_len <= DENSE_UNTIL:
        return np.arange(seq_len + 1)
    n = math.ceil(PER_DECADE * math.log10(seq_len / DENSE_UNTIL)) + 1
    geo = np.round(np.geomspace(DENSE_UNTIL, seq_len, n)).astype(np.int64)
    return np.union1d(np.arange(DENSE_UNTIL + 1), geo)


def _thin(columns: Mapping[str, list[Any]], keep: np.ndarray) -> dict[str, list[Any]]:
    lags = np.asarray(columns["lag"])
    mask = np.isin(lags, keep)
    return {k: np.asarray(v)[mask].tolist() for k, v in columns.items()}


def thin_record(record: dict[str, Any], resolution: str) -> dict[str, Any]:
    """The record with its per-lag parts cut to ``reported_lags`` (in place; returned).

    chain_spectrum is thinned only when it holds every lag 1..T (a record that already
    reports a subset of lags keeps it as it is)."""
    if resolution == "full" or "spec" not in record:
        return record
    seq_len = int(record["spec"]["seq_len"])
    keep = reported_lags(seq_len, resolution)
    if "gradient_flow" in record:
        record["gradient_flow"] = _thin(record["gradient_flow"], keep)
    chain = record.get("chain_spectrum")
    if chain and "lag" in chain and len(np.unique(chain["lag"])) == seq_len:
        record["chain_spectrum"] = _thin(chain, keep)
    return record


def write_block(records: list[dict[str, Any]], out_dir: str | Path) -> Path:
    """Write the block's tables as ``out_dir/<table>.parquet``, atomically (folder rename)."""
    from ..tables import tables_from_records

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, df in tables_from_records(records).items():
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp / f"{name}.parquet")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
