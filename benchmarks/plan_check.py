"""The cost model against a measured pipeline run on this machine.

Calibrates (``bpttbench plan estimate --machine this``), then runs the whole pipeline of a
config with ``snakemake --cores 1`` in a scratch folder and prints estimate, measured wall time and ratio.

    python benchmarks/plan_check.py --configfile benchmarks/plan_check.yaml --work /tmp/pc
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", default=str(REPO / "benchmarks" / "plan_check.yaml"))
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    cfg = str(Path(args.configfile).resolve())
    out = subprocess.run([sys.executable, "-m", "bpttbench.cli", "plan", "estimate", "--config", cfg,
                          "--machine", "this", "--gpus", "1", "--json"], check=True,
                         capture_output=True, text=True).stdout
    est = json.loads(out)["total_seconds"]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                    "--directory", str(work), "--cores", "1", "--configfile", cfg],
                   check=True, capture_output=True)
    wall = time.perf_counter() - t0
    print(f"estimate {est:.1f} s, measured {wall:.1f} s, measured/estimate {wall / est:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
