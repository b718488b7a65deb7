"""What every stage's figures share: the headless matplotlib set-up, the theme, the model
order, an empty-figure placeholder and the atomic ``save``.

Each stage draws its own figures (``gradient_flow.figures``, ``claims.figures``,
``long_range.figures``, ``bench.plots``, compare); all of them write through ``save``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from ..io import write_with  # noqa: E402

MODEL_ORDER = ["rnn_tanh", "rnn_relu", "rnn_linear", "lstm", "gru"]
DPI = 110

sns.set_theme(context="notebook", style="whitegrid")

__all__ = ["DPI", "MODEL_ORDER", "draw", "empty_figure", "plt", "save", "sns"]


def save(fig: plt.Figure, path: str | Path) -> Path:
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png"))
    plt.close(fig)
    return Path(path)


def empty_figure(message: str) -> plt.Figure:
    """A small figure that says why there is nothing to plot (an empty table is data too)."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.set_axis_off()
    return fig


def draw(registry: Mapping[str, tuple[str | Sequence[str], Callable[..., plt.Figure]]],
         names: Sequence[str], table_files: Mapping[str, Path], out_dir: Path) -> list[Path]:
    """Draw the figures ``names`` (default: all) of a stage's registry into ``out_dir``.

    ``registry``: figure name -> (the table(s) its plot function takes, the function);
    ``table_files``: table name -> its file. Each table is read once.
    """
    from ..tables import read_table

    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown figure {', '.join(unknown)}; allowed: {', '.join(registry)}")
    cache: dict[str, object] = {}
    written = []
    for name in names or list(registry):
        needs, plot = registry[name]
        needs = (needs,) if isinstance(needs, str) else tuple(needs)
        for t in needs:
            if t not in cache:
                if not Path(table_files[t]).exists():
                    raise FileNotFoundError(f"figure {name} needs {table_files[t]}, which is "
                                            "missing")
                cache[t] = read_table(table_files[t], t)  # checked: errors name the file
        print(f"figure {name}", flush=True)
        try:
            fig = plot(*(cache[t] for t in needs))
        except (KeyError, ValueError) as exc:  # e.g. an optional column a figure needs
            files = ", ".join(str(table_files[t]) for t in needs)
            raise ValueError(f"figure {name} cannot be drawn from {files}: "
                             f"{type(exc).__name__}: {exc}") from None
        written.append(save(fig, Path(out_dir) / f"{name}.png"))
    return written
