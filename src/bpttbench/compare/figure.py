"""The figure of a comparison: value in A against value in B per metric, the share of the
tolerance used, and the timing speed-ups (matplotlib imported only when drawing)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .policy import ANY, CHAOTIC, NONFINITE, NONSMOOTH, REGULAR, UNITS

_MARKERS = {REGULAR: "o", NONSMOOTH: "D", CHAOTIC: "^", NONFINITE: "s", ANY: "o"}


def _figure_panels(agreement: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(table, metrics) per panel: one per gradient-flow metric, one per other table."""
    panels: list[tuple[str, list[str]]] = []
    numeric = agreement[agreement["metric"] != "status"]
    for (table, metric), _ in numeric.groupby(["table", "metric"], sort=False):
        if table in ("summary", "lyapunov"):
            panels.append((table, [metric]))
        elif not any(t == table for t, _ in panels):
            panels.append((table, sorted(numeric.loc[numeric["table"] == table,
                                                     "metric"].unique())))
    return panels


def agreement_figure(agreement: pd.DataFrame, timing: pd.DataFrame, name_a: str, name_b: str):
    """Value in A against value in B per metric (y = x dashed), then the timing speed-ups."""
    import matplotlib.ticker

    from ..figures import plt, sns

    panels = _figure_panels(agreement)
    speed = timing[np.isfinite(timing["speedup_b_vs_a"].astype(float))
                   & (timing["speedup_b_vs_a"].astype(float) > 0)] if len(timing) else timing
    used = agreement[(agreement["metric"] != "status")
                     & np.isfinite(agreement["abs_diff"].astype(float))
                     & (agreement["allowed_diff"].astype(float) > 0)]
    n = len(panels) + (1 if len(used) else 0) + (1 if len(speed) else 0)
    if n == 0:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "nothing numeric to compare", ha="center", va="center")
        ax.set_axis_off()
        return fig
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 4.0 * nrow), squeeze=False)
    flat = list(axes.flat)
    for ax, (table, metrics) in zip(flat, panels, strict=False):
        d = agreement[(agreement["table"] == table) & agreement["metric"].isin(metrics)]
        a, b = d["value_a"].astype(float).to_numpy(), d["value_b"].astype(float).to_numpy()
        within = d["within"].astype(bool).to_numpy()
        finite = np.isfinite(a) & np.isfinite(b)
        for regime, marker in _MARKERS.items():
            sel = finite & (d["regime"].to_numpy() == regime)
            for ok, color, label in ((True, "tab:blue", "within"), (False, "tab:red", "outside")):
                s = sel & (within == ok)
                if s.any():
                    ax.scatter(a[s], b[s], s=16 if ok else 30, c=color, marker=marker,
                               alpha=0.7, label=f"{regime}, {label}", linewidths=0.5)
        if finite.any():
            lo = float(min(a[finite].min(), b[finite].min()))
            hi = float(max(a[finite].max(), b[finite].max()))
            if lo > 0 and hi / lo > 100:
                ax.set_xscale("log")
                ax.set_yscale("log")
            pad = 0.0 if ax.get_xscale() == "log" else 0.03 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="y = x")
        unit = UNITS.get(metrics[0], "value") if len(metrics) == 1 else "value"
        what = metrics[0] if len(metrics) == 1 else f"{len(metrics)} columns"
        ax.set_xlabel(f"{name_a}: {what} ({unit})")
        ax.set_ylabel(f"{name_b}: {what} ({unit})")
        title = f"{table}.{what}: {int((~within).sum())}/{len(d)} outside"
        if (~finite).sum():
            title += f"\n({int((~finite).sum())} non-finite not shown)"
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="best")
    slot = len(panels)
    if len(used):
        ax = flat[slot]
        slot += 1
        floor = 1e-4
        frac = (used["abs_diff"].astype(float) / used["allowed_diff"].astype(float)).clip(floor)
        data = used.assign(fraction=frac.to_numpy(), column=used["table"] + "." + used["metric"],
                           outcome=np.where(used["within"].astype(bool), "within", "outside"))
        sns.stripplot(data=data, x="column", y="fraction", hue="outcome",
                      palette={"within": "tab:blue", "outside": "tab:red"}, ax=ax, size=3,
                      alpha=0.6, jitter=0.25)
        ax.set_yscale("log")
        ax.axhline(1.0, color="tab:red", lw=0.8, ls="--")
        ax.set_xlabel("")
        ax.set_ylabel("|A − B| / allowed difference")
        ax.set_title(f"Share of the tolerance used (> 1: outside;\nequal values drawn at "
                     f"{floor:g})", fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    if len(speed):
        ax = flat[slot]
        data = speed.assign(column=speed["table"] + "." + speed["metric"])
        sns.stripplot(data=data, x="column", y="speedup_b_vs_a", hue="kind", ax=ax, size=4,
                      alpha=0.7, jitter=0.2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("timing column")
        ax.set_ylabel(f"speed-up of {name_b} over {name_a} (×, log scale)")
        ax.set_title(f"Timings: > 1 means {name_b} is faster", fontsize=10)
        ax.tick_params(axis="x", labelrotation=20)
    for ax in flat[n:]:
        ax.set_axis_off()
    fig.suptitle(f"Agreement of {name_b} with {name_a}", y=1.0)
    fig.tight_layout()
    return fig

