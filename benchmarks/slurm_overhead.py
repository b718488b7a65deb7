"""What a SLURM job costs on top of its work: queue latency and Snakemake's per-job overhead.

    python benchmarks/slurm_overhead.py [--jobs 10] [--chain 3] [--out overhead.json]
        [--status-command squeue] [--partition NAME]

1. ``sbatch`` submit-to-start latency: ``--jobs`` trivial jobs, one after another, each
   writing its start time; latency = start - the moment before ``sbatch`` was called.
2. Snakemake per-job overhead: a chain of ``--chain`` dependent one-second jobs run
   locally and through ``--executor slurm``; overhead per job = (SLURM wall - local wall)
   / chain length. It adds up the submission, queue wait, the Snakemake start inside the
   job and the status polling that notices the end (the plugin's first check comes after
   ``--init-s`` seconds and each further check is 10 s later than the last).

Runs from any directory on a host that can submit jobs; writes only to a temporary
directory (on a shared file system where the compute nodes see it: ``--tmp``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CHAIN_SNAKEFILE = """
N = {n}


rule all:
    input:
        f"step{{N - 1}}.txt",


rule step:
    input:
        lambda wc: [] if int(wc.i) == 0 else [f"step{{int(wc.i) - 1}}.txt"],
    output:
        "step{{i}}.txt",
    resources:
        mem_mb=100,
        runtime=5,
    shell:
        "sleep 1 && date +%s.%N > {{output}}"
"""


def sbatch_latency(n: int, workdir: Path, partition: str | None) -> list[float]:
    latencies = []
    for i in range(n):
        stamp = workdir / f"start{i}.txt"
        cmd = ["sbatch", "--parsable", "--job-name", "bpttbench-latency", "-o", "/dev/null",
               "-t", "1", "--mem", "100", "-D", str(workdir),
               "--wrap", f"date +%s.%N > {stamp}.tmp && mv {stamp}.tmp {stamp}"]
        if partition:
            cmd[1:1] = ["-p", partition]
        t0 = time.time()
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        deadline = time.monotonic() + 600
        while not stamp.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {i} did not start within 600 s")
            time.sleep(0.05)
        latencies.append(float(stamp.read_text()) - t0)
    return latencies


def chain_wall(workdir: Path, n: int, extra: list[str]) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "Snakefile").write_text(textwrap.dedent(CHAIN_SNAKEFILE.format(n=n)))
    snakemake = shutil.which("snakemake") or f"{sys.executable} -m snakemake"
    t0 = time.monotonic()
    subprocess.run([*snakemake.split(), "--directory", str(workdir), "-s",
                    str(workdir / "Snakefile"), "--quiet", "all", *extra],
                   check=True, capture_output=True, text=True)
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10, help="trivial jobs for the sbatch latency")
    ap.add_argument("--chain", type=int, default=3, help="dependent jobs in the Snakemake chain")
    ap.add_argument("--status-command", default=None, help="sacct or squeue (plugin default)")
    ap.add_argument("--init-s", type=int, default=1,
                    help="--slurm-init-seconds-before-status-checks for the chain")
    ap.add_argument("--partition", default=None)
    ap.add_argument("--tmp", default=None, help="parent of the temporary directory")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="slurm-overhead-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        lat = sbatch_latency(args.jobs, tmp, args.partition)
        local = chain_wall(tmp / "local", args.chain, ["--cores", "1"])
        slurm_opts = ["--executor", "slurm", "--jobs", "10",
                      "--slurm-init-seconds-before-status-checks", str(args.init_s)]
        if args.status_command:
            slurm_opts += ["--slurm-status-command", args.status_command]
        if args.partition:
            slurm_opts += ["--default-resources", f"slurm_partition={args.partition}"]
        slurm = chain_wall(tmp / "slurm", args.chain, slurm_opts)
    result = {
        "sbatch_submit_to_start_s": {
            "n": len(lat), "median": statistics.median(lat), "min": min(lat), "max": max(lat),
        },
        "snakemake_chain": {
            "jobs": args.chain, "local_wall_s": local, "slurm_wall_s": slurm,
            "overhead_per_job_s": (slurm - local) / args.chain,
            "init_seconds_before_status_checks": args.init_s,
        },
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
