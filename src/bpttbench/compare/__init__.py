"""Compare two result sets: does the science agree within tolerance, how do the timings differ?

``bpttbench compare sets results/A results/B [--out DIR]`` reads two finished result sets
(``manifest.json`` + ``tables/``), never writes into them, and writes to
``results/compare/<A>__vs__<B>/`` (file names from :mod:`bpttbench.contract`):

- ``caveats.csv``: what makes the two sets unequal (config, dtype, TF32, determinism,
  library versions, Jacobian backend, code version, cells present in only one set, columns
  missing or mistyped against the table contract), checked *before* any value is compared;
- ``agreement.csv``: one row per (table, metric, cell): both values, absolute and relative
  difference, the tolerance and whether the difference is within it;
- ``timing_ratio.csv``: B/A for every timing and rate column both sets have (the contract's
  column roles: ``summary.wall_s`` and the bench tables);
- ``agreement.png``: value in A against value in B per metric (with y = x) and the
  timing ratios;
- ``summary.md`` and ``summary.html``: the caveats, the verdict, the rows outside
  tolerance and the timing ratios.

One job per module: ``policy`` (tolerances and column roles), ``resultset`` (reading a set),
``pairs`` (output files and the Snakemake pair helpers), ``caveats``, ``agreement`` and
``timing`` (the maths), ``comparison`` (the whole), ``render`` (pages and output folder),
``figure``, ``cli``. Every tolerance lives in :data:`policy.TOLERANCES` (and
:data:`policy.GENERIC_TOLERANCES`); ``docs/compare.md`` explains them.

This package imports only the light pair helpers at import time (the workflow uses them to
build its DAG); every other public name is loaded from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .cli import register
from .pairs import (
    NAME_PATTERN,
    OUTPUT_FILES,
    PAIR_SEP,
    ResultSetError,
    compare_pairs,
    default_out,
    pair_folders,
    pair_input_files,
    pair_name,
    result_set_input_files,
)

#: Public name -> the module that defines it (loaded on first access: numpy and pandas
#: stay out of the workflow's DAG build).
_LAZY = {
    "policy": (
        "ANY", "CHAOS_THRESHOLD", "CHAOTIC", "EXACT", "GENERIC_TOLERANCES", "LINEAR_MODELS",
        "LYAPUNOV_METRICS", "NONFINITE", "NONSMOOTH", "NONSMOOTH_MODELS", "REGIMES", "REGULAR",
        "STATISTICAL_REGIMES", "STAT_Z", "SUMMARY_METRICS", "TOLERANCES", "UNITS", "Tolerance",
        "column_role", "compare_mode", "generic_tolerance", "is_performance_column", "is_rate_column",
        "is_timing_column", "table_keys", "tolerance_for", "within_tolerance"),
    "resultset": ("ResultSet", "load_result_set"),
    "caveats": ("INFO", "WARNING", "Caveat", "caveats", "compared_columns", "contract_caveats",
                "REQUIRED_COLUMNS", "USED_COLUMNS"),
    "agreement": ("AGREEMENT_COLUMNS", "_key_string"),
    "timing": ("TIMING_COLUMNS_OUT", "identical_apart_from_timings", "timing_overview"),
    "comparison": ("Comparison", "compare_sets"),
    "render": ("agreement_overview", "summary_html", "summary_markdown", "verdict",
               "write_comparison"),
    "figure": ("agreement_figure",),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "NAME_PATTERN", "OUTPUT_FILES", "PAIR_SEP", "ResultSetError", "compare_pairs", "default_out",
    "pair_folders", "pair_input_files", "pair_name", "register", "result_set_input_files",
    *_WHERE,
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
