"""Peak memory of a run (bpttbench.peak_memory, `bpttbench gradient-flow cell --peak-memory`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bpttbench.cli import main
from bpttbench.peak_memory import peak_memory, reset_peak_memory

MIB = 2**20


def current_rss_bytes() -> int:
    """Resident memory now, from /proc (the reference the high-water mark must reach)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_max_rss_covers_a_touched_allocation(rng_seed):
    """In a fresh process: in this one, earlier tests may have left freed pages resident that
    a new allocation reuses (then the RSS does not grow, and there is nothing to see)."""
    code = f"""
import json, os
from pathlib import Path
import numpy as np
from bpttbench.peak_memory import max_rss_bytes, peak_memory
def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
block = np.random.default_rng({rng_seed}).random({96 * MIB} // 8)  # every page written
during = rss()
print(json.dumps({{"before": before, "during": during, "peak": max_rss_bytes(),
                  "reported": peak_memory("cpu")["max_rss_bytes"]}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout)
    n = 96 * MIB
    assert out["during"] - out["before"] >= 0.95 * n  # the reference saw the allocation
    assert out["peak"] >= out["during"] - 4 * MIB  # ru_maxrss is the high-water mark of the RSS
    assert out["reported"] >= out["peak"]


def test_cell_peak_memory_on_cpu(tmp_path, rng_seed):
    seed = rng_seed % 1000
    cfg = {"device": "cpu", "gradient_flow": {"models": ["lstm"], "hidden": 8, "batch": 3,
                                              "input_size": 2, "seq_len": 12, "weight_scale": 1.0,
                                              "seeds": [seed], "lyapunov_k": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cell.json"
    cell_id = f"lstm-orthogonal-h8-T12-s1-seed{seed}"
    rss_now = current_rss_bytes() if os.path.exists("/proc/self/statm") else 0
    assert main(["gradient-flow", "cell", cell_id, "--config", str(tmp_path / "c.yaml"), "--out", str(out),
                 "--peak-memory"]) == 0
    record = json.loads(out.read_text())
    assert record["summary"]["status"] == "ok"
    peak = record["peak_memory"]
    assert peak["device"] == "cpu"
    assert peak["max_rss_bytes"] >= rss_now - 4 * MIB
    assert peak["torch_cuda_peak_bytes"] is None and peak["gpu_peak_bytes_upper"] is None
    assert record["wall_s"] > 0


def test_cell_without_peak_memory_records_none(tmp_path):
    cfg = {"device": "cpu", "gradient_flow": {"models": ["rnn_tanh"], "hidden": 4, "batch": 2,
                                              "input_size": 2, "seq_len": 6, "weight_scale": 1.0,
                                              "lyapunov_k": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cell.json"
    assert main(["gradient-flow", "cell", "rnn_tanh-orthogonal-h4-T6-s1-seed0", "--config",
                 str(tmp_path / "c.yaml"), "--out", str(out)]) == 0
    assert "peak_memory" not in json.loads(out.read_text())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_peak_counts_torch_and_cupy_allocations():
    cp = pytest.importorskip("cupy")
    reset_peak_memory("cuda")
    base = torch.cuda.memory_allocated()
    t = torch.empty(64 * MIB // 4, dtype=torch.float32, device="cuda")
    c = cp.empty(32 * MIB // 8, dtype=cp.float64)
    peak = peak_memory("cuda")
    assert peak["torch_cuda_peak_bytes"] >= base + 64 * MIB
    assert peak["cupy_pool_bytes"] >= 32 * MIB
    assert peak["gpu_peak_bytes_upper"] == peak["torch_cuda_peak_bytes"] + peak["cupy_pool_bytes"]
    del t, c
