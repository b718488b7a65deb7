"""A self-contained HTML report of a result set: figures embedded, key tables, the manifest."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import contract
from .io import read_json_object, write_text
from .report_facts import claims_rows_for, section_facts
from .tables import read_table


@dataclass
class Section:
    title: str
    intro: str
    figures: list[str] = field(default_factory=list)  # figure names (figures/<name>.png)
    tables: list[str] = field(default_factory=list)  # table files under tables/


# Order is the report's order (bpttbench.contract.report); a section whose files are all
# absent is left out. Its figures are the contract figures naming the section; its tables
# are shown from their CSV files.
SECTIONS: list[Section] = [
    Section(sec.title, sec.intro, contract.section_figures(sec),
            [contract.twin_file(t) for t in sec.tables])
    for sec in contract.report_sections()
]

#: The captions of a source checkout (src/bpttbench/report.py -> <repo>/workflow/report),
#: wherever the command runs from.
DEFAULT_CAPTIONS = Path(__file__).resolve().parents[2] / "workflow" / "report"

#: claims.csv is shown split by section (``claims_rows_for``), every row of it.
CLAIMS_FILE = contract.twin_file("claims")


def caption_text(captions_dir: Path, name: str) -> str:
    """The caption of a figure from <captions_dir>/<name>.rst, with the RST markup removed."""
    text = (captions_dir / f"{name}.rst").read_text()
    text = re.sub(r"``?([^`]+)``?", r"\1", text)
    text = re.sub(r":math:", "", text)
    return " ".join(text.split())


def check_captions(captions_dir: Path, names: list[str]) -> None:
    """A ValueError unless ``captions_dir`` is a folder holding <name>.rst for every figure
    ``names``: a report whose figures silently lost their captions says less than it seems to
    (every contract figure has one in the repository's workflow/report)."""
    if not captions_dir.is_dir():
        raise ValueError(f"captions folder {captions_dir} is not a directory; pass --captions "
                         f"with the folder of the <figure>.rst captions (default "
                         f"{DEFAULT_CAPTIONS})")
    missing = [f"{n}.rst" for n in names if not (captions_dir / f"{n}.rst").is_file()]
    if missing:
        raise ValueError(f"{len(missing)} figure(s) of the result set have no caption in "
                         f"{captions_dir}: {', '.join(missing)}")


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table_html(path: Path, max_rows: int | None = 60, df: pd.DataFrame | None = None,
                note: str = "") -> str:
    """A table as HTML: ``df`` (default: the file's rows), the first ``max_rows`` of them
    (None: all) with a note saying so."""
    df = read_table(path) if df is None else df
    note = f"<p class=note>{html.escape(note)}</p>" if note else ""
    if max_rows is not None and len(df) > max_rows:
        note = f"<p class=note>First {max_rows} of {len(df)} rows; the full table is {path.name}.</p>"
        df = df.head(max_rows)
    fmt = {c: "{:.4g}".format for c in df.columns if pd.api.types.is_float_dtype(df[c])}
    body = df.to_html(index=False, formatters=fmt, na_rep="", border=0, classes="tbl")
    return f"<h4>{html.escape(path.name)}</h4>{note}<div class=scroll>{body}</div>"


def _manifest_html(manifest: Mapping[str, Any]) -> str:
    rows = []
    for key in ("hardware_tag", "git_commit", "config_hash", "started_at", "finished_at"):
        rows.append((key, manifest.get(key)))
    for group in ("hardware", "software", "precision", "jacobian_backend", "seeds", "cells"):
        for k, v in (manifest.get(group) or {}).items():
            rows.append((f"{group}.{k}", v))
    trs = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    cfg = html.escape(json.dumps(manifest.get("config", {}), indent=1, default=str))
    return (f"<table class=kv>{trs}</table><details><summary>Full config</summary>"
            f"<pre>{cfg}</pre></details>")


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}
figure{margin:1.5em 0}figure img{max-width:100%}figcaption{color:#444;font-size:.92em}
.scroll{overflow-x:auto}.tbl{border-collapse:collapse;font-size:.8em}
.tbl td,.tbl th{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right}
.kv th{text-align:left;padding-right:1em;font-weight:500;color:#555}.note{color:#666;font-size:.85em}
"""


def build_report(result_dir: str | Path, out: str | Path, captions_dir: str | Path | None = None,
                 title: str | None = None) -> Path:
    """Write ``out`` (HTML, figures inlined) from ``result_dir``/{manifest.json,tables,figures}."""
    result_dir = Path(result_dir)
    captions = Path(captions_dir) if captions_dir else DEFAULT_CAPTIONS
    check_captions(captions, [n for sec in SECTIONS for n in sec.figures
                              if (result_dir / "figures" / f"{n}.png").exists()])
    manifest = read_json_object(result_dir / "manifest.json")
    tag = manifest.get("hardware_tag", result_dir.name)
    parts = [
        f"<h1>{html.escape(title or 'bpttbench: gradient flow through time')}</h1>",
        f"<p class=sub>Result set <b>{html.escape(tag)}</b> · commit "
        f"{html.escape(str(manifest.get('git_commit')))} · config {manifest.get('config_hash')}"
        f" · {html.escape(str(manifest.get('finished_at')))}</p>",
        "<p>All logarithms are natural logs. A growth rate is the slope of ln‖∂L/∂h_{T−k}‖ "
        "against the lag k: negative means vanishing, positive exploding gradients.</p>",
    ]
    for sec in SECTIONS:
        figs = [result_dir / "figures" / f"{n}.png" for n in sec.figures]
        tabs = [result_dir / "tables" / t for t in sec.tables]
        figs, tabs = [f for f in figs if f.exists()], [t for t in tabs if t.exists()]
        if not figs and not tabs:
            continue
        intro = " ".join([sec.intro, *section_facts(sec.title, result_dir / "tables")])
        parts.append(f"<h2>{html.escape(sec.title)}</h2><p>{html.escape(intro)}</p>")
        for f in figs:
            cap = html.escape(caption_text(captions, f.stem))
            parts.append(f"<figure>{_img(f)}<figcaption>{cap}</figcaption></figure>")
        for t in tabs:
            if t.name == CLAIMS_FILE:  # this section's claims, every row
                rows = claims_rows_for(read_table(t), sec.title)
                parts.append(_table_html(t, None, rows, f"{len(rows)} rows of {t.name} "
                                         "(the claims of this section)"))
            else:
                parts.append(_table_html(t))
    parts.append("<h2>Manifest</h2>" + _manifest_html(manifest))
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>bpttbench {tag}"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    return write_text(out, page)
