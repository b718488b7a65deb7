#!/usr/bin/env python
"""Standalone runner of the bpttbench performance benchmarks (see benchmarks/README.md).

Runs ``bpttbench bench run``: measure the peaks, check and time every op x variant of the
config's ``bench:`` section, collect the table, evaluate benchmarks/targets.yaml and draw
the figures. Every option of ``bpttbench bench run`` works here, e.g.

    python benchmarks/run.py                                  # config/config.yaml, CPU grid
    python benchmarks/run.py --config config/gpu.yaml         # the GPU sweep
    python benchmarks/run.py --ops chain lyapunov --variants cupy torch \\
        --hidden 32 64 --batch 256 --seq-len 1000 --out /tmp/bench
    python benchmarks/run.py list                             # the factory table

Output (default results/<hardware tag>/): tables/bench.parquet + bench.csv, peak.csv,
bench_targets.csv and figures/bench_speedup.png, bench_roofline.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

try:
    import bpttbench  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(REPO / "src"))

from bpttbench.bench.cli import main  # noqa: E402

SUBCOMMANDS = ("list", "peak", "op", "collect", "figures", "run")


if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or argv[0] not in SUBCOMMANDS:
        argv = ["run", *argv]
    if argv[0] == "run" and "--targets" not in argv:
        argv += ["--targets", str(REPO / "benchmarks" / "targets.yaml")]
    sys.exit(main(argv))
