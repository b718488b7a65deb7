"""Check a table of a result set against the table contract (``bpttbench.contract``).

The contract declares which columns a table has, the dtype kind of each and which may be
absent (optional). A file that cannot be read at all raises :class:`TableReadError`
naming it; otherwise every declared column that is missing or of the wrong kind, and every
column the contract does not know, is returned as a :class:`ColumnProblem`. What to make
of a problem (an error, or a caveat when the comparison can go on without the column) is
the caller's decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import contract
from .contract import Table

MISSING, MISTYPED, UNKNOWN = "missing", "mistyped", "unknown"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table; in CSVs only empty fields are missing (status "nan" stays a string)."""
    path = Path(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    return pd.read_parquet(path)


def _declared(table: str) -> Table | None:
    """The contract of a result-set table (intermediates are never in a result set)."""
    spec = contract.TABLES.get(table)
    return None if spec is None or spec.intermediate else spec


def _kind(spec: Table, column: str) -> str:
    col = spec.column(column)
    return col.kind if col else "float"


class TableReadError(ValueError):
    """A table file of a result set cannot be read (truncated, not Parquet/CSV, empty)."""


@dataclass(frozen=True)
class ColumnProblem:
    table: str
    column: str
    what: str  # MISSING, MISTYPED or UNKNOWN
    detail: str  # e.g. "expected int, found str values like 'abc'"

    def __str__(self) -> str:
        return f"{self.table}.{self.column} {self.detail}"


def _example(values: pd.Series) -> str:
    bad = values.dropna()
    if not len(bad):
        return ""
    v = bad.iloc[0]
    return f" like {(v.item() if isinstance(v, np.generic) else v)!r}"


def _all_numbers(s: pd.Series) -> bool:
    return bool(s.dropna().map(lambda v: isinstance(v, int | float | np.number)
                               and not isinstance(v, bool | np.bool_)).all())


def series_kind_problem(s: pd.Series, kind: str) -> str | None:
    """None when the column's values are of ``kind``; else what is wrong with them."""
    if kind == "any":
        return None
    if s.isna().all():
        return None  # an empty CSV column has no type to check
    if kind in ("float", "int") and s.dtype == object and _all_numbers(s):
        # a frame column of numbers and None (e.g. keys empty for some rows): numbers once
        # written, so check the values
        s = s.astype(float)
    if kind == "float":
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            return f"expected numbers, found {s.dtype} values{_example(s)}"
        return None
    if kind == "int":
        if pd.api.types.is_bool_dtype(s):
            return "expected integers, found booleans"
        if pd.api.types.is_integer_dtype(s):
            return None
        if pd.api.types.is_float_dtype(s):
            v = s.dropna().astype(float).to_numpy()
            frac = ~np.isfinite(v) | (v != np.round(v))
            if frac.any():
                return f"expected integers, found {float(v[frac][0])!r}"
            return None
        return f"expected integers, found {s.dtype} values{_example(s)}"
    if kind == "str":
        if pd.api.types.is_string_dtype(s) or s.dtype == object:
            odd = s.dropna().map(lambda v: not isinstance(v, str))
            if odd.any():
                return f"expected text, found {type(s.dropna()[odd].iloc[0]).__name__} values"
            return None
        return f"expected text, found {s.dtype} values{_example(s)}"
    if kind == "bool":
        if pd.api.types.is_bool_dtype(s):
            return None
        if s.dtype == object and s.dropna().map(lambda v: isinstance(v, bool | np.bool_)).all():
            return None
        return f"expected True/False, found {s.dtype} values{_example(s)}"
    raise ValueError(f"unknown column kind {kind!r}")


def arrow_kind_problem(t: pa.DataType, kind: str) -> str | None:
    """The same check on a Parquet column's type (the schema alone: no data is read)."""
    if kind == "any" or pa.types.is_null(t):
        return None
    ok = {
        "float": (pa.types.is_integer(t) or pa.types.is_floating(t)
                  or pa.types.is_decimal(t)),
        "int": pa.types.is_integer(t),
        "str": pa.types.is_string(t) or pa.types.is_large_string(t),
        "bool": pa.types.is_boolean(t),
    }[kind]
    return None if ok else f"expected {_KIND_WORDS[kind]}, found Parquet type {t}"


_KIND_WORDS = {"float": "numbers", "int": "integers", "str": "text", "bool": "True/False"}


def _problems(spec: Table, present: dict[str, str | None]) -> list[ColumnProblem]:
    """present: column -> its kind problem (None if fine), for the columns the file has."""
    table, declared = spec.name, spec.column_names
    out = [ColumnProblem(table, c.name, MISSING, "missing") for c in spec.columns
           if c.name not in present and not c.optional]
    out += [ColumnProblem(table, c, MISTYPED, why) for c, why in present.items()
            if c in declared and why]
    out += [ColumnProblem(table, c, UNKNOWN, "is not in the table contract")
            for c in present if c not in declared]
    return out


def check_frame(table: str, df: pd.DataFrame, declared: Table | None = None
                ) -> list[ColumnProblem]:
    """Problems of a table (already read) against its contract (``declared``, default the
    result-set table ``table``); [] for a table the contract does not know."""
    spec = declared or _declared(table)
    if spec is None:
        return []
    return _problems(spec, {str(c): series_kind_problem(df[c], _kind(spec, str(c)))
                            for c in df.columns})


def check_file(table: str, path: str | Path) -> list[ColumnProblem]:
    """Check one table file. Parquet: its schema (no data read); CSV: the whole file.

    Raises TableReadError naming the file when it cannot be read.
    """
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            schema = pq.read_schema(path)
            spec = _declared(table)
            if spec is None:
                return []
            return _problems(spec, {f.name: arrow_kind_problem(f.type, _kind(spec, f.name))
                                    for f in schema})
        df = read_table(path)
    except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError,
            UnicodeDecodeError) as exc:
        raise TableReadError(f"{path}: cannot be read as a {path.suffix[1:]} table: "
                             f"{type(exc).__name__}: {exc}") from None
    return check_frame(table, df)
