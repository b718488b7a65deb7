"""Whether a cell fits the memory free now, and giving memory back between cells.

The estimate of a cell's peak (two phases, BPTT and the Jacobian chain, from its shape alone)
is torch-free and lives in ``planning.memory``, which the workflow imports to size GPU jobs;
it is re-exported here for the jobs. The per-step units were counted op by op and checked
against the bytes torch allocates on the CPU (``tests/test_scale.py``).
"""

from __future__ import annotations

import os

from .config import CellSpec
from .planning.memory import (
    ALLOCATOR_SLACK,
    CUDA_OVERHEAD_BYTES,
    MemoryEstimate,
    block_peak_bytes,
    estimate_cell,
    long_range_peak_bytes,
)

__all__ = ["ALLOCATOR_SLACK", "CUDA_OVERHEAD_BYTES", "MemoryEstimate", "available_bytes",
           "block_peak_bytes", "estimate_cell", "long_range_peak_bytes", "release",
           "too_large_reason"]


def available_bytes(device: str) -> int:
    """Memory a cell may use now: free device memory on CUDA, MemAvailable on the CPU."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def too_large_reason(spec: CellSpec, device: str) -> str | None:
    """Why ``spec`` cannot run on ``device`` now (estimate > free memory), or None if it fits."""
    est = estimate_cell(spec, "cuda" if device.startswith("cuda") else "cpu")
    free = available_bytes(device)
    if est.peak_bytes <= free:
        return None
    return (f"estimated peak {est.peak_gib:.2f} GiB (BPTT graph {est.bptt_bytes / 2**30:.2f}, "
            f"chain {est.chain_bytes / 2**30:.2f}, inputs {est.inputs_bytes / 2**30:.2f}) exceeds "
            f"the {free / 2**30:.2f} GiB free on {device}; reduce seq_len, batch or hidden")


def release(device: str) -> None:
    """Give memory back between cells: collect cycles, empty the CUDA caches (torch's, and
    CuPy's pool when the chain's kernels ran: its cached blocks are not torch's to reuse)."""
    import gc
    import sys

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        cupy = sys.modules.get("cupy")
        if cupy is not None:
            cupy.get_default_memory_pool().free_all_blocks()
