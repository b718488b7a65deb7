"""Peak memory of a run: GPU memory held by torch and CuPy, and the process's max RSS.

Used by ``bpttbench gradient-flow cell --peak-memory`` (and scripts/gpu-check.sh) to say what one
full-size cell needs. torch and CuPy have separate caching allocators, so both are read:
``torch.cuda.max_memory_allocated`` is torch's peak of live tensors since the last reset;
CuPy's default pool never gives memory back by itself, so the bytes it holds at the end
are the most CuPy ever had at once. Their sum bounds the GPU peak from above (the two
peaks need not coincide).
"""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch


def reset_peak_memory(device: str) -> None:
    """Start a new peak: torch's counter is reset (CuPy's pool and max RSS cannot be)."""
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def max_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib) * (1 if sys.platform == "darwin" else 1024)


def _cupy_pool_bytes() -> int | None:
    cp = sys.modules.get("cupy")  # only if this run imported CuPy: never import it here
    if cp is None:
        return None
    try:
        return int(cp.get_default_memory_pool().total_bytes())
    except Exception:  # a CuPy without a usable device
        return None


def peak_memory(device: str) -> dict[str, Any]:
    """What the run held at most: host max RSS; on CUDA also torch's peak and CuPy's pool.

    Keys: device, max_rss_bytes, torch_cuda_peak_bytes, cupy_pool_bytes and
    gpu_peak_bytes_upper (torch peak + CuPy pool; None on the CPU).
    """
    out: dict[str, Any] = {"device": device, "max_rss_bytes": max_rss_bytes(),
                           "torch_cuda_peak_bytes": None, "cupy_pool_bytes": None,
                           "gpu_peak_bytes_upper": None}
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()
        out["torch_cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
        out["cupy_pool_bytes"] = _cupy_pool_bytes()
        out["gpu_peak_bytes_upper"] = out["torch_cuda_peak_bytes"] + (out["cupy_pool_bytes"] or 0)
    return out


def describe(peak: dict[str, Any]) -> str:
    """One line for logs and summaries."""
    gib = 2.0**30
    text = f"max RSS {peak['max_rss_bytes'] / gib:.3f} GiB"
    if peak.get("gpu_peak_bytes_upper") is not None:
        cupy_b = peak["cupy_pool_bytes"]
        text = (f"GPU peak <= {peak['gpu_peak_bytes_upper'] / gib:.3f} GiB (torch "
                f"max_memory_allocated {peak['torch_cuda_peak_bytes'] / gib:.3f} GiB + CuPy pool "
                f"{0 if cupy_b is None else cupy_b / gib:.3f} GiB); " + text)
    return text
