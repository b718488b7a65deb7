"""The Python side of scripts/gpu-check.sh: probe, device facts and one-line step verdicts.

The shell script drives the steps (timeouts, budget, summary.md); this module answers the
questions it asks, one subcommand each, and prints one line the script puts in the
summary. Run as ``python -m bpttbench.gpucheck <command> ...``. ``probe`` imports nothing
heavy, so it works where torch itself is missing; the others import what they read.

Exit codes: 0 = the step passed, 1 = it failed (the printed line says why), 3 = no CUDA
device (``facts`` only: CUDA-only steps are then skipped with the printed reason).
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

# module -> distribution, in probe order: what the pipeline, the tests and the GPU steps use.
MODULES: dict[str, str] = {
    "torch": "torch", "cupy": "cupy-cuda13x", "numpy": "numpy", "pandas": "pandas",
    "pyarrow": "pyarrow", "scipy": "scipy", "matplotlib": "matplotlib", "seaborn": "seaborn",
    "pytest": "pytest", "yaml": "pyyaml", "tqdm": "tqdm", "jsonschema": "jsonschema",
    "snakemake": "snakemake",
}
CUPY_DISTS = ("cupy-cuda13x", "cupy-cuda12x", "cupy")
OPTIONAL = {"cupy"}  # the CPU rehearsal runs without it


def _dist_version(module: str) -> str | None:
    names = CUPY_DISTS if module == "cupy" else (MODULES[module],)
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def probe(missing_out: str | None) -> int:
    """Which modules are importable (found, not imported); missing distributions to a file."""
    missing = []
    for module, dist in MODULES.items():
        found = importlib.util.find_spec(module) is not None
        version = _dist_version(module) if found else None
        print(f"{module:<11} {version or ('present' if found else 'MISSING')}")
        if not found and module not in OPTIONAL:
            missing.append(dist)
    if missing_out:
        Path(missing_out).write_text("".join(f"{d}\n" for d in missing))
    print(f"missing: {' '.join(missing) or 'none'}")
    return 0


def find_tool(name: str) -> str | None:
    """A CUDA tool on PATH or in the usual CUDA folders (often not on PATH)."""
    hits = [shutil.which(name), f"/usr/local/cuda/bin/{name}",
            *sorted(glob.glob(f"/usr/local/cuda-*/bin/{name}"), reverse=True)]
    return next((h for h in hits if h and os.access(h, os.X_OK)), None)


def _run(cmd: Sequence[str]) -> str:
    exe = find_tool(cmd[0])
    if exe is None:
        return f"{cmd[0]}: not found"
    try:
        out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{cmd[0]}: {type(exc).__name__}: {exc}"


def facts(out: str, key_out: str) -> int:
    """Device and software facts: the full text to ``out``, the key lines to ``key_out``."""
    import torch

    from bpttbench.hardware import cpu_model, hardware_tag, nvidia_driver
    from bpttbench.jacobians.cupy_backend import cupy_available

    key: dict[str, object] = {"python": platform.python_version(), "torch": torch.__version__,
                              "cpu": f"{cpu_model()} ({os.cpu_count()} cores)"}
    cuda = torch.cuda.is_available()
    if cuda:
        p = torch.cuda.get_device_properties(0)
        key.update(gpu=f"{p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs,"
                       f" compute capability {p.major}.{p.minor}",
                   gpus=torch.cuda.device_count(), driver=nvidia_driver(),
                   torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        key["gpu"] = "none visible to torch (torch.cuda.is_available() is False)"
    usable, why = cupy_available()
    key["cupy"] = why
    if usable:
        import cupy as cp

        key["cupy_cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        key["cupy_cuda_driver"] = cp.cuda.runtime.driverGetVersion()
    key["hardware_tag"] = hardware_tag({"device": "auto"})
    for tool in ("nvcc", "compute-sanitizer", "ncu"):
        key[tool] = (_run([tool, "--version"]) or "no output").splitlines()[-1]
    lines = [f"{k}: {v}" for k, v in key.items()]
    text = "\n".join(lines) + "\n\n" + "\n\n".join(
        f"$ {' '.join(c)}\n{_run(c)}" for c in (
            ["nvidia-smi"],
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap,"
             "clocks.max.sm,clocks.max.mem,power.limit,pcie.link.gen.max", "--format=csv"],
            ["nvcc", "--version"], ["compute-sanitizer", "--version"], ["ncu", "--version"])
    ) + "\n"
    Path(out).write_text(text)
    Path(key_out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not (cuda and usable):
        reason = key["gpu"] if not cuda else why
        print(f"no CUDA: {reason}")
        return 3
    return 0


def junit(path: str, need_run: bool) -> int:
    """Counts of a JUnit XML; fails on a failure or error (or, with need_run, nothing run)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors",
                                                               "skipped")}
    ran = n["tests"] - n["skipped"]
    reasons = sorted({(sk.get("message") or "").strip() for sk in root.iter("skipped")} - {""})
    line = (f"{n['tests']} tests: {ran - n['failures'] - n['errors']} passed, "
            f"{n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped")
    if n["skipped"] and reasons:
        line += f" (skip reasons: {'; '.join(reasons)[:300]})"
    if need_run and ran == 0:
        line += "; none ran, where a GPU check needs them to"
    print(line)
    bad = n["failures"] + n["errors"] > 0 or (need_run and ran == 0) or n["tests"] == 0
    return 1 if bad else 0


def validation(path: str) -> int:
    """validation.csv: how many kernel checks passed; the failing ones named."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    failed = [r for r in rows if r["passed"].strip().lower() != "true"]
    line = f"{len(rows) - len(failed)}/{len(rows)} kernel checks passed"
    if failed:
        line += "; failed: " + ", ".join(
            f"{r['kernel']} {r['shape']} {r['dtype']} (err {float(r['max_rel_err']):.2g} > "
            f"tol {float(r['tolerance']):.0g})" for r in failed[:6])
    print(line)
    return 1 if failed or not rows else 0


def cell(path: str) -> int:
    """A cell record: status, wall time and peak memory; fails on status error."""
    import json

    from bpttbench.peak_memory import describe

    rec = json.loads(Path(path).read_text())
    s = rec["summary"]
    line = (f"{rec['cell_id']} on {rec.get('device', '?')}: status {s['status']}, "
            f"wall {rec['wall_s']:.1f} s, growth_rate {s.get('growth_rate', float('nan')):.4g}, "
            f"lyapunov_max {s.get('lyapunov_max', float('nan')):.4g}, "
            f"backend {rec.get('jacobian_backend', '?')}")
    if "peak_memory" in rec:
        line += f"; {describe(rec['peak_memory'])}"
    if "error" in rec or "chain_error" in rec:
        line += f"; error: {rec.get('error') or rec.get('chain_error')}"
    print(line)
    return 1 if s["status"] == "error" or "chain_error" in rec else 0


def launches(path: str) -> int:
    """launch_counts CSV: launches per step against the model, per model; fails where a host
    read or a sync happens once a step or more (the step loop must not round-trip)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    parts = [f"{r['model']} {float(r['launches_per_step']):.1f} "
             f"(model {float(r['model_launches_per_step']):.1f})" for r in rows]
    worst = max((max(float(r["host_reads_per_step"]), float(r["syncs_per_step"]))
                 for r in rows), default=0.0)
    print(f"launches a step on {rows[0]['device'] if rows else '?'}: " + ", ".join(parts)
          + f"; host reads or syncs a step at most {worst:.3f}")
    return 1 if not rows or worst >= 0.5 else 0


def resultset(folder: str) -> int:
    """A result set: cells by status, kernel checks, bench targets met; fails without report."""
    import pandas as pd

    from bpttbench.contract import table_path, twin_file

    d = Path(folder)
    parts = []
    summary = table_path(d, "summary")
    if summary.exists():
        st = pd.read_csv(summary)["status"].value_counts().to_dict()
        parts.append(f"{sum(st.values())} cells ({', '.join(f'{k} {v}' for k, v in sorted(st.items()))})")
    val = table_path(d, "validation")
    if val.exists():
        rows = pd.read_csv(val)
        parts.append(f"kernel checks {int(rows['passed'].sum())}/{len(rows)}")
    targets = table_path(d, "bench_targets")
    if targets.exists():
        t = pd.read_csv(targets)
        judged = t[t["met"].notna()]
        parts.append(f"bench targets met {int(judged['met'].astype(bool).sum())}/{len(judged)}"
                     f" judged ({len(t) - len(judged)} not applicable or no rows)")
    bench = d / "tables" / twin_file("bench")
    if bench.exists():
        b = pd.read_csv(bench)
        parts.append(f"bench rows {', '.join(f'{k} {v}' for k, v in b['status'].value_counts().items())}"
                     if "status" in b else f"bench rows {len(b)}")
    report = d / "report.html"
    parts.append("report.html written" if report.exists() else "no report.html")
    print(f"{d.name}: " + "; ".join(parts))
    return 0 if report.exists() else 1


def pip_report(path: str) -> int:
    """The local wheel files a ``pip install --dry-run --report`` would install, one a line."""
    import json
    from urllib.parse import unquote, urlparse

    items = json.loads(Path(path).read_text()).get("install", [])
    for item in items:
        url = urlparse(item["download_info"]["url"])
        if url.scheme != "file":
            print(f"not a local file: {item['download_info']['url']}", file=sys.stderr)
            return 1
        print(unquote(url.path))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bpttbench.gpucheck", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--missing-out")
    p = sub.add_parser("facts")
    p.add_argument("--out", required=True)
    p.add_argument("--key-out", required=True)
    p = sub.add_parser("junit")
    p.add_argument("path")
    p.add_argument("--need-run", action="store_true")
    for name in ("validation", "cell", "launches", "resultset", "pip-report"):
        sub.add_parser(name).add_argument("path")
    a = parser.parse_args(argv)
    if a.command == "probe":
        return probe(a.missing_out)
    if a.command == "facts":
        return facts(a.out, a.key_out)
    if a.command == "junit":
        return junit(a.path, a.need_run)
    steps = {"validation": validation, "cell": cell, "launches": launches, "resultset": resultset,
             "pip-report": pip_report}
    return steps[a.command](a.path)


if __name__ == "__main__":
    sys.exit(main())
