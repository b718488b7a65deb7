"""Whether a cell fits the memory free now, and giving memory back between cells.

The estimate itself is torch-free (``planning.memory``, which the workflow imports); its
model, summarised:

Peak memory of a gradient-flow cell, known from its shape before it runs.

A cell runs in two phases that never overlap (the BPTT graph is freed before the chain).
With u = B x H x itemsize bytes per step:

1. BPTT by autograd over the unrolled cell. The graph keeps ``GRAPH_UNITS`` u per step
   (rnn_*: h_t; LSTM: i, f, g, o, c_t, tanh c_t, h_t and autograd's own buffers; GRU: r, z,
   1 - z, n, h_t and W_hh h + b_hh [B, 3H], which r * h_n holds a view of), and
   ``autograd.grad`` returns delta_t for all T + 1 steps (D = H, or 2H for the LSTM) while it
   frees the graph. Then the states (kept by the caller) and the deltas are alive while the
   norms are reduced in chunks (a stacked copy and, unless already float64, its float64
   cast; ``gradients.REDUCE_CHUNK_BYTES`` of float64 at most).
2. The Jacobian chain. ``forward_saved`` precomputes the input part of every gate for all
   steps ([T, B, G H]) and writes ``SAVED_UNITS`` u per step into preallocated [T, ...]
   arrays (lists stacked at the end used to hold them twice). LSTM/GRU chains then build
   time chunks
   of [n, B, D, D] Jacobians (``chain.CHUNK_BYTES`` each) with ``JAC_TEMPS`` such arrays
   alive at once, next to the previous chunk and the stacked saved tensors.

Both phases hold the inputs x [T, B, I]. On a GPU the CUDA context, cuBLAS workspaces and
the caching allocator's rounding come on top (``CUDA_OVERHEAD_BYTES``, ``ALLOCATOR_SLACK``).
The per-step units were counted op by op and checked against the bytes torch allocates on
the CPU (``profiling.peak_allocated_bytes``; ``tests/test_scale.py``).
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
    """Give memory back between cells: collect cycles, empty the CUDA cache."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
