"""Collect block folders (``blocks.write_block``) into the contract tables, streaming.

Peak memory is one block's largest table, whatever the number of cells: each per-lag table
is written with a ``pyarrow.parquet.ParquetWriter``, one block at a time. Blocks are visited
in (model, init, hidden) order and each block's rows are sorted by the remaining cell keys
and the lag/index, which is exactly the global sort of ``tables.collect_cells``. Columns
are unified over the blocks first (from the Parquet footers only): a column a block lacks
(``log_grad_norm_c`` outside the LSTM) is filled with nulls. The summary (one row per cell)
is gathered in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..contract import FILE
from ..io import UNREADABLE, UnreadableFile, quarantine, write_with
from ..tables import CELL_KEYS, COLUMNS, CSV_TWIN_MAX_ROWS, write_table

ORDER = {"gradient_flow": ["lag"], "lyapunov": ["index"], "chain_spectrum": ["lag", "index"]}
BLOCK_KEYS = ["model", "init", "hidden"]


BLOCK_TABLES = ("summary", "gradient_flow", "lyapunov", "chain_spectrum")


def check_blocks(blocks: list[Path]) -> None:
    """Every block folder readable (each table's Parquet footer and schema), or none is used.

    An unreadable folder (a truncated or empty table, a missing summary) is moved aside
    whole, so that Snakemake finds the block's output missing and reruns it (reusing its
    cell checkpoints); UnreadableFile names every one. No table is built from partial input.
    """
    moved = {}
    for b in blocks:
        try:
            if not (b / "summary.parquet").exists():
                raise FileNotFoundError(f"{b / 'summary.parquet'} is missing")
            for name in BLOCK_TABLES:
                if (b / f"{name}.parquet").exists():
                    pq.read_metadata(b / f"{name}.parquet")
        except (FileNotFoundError, *UNREADABLE) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            moved[b] = (quarantine(b, reason), reason)
    if moved:
        raise UnreadableFile(moved, "rerun the pipeline (snakemake --rerun-incomplete) to "
                                    "recompute them")


def _block_order(blocks: list[Path]) -> list[tuple[tuple, Path, pd.DataFrame]]:
    """(sort key, folder, summary) per block, in (model, init, hidden) order."""
    out = []
    for b in blocks:
        summary = pd.read_parquet(b / "summary.parquet")
        key = tuple(summary[k].iloc[0] for k in BLOCK_KEYS) if len(summary) else ("", "", 0)
        out.append((key, b, summary))
    return sorted(out, key=lambda e: e[0])


def _unified_schema(name: str, paths: list[Path]) -> pa.Schema:
    schemas = [pq.read_schema(p) for p in paths if p.exists()]
    fields: dict[str, pa.Field] = {}
    for s in schemas:
        for f in s:
            if f.name not in fields or pa.types.is_null(fields[f.name].type):
                fields[f.name] = f
    docs = COLUMNS.get(name, {})
    names = [c for c in docs if c in fields] + [c for c in fields if c not in docs]
    return pa.schema([fields[c].with_metadata({"description": docs[c]}) if c in docs
                      else fields[c] for c in names])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table[f.name].cast(f.type))
        else:
            cols.append(pa.nulls(len(table), f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def stream_table(name: str, blocks: list[Path], out: Path, csv_twin: bool | None = None) -> int:
    """Write table ``name`` of every block (already in order) into ``out``; rows written."""
    paths = [b / f"{name}.parquet" for b in blocks]
    schema = _unified_schema(name, paths)
    rows = 0

    def writer(tmp: Path) -> None:
        nonlocal rows
        with pq.ParquetWriter(tmp, schema) as w:
            for p in paths:
                if not p.exists():
                    continue
                df = pd.read_parquet(p)
                if len(df):
                    df = df.sort_values(CELL_KEYS + ORDER.get(name, [])).reset_index(drop=True)
                table = _conform(pa.Table.from_pandas(df, preserve_index=False), schema)
                w.write_table(table)
                rows += len(table)
                del df, table

    write_with(out, writer)
    if csv_twin if csv_twin is not None else rows <= CSV_TWIN_MAX_ROWS:
        df = pd.read_parquet(out)
        write_with(out.with_suffix(".csv"), lambda tmp: df.to_csv(tmp, index=False))
    return rows


def collect_blocks(blocks: Iterable[str | Path], out_dir: str | Path) -> pd.DataFrame:
    """Write the four contract tables of ``blocks`` into ``out_dir``; return the summary."""
    out_dir = Path(out_dir)
    blocks = [Path(b) for b in blocks]
    check_blocks(blocks)
    ordered = _block_order(blocks)
    folders = [b for _, b, _ in ordered]
    frames = [s for _, _, s in ordered if len(s)]
    summary = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=list(COLUMNS["summary"]))
    summary = summary[[c for c in COLUMNS["summary"] if c in summary.columns]]
    if len(summary):
        summary = summary.sort_values(CELL_KEYS).reset_index(drop=True)
    write_table(summary, out_dir / FILE["summary"], "summary")
    stream_table("gradient_flow", folders, out_dir / FILE["gradient_flow"])
    stream_table("lyapunov", folders, out_dir / FILE["lyapunov"])
    stream_table("chain_spectrum", folders, out_dir / FILE["chain_spectrum"], csv_twin=False)
    return summary
