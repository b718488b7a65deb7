"""The shapes of the contract: a column, a table, a figure, a report section.

Plain frozen dataclasses and nothing else: this module (like the whole ``contract``
package) imports only the standard library, so the Snakefile can read the contract to
build its DAG without torch, numpy or matplotlib.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: dtype kinds of a column (checked by bpttbench.tablecheck):
#:   "float": any real number, int or float; NaN = undefined
#:   "int":   integers; a CSV column with empty fields reads as float and passes when every
#:            filled value is a whole number
#:   "str":   text (an all-empty column passes: a CSV cannot tell its type)
#:   "bool":  True/False (empty fields allowed)
#:   "any":   not checked
KINDS = ("float", "int", "str", "bool", "any")

#: What a column is to the comparison of two result sets (bpttbench.compare):
#:   "key":     identifies the row (the table's keys, in their order)
#:   "science": a measured or configured value; two machines must agree on it
#:   "timing":  a wall or elapsed time (lower is faster): left out of the science, gives
#:              timing ratios when numeric
#:   "rate":    a throughput (GFLOP/s, GB/s: higher is faster): as timing, inverted
#:   "ratio":   a speed-up or fraction of peak (a ratio of two timings of one machine):
#:              neither science nor a timing to divide
ROLES = ("key", "science", "timing", "rate", "ratio")

#: How the comparison treats a whole table:
#:   "cells":  the gradient-flow cell tables (summary, lyapunov), compared metric by metric
#:   "rows":   every numeric science column, row by row under the table's keys
#:   "timing": its timing and rate columns give timing ratios
#:   "none":   not compared (checked against the contract only)
COMPARE_MODES = ("cells", "rows", "timing", "none")
FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class Column:
    name: str
    doc: str
    kind: str = "float"
    optional: bool = False  # a table may lack it (e.g. LSTM-only, or added after old sets)
    role: str = "science"


@dataclass(frozen=True)
class Table:
    name: str
    stage: str
    file: str  # file name under results/<hw>/tables/ (or the compare folder)
    keys: tuple[str, ...]
    columns: tuple[Column, ...]
    compare: str = "none"
    #: a Parquet table of at most CSV_TWIN_MAX_ROWS rows gets a CSV twin; None: the writer
    #: decides by size, False/True: always that way for this table
    csv_twin: bool | None = None
    #: an intermediate (a job's part, merged by a collect step): not in COLUMNS.md
    intermediate: bool = False

    @property
    def format(self) -> str:
        return self.file.rsplit(".", 1)[-1]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def names_with_role(self, *roles: str) -> list[str]:
        return [c.name for c in self.columns if c.role in roles]


@dataclass(frozen=True)
class Figure:
    name: str  # figures/<name>.png
    stage: str
    inputs: tuple[str, ...]  # table names it is drawn from
    plot: str  # "module:function" of the plot function (imported only when drawing)
    category: str  # Snakemake report category
    section: str  # section of report.html (a Section title)
    #: caption: workflow/report/<caption>.rst, the one source of the caption text
    caption: str = ""

    @property
    def file(self) -> str:
        return f"{self.name}.png"

    @property
    def caption_file(self) -> str:
        return f"{self.caption or self.name}.rst"


@dataclass(frozen=True)
class Section:
    """A section of report.html; its figures are the contract figures naming it."""

    title: str
    intro: str
    tables: tuple[str, ...] = ()  # table names shown below the figures


def make_table(name: str, stage: str, file: str, keys: Iterable[str],
               docs: Mapping[str, str], kinds: Mapping[str, str] | None = None,
               roles: Mapping[str, str] | None = None, compare: str = "none",
               csv_twin: bool | None = None, intermediate: bool = False) -> Table:
    """A table from its column docs (in column order), the dtype kind of every column that
    is not a float ("int?" etc.: a trailing "?" marks an optional column) and the role of
    every column that is neither a key nor science."""
    kinds, roles, keys = dict(kinds or {}), dict(roles or {}), tuple(keys)
    for what, names in (("kinds", kinds), ("roles", roles), ("keys", keys)):
        stray = [c for c in names if c not in docs]
        if stray:
            raise ValueError(f"contract table {name}: {what} name undocumented column(s) "
                             f"{', '.join(stray)}")
    cols = []
    for col, doc in docs.items():
        kind = kinds.get(col, "float")
        role = "key" if col in keys else roles.get(col, "science")
        if kind.rstrip("?") not in KINDS or role not in ROLES:
            raise ValueError(f"contract table {name}.{col}: kind {kind!r} or role {role!r} "
                             f"unknown; kinds: {', '.join(KINDS)}; roles: {', '.join(ROLES)}")
        cols.append(Column(col, doc, kind.rstrip("?"), kind.endswith("?"), role))
    if compare not in COMPARE_MODES or file.rsplit(".", 1)[-1] not in FORMATS:
        raise ValueError(f"contract table {name}: compare {compare!r} or file {file!r} "
                         f"unknown; compare: {', '.join(COMPARE_MODES)}; formats: "
                         f"{', '.join(FORMATS)}")
    return Table(name, stage, file, keys, tuple(cols), compare, csv_twin, intermediate)
