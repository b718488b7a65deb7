"""Figures of the bench stage: speedup against size, and the roofline."""

from __future__ import annotations

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bpttbench.bench.ops import OPS  # noqa: E402
from bpttbench.bench.variants import VARIANTS  # noqa: E402
from bpttbench.figures import empty_figure  # noqa: E402

# colour-blind-safe (seaborn "colorblind"), one fixed colour per variant in every figure
PALETTE = {"cupy": "#0173b2", "torch": "#de8f05", "torch_func": "#029e73", "numpy": "#949494",
           "fused": "#cc78bc"}
MARKERS = dict(zip(OPS, ["o", "s", "^", "v", "D", "P", "X"], strict=True))
AXIS_LABEL = {"hidden": "hidden size H", "seq_len": "sequence length T (steps)"}


def _slice(df: pd.DataFrame, axis: str) -> tuple[pd.DataFrame, str]:
    """Rows of the (other two sizes) combination with the most distinct values of ``axis``."""
    others = [c for c in ("hidden", "batch", "seq_len") if c != axis]
    counts = df.groupby(others)[axis].nunique().reset_index(name="count")
    counts = counts.sort_values(["count"] + others, ascending=False)
    fixed = counts.iloc[0][others].to_dict()
    sel = df[(df[others[0]] == fixed[others[0]]) & (df[others[1]] == fixed[others[1]])]
    names = {"hidden": "H", "batch": "B", "seq_len": "T"}
    return sel, ", ".join(f"{names[c]}={int(fixed[c])}" for c in others)


def bench_speedup(bench: pd.DataFrame) -> plt.Figure:
    """Speedup over the torch variant against hidden size and against seq_len, one row per op."""
    ok = bench[(bench["status"] == "ok") & (bench["label"] == "grid")
               & bench["speedup_vs_torch"].notna() & (bench["variant"] != "torch")]
    ops = [o for o in OPS if o in set(ok["op"])]
    if not ops:
        return empty_figure("no timed rows with a torch baseline in this result set")
    fig, axes = plt.subplots(len(ops), 2, figsize=(10, 2.9 * len(ops)), squeeze=False)
    for r, op in enumerate(ops):
        rows = ok[ok["op"] == op]
        for c, axis in enumerate(("hidden", "seq_len")):
            ax = axes[r, c]
            sel, fixed = _slice(rows, axis)
            for variant, grp in sel.groupby("variant"):
                grp = grp.sort_values(axis)
                ax.plot(grp[axis], grp["speedup_vs_torch"], marker="o", label=variant,
                        color=PALETTE[variant])
            ax.axhline(1.0, color="grey", lw=1, ls="--")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel(AXIS_LABEL[axis] + " (log scale)")
            ax.set_ylabel("speedup vs torch (×, log)")
            ax.set_title(f"{op} ({fixed})", fontsize=10)
            ax.legend(fontsize="small", title="variant", title_fontsize="small")
    device = ", ".join(sorted(set(ok["device_name"].astype(str))))
    fig.suptitle(f"Median time of the torch variant / median time of each variant\n({device}; "
                 "dashed: torch itself; BPTT ops: torch = our unrolled cell)", y=1.0)
    fig.tight_layout()
    return fig


def bench_roofline(bench: pd.DataFrame, peaks: pd.DataFrame) -> plt.Figure:
    """Achieved GFLOP/s against arithmetic intensity under the measured roofline, per device."""
    ok = bench[(bench["status"] == "ok") & bench["achieved_gflops"].notna()]
    devices = [d for d in ("cuda", "cpu") if d in set(ok["device"])]
    if not devices:
        return empty_figure("no timed rows in this result set")
    fig, axes = plt.subplots(1, len(devices), figsize=(7.5 * len(devices), 5.2), squeeze=False)
    for ax, dev in zip(axes[0], devices, strict=True):
        rows = ok[ok["device"] == dev]
        pk = peaks[peaks["device"] == dev]
        gemm = pk.loc[pk["quantity"] == "gemm_flops", "value"].max() / 1e9
        bw = pk.loc[pk["quantity"] == "copy_bandwidth", "value"].max() / 1e9
        lo = min(rows["intensity"].min(), gemm / bw) / 3
        hi = max(rows["intensity"].max(), gemm / bw) * 3
        xs = np.geomspace(lo, hi, 200)
        ax.plot(xs, np.minimum(gemm, xs * bw), color="black", lw=1.5)
        ax.annotate(f"measured GEMM peak {gemm:,.0f} GFLOP/s", (hi, gemm), ha="right",
                    va="bottom", fontsize=8)
        ax.annotate(f"copy bandwidth {bw:,.0f} GB/s", (lo * 1.2, lo * 1.2 * bw), fontsize=8,
                    xytext=(-4, 8), textcoords="offset points", va="bottom")
        for (op, variant), grp in rows.groupby(["op", "variant"]):
            ax.scatter(grp["intensity"], grp["achieved_gflops"], color=PALETTE[variant],
                       marker=MARKERS[op], s=28, alpha=0.85, edgecolor="none")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity of the op (FLOP per compulsory byte, log)")
        ax.set_ylabel("achieved GFLOP/s (log)")
        name = str(rows["device_name"].iloc[0])
        ax.set_title(f"{dev}: {name}", fontsize=10)
        handles = [plt.Line2D([], [], color=PALETTE[v], marker="o", ls="", label=v)
                   for v in VARIANTS if v in set(rows["variant"])]
        handles += [plt.Line2D([], [], color="black", marker=MARKERS[o], ls="", label=o)
                    for o in OPS if o in set(rows["op"])]
        ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1),
                  title="variant / op", title_fontsize="small")
    fig.suptitle("Roofline: each timed row against the measured peaks of its device")
    fig.tight_layout()
    return fig
