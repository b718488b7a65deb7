"""Peak memory of ``bpttbench gradient-flow collect`` on a synthetic sweep of a config's size.

Writes one Parquet block folder per block of the config (random numbers in the shape the
cells would produce: per-lag rows at the config's ``gradient_flow.lags``, k chain rows per
lag), then runs ``bpttbench gradient-flow collect`` in a child process and reports its peak resident
memory (``ru_maxrss`` of the child).

    python benchmarks/synthetic_collect.py --configfile config/gpu.yaml --work /tmp/sc
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bpttbench import contract
from bpttbench.config import blocks_by_id, load
from bpttbench.gradient_flow.blocks import reported_lags
from bpttbench.gradient_flow.gradients import QUANTILES
from bpttbench.models import state_size
from bpttbench.tables import CELL_KEYS

SUMMARY = contract.table("summary")


def _filler(table: contract.Table, rng: np.random.Generator) -> dict[str, object]:
    """A value of its kind for every column the contract requires of ``table`` (collect
    validates the tables it writes against the contract)."""
    fill = {"float": lambda: float(rng.standard_normal()), "int": lambda: 1,
            "str": lambda: "synthetic", "bool": lambda: False, "any": lambda: None}
    return {c.name: fill[c.kind]() for c in table.columns if not c.optional}


def _block_tables(cells, lags_mode: str, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    gf, ly, cs, su = [], [], [], []
    for c in cells:
        key = {k: getattr(c, k) for k in CELL_KEYS}
        lags = reported_lags(c.seq_len, lags_mode)
        n = len(lags)
        base = -0.01 * lags + rng.standard_normal(n)
        cols = {"lag": lags, "log_grad_norm": base, "log_grad_norm_std": rng.random(n)}
        for q in QUANTILES:
            cols[f"log_grad_norm_q{round(q * 100):02d}"] = base + rng.standard_normal(n)
        cols["n_finite"] = np.full(n, c.batch)
        if c.model == "lstm":
            cols["log_grad_norm_c"] = base + 0.1
        gf.append(pd.DataFrame({**key, **cols}))
        k = min(c.lyapunov_k, state_size(c.model, c.hidden))
        ly.append(pd.DataFrame({**key, "index": np.arange(1, k + 1),
                                "exponent": -np.sort(rng.random(k)),
                                "exponent_std": rng.random(k)}))
        chain_lags = lags[lags >= 1]
        cs.append(pd.DataFrame({**key, "lag": np.repeat(chain_lags, k),
                                "index": np.tile(np.arange(1, k + 1), chain_lags.size),
                                "log_sv": rng.standard_normal(chain_lags.size * k)}))
        su.append({**_filler(SUMMARY, rng), **key, "growth_rate": float(rng.standard_normal()),
                   "status": "ok", "lyapunov_max": float(rng.standard_normal()), "wall_s": 1.0})
    return {"gradient_flow": pd.concat(gf, ignore_index=True),
            "lyapunov": pd.concat(ly, ignore_index=True),
            "chain_spectrum": pd.concat(cs, ignore_index=True), "summary": pd.DataFrame(su)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", default="config/gpu.yaml")
    ap.add_argument("--work", required=True)
    ap.add_argument("--lags", choices=("log", "full"), default=None,
                    help="override gradient_flow.lags")
    args = ap.parse_args()
    cfg = load(args.configfile)
    mode = args.lags or cfg["gradient_flow"]["lags"]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    rng = np.random.default_rng(0)
    folders, rows, nbytes = [], {}, 0
    for bid, cells in blocks_by_id(cfg).items():
        folder = work / "blocks" / bid
        folder.mkdir(parents=True)
        for name, df in _block_tables(cells, mode, rng).items():
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False),
                           folder / f"{name}.parquet")
            rows[name] = rows.get(name, 0) + len(df)
        nbytes += sum(f.stat().st_size for f in folder.iterdir())
        folders.append(str(folder))
    print(f"{len(folders)} blocks, {sum(len(c) for c in blocks_by_id(cfg).values())} cells, "
          f"lags={mode}, rows {rows}, {nbytes / 2**20:.1f} MiB of Parquet", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bpttbench.cli", "gradient-flow", "collect", "--out",
                    str(work / "tables"), *folders], check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10
    print(f"collect: peak RSS {peak:.0f} MiB, wall {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
