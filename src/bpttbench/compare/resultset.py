"""Reading a result set for a comparison: its manifest, its tables, and what in them
breaks the table contract (bpttbench.tablecheck)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import contract
from ..io import read_json
from ..tablecheck import MISSING, UNKNOWN, ColumnProblem, TableReadError, check_file, read_table
from .pairs import ResultSetError


@dataclass
class ResultSet:
    path: Path
    manifest: dict[str, Any]
    tables: dict[str, Path]  # table name (file stem) -> file; Parquet preferred over CSV
    #: Columns missing, mistyped or unknown against the table contract (bpttbench.tablecheck).
    problems: list[ColumnProblem] = field(default_factory=list)
    #: Table files that are not contract tables (never compared).
    unknown_tables: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def problem(self, table: str, column: str) -> ColumnProblem | None:
        return next((p for p in self.problems if p.table == table and p.column == column), None)

    def read(self, table: str) -> pd.DataFrame:
        """A table, less the columns that break the contract (mistyped, or not in it): the
        comparison never uses them, and its caveats say so."""
        path = self.tables[table]
        try:
            df = read_table(path)
        except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise ResultSetError(f"{path}: cannot be read: {type(exc).__name__}: {exc}") from None
        bad = {p.column for p in self.problems if p.table == table and p.what != MISSING}
        df = df.drop(columns=[c for c in df.columns if c in bad])
        if "status" in df.columns:
            # pandas reads the status "nan" (a NaN appeared) of a CSV as a missing value
            df["status"] = df["status"].astype(object).where(df["status"].notna(), "nan")
        return df

    def require(self, table: str, columns: Sequence[str]) -> None:
        """Raise ResultSetError naming the file and column when a needed column breaks the
        contract (missing or mistyped)."""
        for c in columns:
            p = self.problem(table, c)
            if p is not None and p.what != UNKNOWN:
                raise ResultSetError(f"{self.tables[table]}: column {c} {p.detail}; the "
                                     "comparison needs it (table contract: tables/COLUMNS.md)")

    def empty_keys(self, table: str, df: pd.DataFrame, keys: Sequence[str]) -> str | None:
        """What is wrong with a table's key columns: empty fields or repeated keys."""
        for k in keys:
            n = int(df[k].isna().sum())
            if n:
                return f"{self.tables[table]}: {n} row(s) with an empty key column {k}"
        dup = int(df.duplicated(list(keys)).sum())
        if dup:
            return (f"{self.tables[table]}: {dup} row(s) repeat the key "
                    f"({', '.join(keys)}) of another row")
        return None


def load_result_set(path: str | Path) -> ResultSet:
    """Open a result set for reading; a clear ResultSetError names what is missing."""
    p = Path(path)
    what = "a result set is a folder results/<hw_tag>/ holding manifest.json and tables/"
    if not p.is_dir():
        raise ResultSetError(f"{p}: not a result set: no such folder ({what})")
    missing = [n for n, ok in (("manifest.json", (p / "manifest.json").is_file()),
                               ("tables/", (p / "tables").is_dir())) if not ok]
    if missing:
        raise ResultSetError(f"{p}: not a result set: missing {' and '.join(missing)} ({what})")
    try:
        manifest = read_json(p / "manifest.json")
    except ValueError as exc:  # the message names the file
        raise ResultSetError(str(exc)) from None
    if not isinstance(manifest, dict):
        raise ResultSetError(f"{p / 'manifest.json'}: expected a JSON object")
    tables: dict[str, Path] = {}
    for f in sorted((p / "tables").iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.suffix in (".parquet", ".csv"):
            if f.stem not in tables or f.suffix == ".parquet":
                tables[f.stem] = f
    if "summary" not in tables:
        raise ResultSetError(f"{p}: not a result set: missing tables/{contract.FILE['summary']} "
                             f"({what})")
    # The table contract: every table's columns and dtype kinds (Parquet: schema only).
    problems: list[ColumnProblem] = []
    for name, f in tables.items():
        try:
            problems += check_file(name, f)
        except TableReadError as exc:
            raise ResultSetError(str(exc)) from None
    unknown = sorted(f"tables/{f.name}" for n, f in tables.items()
                     if n not in contract.TABLES or contract.TABLES[n].intermediate)
    return ResultSet(p, manifest, tables, problems, unknown)

