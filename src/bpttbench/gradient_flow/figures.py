"""Seaborn figures of the gradient-flow sweep, meant to be read by people.

Every figure is a pure function of tidy tables returning a matplotlib Figure; ``save``
writes it atomically. Logs are natural logs (a slope of -0.69 per step halves ||delta||
at each step back).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from .. import contract
from ..figures import MODEL_ORDER, empty_figure, save

__all__ = ["GRADIENT_FLOW_FIGURES", "save"]

# ln of the smallest positive (subnormal) and the largest finite value of each dtype a
# gradient can have (summary.grad_dtype): ln||delta|| cannot go below the first without
# underflowing to 0, nor above the second without overflowing to inf. numpy has no bfloat16:
# 8 exponent bits like float32, 7 stored mantissa bits (tests check these against torch.finfo).
# The same values as bpttbench.precision.limits, written without torch so that drawing the
# figures never imports it.
LOG_DTYPE_LIMITS: dict[str, tuple[float, float]] = {
    **{name: (math.log(float(np.finfo(name).smallest_subnormal)),
              math.log(float(np.finfo(name).max)))
       for name in ("float16", "float32", "float64")},
    "bfloat16": (-133 * math.log(2), math.log(2 - 2**-7) + 127 * math.log(2)),
}


def _models(df: pd.DataFrame) -> list[str]:
    present = set(df["model"])
    return [m for m in MODEL_ORDER if m in present]


def _typical_slice(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Rows of the first init and hidden size, and the longest sequence: one figure's worth."""
    init, hidden = sorted(df["init"].unique())[0], sorted(df["hidden"].unique())[0]
    seq_len = df["seq_len"].max()
    sel = df[(df["init"] == init) & (df["hidden"] == hidden) & (df["seq_len"] == seq_len)]
    return sel, f"init={init}, H={hidden}, T={seq_len}"


def _seed_stats(cell: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max of ln||delta|| over the seeds of one cell at every lag, NaN at a lag
    where any seed is non-finite: a mean over the seeds that happen to be left is not the
    mean over seeds (one seed dropping out would move the line)."""
    wide = cell.pivot_table(index="lag", columns="seed", values="log_grad_norm",
                            aggfunc="first", dropna=False).sort_index()
    finite = np.isfinite(wide.to_numpy(dtype=float)).all(axis=1)
    stats = pd.DataFrame({"mean": wide.mean(axis=1), "lo": wide.min(axis=1),
                          "hi": wide.max(axis=1)}, index=wide.index)
    stats[~finite] = np.nan
    return stats


def _nonfinite_note(rows: pd.DataFrame) -> tuple[float, str] | None:
    """(first non-finite lag over the seeds, 'status from lag k') of one cell's summary rows,
    or None when every seed's gradients stayed finite."""
    bad = rows[rows["status"].astype(str) != "ok"]
    if bad.empty:
        return None
    lag = pd.to_numeric(bad["first_nonfinite_lag"], errors="coerce").min()
    status = "/".join(sorted(bad["status"].astype(str).unique()))
    steps = pd.to_numeric(bad.get("first_nonfinite_step", pd.Series(dtype=float)),
                          errors="coerce").dropna()
    where = f"from lag {lag:.0f}" if np.isfinite(lag) else "(lag unknown)"
    fwd = f", forward overflow at step {steps.min():.0f}" if len(steps) else ""
    return float(lag), f"{status} {where}{fwd} ({len(bad)}/{len(rows)} seeds)"


def gradient_norm_by_lag(gf: pd.DataFrame, summary: pd.DataFrame) -> plt.Figure:
    """ln||dL/dh_{T-k}|| against lag k, one panel per model, a line per weight scale: the mean
    over seeds, drawn only where every seed is finite; a triangle where a cell went
    non-finite (summary.first_nonfinite_lag), listed in the panel; the dtype's limits."""
    sel, where = _typical_slice(gf)
    if sel.empty:
        return empty_figure("no gradient norms to plot")
    t = sel["seq_len"].iloc[0]
    srows = summary[(summary["init"] == sel["init"].iloc[0])
                    & (summary["hidden"] == sel["hidden"].iloc[0]) & (summary["seq_len"] == t)]
    models, scales = _models(sel), sorted(sel["weight_scale"].unique())
    colors = dict(zip(scales, plt.cm.viridis(np.linspace(0, 0.92, len(scales))), strict=True))
    ncol = min(3, len(models))
    nrow = math.ceil(len(models) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.6 * nrow), squeeze=False)
    dtypes = sorted(srows["grad_dtype"].dropna().astype(str).unique()) if "grad_dtype" in srows \
        else []
    n_seeds = sel.groupby(["model", "weight_scale"])["seed"].nunique()
    notes = []
    for ax, model in zip(axes.flat, models, strict=False):
        for s in scales:
            cell = sel[(sel["model"] == model) & (sel["weight_scale"] == s)]
            if cell.empty:
                continue
            st = _seed_stats(cell)
            ax.plot(st.index, st["mean"], color=colors[s], lw=1.6)
            ax.fill_between(st.index, st["lo"], st["hi"], color=colors[s], alpha=0.2, lw=0)
            bad = _nonfinite_note(srows[(srows["model"] == model)
                                        & np.isclose(srows["weight_scale"], s)])
            if bad is not None:
                notes.append(f"{model}, s={s:g}: {bad[1]}")
                if np.isfinite(bad[0]):  # a down triangle at the top edge, above that lag
                    ax.plot([bad[0]], [0.97], marker="v", ms=8, color=colors[s], ls="",
                            transform=ax.get_xaxis_transform(), clip_on=False)
        for d in dtypes:
            lo, hi = LOG_DTYPE_LIMITS.get(d, (np.nan, np.nan))
            ymin, ymax = ax.get_ylim()
            for v, what in ((lo, "underflow"), (hi, "overflow")):
                # drawn where it is within reach of the data (30% beyond the span)
                if np.isfinite(v) and ymin - 0.3 * (ymax - ymin) <= v <= ymax + 0.3 * (ymax - ymin):
                    ax.axhline(v, color="grey", ls=":", lw=1)
                    ax.annotate(f"{d} {what} (ln {v:.1f})", (0, v), xycoords=("axes fraction",
                                "data"), fontsize=7, color="grey", xytext=(2, 2 if v < 0 else -8),
                                textcoords="offset points")
        ax.set_title(model)
        ax.set_xlabel("lag k = T − t (steps back from the loss)")
        ax.set_ylabel("ln ‖∂L/∂h_{T−k}‖₂ (natural log)")
    for ax in list(axes.flat)[len(models):]:
        ax.set_axis_off()
    handles = [Line2D([], [], color=colors[s], lw=1.6, label=f"{s:g}") for s in scales]
    handles.append(Line2D([], [], color="k", marker="v", ls="", label="went non-finite"))
    note = "inf or NaN gradients (summary.csv):\n" + ("\n".join(notes) or "none")
    spare = list(axes.flat)[len(models):]
    if spare:  # legend and notes in the empty panel, off every line
        spare[0].legend(handles=handles, title="weight scale s", loc="upper left", ncol=2)
        spare[0].text(0.0, 0.42, note, fontsize=7.5, va="top", ha="left", color="#a00000",
                      transform=spare[0].transAxes)
    else:
        fig.legend(handles=handles, title="weight scale s", loc="lower left",
                   bbox_to_anchor=(1.0, 0.45))
        fig.text(1.0, 0.42, note, fontsize=7.5, va="top", ha="left", color="#a00000")
    lo_n, hi_n = int(n_seeds.min()), int(n_seeds.max())
    seeds = f"{lo_n}" if lo_n == hi_n else f"{lo_n}-{hi_n}"
    band = "; band: range over seeds" if hi_n > 1 else ""
    fig.suptitle(f"Gradient norm against lag ({where}; mean over {seeds} seed"
                 f"{'s' * (hi_n != 1)}{band}; drawn where every seed is finite)")
    fig.tight_layout()
    return fig


def growth_rate_by_scale(summary: pd.DataFrame) -> plt.Figure:
    """Fitted growth rate of ln||delta|| per step against the weight scale, one line per model,
    a panel per sequence length T (a rate is fitted over the finite lags of one length)."""
    sel = summary[np.isfinite(summary["growth_rate"].astype(float))]
    if sel.empty:
        return empty_figure("no finite growth rates to plot")
    seq_lens = sorted(summary["seq_len"].unique())
    models = _models(sel)
    fig, axes = plt.subplots(1, len(seq_lens), figsize=(5.2 * len(seq_lens), 4.5), sharey=True,
                             squeeze=False)
    scales = np.geomspace(sel["weight_scale"].min(), sel["weight_scale"].max(), 50)
    for ax, t in zip(axes.flat, seq_lens, strict=True):
        at_t = sel[sel["seq_len"] == t]
        if at_t.empty:
            ax.text(0.5, 0.5, f"no finite growth rate at T = {t}", ha="center", va="center",
                    transform=ax.transAxes)
        else:
            sns.lineplot(data=at_t, x="weight_scale", y="growth_rate", hue="model",
                         hue_order=models, style="init", markers=True, errorbar=("pi", 100),
                         ax=ax, legend=ax is axes.flat[0])
        ax.plot(scales, np.log(scales), "k--", lw=1, label="ln s (linear RNN, orthogonal W)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(sorted(sel["weight_scale"].unique()))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("recurrent weight scale s (log scale)")
        ax.set_ylabel("growth rate of ln‖δ‖ (natural log per step)")
        # cells with no finite rate at this T (inf or NaN from lag 0): said, not silently absent
        absent = summary[(summary["seq_len"] == t)
                         & ~np.isfinite(summary["growth_rate"].astype(float))]
        if len(absent):
            gone = absent.groupby("model")["weight_scale"].apply(
                lambda v: ", ".join(f"{x:g}" for x in sorted(v.unique())))
            ax.text(0.02, 0.98, "no finite rate (gradients non-finite):\n" + "\n".join(
                f"{m}: s = {v}" for m, v in gone.items()), transform=ax.transAxes, fontsize=7,
                va="top", ha="left", color="#a00000")
        ax.set_title(f"T = {t}")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if axes.flat[0].get_legend() is not None:
        axes.flat[0].get_legend().remove()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    n_seeds = summary.groupby(["model", "init", "seq_len", "weight_scale"])["seed"].nunique()
    band = "; band: range over seeds" if n_seeds.max() > 1 else ""
    fig.suptitle("Vanishing (< 0) or exploding (> 0) gradients, per step back in time "
                 f"(mean over seeds{band})")
    fig.tight_layout()
    return fig


def median_horizon(horizon: pd.Series, status: pd.Series) -> tuple[float, int]:
    """Median over seeds of the gradient horizon, right-censored values included.

    An empty horizon with status ok means the gradient never fell 1e6-fold within T: its
    horizon is longer than T, so it counts as +inf (a median that skipped it would let one
    finite seed set the cell). An empty horizon of a seed whose gradients went inf or NaN is
    unknown and left out. Returns (median, seeds used): inf when at least half the seeds used
    never fell (the median is censored), NaN when no seed could be used.
    """
    h = pd.to_numeric(horizon, errors="coerce").astype(float).to_numpy()
    ok = status.astype(str).to_numpy() == "ok"
    values = np.where(np.isnan(h) & ok, np.inf, h)
    values = values[~np.isnan(values)]
    return (float(np.median(values)) if values.size else np.nan), int(values.size)


def horizon_heatmap(summary: pd.DataFrame) -> plt.Figure:
    """Gradient horizon (lag where ||delta|| fell 1e6-fold) over seq_len x weight scale per model:
    the censored median over seeds (``median_horizon``); 'never' where that median is
    censored, the status where every seed went non-finite."""
    if summary.empty:
        return empty_figure("no gradient-flow cells in this result set")
    models = _models(summary)
    ncol = min(3, len(models))
    nrow = math.ceil(len(models) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    seq_lens, scales = sorted(summary["seq_len"].unique()), sorted(summary["weight_scale"].unique())
    for ax, model in zip(axes.flat, models, strict=False):
        m = summary[summary["model"] == model]
        grid = pd.DataFrame(np.nan, index=seq_lens, columns=scales)
        labels = pd.DataFrame("", index=seq_lens, columns=scales)
        for (t, s), g in m.groupby(["seq_len", "weight_scale"]):
            med, used = median_horizon(g["horizon"], g["status"])
            part = "*" if 0 < used < len(g) else ""  # some seeds went non-finite: left out
            if used == 0:
                labels.loc[t, s] = "\n".join(sorted(g["status"].astype(str).unique()))
            elif np.isinf(med):
                labels.loc[t, s] = "never" + part
            else:
                grid.loc[t, s] = med
                labels.loc[t, s] = f"{med:g}{part}"
        grid.index.name, grid.columns.name = "seq_len", "weight_scale"
        mask = ~np.isfinite(grid.to_numpy(dtype=float))
        if (~mask).any():
            sns.heatmap(grid, annot=labels, fmt="", cmap="magma", mask=mask,
                        cbar_kws={"label": "horizon (steps)"}, ax=ax, linewidths=0.5,
                        annot_kws={"fontsize": 8})
        else:  # nothing finite to colour: the axes and labels by hand
            ax.set_xlim(0, len(scales))
            ax.set_ylim(len(seq_lens), 0)
            ax.set_xticks(np.arange(len(scales)) + 0.5, [f"{s:g}" for s in scales])
            ax.set_yticks(np.arange(len(seq_lens)) + 0.5, [str(t) for t in seq_lens])
        ax.grid(False)
        # seaborn writes no annotation on masked cells: draw them, 'never' light, the rest dark
        for i, j in zip(*np.nonzero(mask), strict=True):
            text = labels.iat[i, j]
            if not text:
                continue
            never = text.startswith("never")
            ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor="#e4e4e4" if never else "#9a9a9a",
                                       edgecolor="white", lw=0.5))
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8 if never else 7,
                    color="#333333" if never else "white")
        ax.set_title(model)
        ax.set_xlabel("weight scale s")
        ax.set_ylabel("sequence length T (steps)")
    for ax in list(axes.flat)[len(models):]:
        ax.set_axis_off()
    fig.suptitle("Gradient horizon: first lag where ‖δ_{T−k}‖/‖δ_T‖ < 10⁻⁶, median over seeds\n"
                 "('never': at least half the seeds never fell 10⁶-fold within T; "
                 "overflow/nan: every seed went non-finite; *: some did, left out)", fontsize=10)
    fig.tight_layout()
    return fig


def lyapunov_spectrum(lyap: pd.DataFrame) -> plt.Figure:
    """Lyapunov exponents against their index, one panel per model, weight scale as hue."""
    if lyap.empty:
        return empty_figure("no Lyapunov spectra in this result set")
    sel, where = _typical_slice(lyap)
    g = sns.relplot(
        data=sel, x="index", y="exponent", hue="weight_scale", col="model",
        col_order=_models(sel), col_wrap=min(3, len(_models(sel))), kind="line", marker="o",
        palette="viridis", errorbar=("pi", 100), height=3.2, aspect=1.2,
        facet_kws={"sharey": False},
    )
    for ax in g.axes.flat:
        ax.axhline(0, color="grey", lw=0.8)
    g.set_axis_labels("exponent index i (1 = largest)", "λ_i (natural log per step)")
    g.legend.set_title("weight scale s")
    _legend_off_panels(g)
    g.figure.suptitle(f"Lyapunov spectrum of the Jacobian chain ({where})", y=1.03)
    return g.figure


def _legend_off_panels(g: sns.FacetGrid) -> None:
    """Put a relplot's legend where it covers no data: in the empty slot of the panel grid
    if there is one (relplot's own placement can overlap the last panel), else outside."""
    axes = list(g.axes.flat)
    ncol = g._col_wrap or len(axes)
    if len(axes) % ncol:
        top, last = axes[len(axes) % ncol].get_position(), axes[-1].get_position()
        x = top.x0 + (top.x1 - top.x0) * 0.05
        sns.move_legend(g, "center left", bbox_to_anchor=(x, (last.y0 + last.y1) / 2),
                        bbox_transform=g.figure.transFigure, frameon=False)
    else:
        sns.move_legend(g, "center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def chain_singular_values(spectrum: pd.DataFrame) -> plt.Figure:
    """True ln sigma_1 and ln sigma_k of the chain P_{T,T-k} against lag, per model (from
    the full-frame pass; NaN where float64 cannot resolve them: gaps in the lines)."""
    if spectrum.empty:
        return empty_figure("no chain spectra in this result set")
    sel, where = _typical_slice(spectrum)
    kmax = sel["index"].max()
    sel = sel[sel["index"].isin([1, kmax])].copy()
    sel["singular value"] = np.where(sel["index"] == 1, "σ₁ (largest)", f"σ_{kmax}")
    g = sns.relplot(
        data=sel, x="lag", y="log_sv", hue="weight_scale", style="singular value",
        col="model", col_order=_models(sel), col_wrap=min(3, len(_models(sel))), kind="line",
        palette="viridis", errorbar=None, height=3.2, aspect=1.2, facet_kws={"sharey": False},
    )
    g.set_axis_labels("lag k (steps)", "ln σ_i of J_T⋯J_{T−k+1}")
    g.legend.set_title("weight scale s / singular value")
    _legend_off_panels(g)
    g.figure.suptitle(f"True singular values of the Jacobian product against lag ({where})",
                      y=1.03)
    return g.figure


# name -> (tables it reads, function), as bpttbench.contract.gradient_flow declares them; the
# figure file is figures/<name>.png
GRADIENT_FLOW_FIGURES: dict[str, tuple[tuple[str, ...], Callable[..., plt.Figure]]] = {
    f.name: (f.inputs, globals()[f.plot.rsplit(":", 1)[1]])
    for f in contract.figures("gradient_flow")
}
