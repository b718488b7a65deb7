"""Lookups over the contract of every stage: tables, figures, files, report sections.

Adding a table or figure is one entry in its stage's contract module; the writers
(bpttbench.tables.write_table), the checks (bpttbench.tablecheck), the comparison, the
report, COLUMNS.md and the workflow's figure outputs all read it from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import bench, claims, compare, gradient_flow, long_range, validation
from .report import SECTIONS
from .spec import Figure, Section, Table

_STAGES = (gradient_flow, claims, long_range, bench, validation, compare)
#: Stage name -> its contract module, in the pipeline's order.
STAGES: dict[str, Any] = {m.STAGE: m for m in _STAGES}
TABLES: dict[str, Table] = {t.name: t for m in _STAGES for t in m.TABLES}
FIGURES: dict[str, Figure] = {f.name: f for m in _STAGES for f in m.FIGURES}
#: Table name -> its file name (e.g. FILE["summary"] == "summary.csv").
FILE: dict[str, str] = {name: t.file for name, t in TABLES.items()}
#: A Parquet table's CSV twin (written when small; the report shows it).
CSV_TWIN_MAX_ROWS = 20_000


class UnknownTableError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def table(name: str) -> Table:
    """The declared table ``name``; UnknownTableError names the known tables."""
    if name not in TABLES:
        raise UnknownTableError(f"{name!r} is not a table of the contract; known tables: "
                                f"{', '.join(TABLES)} (bpttbench.contract)")
    return TABLES[name]


def figure(name: str) -> Figure:
    if name not in FIGURES:
        raise KeyError(f"{name!r} is not a figure of the contract; known figures: "
                       f"{', '.join(FIGURES)}")
    return FIGURES[name]


def _stage(stage: str) -> Any:
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return STAGES[stage]


def tables(stage: str | None = None, intermediate: bool = False) -> list[Table]:
    """The tables of one stage (or of all), without the intermediates unless asked."""
    found = _stage(stage).TABLES if stage else TABLES.values()
    return [t for t in found if intermediate or not t.intermediate]


def figures(stage: str | None = None, names: Iterable[str] | None = None) -> list[Figure]:
    """The figures of one stage (or all), in contract order; ``names`` keeps only those."""
    found = list(_stage(stage).FIGURES if stage else FIGURES.values())
    if names is not None:
        wanted = set(names)
        unknown = wanted - {f.name for f in found}
        if unknown:
            raise KeyError(f"unknown figure(s) {', '.join(sorted(unknown))} of stage {stage}; "
                           f"known: {', '.join(f.name for f in found)}")
        found = [f for f in found if f.name in wanted]
    return found


def table_path(result_dir: str | Path, name: str) -> Path:
    """<result_dir>/tables/<file> of a table."""
    return Path(result_dir) / "tables" / table(name).file


def twin_file(name: str) -> str:
    """The file a reader of a small table opens: the CSV (a Parquet table's twin)."""
    return Path(table(name).file).with_suffix(".csv").name


def table_file(name: str, folder: str = "results/{hw}/tables", twin: bool = False) -> str:
    """The path under ``folder`` of one table (its CSV twin if ``twin``): the .smk files'
    spelling of a table's file, so that the contract alone names it."""
    return f"{folder}/{twin_file(name) if twin else table(name).file}"


def table_files(stage: str, folder: str = "results/{hw}/tables") -> dict[str, str]:
    """Table name -> path under ``folder``, for a stage's outputs (intermediates left out)."""
    return {t.name: f"{folder}/{t.file}" for t in tables(stage)}


def figure_files(stage: str, folder: str = "results/{hw}/figures",
                 names: Iterable[str] | None = None) -> dict[str, str]:
    """Figure name -> path under ``folder`` of a stage's figures (only ``names`` if given)."""
    return {f.name: f"{folder}/{f.file}" for f in figures(stage, names)}


def figure_outputs(stage: str, report: Callable[..., Any], folder: str = "results/{hw}/figures",
                   names: Iterable[str] | None = None, captions: str = "../report",
                   **extra: Any) -> dict[str, Any]:
    """The named outputs of a stage's figure rule, each wrapped in Snakemake's ``report``
    (pass it in: this package never imports Snakemake) with its caption and category.

    ``extra`` goes to every ``report`` call (e.g. subcategory="{pair}").
    """
    return {f.name: report(f"{folder}/{f.file}", caption=f"{captions}/{f.caption_file}",
                           category=f.category, **extra)
            for f in figures(stage, names)}


def plot_function(name: str) -> Callable[..., Any]:
    """The plot function of a figure (imports its module: matplotlib and the rest)."""
    module, func = figure(name).plot.split(":")
    return getattr(importlib.import_module(module), func)


def section_figures(section: Section) -> list[str]:
    """Names of the figures shown in a report section, in contract order."""
    return [f.name for f in FIGURES.values() if f.section == section.title]


def report_sections() -> tuple[Section, ...]:
    return SECTIONS


def columns_markdown(names: Iterable[str] | None = None) -> str:
    """The column docs as Markdown, one section per table (docs/COLUMNS.md, and every result
    set's tables/COLUMNS.md)."""
    lines = ["# Columns of the bpttbench tables", "", "All logarithms are natural logs.", ""]
    for name in names or [t.name for t in tables()]:
        lines += [f"## {name}", "", "| column | meaning |", "| --- | --- |"]
        lines += [f"| `{c.name}` | {c.doc} |" for c in table(name).columns]
        lines.append("")
    return "\n".join(lines)
