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

from .. import contract
from ..figures import MODEL_ORDER, empty_figure, save

__all__ = ["GRADIENT_FLOW_FIGURES", "save"]

LOG_FLOAT32_SUBNORMAL = math.log(float(np.finfo(np.float32).smallest_subnormal))


def _models(df: pd.DataFrame) -> list[str]:
    present = set(df["model"])
    return [m for m in MODEL_ORDER if m in present]


def _typical_slice(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Rows of the first init and hidden size, and the longest sequence: one figure's worth."""
    init, hidden = sorted(df["init"].unique())[0], sorted(df["hidden"].unique())[0]
    seq_len = df["seq_len"].max()
    sel = df[(df["init"] == init) & (df["hidden"] == hidden) & (df["seq_len"] == seq_len)]
    return sel, f"init={init}, H={hidden}, T={seq_len}"


def gradient_norm_by_lag(gf: pd.DataFrame) -> plt.Figure:
    """ln||dL/dh_{T-k}|| against lag k, one panel per model, weight scale as hue (mean over seeds)."""
    sel, where = _typical_slice(gf)
    sel = sel[np.isfinite(sel["log_grad_norm"])]
    if sel.empty:
        return empty_figure("no finite gradient norms to plot")
    g = sns.relplot(
        data=sel, x="lag", y="log_grad_norm", hue="weight_scale", col="model",
        col_order=_models(sel), col_wrap=min(3, len(_models(sel))), kind="line",
        palette="viridis", errorbar=("pi", 100), height=3.2, aspect=1.2,
        facet_kws={"sharey": False},
    )
    for ax in g.axes.flat:
        ax.axhline(LOG_FLOAT32_SUBNORMAL, color="grey", ls=":", lw=1)
    g.axes.flat[0].annotate("float32 underflow", (0, LOG_FLOAT32_SUBNORMAL), fontsize=8,
                            color="grey", xytext=(2, 3), textcoords="offset points")
    g.set_axis_labels("lag k = T − t (steps back from the loss)", "ln ‖∂L/∂h_{T−k}‖₂ (natural log)")
    g.legend.set_title("weight scale s")
    g.figure.suptitle(f"Gradient norm against lag ({where}; band: range over seeds)", y=1.03)
    return g.figure


def growth_rate_by_scale(summary: pd.DataFrame) -> plt.Figure:
    """Fitted growth rate of ln||delta|| per step against the weight scale, one line per model."""
    sel = summary[np.isfinite(summary["growth_rate"].astype(float))]
    if sel.empty:
        return empty_figure("no finite growth rates to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(data=sel, x="weight_scale", y="growth_rate", hue="model", hue_order=_models(sel),
                 style="init", markers=True, errorbar=("pi", 100), ax=ax)
    scales = np.geomspace(sel["weight_scale"].min(), sel["weight_scale"].max(), 50)
    ax.plot(scales, np.log(scales), "k--", lw=1, label="ln s (linear RNN, orthogonal W)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(sorted(sel["weight_scale"].unique()))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("recurrent weight scale s (log scale)")
    ax.set_ylabel("growth rate of ln‖δ‖ (natural log per step)")
    ax.set_title("Vanishing (< 0) or exploding (> 0) gradients, per step back in time")
    ax.legend(fontsize="small", loc="best")
    return fig


def horizon_heatmap(summary: pd.DataFrame) -> plt.Figure:
    """Gradient horizon (lag where ||delta|| fell 1e6-fold) over seq_len x weight scale per model."""
    sel = summary.copy()
    sel["horizon_f"] = sel["horizon"].astype("Float64").astype(float)
    models = _models(sel)
    ncol = min(3, len(models))
    nrow = math.ceil(len(models) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    for ax, model in zip(axes.flat, models, strict=False):
        m = sel[sel["model"] == model]
        grid = m.pivot_table(index="seq_len", columns="weight_scale", values="horizon_f",
                             aggfunc="median", dropna=False)
        labels = grid.map(lambda v: "never" if not np.isfinite(v) else f"{v:.0f}")
        ax.set_facecolor("#dddddd")  # masked cells: the gradient never fell 1e6-fold within T
        sns.heatmap(grid, annot=labels, fmt="", cmap="magma", mask=grid.isna(),
                    cbar_kws={"label": "horizon (steps)"}, ax=ax, linewidths=0.5,
                    annot_kws={"fontsize": 8})
        ax.set_title(model)
        ax.set_xlabel("weight scale s")
        ax.set_ylabel("sequence length T (steps)")
    for ax in list(axes.flat)[len(models):]:
        ax.set_axis_off()
    fig.suptitle("Gradient horizon: first lag where ‖δ_{T−k}‖/‖δ_T‖ < 10⁻⁶ ('never' within T)")
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
    g.figure.suptitle(f"Lyapunov spectrum of the Jacobian chain ({where})", y=1.03)
    return g.figure


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
    g.figure.suptitle(f"True singular values of the Jacobian product against lag ({where})",
                      y=1.03)
    return g.figure


# name -> (table it reads, function), as bpttbench.contract.gradient_flow declares them; the
# figure file is figures/<name>.png
GRADIENT_FLOW_FIGURES: dict[str, tuple[str, Callable[[pd.DataFrame], plt.Figure]]] = {
    f.name: (f.inputs[0], globals()[f.plot.rsplit(":", 1)[1]])
    for f in contract.figures("gradient_flow")
}
