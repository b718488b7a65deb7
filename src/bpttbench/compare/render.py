"""The comparison's pages (summary.md, summary.html) and the writing of its output folder."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import write_text
from ..tables import write_table
from .caveats import WARNING
from .comparison import Comparison
from .figure import agreement_figure
from .pairs import OUTPUT_FILES, ResultSetError
from .policy import STAT_Z, STATISTICAL_REGIMES
from .resultset import ResultSet
from .timing import timing_overview

OVERVIEW_COLUMNS = ["table", "metric", "regime", "rows", "within", "outside", "bitwise_equal",
                    "max_abs_diff", "max_tolerance_used", "tolerance"]


def agreement_overview(agreement: pd.DataFrame) -> pd.DataFrame:
    """Per table, metric and regime: rows, within, outside, bitwise equal, the largest
    difference and the largest share of its tolerance a value used (> 1: outside)."""
    if agreement.empty:
        return pd.DataFrame(columns=OVERVIEW_COLUMNS)
    with np.errstate(invalid="ignore", divide="ignore"):
        used = (agreement["abs_diff"].astype(float)
                / agreement["allowed_diff"].astype(float)).to_numpy()
    used = np.where(agreement["abs_diff"].astype(float).to_numpy() == 0, 0.0, used)
    g = agreement.assign(
        equal=(agreement["abs_diff"] == 0) | agreement["note"].isin(["undefined in both"])
        | ((agreement["metric"] == "status") & agreement["within"].astype(bool)),
        used=np.where(np.isfinite(used), used, np.nan),
        tolerance=[f"rel {r:g} + abs {a:g}" for r, a in zip(agreement["tol_rel"],
                                                              agreement["tol_abs"],
                                                              strict=True)],
    )
    g.loc[g["metric"] == "status", "tolerance"] = "equal"
    g.loc[(g["table"] == "lyapunov") & g["regime"].isin(STATISTICAL_REGIMES),
          "tolerance"] += f" or {STAT_Z:g} SE"
    out = g.groupby(["table", "metric", "regime", "tolerance"], sort=False).agg(
        rows=("within", "size"), within=("within", "sum"), bitwise_equal=("equal", "sum"),
        max_abs_diff=("abs_diff", "max"), max_tolerance_used=("used", "max")).reset_index()
    out["outside"] = out["rows"] - out["within"]
    return out[OVERVIEW_COLUMNS]




def _set_line(rs: ResultSet) -> str:
    m = rs.manifest
    hw = m.get("hardware", {}) or {}
    device = hw.get("gpu_name") or hw.get("cpu_model") or "?"
    prec = m.get("precision", {}) or {}
    return (f"{rs.path} — tag {m.get('hardware_tag')}, {device}, dtype {prec.get('dtype')}, "
            f"commit {str(m.get('git_commit'))[:12]}, config {m.get('config_hash')}, "
            f"finished {m.get('finished_at')}")


def _md_table(df: pd.DataFrame, floatfmt: str = "{:.3g}") -> str:
    if df.empty:
        return "(none)\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float | np.floating):
                cells.append("" if math.isnan(v) else floatfmt.format(v))
            else:
                cells.append(str(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _outside(agreement: pd.DataFrame, limit: int) -> pd.DataFrame:
    out = agreement[~agreement["within"].astype(bool)]
    cols = ["table", "metric", "key", "regime", "value_a", "value_b", "rel_diff",
            "allowed_diff", "note"]
    return out[cols].head(limit)


REGIMES_TEXT = (
    "Regimes: regular (rounding differences stay at rounding level); nonsmooth (rnn_relu: "
    "its lowest Lyapunov exponents carry ln(eps) of the dtype); chaotic (largest Lyapunov "
    "exponent > 0 in either set: the runs agree only statistically, so Lyapunov exponents "
    f"also agree within {STAT_Z:g} standard errors of the difference of the batch means); "
    "nonfinite (inf/NaN or underflow to 0 appeared in either set).")


def verdict(cmp: Comparison) -> str:
    n = len(cmp.agreement)
    warnings = sum(c.severity == WARNING for c in cmp.caveats)
    if cmp.n_outside == 0:
        text = f"All {n} compared values agree within tolerance."
    else:
        text = f"{cmp.n_outside} of {n} compared values are outside tolerance."
    if cmp.not_compared:
        text += " Not compared: " + "; ".join(cmp.not_compared) + "."
    if warnings:
        text += f" {warnings} caveat(s) make the comparison unequal: read them first."
    return text


def summary_markdown(cmp: Comparison, limit: int = 30) -> str:
    cav = cmp.caveats_frame()
    identical = [t for t, v in cmp.identical.items() if v]
    different = [t for t, v in cmp.identical.items() if v is False]
    lines = [
        f"# Comparison {cmp.a.name} vs {cmp.b.name}", "",
        f"- A: {_set_line(cmp.a)}", f"- B: {_set_line(cmp.b)}", "",
        f"**{verdict(cmp)}**", "",
        "## Caveats (checked before comparing)", "",
    ]
    if cav.empty:
        lines += ["None: same config, precision settings, Jacobian backend, library versions "
                  "and code version.", ""]
    else:
        lines += [f"- **{c.severity}** `{c.item}`: {c.value_a or '—'} vs {c.value_b or '—'}. "
                  f"{c.effect}" for c in cmp.caveats] + [""]
    lines += ["## Agreement", "",
              "Two values agree when |A − B| ≤ abs + rel·max(|A|, |B|); two NaNs agree. "
              + REGIMES_TEXT + " Tolerances: `bpttbench.compare.TOLERANCES`, docs/compare.md.",
              "",
              _md_table(agreement_overview(cmp.agreement)),
              f"Tables identical apart from timing columns: {', '.join(identical) or 'none'}."
              + (f" Different: {', '.join(different)}." if different else ""), ""]
    if cmp.skipped:
        lines += ["Not compared: " + "; ".join(f"{t} ({why})" for t, why in
                                              sorted(cmp.skipped.items())) + ".", ""]
    if cmp.n_outside:
        lines += [f"### Outside tolerance (first {limit})", "",
                  _md_table(_outside(cmp.agreement, limit), "{:.6g}")]
    lines += ["## Timings", "",
              "Speed-up of B over A (A's time / B's time; > 1: B is faster), geometric mean "
              "over the rows of each timing column; per row in timing_ratio.csv.", "",
              _md_table(timing_overview(cmp.timing)), "",
              "Files: " + ", ".join(OUTPUT_FILES.values()) + "."]
    return "\n".join(lines) + "\n"


def summary_html(cmp: Comparison, figure: Path | None, limit: int = 30) -> str:
    from ..report import CSS

    def table(df: pd.DataFrame) -> str:
        if df.empty:
            return "<p class=note>(none)</p>"
        fmt = {c: "{:.4g}".format for c in df.columns if pd.api.types.is_float_dtype(df[c])}
        return ("<div class=scroll>" + df.to_html(index=False, formatters=fmt, na_rep="",
                                                  border=0, classes="tbl") + "</div>")

    cav = cmp.caveats_frame()
    parts = [
        f"<h1>Comparison {html.escape(cmp.a.name)} vs {html.escape(cmp.b.name)}</h1>",
        f"<p class=sub>A: {html.escape(_set_line(cmp.a))}<br>B: "
        f"{html.escape(_set_line(cmp.b))}</p>",
        f"<p><b>{html.escape(verdict(cmp))}</b></p>",
        "<h2>Caveats (checked before comparing)</h2>",
        table(cav) if not cav.empty else "<p>None: same config, precision settings, Jacobian "
        "backend, library versions and code version.</p>",
        "<h2>Agreement</h2><p>Two values agree when |A − B| ≤ abs + rel·max(|A|, |B|); two NaNs "
        f"agree. {html.escape(REGIMES_TEXT)}</p>",
        table(agreement_overview(cmp.agreement)),
    ]
    if figure is not None and figure.exists():
        data = base64.b64encode(figure.read_bytes()).decode()
        parts.append(f'<figure><img alt="agreement" src="data:image/png;base64,{data}">'
                     "<figcaption>Value in A against value in B per metric (dashed: y = x; "
                     "red: outside tolerance) and the timing ratios.</figcaption></figure>")
    if cmp.n_outside:
        parts += [f"<h3>Outside tolerance (first {limit})</h3>",
                  table(_outside(cmp.agreement, limit))]
    parts += ["<h2>Timings</h2><p>Speed-up of B over A (&gt; 1: B is faster).</p>",
              table(timing_overview(cmp.timing))]
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>bpttbench compare "
            f"{html.escape(cmp.a.name)} vs {html.escape(cmp.b.name)}</title><style>{CSS}"
            f"</style></head><body>{''.join(parts)}</body></html>\n")



def write_comparison(cmp: Comparison, out: str | Path) -> dict[str, Path]:
    """Write every output file of a comparison into ``out``; returns role -> path."""
    from ..figures import save

    out = Path(out)
    for rs in (cmp.a, cmp.b):
        inside = out.resolve()
        if inside == rs.path.resolve() or rs.path.resolve() in inside.parents:
            raise ResultSetError(f"--out {out} is inside the result set {rs.path}; a comparison "
                                 "never writes into a result set")
    paths = {role: out / name for role, name in OUTPUT_FILES.items()}
    write_table(cmp.caveats_frame(), paths["caveats"], "compare_caveats")
    write_table(cmp.agreement, paths["agreement"], "compare_agreement")
    write_table(cmp.timing, paths["timing_ratio"], "compare_timing_ratio")
    save(agreement_figure(cmp.agreement, cmp.timing, cmp.a.name, cmp.b.name), paths["figure"])
    write_text(paths["summary_md"], summary_markdown(cmp))
    write_text(paths["summary_html"], summary_html(cmp, paths["figure"]))
    return paths

