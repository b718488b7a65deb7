"""Tidy tables of a result set: one observation per row, Parquet (plus a CSV twin when small).

Every table is declared in :mod:`bpttbench.contract`; :func:`write_table` checks a frame
against its declaration before writing it, and writes the column docs into the Parquet
schema metadata (and, through :func:`write_columns_doc`, into ``tables/COLUMNS.md``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import contract
from .contract.gradient_flow import CELL_KEYS as _CELL_KEYS
from .io import is_record, read_intermediates, write_text, write_with
from .tablecheck import UNKNOWN, TableReadError, check_frame
from .tablecheck import read_table as read_raw_table

CELL_KEYS = list(_CELL_KEYS)
CSV_TWIN_MAX_ROWS = contract.CSV_TWIN_MAX_ROWS

# The table contract lives in bpttbench.contract (one module per stage): each table's file,
# keys, and per column its doc, dtype kind (tablecheck's "float", "int", "str", "bool",
# "any"; a trailing "?" here marks an optional column) and role. COLUMNS and COLUMN_KINDS
# are its views under the names this module has always exported.
COLUMNS: dict[str, dict[str, str]] = {
    t.name: {c.name: c.doc for c in t.columns} for t in contract.tables()}
COLUMN_KINDS: dict[str, dict[str, str]] = {
    t.name: {c.name: c.kind + ("?" if c.optional else "") for c in t.columns
             if c.kind != "float" or c.optional}
    for t in contract.tables()}
KINDS = contract.KINDS


def _csv_damage(path: Path) -> str | None:
    """What shows a CSV table was cut short or damaged: a row whose field count is not the
    header's, or a last line without its newline (pandas reads both silently, filling
    missing fields with NaN). Tables are written whole, each line ending in a newline."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if header is None:
            return None
        for row in rows:
            if row and len(row) != len(header):
                return (f"line {rows.line_num} has {len(row)} fields, the header "
                        f"{len(header)}")
    with open(path, "rb") as fh:
        fh.seek(-1, 2)
        if fh.read(1) != b"\n":
            return "the last line has no newline"
    return None


def read_table(path: str | Path, name: str | None = None) -> pd.DataFrame:
    """Read a table of a result set (figures, the report, the manifest read through here).

    Every error names the file: one that cannot be read (empty, truncated, not Parquet/CSV),
    a CSV cut short (see _csv_damage), and, for a table of the contract (``name``, default
    the file's stem), a declared column missing or of the wrong kind (TableReadError; a
    column the contract does not know is left to the reader). In CSVs only empty fields are
    missing (status "nan" stays a string).
    """
    path = Path(path)
    kind = path.suffix[1:] or "table"
    try:
        df = read_raw_table(path)
        damage = _csv_damage(path) if path.suffix == ".csv" else None
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # named by their OSError
    except (OSError, ValueError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise TableReadError(f"{path}: cannot be read as a {kind} table: "
                             f"{type(exc).__name__}: {exc}") from None
    if damage:
        raise TableReadError(f"{path}: damaged or cut short ({damage}); rebuild it (snakemake "
                             "reruns the step that writes it)")
    table = name or path.stem.split(".")[0]
    problems = [p for p in check_frame(table, df) if p.what != UNKNOWN]
    if problems:
        raise TableReadError(f"{path}: does not match the contract of table {table} "
                             "(tables/COLUMNS.md): " + "; ".join(map(str, problems)))
    return df


def column_kind(table: str, column: str) -> str:
    """The declared dtype kind of a contract column ("float" for one not declared)."""
    col = contract.TABLES[table].column(column) if table in contract.TABLES else None
    return col.kind if col else "float"


def column_optional(table: str, column: str) -> bool:
    """True for a column a table may lack (absent from older sets, or LSTM-only)."""
    col = contract.TABLES[table].column(column) if table in contract.TABLES else None
    return bool(col and col.optional)


def _cell_values(record: Mapping[str, Any]) -> dict[str, Any]:
    spec = record["spec"]
    return {k: spec[k] for k in CELL_KEYS}


def _frame(records: Iterable[Mapping[str, Any]], part: str) -> pd.DataFrame:
    frames = []
    for rec in records:
        if part in rec:
            df = pd.DataFrame(rec[part])
            for key, value in reversed(list(_cell_values(rec).items())):
                df.insert(0, key, value)
            frames.append(df)
    columns = list(COLUMNS[part])
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)
    return out[[c for c in columns if c in out.columns]]


def read_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Cell records from files that each hold one record or a list of them (a block)."""
    records: list[dict[str, Any]] = []
    # An unreadable file is moved aside and named in the error: no table from partial input.
    for data in read_intermediates(paths, check=is_record):
        records.extend(data if isinstance(data, list) else [data])
    return records


def collect_cells(paths: Iterable[str | Path]) -> dict[str, pd.DataFrame]:
    """Read finished cell records and return the contract tables, sorted by cell and lag/index."""
    return tables_from_records(read_records(paths))


def tables_from_records(records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """The contract tables of cell records, sorted by cell and lag/index."""
    summary_rows = []
    for rec in records:
        row = {**_cell_values(rec), **rec["summary"]}
        row.update(
            jacobian_backend=rec.get("jacobian_backend"),
            chain_forward=rec.get("chain_forward"),
            device=rec.get("device"),
            wall_s=rec.get("wall_s"),
            started_at=rec.get("started_at"),
            finished_at=rec.get("finished_at"),
            error=rec.get("error") or rec.get("chain_error"),
            device_index=rec.get("device_index"),
            memory_estimate_gib=rec.get("memory_estimate_gib"),
        )
        summary_rows.append(row)
    summary = pd.DataFrame(summary_rows, columns=list(COLUMNS["summary"]))
    for col in ("horizon", "first_nonfinite_lag", "first_nonfinite_step", "underflow_lag",
                "underflow_lag_first", "device_index"):
        summary[col] = summary[col].astype("Int64")  # nullable: empty means "never"
    tables = {
        "gradient_flow": _frame(records, "gradient_flow"),
        "summary": summary,
        "lyapunov": _frame(records, "lyapunov"),
        "chain_spectrum": _frame(records, "chain_spectrum"),
    }
    order = {"gradient_flow": ["lag"], "lyapunov": ["index"], "chain_spectrum": ["lag", "index"]}
    for name, df in tables.items():
        if len(df):
            tables[name] = df.sort_values(CELL_KEYS + order.get(name, [])).reset_index(drop=True)
    return tables


class TableContractError(ValueError):
    """A frame does not match the contract declaration of the table it is written as."""


def write_table(df: pd.DataFrame, path: str | Path, name: str | None = None,
                csv_twin: bool | None = None) -> Path:
    """Write ``df`` atomically as Parquet (or CSV when ``path`` ends in .csv).

    ``name`` (default: the file's stem) must be a table of the contract, and ``df`` must
    match its declaration: every column declared (optional ones may be absent), none
    undeclared, each of its dtype kind. Otherwise TableContractError names the table and
    every problem, and nothing is written. Parquet files carry the column docs in their
    field metadata; a CSV twin is written next to a Parquet file of at most
    CSV_TWIN_MAX_ROWS rows (unless the table or ``csv_twin`` says otherwise).
    """
    path = Path(path)
    try:
        spec = contract.table(name or path.stem.split(".")[0])
    except contract.UnknownTableError as exc:
        raise TableContractError(f"{path}: {exc}") from None
    problems = check_frame(spec.name, df, declared=spec)
    if problems:
        raise TableContractError(
            f"{path}: the frame does not match the contract of table {spec.name} "
            f"(bpttbench.contract.{spec.stage}): " + "; ".join(map(str, problems)))
    docs = {c.name: c.doc for c in spec.columns}
    if path.suffix == ".csv":
        return write_with(path, lambda tmp: df.to_csv(tmp, index=False))
    table = pa.Table.from_pandas(df, preserve_index=False)
    fields = [
        f.with_metadata({"description": docs[f.name]}) if f.name in docs else f
        for f in table.schema
    ]
    table = table.cast(pa.schema(fields, metadata=table.schema.metadata))
    write_with(path, lambda tmp: pq.write_table(table, tmp))
    twin = csv_twin if csv_twin is not None else spec.csv_twin
    if twin if twin is not None else len(df) <= CSV_TWIN_MAX_ROWS:
        write_with(path.with_suffix(".csv"), lambda tmp: df.to_csv(tmp, index=False))
    return path


def columns_markdown(names: Iterable[str] | None = None) -> str:
    """The column docs as Markdown, one section per table (from the contract)."""
    return contract.columns_markdown(names)


def write_columns_doc(path: str | Path, names: Iterable[str] | None = None) -> Path:
    return write_text(path, columns_markdown(names))
