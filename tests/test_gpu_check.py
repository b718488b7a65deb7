"""scripts/gpu-check.sh: the CPU rehearsal end to end, and the verdicts of bpttbench.gpucheck.

The rehearsal runs every step the GPU check runs (CUDA-only ones skip with their reason)
so that the first run on a GPU machine does not die on a typo.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from bpttbench import gpucheck
from bpttbench.config import cells_by_id, load

STEPS = ["env", "facts", "pytest", "validate", "memcheck", "racecheck", "cell", "launches",
         "resultset"]
CUDA_ONLY = {"validate", "memcheck", "racecheck"}
MAX_FILE = 16 * 2**20


def step_rows(summary: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in summary.splitlines():
        m = re.match(r"\| (\w+) \| (\w+) \| (\d*) \| (.*) \|$", line)
        if m and m.group(1) in STEPS:
            rows[m.group(1)] = (m.group(2), m.group(4).strip())
    return rows


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, repo, snakemake_env) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpucheck") / "out"
    env = dict(snakemake_env, PYTHON=sys.executable, TMPDIR=str(out.parent))
    proc = subprocess.run(["bash", str(repo / "scripts" / "gpu-check.sh"), "--cpu-rehearsal",
                           str(out)], capture_output=True, text=True, env=env, timeout=900)
    print(proc.stderr[-3000:])
    return out, proc


@pytest.mark.slow
def test_rehearsal_layout_and_summary(rehearsal) -> None:
    out, proc = rehearsal
    files = sorted(p for p in out.iterdir())
    assert all(p.is_file() for p in files), files
    assert 1 <= len(files) <= 8, files
    assert all(p.stat().st_size <= MAX_FILE for p in files)
    names = {p.name for p in files}
    assert {"summary.md", "logs.tar.gz", "pytest-cuda.xml", "report.html", "launches.csv",
            "resultset-rehearsal-cpu.tar.gz"} <= names, names
    summary = (out / "summary.md").read_text()
    rows = step_rows(summary)
    assert list(rows) == STEPS, summary
    for step, (status, note) in rows.items():
        assert status in {"passed", "failed", "skipped"}, (step, status)
        assert note, f"{step} has no reason or result"
        if step in CUDA_ONLY:
            assert status == "skipped" and "no usable CUDA device" in note, (step, note)
        else:
            assert status == "passed", (step, note)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The cell step: wall time and peak memory (max RSS on the CPU) are in the summary.
    assert re.search(r"wall [0-9.]+ s.*max RSS [0-9.]+ GiB", rows["cell"][1])
    # The launches step: both tiny cells measured, no host read inside the step loop.
    assert re.search(r"rnn_tanh [0-9.]+ \(model [0-9.]+\), lstm [0-9.]+ \(model [0-9.]+\); "
                     r"host reads or syncs a step at most 0\.000", rows["launches"][1])
    # The pytest step ran the CUDA tests and recorded their skips in the JUnit XML.
    assert re.search(r"\d+ tests: 0 passed, 0 failed, 0 errors, \d+ skipped", rows["pytest"][1])
    # No work folder left behind.
    assert not list(out.parent.glob("bpttbench-gpucheck.*"))


@pytest.mark.slow
def test_rehearsal_tarballs_hold_the_result_set_and_logs(rehearsal) -> None:
    out, _ = rehearsal
    with tarfile.open(out / "resultset-rehearsal-cpu.tar.gz") as tar:
        names = set(tar.getnames())
        summary = tar.extractfile("results/rehearsal-cpu/tables/summary.csv").read().decode()
        manifest = json.loads(tar.extractfile("results/rehearsal-cpu/manifest.json").read())
    assert "results/rehearsal-cpu/report.html" in names
    assert "results/rehearsal-cpu/tables/bench.parquet" in names
    assert not any("/cells/" in n for n in names)  # per-cell intermediates stay out
    cfg = yaml.safe_load(Path(gpucheck.__file__).parents[2].joinpath(
        "config", "gpu-quick-rehearsal.yaml").read_text())
    n_cells = (len(cfg["gradient_flow"]["models"]) * len(cfg["gradient_flow"]["seq_len"])
               * len(cfg["gradient_flow"]["weight_scale"]))
    assert len(summary.strip().splitlines()) == n_cells + 1
    assert manifest["hardware"]["device"] == "cpu"
    with tarfile.open(out / "logs.tar.gz") as tar:
        logs = {Path(n).name for n in tar.getnames()}
        cell = json.loads(tar.extractfile("logs/cell.json").read())
    assert {"env.log", "facts.txt", "pytest.log", "cell.log", "resultset.log"} <= logs
    assert cell["peak_memory"]["max_rss_bytes"] > 0 and cell["summary"]["status"] == "ok"


def test_gpu_configs_hold_the_cells_the_check_runs(repo) -> None:
    """The GPU run's cell exists in gpu-quick.yaml (a typo here would cost a GPU run)."""
    script = (repo / "scripts" / "gpu-check.sh").read_text()
    ids = re.findall(r"CELL_ID=(\S+)", script)
    configs = re.findall(r"CONFIG=\$REPO/(config/\S+\.yaml)", script)
    assert len(ids) == len(configs) == 2
    for cfg_path, cell_id in zip(configs, ids, strict=True):
        cells = cells_by_id(load(repo / cfg_path))
        assert cell_id in cells, (cfg_path, cell_id)
    gpu = cells_by_id(load(repo / "config" / "gpu-quick.yaml"))[ids[0]]
    # the full-size cell is gpu.yaml's largest: its batch, H = 256, T = 10^4
    full_batch = load(repo / "config" / "gpu.yaml")["gradient_flow"]["batch"]
    assert (gpu.model, gpu.hidden, gpu.batch, gpu.seq_len) == ("lstm", 256, full_batch, 10_000)
    cfg = load(repo / "config" / "gpu-quick.yaml")
    gf, bench = cfg["gradient_flow"], cfg["bench"]
    assert set(gf["models"]) == {"rnn_tanh", "rnn_relu", "rnn_linear", "lstm", "gru"}
    assert (gf["hidden"], gf["seq_len"]) == ([64, 256], [1000, 10000])
    assert set(bench["variants"]) == {"cupy", "torch"}
    assert min(bench["hidden"]) <= 64 and max(bench["seq_len"]) >= 1000
    assert any(s.get("label") == "peak" for s in bench["shapes"])
    assert load(repo / "config" / "gpu-quick-rehearsal.yaml")["hardware_tag"] == "rehearsal-cpu"


def test_junit_verdict(tmp_path, capsys) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2">'
                   '<testcase name="a"><skipped message="needs a GPU"/></testcase>'
                   "</testsuite></testsuites>")
    assert gpucheck.junit(str(xml), need_run=False) == 1
    assert "5 tests: 2 passed, 1 failed, 0 errors, 2 skipped (skip reasons: needs a GPU)" in \
        capsys.readouterr().out
    xml.write_text('<testsuite tests="3" failures="0" errors="0" skipped="3"></testsuite>')
    assert gpucheck.junit(str(xml), need_run=False) == 0
    assert gpucheck.junit(str(xml), need_run=True) == 1  # on a GPU, nothing run is a failure


def test_validation_verdict(tmp_path, capsys, rng_seed) -> None:
    from bpttbench.validation.kernels import write_validation_csv

    rows = [{"kernel": "k", "shape": f"{i}x4", "dtype": "float32",
             "max_rel_err": 10.0 ** -(6 - (i == rng_seed % 3) * 3), "tolerance": 1e-4,
             "passed": i != rng_seed % 3} for i in range(3)]
    path = write_validation_csv(rows, tmp_path / "v.csv")
    capsys.readouterr()  # drop the seed line
    assert gpucheck.validation(str(path)) == 1
    out = capsys.readouterr().out
    assert out.startswith("2/3 kernel checks passed; failed: k ")
    for r in rows:
        r["passed"] = True
    assert gpucheck.validation(str(write_validation_csv(rows, tmp_path / "w.csv"))) == 0


def test_pip_report_lists_local_wheels(tmp_path, capsys) -> None:
    wheel = tmp_path / "a dir" / "x_y-1.0-py3-none-any.whl"
    report = {"install": [{"download_info": {"url": wheel.as_uri()}}]}
    (tmp_path / "r.json").write_text(json.dumps(report))
    assert gpucheck.pip_report(str(tmp_path / "r.json")) == 0
    assert capsys.readouterr().out.strip() == str(wheel)
    report["install"].append({"download_info": {"url": "https://example.org/z.whl"}})
    (tmp_path / "r.json").write_text(json.dumps(report))
    assert gpucheck.pip_report(str(tmp_path / "r.json")) == 1


def test_script_refuses_a_foreign_outdir(tmp_path, repo) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    proc = subprocess.run(["bash", str(repo / "scripts" / "gpu-check.sh"), "--cpu-rehearsal",
                           str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))
    assert proc.returncode == 2 and "holds mine.txt" in proc.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_quick_gpu_config_builds_its_workflow(tmp_path, repo, snakemake_env) -> None:
    """snakemake -n on config/gpu-quick.yaml: the DAG the GPU run will build (here for the CPU)."""
    proc = subprocess.run(["snakemake", "-s", str(repo / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(repo / "config" / "gpu-quick.yaml"), "-n",
                           "--cores", "16"], capture_output=True, text=True,
                          env=snakemake_env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert re.search(r"gradient_flow_block\s+10\b", text), text[-2000:]
    for rule in ("bench_op", "bench_peak", "report_html", "manifest"):
        assert rule in text
