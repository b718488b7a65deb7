"""Tiny result sets for the compare and reproducibility tests.

``build_set`` measures a tiny gradient-flow sweep in-process (no Snakemake) and writes a
result set the way the pipeline does: ``tables/`` through ``tables.write_table`` and
``manifest.json`` through ``manifest.build_manifest``. ``tiny_pipeline_config`` is a config
for an end-to-end Snakemake run of every stage, each sized to seconds.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from pathlib import Path
from typing import Any

from bpttbench.config import blocks_by_id, schema, validate
from bpttbench.gradient_flow.cells import run_block
from bpttbench.io import write_json
from bpttbench.manifest import build_manifest
from bpttbench.tables import collect_cells, write_columns_doc, write_table

REPO = Path(__file__).resolve().parents[1]

#: Regimes of bpttbench.compare it covers: gru and rnn_tanh regular, rnn_relu at s = 2
#: chaotic (largest Lyapunov exponent > 0), rnn_relu at s = 0.5 nonfinite (||delta||
#: underflows to 0 in float32).
TINY_GRADIENT_FLOW: dict[str, Any] = {
    "models": ["rnn_tanh", "rnn_relu", "gru"],
    "init": "orthogonal",
    "hidden": 8,
    "input_size": 4,
    "batch": 4,
    "seq_len": [30],
    "weight_scale": [0.5, 2.0],
    "seeds": [0],
    "lyapunov_k": 4,
}

#: Every other stage sized to seconds; keys the current schema does not know are dropped,
#: so the end-to-end tests follow the stages as they evolve.
TINY_STAGES: dict[str, dict[str, Any]] = {
    "long_range": {"tasks": ["adding"], "models": ["rnn_tanh"], "seq_len": [10], "clip": [None],
                   "seeds": [0], "steps": 20, "batch": 8, "hidden": 8, "eval_every": 10,
                   "eval_batch": 16},
    "bench": {"ops": ["chain"], "variants": ["torch"], "hidden": [8], "batch": [2],
              "seq_len": [16], "k": 4, "repeats": 2, "warmup": 1, "time_budget_s": 0.05,
              "check_steps": 8},
    "claims": {"run": ["3_orthogonal"]},
}


def tiny_config(**top: Any) -> dict[str, Any]:
    """A validated gradient-flow-only config (CPU) with top-level overrides."""
    cfg = {"device": "cpu", "gradient_flow": dict(TINY_GRADIENT_FLOW), **top}
    return validate(cfg)


def tiny_pipeline_config(hardware_tag: str) -> dict[str, Any]:
    """A raw config (for a YAML file) of every stage, tiny, for an end-to-end Snakemake run."""
    props = schema()["properties"]
    cfg: dict[str, Any] = {"hardware_tag": hardware_tag, "device": "cpu",
                           "gradient_flow": dict(TINY_GRADIENT_FLOW)}
    for section, settings in TINY_STAGES.items():
        known = props.get(section, {}).get("properties", {})
        kept = {k: v for k, v in settings.items() if k in known}
        if kept:
            cfg[section] = kept
    validate(cfg)
    return cfg


def build_set(root: Path, tag: str, **top: Any) -> Path:
    """Measure the tiny sweep and write results/<tag>/ (manifest.json + tables/) under root."""
    cfg = tiny_config(hardware_tag=tag, **top)
    out = Path(root) / tag
    cell_files = []
    for block_id, cells in blocks_by_id(cfg).items():
        path = out / "cells" / f"{block_id}.json"
        write_json(path, run_block(cells, out / "cells" / f"{block_id}.partial", progress=False))
        cell_files.append(path)
    tables = collect_cells(cell_files)
    td = out / "tables"
    write_table(tables["gradient_flow"], td / "gradient_flow.parquet", "gradient_flow")
    write_table(tables["summary"], td / "summary.csv", "summary")
    write_table(tables["lyapunov"], td / "lyapunov.parquet", "lyapunov")
    write_table(tables["chain_spectrum"], td / "chain_spectrum.parquet", "chain_spectrum",
                csv_twin=False)
    write_columns_doc(td / "COLUMNS.md")
    # repo: a folder outside git, so the manifest holds no commit of the dirty test tree
    write_json(out / "manifest.json", build_manifest(cfg, tag, tables["summary"], repo=root))
    shutil.rmtree(out / "cells")  # per-cell scratch is not part of a committed set
    return out


def copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_csv(path: Path, match: dict[str, str], column: str, new_value: str) -> int:
    """Set ``column`` to ``new_value`` in the rows whose fields equal ``match``; other bytes of
    the file stay as they are. Returns the number of rows changed."""
    text = Path(path).read_text()
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    col = header.index(column)
    idx = {k: header.index(k) for k in match}
    changed = 0
    for row in body:
        if all(row[i] == match[k] for k, i in idx.items()):
            row[col] = new_value
            changed += 1
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *body])
    Path(path).write_text(buf.getvalue())
    return changed


def file_digests(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime (ns) of every file under root, by relative path."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                             p.stat().st_mtime_ns)
    return out
