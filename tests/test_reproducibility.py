"""Reproducibility: same config + seed + CPU give identical tables, precision settings are
applied and recorded, and a committed result set regenerates its figures and report after a
fresh clone without any compute job (docs/reproducibility.md)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _resultsets import REPO, file_digests, tiny_config, tiny_pipeline_config

from bpttbench.compare import identical_apart_from_timings, is_timing_column
from bpttbench.config import block_to_json, gradient_flow_cells

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert done.returncode == 0, f"{args[:3]}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


def _measure(root: Path, cfg: dict) -> Path:
    """One run of the tiny sweep through the CLI, as the pipeline does it: block -> collect ->
    manifest. Every cell in one process (a block may hold any cells)."""
    spec = block_to_json(list(gradient_flow_cells(cfg)))
    cells = root / "cells.json"
    _run([str(BIN / "bpttbench"), "gradient-flow", "block", "--spec", spec, "--out", str(cells)], root)
    _run([str(BIN / "bpttbench"), "gradient-flow", "collect", "--out", str(root / "tables"),
          str(cells)], root)
    _run([str(BIN / "bpttbench"), "report", "manifest", "--config-json", json.dumps(cfg), "--hw-tag",
          cfg["hardware_tag"], "--out", str(root / "manifest.json"), "--repo", str(root),
          "--summary", str(root / "tables" / "summary.csv")], root)
    return root


def _csv_without(path: Path, drop: set[str]) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    keep = [i for i, c in enumerate(rows[0]) if c not in drop]
    return [[r[i] for i in keep] for r in rows]


@pytest.mark.slow
def test_two_runs_give_identical_tables_apart_from_timings(tmp_path):
    cfg = tiny_config(hardware_tag="repro")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, two = _measure(tmp_path / "one", cfg), _measure(tmp_path / "two", cfg)
    files = sorted(p.name for p in (one / "tables").iterdir())
    assert {"gradient_flow.parquet", "gradient_flow.csv", "summary.csv", "lyapunov.parquet",
            "chain_spectrum.parquet"} <= set(files)
    assert files == sorted(p.name for p in (two / "tables").iterdir())
    timing_cols = {}
    for name in files:
        a, b = one / "tables" / name, two / "tables" / name
        if name.endswith(".csv"):
            header = next(csv.reader(io.StringIO(a.read_text())))
            timing = {c for c in header if is_timing_column(c)}
            timing_cols[name] = timing
            assert _csv_without(a, timing) == _csv_without(b, timing), name
            if not timing:  # no timing column: the file is byte-identical
                assert a.read_bytes() == b.read_bytes(), name
        elif name.endswith(".parquet"):
            assert a.read_bytes() == b.read_bytes(), name  # none holds a timing column
        if name.endswith((".csv", ".parquet")):
            assert identical_apart_from_timings(a, b) is True, name
    # the timing columns are exactly the documented ones (docs/reproducibility.md)
    assert {n: c for n, c in timing_cols.items() if c} == {
        "summary.csv": {"wall_s", "started_at", "finished_at"}}
    # the summary's numbers are real measurements, not a degenerate table
    summary = _csv_without(one / "tables" / "summary.csv", set())
    assert len(summary) - 1 == len(list(gradient_flow_cells(cfg)))
    # manifests agree except for the times of the run
    ma = json.loads((one / "manifest.json").read_text())
    mb = json.loads((two / "manifest.json").read_text())
    for m in (ma, mb):
        for key in ("started_at", "finished_at", "cell_wall_s_total"):
            m.pop(key)
    assert ma == mb
    assert ma["seeds"]["gradient_flow"] == cfg["gradient_flow"]["seeds"]
    assert ma["precision"]["deterministic"] is True and ma["precision"]["allow_tf32"] is False


def _precision_in_a_fresh_process(*settings: tuple[bool, bool]) -> dict:
    """apply_precision(allow_tf32, deterministic) for each of settings in turn, in a fresh
    process (it changes process-wide torch state) with no CUBLAS_WORKSPACE_CONFIG; the last
    record and the switches then in force."""
    code = (
        "import json, os, sys, torch\n"
        "from bpttbench.hardware import apply_precision\n"
        "os.environ.pop('CUBLAS_WORKSPACE_CONFIG', None)\n"
        "for tf32, det in json.loads(sys.argv[1]): rec = apply_precision(tf32, det)\n"
        "print(json.dumps({'rec': rec, 'det': torch.are_deterministic_algorithms_enabled(),\n"
        "  'cudnn_det': torch.backends.cudnn.deterministic,\n"
        "  'bench': torch.backends.cudnn.benchmark,\n"
        "  'tf32': [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32],\n"
        "  'env': os.environ.get('CUBLAS_WORKSPACE_CONFIG')}))\n"
    )
    return json.loads(_run([sys.executable, "-c", code, json.dumps(settings)], REPO).stdout)


def test_precision_settings_are_applied_and_recorded():
    out = _precision_in_a_fresh_process((False, True))
    assert out["det"] is True and out["cudnn_det"] is True and out["bench"] is False
    assert out["tf32"] == [False, False]
    assert out["env"] == ":4096:8"
    assert out["rec"] == {"allow_tf32": False, "deterministic": True,
                          "cublas_workspace_config": out["env"], "cudnn_deterministic": True,
                          "cudnn_benchmark": False}


def test_precision_settings_switch_back_off():
    """A deterministic cell then a non-deterministic one in the same process: the second runs
    and is recorded non-deterministic (the cuBLAS workspace setting stays, and says so)."""
    out = _precision_in_a_fresh_process((False, True), (True, False))
    assert out["det"] is False and out["cudnn_det"] is False and out["bench"] is False
    assert out["tf32"] == [True, True]
    assert out["rec"] == {"allow_tf32": True, "deterministic": False,
                          "cublas_workspace_config": ":4096:8", "cudnn_deterministic": False,
                          "cudnn_benchmark": False}


# --- regenerate a committed result set without recomputing ----------------------------------

#: Rules that only draw figures or write the report from tables (allowed after a clone).
REGENERATE_ONLY = re.compile(r"(figure|figures|plot|report)")
#: Rules that measure or gather measurements: never after a clone.
COMPUTE = ("gradient_flow_block", "gradient_flow_collect", "manifest", "claims", "long_range",
           "bench", "validat")


def _planned(stdout: str) -> list[str]:
    return re.findall(r"^(?:local)?rule (\w+):", stdout, flags=re.M)


def _shuffle_mtimes(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    now = time.time()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            t = now - rng.uniform(0, 10_000)
            os.utime(p, (t, t))


@pytest.mark.slow
def test_committed_set_regenerates_without_compute_after_fresh_clone(tmp_path):
    tag = "tiny-set"
    work, clone = tmp_path / "work", tmp_path / "clone"
    work.mkdir()
    (work / "cfg.yaml").write_text(yaml.safe_dump(tiny_pipeline_config(tag)))

    def snake(where: Path, cfg: Path, *args: str) -> list[str]:
        # --configfile takes several files: the targets go after another option
        return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                str(where), "--configfile", str(cfg), "--cores", "2", *args]

    _run(snake(work, work / "cfg.yaml", f"results/{tag}/report.html"), work, timeout=1200)
    # commit it the way the repository does (its .gitignore drops cells/ and logs/)
    (work / ".gitignore").write_text((REPO / ".gitignore").read_text())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    _run(["git", "init", "-q"], work)
    _run(["git", "add", ".gitignore", "cfg.yaml", "results"], work)
    _run([*git, "commit", "-qm", "result set"], work)
    _run(["git", "clone", "-q", str(work), str(clone)], tmp_path)
    assert not (clone / ".snakemake").exists()
    assert not list(clone.glob("results/*/cells"))
    assert (clone / "results" / tag / "report.html").exists()
    # this machine's set (same tag) and another machine's set (another tag in the config)
    for config_tag in (tag, "another-machine"):
        cfg = clone / f"cfg-{config_tag}.yaml"
        cfg.write_text(yaml.safe_dump(tiny_pipeline_config(config_tag)))
        for seed in (1, 2, 3):
            _shuffle_mtimes(clone / "results", seed)
            dry = _run(snake(clone, cfg, "-n", f"results/{tag}/report.html"), clone)
            rules = _planned(dry.stdout)
            compute = [r for r in rules if r.startswith(COMPUTE)
                       and not REGENERATE_ONLY.search(r)]
            assert compute == [], f"config {config_tag}, mtimes {seed}: {rules}"
            assert "report_html" in rules or "Nothing to be done" in dry.stdout
    # and for real: figures and report are redrawn, the tables are untouched
    tables_before = file_digests(clone / "results" / tag / "tables")  # after the shuffles
    run = _run(snake(clone, clone / "cfg-another-machine.yaml", f"results/{tag}/report.html"),
               clone, timeout=1200)
    assert "report_html" in run.stdout + run.stderr
    assert file_digests(clone / "results" / tag / "tables") == tables_before
    assert not list(clone.glob("results/*/cells"))
