"""Contract of the compare stage: results/compare/<A>__vs__<B>/ (docs/compare.md)."""

from __future__ import annotations

from .gradient_flow import CELL_DOCS, CELL_KINDS
from .spec import Figure, make_table

STAGE = "compare"

AGREEMENT_DOCS = {
    "table": "table of the result sets the value comes from (summary, lyapunov, claims, ...)",
    "metric": "column compared (growth_rate, lyapunov_max, horizon, spectral_norm_whh, "
    "spectral_radius_whh, status, exponent, or a claims / long-range column)",
    "key": "the row's identifying columns as k=v pairs (cell, claim, run)",
    **{k: f"{doc} (empty for tables without this key)" for k, doc in CELL_DOCS.items()},
    "regime": "regular, nonsmooth (rnn_relu), chaotic (largest Lyapunov exponent > 0 in "
    "either set), nonfinite (inf/NaN or underflow in either set) or any; picks the tolerance",
    "value_a": "value in set A (natural log per step for rates and exponents; steps for "
    "horizon); empty for status",
    "value_b": "value in set B",
    "abs_diff": "|value_a - value_b|",
    "rel_diff": "|value_a - value_b| / max(|value_a|, |value_b|); 0 when equal",
    "tol_rel": "relative tolerance (bpttbench.compare.TOLERANCES)",
    "tol_abs": "absolute tolerance, in the metric's unit",
    "tol_stat": "statistical allowance of a Lyapunov exponent in a chaotic, nonsmooth or "
    "nonfinite cell: 3 standard errors of the difference of the two batch means; 0 if unused",
    "allowed_diff": "max(tol_abs + tol_rel * max(|value_a|, |value_b|), tol_stat)",
    "within": "abs_diff <= allowed_diff, or both undefined (NaN), or the same infinity; "
    "status: equal in both sets",
    "note": "status pair (e.g. 'nan vs ok'), or 'undefined in one set only'",
}

TIMING_DOCS = {
    "table": "table the timing comes from (summary: wall_s per cell; bench tables)",
    "metric": "timing or throughput column",
    "kind": "time (lower is faster) or rate (GFLOP/s, GB/s: higher is faster)",
    "key": "the row's identifying columns as k=v pairs (median over repeated rows)",
    "value_a": "value in set A (seconds, milliseconds or the rate's unit)",
    "value_b": "value in set B",
    "ratio_b_over_a": "value_b / value_a",
    "speedup_b_vs_a": "how many times faster B is than A: A/B for times, B/A for rates",
}

CAVEATS_DOCS = {
    "item": "what differs between the two sets' manifests (config section, precision flag, "
    "hardware, library, code version, cells present)",
    "value_a": "its value in set A",
    "value_b": "its value in set B",
    "severity": "warning (changes what or how precisely is measured) or info (expected "
    "between machines; may change the last bits)",
    "effect": "what the difference does to the comparison",
}


TABLES = (
    make_table("compare_agreement", STAGE, "agreement.csv", ("table", "metric", "key"),
               AGREEMENT_DOCS,
               {"table": "str", "metric": "str", "key": "str", **CELL_KINDS, "regime": "str",
                "within": "bool", "note": "str"}),
    make_table("compare_timing_ratio", STAGE, "timing_ratio.csv", ("table", "metric", "key"),
               TIMING_DOCS, {"table": "str", "metric": "str", "kind": "str", "key": "str"},
               {"speedup_b_vs_a": "ratio"}),
    make_table("compare_caveats", STAGE, "caveats.csv", ("item",), CAVEATS_DOCS,
               {c: "str" for c in ("item", "value_a", "value_b", "severity", "effect")}),
)
FIGURES = (
    Figure("agreement", STAGE, ("compare_agreement", "compare_timing_ratio"),
           "bpttbench.compare.figure:agreement_figure", "Comparison", ""),
)
#: The report pages of a comparison (written beside its tables and figure).
PAGES = {"summary_md": "summary.md", "summary_html": "summary.html"}
