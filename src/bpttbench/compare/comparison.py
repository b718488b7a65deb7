"""One comparison of result set B against result set A: caveats, agreement, timings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from .. import contract
from ..tablecheck import UNKNOWN
from .agreement import (
    CELL_KEYS,
    _generic_rows,
    _lyapunov_rows,
    _only_text,
    _rows_only_in,
    _summary_rows,
)
from .caveats import REQUIRED_COLUMNS, WARNING, Caveat, caveats, contract_caveats
from .policy import compare_mode, table_keys
from .resultset import ResultSet, ResultSetError, load_result_set
from .timing import TIMING_COLUMNS_OUT, _timing_rows, identical_apart_from_timings


@dataclass
class Comparison:
    a: ResultSet
    b: ResultSet
    caveats: list[Caveat]
    agreement: pd.DataFrame
    timing: pd.DataFrame
    identical: dict[str, bool | None]  # common table -> identical apart from timing columns
    skipped: dict[str, str]  # table -> why it was not compared
    only_a: int  # cells only in A
    only_b: int
    #: Compared columns of the contract left out (missing or mistyped in a set): the verdict
    #: names each of them.
    not_compared: list[str] = field(default_factory=list)

    def caveats_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(c) for c in self.caveats],
                            columns=["item", "value_a", "value_b", "severity", "effect"])

    @property
    def n_outside(self) -> int:
        return int((~self.agreement["within"].astype(bool)).sum())


def compare_sets(path_a: str | Path, path_b: str | Path) -> Comparison:
    """Compare result set B against result set A (reads only)."""
    a, b = load_result_set(path_a), load_result_set(path_b)
    if a.path.resolve() == b.path.resolve():
        raise ResultSetError(f"{a.path} and {b.path} are the same folder")
    cav = caveats(a, b)
    broken_columns, not_compared = contract_caveats(a, b)
    cav += broken_columns

    for rs in (a, b):
        rs.require("summary", REQUIRED_COLUMNS["summary"])
    sa, sb = a.read("summary"), b.read("summary")
    for rs, s in ((a, sa), (b, sb)):
        why = rs.empty_keys("summary", s, CELL_KEYS)
        if why:
            raise ResultSetError(f"{why}; the cells of a set must be unique and named")
    only_a, only_b = _rows_only_in(sa, sb, CELL_KEYS)
    if only_a or only_b:
        cav.append(Caveat("cells", f"{len(sa)} ({only_a} only here)",
                          f"{len(sb)} ({only_b} only here)", WARNING,
                          "the sets hold different cells; only the common ones are compared"))

    summary_rows, regimes = _summary_rows(a, b, sa, sb)
    skipped: dict[str, str] = {}
    lyap_rows, why = _lyapunov_rows(a, b, regimes)
    if why:
        skipped["lyapunov"] = why
    unmatched = [_only_text("summary", only_a, only_b, "cell(s)")]
    if "lyapunov" in a.tables and "lyapunov" in b.tables and not why:
        # Rows of the cells both sets have (cells of one set only are counted above).
        cells = regimes[CELL_KEYS]
        la, lb = (rs.read("lyapunov").merge(cells, on=CELL_KEYS) for rs in (a, b))
        unmatched.append(_only_text("lyapunov", *_rows_only_in(la, lb, [*CELL_KEYS, "index"])))
    parts = [summary_rows, lyap_rows]
    common = sorted(set(a.tables) & set(b.tables))
    for t in common:
        if compare_mode(t) == "rows":
            broken = [f"{k} {p.what} in {label}" for k in contract.TABLES[t].keys
                      for label, rs in (("A", a), ("B", b))
                      if (p := rs.problem(t, k)) is not None and p.what != UNKNOWN]
            if broken:
                skipped[t] = f"key column {broken[0]}"
                continue
            ta, tb = a.read(t), b.read(t)
            rows, why = _generic_rows(t, ta, tb)
            if why:
                skipped[t] = why
            else:
                keys = [k for k in table_keys(ta.columns, t) if k in tb.columns]
                unmatched.append(_only_text(t, *_rows_only_in(ta, tb, keys)))
            parts.append(rows)
    for t in sorted(set(a.tables) ^ set(b.tables)):
        if t in contract.TABLES and not contract.TABLES[t].intermediate:
            where = "A" if t in a.tables else "B"
            skipped[t] = f"only in {where}"
    agreement = pd.concat([p for p in parts if len(p)], ignore_index=True)

    timing = [_timing_rows("summary", sa, sb, CELL_KEYS)]
    for t in common:
        if compare_mode(t) == "timing":
            ta, tb = a.read(t), b.read(t)
            keys = [k for k in table_keys(ta.columns, t) if k in tb]
            timing.append(_timing_rows(t, ta, tb, keys))
            if keys:
                only = _only_text(t, *_rows_only_in(ta, tb, keys), "timed row(s)")
                if only:
                    not_compared.append(only)
    timing_df = pd.concat([t for t in timing if len(t)], ignore_index=True) if any(
        len(t) for t in timing) else pd.DataFrame(columns=TIMING_COLUMNS_OUT)

    identical: dict[str, bool | None] = {}
    for t in common:
        try:
            identical[t] = identical_apart_from_timings(a.tables[t], b.tables[t])
        except (OSError, ValueError) as exc:  # a Parquet body damaged behind a good footer
            raise ResultSetError(f"{a.tables[t]} or {b.tables[t]}: cannot be read: "
                                 f"{type(exc).__name__}: {exc}") from None
    not_compared += [f"{t} ({why})" for t, why in sorted(skipped.items())]
    not_compared += [u for u in unmatched if u]
    return Comparison(a, b, cav, agreement, timing_df, identical, skipped, only_a, only_b,
                      not_compared)

