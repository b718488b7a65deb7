"""The table-and-figure contract of every stage, declared once (torch-free, stdlib only).

Each stage module (``gradient_flow``, ``claims``, ``long_range``, ``bench``, ``validation``,
``compare``) declares its tables (file, keys, and per column: doc, dtype kind, optional,
role) and its figures (inputs, plot function as a dotted string, caption, report category
and section); ``registry`` looks them up. See docs/COLUMNS.md (generated from it).
"""

from __future__ import annotations

from .registry import (
    CSV_TWIN_MAX_ROWS,
    FIGURES,
    FILE,
    STAGES,
    TABLES,
    UnknownTableError,
    columns_markdown,
    figure,
    figure_files,
    figure_outputs,
    figures,
    plot_function,
    report_sections,
    section_figures,
    table,
    table_file,
    table_files,
    table_path,
    tables,
    twin_file,
)
from .spec import COMPARE_MODES, KINDS, ROLES, Column, Figure, Section, Table

__all__ = [
    "COMPARE_MODES", "CSV_TWIN_MAX_ROWS", "FIGURES", "FILE", "KINDS", "ROLES", "STAGES", "TABLES",
    "Column", "Figure", "Section", "Table", "UnknownTableError", "columns_markdown", "figure",
    "figure_files", "figure_outputs", "figures", "plot_function", "report_sections",
    "section_figures", "table", "table_file", "table_files", "table_path", "tables", "twin_file",
]
