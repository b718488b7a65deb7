"""Figures of the claims stage: one per claim and the overview scorecard.

Pure functions of the tables (claims.csv rows and claim_curves records) returning a
matplotlib Figure. Each panel's axes (labels with units, scales) are declared in
``PANELS``; the curves say what to draw by their ``kind``:
measured (solid), predicted (dashed), bound (dotted), points (markers with error bars,
+- tolerance-sized), band (line with a shaded spread), vline / hline (reference lines).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .common import headline  # noqa: E402

sns.set_theme(context="notebook", style="whitegrid")

PASS_COLOUR, FAIL_COLOUR = "#2a9d4b", "#d1362f"


@dataclass(frozen=True)
class Panel:
    title: str
    xlabel: str
    ylabel: str
    xscale: str = "linear"
    yscale: str = "linear"
    zero: bool = False  # draw y = 0
    styles: tuple[tuple[str, str], ...] = (("measured", "measured"), ("predicted", "predicted"))


LAG = "lag k = T - t (steps back from the loss)"
PANELS: dict[str, dict[str, Panel]] = {
    "1_depth": {
        "*": Panel("{panel}", LAG, "ln||dL/dh_{T-k}|| - ln||dL/dh_T|| (nats)", zero=True),
    },
    "2_tied_untied": {
        "variance": Panel("spread across draws", "product length k", "Var ln||P_k v|| (nats^2)",
                          "log", "log"),
        "mean": Panel("typical growth (band: +-1 std across draws)", "product length k",
                      "ln||P_k v|| (nats)", zero=True),
        "spectrum": Panel("untied Lyapunov spectrum vs Newman", "index i",
                          "lambda_i (nats/step)",
                          styles=(("points", "QR estimate +- tolerance"),
                                  ("predicted", "Newman (1986), exact"))),
    },
    "3_orthogonal": {
        "singular_values": Panel("ln sigma_i(P_k), all i (band: min..max)", "product length k",
                                 "ln sigma_i (nats)", zero=True),
        "deviation": Panel("max_i |ln sigma_i - k ln s|", "product length k",
                           "deviation (nats)", yscale="log"),
    },
    "4_pascanu": {
        "bound": Panel("||dh_T/dh_t||_2 (band: range over batch x seeds) and the bound",
                       "lag T - t (steps)", "ln||dh_T/dh_t||_2 (nats)"),
        "necessity": Panel("top Lyapunov exponent vs lambda_1", "lambda_1 = ||W_hh||_2",
                           "lambda_max (nats/step)", xscale="log", zero=True),
    },
    "5_mean_field": {
        "rate": Panel("rate of ln||delta|| per step", "sigma_w", "rate (nats/step)", zero=True),
        "q": Panel("stationary pre-activation variance", "sigma_w", "q = mean_i a_i^2"),
        "finite_size": Panel("finite-size correction", "1/H", "rate - 0.5 ln chi_1 (nats/step)",
                             zero=True),
    },
    "6_float32": {
        "overflow": Panel("float32 BPTT vs the log-scale engine", LAG,
                          "ln||dL/dh_{T-k}|| (nats)",
                          styles=(("measured", "float32 BPTT (autograd)"),
                                  ("predicted", "ln||delta_T|| + k ln s"),
                                  ("bound", "log-scale engine, float32"),
                                  ("vline", "first inf/NaN"))),
        "clipping": Panel("clip_grad_norm_ on float32 gradients", "sequence length T (steps)",
                          "ln norm (nats)"),
    },
    "7_gating": {
        "exact": Panel("W_hh = 0: exact gate chains", LAG, "ln||ds_T/ds_{T-k}||_2 (nats)",
                       styles=(("measured", "LSTM, s = c (autograd)"),
                               ("points", "GRU, s = h (autograd)"),
                               ("predicted", "(T-t) ln sigmoid(bias)"))),
        "models": Panel("matched inits: top Lyapunov exponent", "weight scale s",
                        "lambda_max (nats/step)", zero=True),
        "forget_bias": Panel("LSTM: forget-gate bias", "forget-gate bias b_f",
                             "lambda_max (nats/step)", zero=True),
    },
    "8_precision": {
        "underflow": Panel("float16, vanishing: exactly 0 at the predicted lag", LAG,
                           "ln||dL/dh_{T-k}|| (nats; ln S taken off)",
                           styles=(("measured", "float16 BPTT (ends: exactly 0)"),
                                   ("predicted", "float64, same weights"),
                                   ("vline", "predicted lag k*"))),
        "overflow": Panel("float16, exploding: inf at the predicted lag", LAG,
                          "ln||dL/dh_{T-k}|| (nats; ln S taken off)",
                          styles=(("measured", "float16 BPTT (ends: inf)"),
                                  ("predicted", "float64, same weights"),
                                  ("vline", "predicted lag k*"))),
        "bfloat16": Panel("bfloat16 against float64 (same weights)", LAG,
                          "ln||dL/dh_{T-k}|| (nats)",
                          styles=(("measured", "bfloat16 BPTT"),
                                  ("predicted", "float64"))),
    },
}


def _panel_spec(claim: str, panel: str) -> Panel:
    specs = PANELS.get(claim, {})
    spec = specs.get(panel) or specs.get("*") or Panel(panel, "x", "y")
    return replace(spec, title=spec.title.format(panel=panel))


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    x = float(x)
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _draw_panel(ax: plt.Axes, spec: Panel, cur: pd.DataFrame) -> None:
    groups = list(dict.fromkeys(cur["group"]))
    palette = dict(zip(groups, sns.color_palette("tab10", max(len(groups), 1)), strict=False))
    labelled: set[str] = set()
    kinds_seen: set[str] = set()

    def label(g: str) -> str | None:
        if g in labelled:
            return None
        labelled.add(g)
        return g

    for (group, kind), df in cur.groupby(["group", "kind"], sort=False):
        colour = palette[group]
        x, y, e = df["x"].to_numpy(), df["y"].to_numpy(), df["y_err"].to_numpy()
        kinds_seen.add(kind)
        if kind == "measured":
            ax.plot(x, y, "-", color=colour, lw=1.6, label=label(group))
        elif kind == "predicted":
            ax.plot(x, y, "--", color=colour, lw=1.4, label=label(group))
        elif kind == "bound":
            ax.plot(x, y, ":", color=colour, lw=1.8, label=label(group))
        elif kind == "points":
            yerr = np.where(np.isfinite(e), e, 0.0)
            ax.errorbar(x, y, yerr=yerr, fmt="o", ms=4, color=colour, capsize=2, lw=1,
                        label=label(group))
        elif kind == "band":
            ax.plot(x, y, "-", color=colour, lw=1.4, label=label(group))
            ax.fill_between(x, y - e, y + e, color=colour, alpha=0.2, lw=0)
        elif kind == "vline":
            for xv in x:
                ax.axvline(xv, color=colour, ls="--", lw=1.2, label=label(group))
        elif kind == "hline":
            for yv in y:
                ax.axhline(yv, color=colour, ls=":", lw=1.4, label=label(group))
    if spec.zero:
        ax.axhline(0.0, color="0.4", lw=0.8)
    ax.set_title(spec.title, fontsize=10)
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel(spec.ylabel)
    if spec.xscale != "linear":
        ax.set_xscale(spec.xscale)
    if spec.yscale != "linear":
        ax.set_yscale(spec.yscale)
    for axis, scale, lim in ((ax.xaxis, spec.xscale, ax.get_xlim()),
                             (ax.yaxis, spec.yscale, ax.get_ylim())):
        if scale == "log":
            _log_ticks(axis, lim)
    handles, labels = ax.get_legend_handles_labels()
    line_style = {"measured": "-", "predicted": "--", "bound": ":", "vline": "--"}
    shown = [(k, text) for k, text in spec.styles if k in kinds_seen]
    if len(shown) >= 2:
        handles += [Line2D([], [], color="0.3", ls="none", marker="o", ms=4) if k == "points"
                    else Line2D([], [], color="0.3", ls=line_style.get(k, "-"))
                    for k, _ in shown]
        labels += [text for _, text in shown]
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="best", framealpha=0.85)


#: a log axis spanning fewer decades than this gets ticks at 1, 2 and 5 times the powers
#: of ten (with powers alone, 0.44..6.8 shows the single tick 1)
SHORT_LOG_DECADES = 2.0


def _log_ticks(axis, lim: tuple[float, float]) -> None:
    """Readable ticks on a log axis: 1-2-5 per decade when it spans under two decades."""
    lo, hi = sorted(lim)
    if lo > 0 and math.log10(hi / lo) < SHORT_LOG_DECADES:
        axis.set_major_locator(ticker.LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _row_lines(rows: pd.DataFrame, width: int = 150) -> list[str]:
    lines = []
    for r in rows.itertuples():
        mark = "PASS" if r.passed else "FAIL"
        text = (f"{mark} {r.claim_id}: measured {_fmt(r.measured)}, predicted "
                f"{_fmt(r.predicted)}, tolerance {_fmt(r.tolerance)} ({r.comparison})"
                f"{' ' + str(r.unit) if isinstance(r.unit, str) and r.unit else ''}")
        lines.append(textwrap.shorten(text, width))
    return lines


def claim_figure(claim: str, title: str, rows: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure:
    """The figure of one claim: its panels, and its rows with verdicts underneath."""
    present = list(dict.fromkeys(curves["panel"])) if len(curves) else []
    declared = [p for p in PANELS.get(claim, {}) if p in present]
    panels = declared + [p for p in present if p not in declared]
    if not panels:
        fig, ax = plt.subplots(figsize=(8, 2 + 0.2 * len(rows)))
        ax.set_axis_off()
        ax.text(0.0, 1.0, "\n".join(["no curves (the experiment failed?)"] + _row_lines(rows)),
                va="top", family="monospace", fontsize=8)
        fig.suptitle(f"Claim {claim}: {title}")
        return fig
    ncol = min(len(panels), 3)
    nrow = math.ceil(len(panels) / ncol)
    lines = _row_lines(rows)
    text_h = 0.17 * len(lines) + 0.3
    fig = plt.figure(figsize=(5.0 * ncol, 3.8 * nrow + text_h))
    grid = fig.add_gridspec(nrow + 1, ncol, height_ratios=[3.8] * nrow + [text_h])
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(grid[i // ncol, i % ncol])
        _draw_panel(ax, _panel_spec(claim, panel), curves[curves["panel"] == panel])
    tax = fig.add_subplot(grid[nrow, :])
    tax.set_axis_off()
    for j, line in enumerate(lines):
        tax.text(0.0, 1.0 - j / max(len(lines), 1), line, va="top", family="monospace",
                 fontsize=7.5, color=PASS_COLOUR if line.startswith("PASS") else FAIL_COLOUR,
                 transform=tax.transAxes)
    n_pass = int(rows["passed"].sum())
    fig.suptitle(f"Claim {claim}: {title}  ({n_pass} of {len(rows)} checks pass)", fontsize=12)
    fig.tight_layout()
    return fig


#: what the overview plots (``common.score``), by comparison; m measured, p predicted
SCORE_LABEL = ("score (passes when <= 1): |m-p|/tol for equality rows, max(m-p, 0)/tol or "
               "max(p-m, 0)/tol for bounds and counts,\n"
               "distance from the interval's centre in half-widths for p <= m <= p+tol rows "
               "(> at the edge: beyond 10 or a failed count; x: not measurable)")


def overview_figure(table: pd.DataFrame) -> plt.Figure:
    """Scorecard: every row's score (``common.score``; the row passes when it is <= 1)."""
    if len(table) == 0:
        return _empty_figure("no claims were run")
    n = len(table)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.26 * n))
    cap = 10.0
    ys = np.arange(n)[::-1]
    for y, r in zip(ys, table.itertuples(), strict=True):
        s = float(r.score) if r.score is not None else math.nan
        colour = PASS_COLOUR if r.passed else FAIL_COLOUR
        if math.isnan(s):
            ax.plot(cap, y, "x", color=colour, ms=7)
        elif s > cap:
            ax.plot(cap, y, ">", color=colour, ms=7)
        else:
            ax.plot(s, y, "o", color=colour, ms=6)
    ax.axvspan(0, 1, color=PASS_COLOUR, alpha=0.08, lw=0)
    ax.axvline(1.0, color="0.3", ls="--", lw=1)
    ax.set_xscale("symlog", linthresh=1.0, linscale=1.5)
    ax.set_xlim(-0.05, cap * 1.3)
    labels = [textwrap.shorten(f"{r.claim_id}  {r.description}", 70, placeholder=" ...")
              for r in table.itertuples()]
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7.5, family="monospace")
    for tick, r in zip(ax.get_yticklabels(), table.itertuples(), strict=True):
        tick.set_color(PASS_COLOUR if r.passed else FAIL_COLOUR)
    # separators and names of the claims
    claims = table["claim"].tolist()
    starts = [0] + [i for i in range(1, n) if claims[i] != claims[i - 1]]
    for j, i in enumerate(starts):
        if i:
            ax.axhline(ys[i] + 0.5, color="0.75", lw=0.8)
        end = starts[j + 1] - 1 if j + 1 < len(starts) else n - 1
        ax.text(1.01, (ys[i] + ys[end]) / 2, claims[i], transform=ax.get_yaxis_transform(),
                va="center", fontsize=8, color="0.35")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(SCORE_LABEL)
    ax.set_title(f"bpttbench claims: {headline(table)}", fontsize=11)
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


def _empty_figure(message: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.set_axis_off()
    return fig
