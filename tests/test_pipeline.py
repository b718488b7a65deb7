"""End to end: the Snakemake workflow on a tiny config in a temporary directory."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bpttbench.tables import COLUMNS

TINY = {
    "hardware_tag": "e2e-test",
    "device": "cpu",
    "gradient_flow": {
        "models": ["rnn_tanh", "rnn_linear", "lstm", "gru"],
        "hidden": 8,
        "batch": 4,
        "input_size": 3,
        "seq_len": [15, 30],
        "weight_scale": [0.7, 1.4],
        "seeds": [0, 1],
        "lyapunov_k": 3,
    },
    # Every other stage at its smallest, so the whole DAG runs (each stage's own
    # tests cover its science at larger sizes).
    "claims": {"run": ["3_orthogonal"], "seeds": [0, 1],
               "orthogonal": {"hidden": 8, "steps": 20, "weight_scale": [0.5, 2.0]}},
    "long_range": {"tasks": ["adding"], "models": ["lstm"], "seq_len": [5], "clip": [None],
                   "seeds": [0], "steps": 20, "batch": 8, "hidden": 8, "eval_every": 10,
                   "eval_batch": 32},
    "bench": {"ops": ["chain"], "variants": ["torch", "numpy"], "hidden": [8], "batch": [2],
              "seq_len": [16], "repeats": 2, "time_budget_s": 0.05},
}


def run_snakemake(repo: Path, workdir: Path, config: dict, env: dict, *targets: str,
                  extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = ["snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(cfg), "--cores", "2", *extra, *targets]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def tiny_result_set(tmp_path_factory, repo, snakemake_env) -> Path:
    workdir = tmp_path_factory.mktemp("pipeline")
    out = run_snakemake(repo, workdir, TINY, snakemake_env,
                        "results/e2e-test/report.html")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return workdir / "results" / "e2e-test"


@pytest.mark.slow
def test_pipeline_writes_the_contract_tables(tiny_result_set: Path) -> None:
    tables = tiny_result_set / "tables"
    summary = pd.read_csv(tables / "summary.csv")
    gf = pd.read_parquet(tables / "gradient_flow.parquet")
    lyap = pd.read_parquet(tables / "lyapunov.parquet")
    n_cells = 4 * 2 * 2 * 2
    assert len(summary) == n_cells
    assert set(COLUMNS["summary"]) <= set(summary.columns)
    assert {"model", "init", "hidden", "seq_len", "weight_scale", "seed", "lag",
            "log_grad_norm"} <= set(gf.columns)
    assert len(gf) == sum(T + 1 for T in (15, 30)) * n_cells // 2
    assert set(summary["status"]) == {"ok"}
    # The linear RNN with orthogonal W = sQ: growth rate and top exponent are ln s (float32).
    lin = summary[summary["model"] == "rnn_linear"]
    for _, row in lin.iterrows():
        assert row["growth_rate"] == pytest.approx(math.log(row["weight_scale"]), abs=1e-4)
        assert row["lyapunov_max"] == pytest.approx(math.log(row["weight_scale"]), abs=1e-5)
    # Lyapunov table: k exponents per cell, descending.
    assert len(lyap) == 3 * n_cells
    for _, grp in lyap.groupby(["model", "seq_len", "weight_scale", "seed"]):
        assert list(grp["index"]) == [1, 2, 3]
        assert grp["exponent"].is_monotonic_decreasing


@pytest.mark.slow
def test_pipeline_writes_manifest_figures_and_report(tiny_result_set: Path) -> None:
    manifest = json.loads((tiny_result_set / "manifest.json").read_text())
    for key in ("hardware", "software", "git_commit", "config", "config_hash", "precision",
                "seeds", "started_at", "finished_at"):
        assert key in manifest
    assert manifest["hardware"]["device"] == "cpu"
    assert manifest["software"]["torch"]
    assert manifest["cells"]["count"] == 32
    for fig in ("gradient_norm_by_lag", "growth_rate_by_scale", "horizon_heatmap",
                "lyapunov_spectrum", "chain_singular_values"):
        png = tiny_result_set / "figures" / f"{fig}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tiny_result_set / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5
    assert "summary.csv" in page and manifest["config_hash"] in page
    for section in ("Claims", "Long-range dependencies in training", "Performance"):
        assert f"<h2>{section}</h2>" in page
    # Cells are temp(): nothing but the small result set is left behind.
    assert not any((tiny_result_set / "cells").rglob("*.json"))


@pytest.mark.slow
def test_second_run_has_nothing_to_do(tiny_result_set: Path, repo, snakemake_env) -> None:
    workdir = tiny_result_set.parents[1]
    out = run_snakemake(repo, workdir, TINY, snakemake_env, "results/e2e-test/report.html",
                        extra=("-n",))
    assert out.returncode == 0
    assert "Nothing to be done" in out.stdout + out.stderr
