"""Figures of the long-range stage: pure functions of its tables returning matplotlib Figures.

- ``long_range_solved``: solved rate against sequence length, per model and clipping;
- ``long_range_curves``: evaluation loss / baseline against training step (log y);
- ``long_range_grad_norm``: gradient norm before clipping against training step (log y);
- ``long_range_vs_horizon``: the largest solved length against the gradient horizon at init
  from the gradient-flow sweep (summary.csv), and the per-step growth rate of ln||dL/dh||
  of the trained networks against the rate a length T needs.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from .. import contract
from ..figures import MODEL_ORDER, empty_figure
from ..gradient_flow.gradients import HORIZON_RATIO
from .spec import clip_label

LOG_HORIZON = -math.log(HORIZON_RATIO)  # ln 1e6 = 13.8: the drop that defines the horizon
#: long_range.solved_fraction's default: the threshold of tables from before it was recorded
DEFAULT_SOLVED_FRACTION = 0.1


def _solved_fractions(df: pd.DataFrame) -> tuple[list[float], bool]:
    """(the solved thresholds of the table's runs as fractions of the baseline, recorded?).

    A table written before the column existed gives the default, marked not recorded."""
    if "solved_fraction" not in df or df["solved_fraction"].isna().all():
        return [DEFAULT_SOLVED_FRACTION], False
    return sorted(float(v) for v in df["solved_fraction"].dropna().unique()), True


def _solved_title(df: pd.DataFrame) -> str:
    """'final loss < 10% of the baseline' from the table's solved_fraction."""
    fractions, recorded = _solved_fractions(df)
    text = f"final loss < {' or '.join(f'{100 * f:g}%' for f in fractions)} of the baseline"
    return text if recorded else f"{text}, the default: not recorded in this table"


def _labels(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``label`` (model, with its init when it differs from the usual one) and ``clipping``."""
    df = df.copy()
    inits = df["init"].value_counts()
    usual = inits.index[0] if len(inits) else None
    df["label"] = [m if i == usual else f"{m} ({i})" for m, i in zip(df["model"], df["init"],
                                                                       strict=True)]
    if "precision" in df and df["precision"].nunique() > 1:  # a precision sweep: one line each
        df["label"] = [f"{lab} [{p}]" for lab, p in zip(df["label"], df["precision"], strict=True)]
    clip = df["clip"].astype("Float64")
    df["clipping"] = ["none" if pd.isna(c) else f"norm ≤ {clip_label(float(c))}" for c in clip]
    return df


def _label_order(df: pd.DataFrame) -> list[str]:
    rank = {m: i for i, m in enumerate(MODEL_ORDER)}
    pairs = df[["label", "model"]].drop_duplicates()
    return [lab for lab, _ in sorted(pairs.itertuples(index=False),
                                     key=lambda p: (rank.get(p[1], 99), p[0]))]


def _clip_order(df: pd.DataFrame) -> list[str]:
    return sorted(df["clipping"].unique(), key=lambda c: (c != "none", c))


def _offsets(n: int, values: list[float], width: float = 0.025) -> np.ndarray:
    """n multiplicative offsets spreading markers over ``width`` of a log axis spanning values."""
    span = math.log(max(values) / min(values)) if len(values) > 1 and min(values) > 0 else 1.0
    half = width * max(span, 0.5) / 2
    return np.exp(np.linspace(-half, half, n)) if n > 1 else np.ones(1)


def _plain_log_axis(axis: matplotlib.axis.Axis) -> None:
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _log_x_seq_len(ax: plt.Axes, seq_lens: list[int]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(seq_lens)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%d"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def long_range_solved(summary: pd.DataFrame) -> plt.Figure:
    """Fraction of seeds solved against T; a panel per task and clipping, a line per model."""
    if summary.empty:
        return empty_figure("no long-range runs in this result set")
    df = _labels(summary)
    tasks, clips, labels = sorted(df["task"].unique()), _clip_order(df), _label_order(df)
    fig, axes = plt.subplots(len(tasks), len(clips), figsize=(4.6 * len(clips), 3.6 * len(tasks)),
                             squeeze=False, sharey=True)
    palette = dict(zip(labels, sns.color_palette("deep", len(labels)), strict=True))
    markers = dict(zip(labels, "osD^vP*X", strict=False))
    seq_lens = sorted(df["seq_len"].unique())
    # Small offsets (sideways and +-0.02 up/down) so that coinciding lines stay visible.
    offsets = _offsets(len(labels), seq_lens, width=0.04)
    lifts = np.linspace(-0.02, 0.02, len(labels)) if len(labels) > 1 else np.zeros(1)
    for r, task in enumerate(tasks):
        for c, clip in enumerate(clips):
            ax = axes[r, c]
            sel = df[(df["task"] == task) & (df["clipping"] == clip)]
            for lab, off, lift in zip(labels, offsets, lifts, strict=True):
                s = sel[sel["label"] == lab].sort_values("seq_len")
                if s.empty:
                    continue
                ax.plot(s["seq_len"] * off, s["solved_rate"] + lift, marker=markers.get(lab, "o"),
                        color=palette[lab], label=lab, lw=1.6, ms=6)
            _log_x_seq_len(ax, seq_lens)
            ax.set_ylim(-0.06, 1.06)
            ax.set_title(f"{task}, clipping: {clip}")
            ax.set_xlabel("sequence length T (steps, log scale)")
            if c == 0:
                n = int(sel["n_seeds"].max()) if len(sel) else 0
                ax.set_ylabel(f"solved rate (fraction of {n} seed{'s' * (n != 1)})")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, title="model", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"Solved ({_solved_title(summary)}) against sequence length")
    fig.tight_layout()
    return fig


def _trace_grid(trace: pd.DataFrame, y: str, ylabel: str, title: str,
                refs: list[tuple[float, str]]) -> plt.Figure:
    df = _labels(trace)
    df = df[np.isfinite(df[y].astype(float)) & (df[y].astype(float) > 0)]
    if df.empty:
        return empty_figure(f"no finite positive {y} to plot")
    order = _label_order(df)  # legend title "model": the label (model, and init if unusual)
    df = df.drop(columns="model").rename(columns={"label": "model"})
    g = sns.relplot(
        data=df, x="step", y=y, hue="model", hue_order=order, style="clipping",
        style_order=_clip_order(df), row="task", col="seq_len", kind="line",
        estimator="median", errorbar=("pi", 100), height=3.0, aspect=1.25,
        facet_kws={"sharey": "row", "margin_titles": True},
    )
    for ax in g.axes.flat:
        ax.set_yscale("log")
        for value, name in refs:
            ax.axhline(value, color="grey", ls=":", lw=1)
            ax.annotate(name, (0, value), xycoords=("axes fraction", "data"), fontsize=7,
                        color="grey", xytext=(2, 2), textcoords="offset points")
    g.set_axis_labels("training step (updates)", ylabel)
    g.set_titles(row_template="{row_name}", col_template="T = {col_name}")
    g.figure.suptitle(f"{title} ({_seed_summary(trace)})", y=1.02)
    return g.figure


def _seed_summary(trace: pd.DataFrame) -> str:
    """What a line and its band are: the median and range over seeds, or one seed's run."""
    keys = [c for c in ("task", "model", "init", "hidden", "seq_len", "clip", "precision")
            if c in trace]
    most = int(trace.groupby(keys, dropna=False)["seed"].nunique().max()) if len(trace) else 0
    if most <= 1:
        return "one seed per configuration: no band"
    return f"median over up to {most} seeds; band: their range"


def long_range_curves(trace: pd.DataFrame) -> plt.Figure:
    """Evaluation loss over the baseline loss against step, a panel per task and length."""
    if trace.empty:
        return empty_figure("no long-range runs in this result set")
    fractions, recorded = _solved_fractions(trace)
    solved = [(f, "solved" if len(fractions) == 1 and recorded else f"solved ({f:g}"
               + ("" if recorded else ", default") + ")") for f in fractions]
    return _trace_grid(trace, "eval_loss_ratio", "eval loss / baseline (log)",
                       "Learning curves",
                       [(1.0, "baseline"), *solved])


def long_range_grad_norm(trace: pd.DataFrame) -> plt.Figure:
    """Largest gradient norm (before clipping) per evaluation window against step."""
    if trace.empty:
        return empty_figure("no long-range runs in this result set")
    clips = trace["clip"].astype("Float64").dropna().unique()
    refs = [(float(c), f"clip {clip_label(float(c))}") for c in clips]
    return _trace_grid(trace, "grad_norm_max", "max ‖∇L‖₂ before clip (log)",
                       "Gradient norm during training (largest in each evaluation window)", refs)


def _horizons(gf_summary: pd.DataFrame, init: str, weight_scale: float, hidden: int
              ) -> tuple[pd.DataFrame, str]:
    """Gradient horizon per model from summary.csv for this init and weight scale.

    Median over seeds at the longest sequence length, a seed that never fell 1e6-fold within
    T counting as longer than T (``gradient_flow.figures.median_horizon``); where that median
    is censored (at least half the seeds never fell) the horizon is reported as T with
    ``censored`` set. Prefers rows of the same hidden size.
    """
    from ..gradient_flow.figures import median_horizon

    sel = gf_summary[(gf_summary["init"] == init)
                     & np.isclose(gf_summary["weight_scale"].astype(float), weight_scale)]
    if sel.empty:
        return pd.DataFrame(columns=["model", "horizon", "censored"]), ""
    same_h = sel[sel["hidden"] == hidden]
    note = f"H={hidden}" if len(same_h) else f"H={sorted(sel['hidden'].unique())[0]} (not {hidden})"
    sel = same_h if len(same_h) else sel[sel["hidden"] == sorted(sel["hidden"].unique())[0]]
    rows = []
    for model, g in sel.groupby("model"):
        t = int(g["seq_len"].max())
        at_t = g[g["seq_len"] == t]
        med, used = median_horizon(at_t["horizon"], at_t["status"])
        if used == 0:  # every seed went non-finite: no horizon to show
            continue
        censored = bool(np.isinf(med))
        rows.append({"model": model, "horizon": float(t if censored else med),
                     "censored": censored, "gf_seq_len": t})
    return pd.DataFrame(rows), note


def long_range_vs_horizon(summary: pd.DataFrame, runs: pd.DataFrame,
                          gf_summary: pd.DataFrame) -> plt.Figure:
    """(a) largest solved T against the gradient horizon at init; (b) trained growth rates."""
    from .tables import largest_solved

    if summary.empty or runs.empty:
        return empty_figure("no long-range runs in this result set")
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(13, 5))
    best = _labels(largest_solved(summary))
    labels = _label_order(best)
    palette = dict(zip(labels, sns.color_palette("deep", len(labels)), strict=True))
    seq_lens = sorted(runs["seq_len"].unique())
    floor = seq_lens[0] / 2  # where "nothing solved" is drawn
    spec = runs.iloc[0]
    # One point per (task, model, clip); markers: shape = clipping, fill = task; small
    # offsets keep coinciding points visible.
    clips, tasks = _clip_order(best), sorted(best["task"].unique())
    variants = [(t, c) for t in tasks for c in clips]
    points, notes, missing = [], set(), set()
    for init, g in best.groupby("init"):
        hz, note = _horizons(gf_summary, init, float(spec["weight_scale"]), int(spec["hidden"]))
        if note:
            notes.add(note)
        for row in g.itertuples(index=False):
            m = hz[hz["model"] == row.model]
            if m.empty:
                missing.add(row.label)
                continue
            y = floor if pd.isna(row.largest_solved_seq_len) else float(row.largest_solved_seq_len)
            points.append({"label": row.label, "x": float(m["horizon"].iloc[0]), "y": y,
                           "censored": bool(m["censored"].iloc[0]),
                           "variant": variants.index((row.task, row.clipping)),
                           "task": row.task, "clipping": row.clipping})
    shapes = dict(zip(clips, "osD^v", strict=False))
    if points:
        pts = pd.DataFrame(points)
        lo = min(pts["x"].min(), floor) / 1.6
        hi = max(pts["x"].max(), max(seq_lens)) * 1.6
        yoff = _offsets(len(variants), [floor, max(seq_lens)], width=0.05)
        xoff = _offsets(len(labels), [lo, hi], width=0.03)
        for p in pts.itertuples(index=False):
            color = palette[p.label]
            x, y = p.x * xoff[labels.index(p.label)], p.y * yoff[p.variant]
            ax_a.scatter([x], [y], s=55, marker=shapes[p.clipping], color=color, zorder=3,
                         facecolors=color if p.task == tasks[0] else "none")
            if p.censored:
                ax_a.annotate("", xy=(x * 1.25, y), xytext=(x, y),
                              arrowprops={"arrowstyle": "->", "color": color})
        ax_a.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax_a.axhline(floor, color="grey", lw=0.8, ls=":")
        ax_a.set_xscale("log")
        ax_a.set_yscale("log")
        _plain_log_axis(ax_a.xaxis)
        ax_a.set_yticks([floor, *seq_lens])
        ax_a.set_yticklabels(["none", *map(str, seq_lens)])
        ax_a.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax_a.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax_a.set_xlim(lo, hi)
        ax_a.set_ylim(lo, hi)  # same range on both axes: the diagonal is at 45 degrees
    else:
        ax_a.text(0.5, 0.5, "no gradient-flow horizon for this init and weight scale\n"
                  "(summary.csv has no matching rows)", ha="center", va="center",
                  transform=ax_a.transAxes, fontsize=9)
    if missing:
        ax_a.text(0.98, 0.02, "not in summary.csv: " + ", ".join(sorted(missing)),
                  transform=ax_a.transAxes, ha="right", va="bottom", fontsize=7, color="grey")
    ax_a.set_xlabel("gradient horizon at init (steps, log scale; summary.csv, "
                    f"{', '.join(sorted(notes)) or 'no match'})")
    ax_a.set_ylabel("largest T solved by ≥ half the seeds")
    ax_a.set_title("(a) Solved length against the gradient horizon at init")

    handles = [Line2D([], [], color="k", ls="--", label="solved length = horizon")]
    handles += [Line2D([], [], color=palette[lab], marker="o", ls="", label=lab)
                for lab in labels if lab not in missing]
    handles += [Line2D([], [], color="k", marker="o", ls="", mfc="k" if i == 0 else "none",
                       label=f"{t} ({'filled' if i == 0 else 'hollow'})")
                for i, t in enumerate(tasks) if len(tasks) > 1]
    handles += [Line2D([], [], color="k", marker=shapes[c], ls="", mfc="none",
                       label=f"clipping: {c}") for c in clips]
    ax_a.legend(handles=handles, fontsize=7, loc="upper left")

    # (b) growth rate of ln||dL/dh|| of every trained network; a run can only carry a
    # gradient of at least 1e-6 of its size over T steps if rate > -ln(1e6)/T.
    df = _labels(runs)
    df = df[np.isfinite(df["growth_rate_final"].astype(float))]
    t_grid = np.geomspace(min(seq_lens) * 0.8, max(seq_lens) * 1.25, 100)
    ax_b.plot(t_grid, -LOG_HORIZON / t_grid, "k--", lw=1)
    offsets = dict(zip(labels, _offsets(len(labels), seq_lens), strict=True))
    task_marker = dict(zip(tasks, "o^", strict=False))
    for lab in labels:
        for (task, solved), p in df[df["label"] == lab].groupby(
                ["task", df["solved"].fillna(False).astype(bool)]):
            ax_b.scatter(p["seq_len"] * offsets[lab], p["growth_rate_final"], s=36,
                         marker=task_marker.get(task, "o"), color=palette[lab],
                         facecolors=palette[lab] if solved else "none", zorder=3)
    handles = [Line2D([], [], color="k", ls="--", label="−ln(10⁶)/T: horizon = T")]
    handles += [Line2D([], [], color=palette[lab], marker="o", ls="", label=lab)
                for lab in labels]
    if len(tasks) > 1:
        handles += [Line2D([], [], color="k", marker=task_marker[t], ls="", mfc="none", label=t)
                    for t in tasks]
    _log_x_seq_len(ax_b, seq_lens)
    ax_b.axhline(0, color="grey", lw=0.8)
    ax_b.set_xlabel("sequence length T (steps, log scale)")
    ax_b.set_ylabel("growth rate of ln‖∂L/∂h_{T−k}‖ after training\n(natural log per step)")
    ax_b.set_title("(b) Trained networks: filled = solved, hollow = not")
    ax_b.legend(handles=handles, fontsize=7, loc="lower right")
    fig.suptitle("Long-range learning and the gradient horizon")
    fig.tight_layout()
    return fig


# name -> (tables it reads, function), as bpttbench.contract.long_range declares them; the
# figure file is figures/<name>.png
LONG_RANGE_FIGURES = {
    f.name: (f.inputs, globals()[f.plot.rsplit(":", 1)[1]]) for f in contract.figures("long_range")
}
