"""Timing done properly, and the machine's measured peaks (the roofline's two ceilings).

- GPU: ``torch.cuda.Event`` pairs on the current stream around every call (CuPy kernels
  run on torch's stream, so the events bracket them too), after ``warmup`` untimed calls;
- CPU: ``time.perf_counter`` around every call;
- statistics: median and inter-quartile range over the n timed calls, n recorded.

Peaks: FP32 (the bench dtype) GEMM rate from ``torch.matmul`` (and ``numpy.matmul`` on the
CPU) of square matrices, and device-memory copy bandwidth from a large tensor copy
(bytes moved = read + write = 2 x size). The highest rate measured is the peak.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Timing:
    """Per-call times in milliseconds of the timed (post-warm-up) calls."""

    times_ms: list[float]
    warmup_ms: list[float]
    last_output: Any = None

    @property
    def n(self) -> int:
        return len(self.times_ms)

    def stats(self) -> dict[str, float]:
        t = np.asarray(self.times_ms, dtype=np.float64)
        q25, med, q75 = np.percentile(t, [25, 50, 75])
        return {"n": int(t.size), "median_ms": float(med), "q25_ms": float(q25),
                "q75_ms": float(q75), "iqr_ms": float(q75 - q25), "min_ms": float(t.min()),
                "mean_ms": float(t.mean())}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_once(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """One call of ``fn``: (milliseconds, its output); CUDA events on a GPU."""
    if device == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)), out
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def benchmark(fn: Callable[[], Any], device: str, *, warmup: int, repeats: int,
              time_budget_s: float, max_call_s: float) -> Timing:
    """Warm up, then time up to ``repeats`` calls.

    Timing stops early once ``time_budget_s`` of timed calls are spent (after at least
    min(3, repeats) calls), or after the first timed call when one call (warm-up or timed)
    takes longer than ``max_call_s``. A slow warm-up call skips the remaining warm-ups.
    """
    warm: list[float] = []
    for _ in range(warmup):
        ms, _out = time_once(fn, device)
        warm.append(ms)
        del _out
        if ms > max_call_s * 1e3:
            break
    times: list[float] = []
    out = None
    min_n = min(3, repeats)
    while len(times) < repeats:
        ms, out = time_once(fn, device)
        times.append(ms)
        if ms > max_call_s * 1e3 or (warm and max(warm) > max_call_s * 1e3):
            break
        if len(times) >= min_n and sum(times) > time_budget_s * 1e3:
            break
    return Timing(times, warm, out)


# ---------------------------------------------------------------------------- BLAS threads

_OPENBLAS_PREFIXES = ("scipy_openblas", "openblas")
_OPENBLAS_SUFFIXES = ("64_", "")


def _openblas() -> Any:
    """NumPy's loaded OpenBLAS (found in /proc/self/maps), or None (other BLAS, not Linux)."""
    import ctypes

    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({ln.split()[-1] for ln in fh if "openblas" in ln and ".so" in ln})
    except OSError:
        return None
    for path in paths:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _blas_fn(lib: Any, what: str) -> Any:
    for pre in _OPENBLAS_PREFIXES:
        for suf in _OPENBLAS_SUFFIXES:
            fn = getattr(lib, f"{pre}_{what}_num_threads{suf}", None)
            if fn is not None:
                return fn
    return None


def blas_threads(set_to: int | None = None) -> int | None:
    """Threads of NumPy's OpenBLAS (set them first when ``set_to`` is given); None if unknown."""
    lib = _openblas()
    if lib is None:
        return None
    if set_to:
        fn = _blas_fn(lib, "set")
        if fn is not None:
            fn(int(set_to))
    get = _blas_fn(lib, "get")
    return int(get()) if get is not None else None


def set_threads(threads: int) -> None:
    """torch.set_num_threads and NumPy's BLAS threads to ``threads`` (0: leave both alone)."""
    if threads > 0:
        torch.set_num_threads(threads)
        blas_threads(threads)


# ---------------------------------------------------------------------------------- peaks

#: square GEMM sizes tried per device
GEMM_SIZES = {"cpu": (1024, 2048), "cuda": (4096, 8192)}
#: bytes of the source buffer of the copy per device
COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}


def device_name(device: str) -> str:
    from bpttbench.hardware import cpu_model

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_model()


def measure_peaks(device: str, dtype: torch.dtype, *, repeats: int = 5, warmup: int = 1,
                  time_budget_s: float = 5.0) -> list[dict[str, Any]]:
    """GEMM rate and copy bandwidth on ``device``; one dict per method and size."""
    rows: list[dict[str, Any]] = []
    kw = {"warmup": warmup, "repeats": repeats, "time_budget_s": time_budget_s,
          "max_call_s": 60.0}
    name = device_name(device)
    threads = torch.get_num_threads()
    dt_name = str(dtype).removeprefix("torch.")

    def add(quantity: str, method: str, size: int, timing: Timing, work: float, unit: str) -> None:
        st = timing.stats()
        nthreads = (blas_threads() or -1) if method.startswith("numpy") else threads
        rows.append({"device": device, "device_name": name, "quantity": quantity,
                     "method": method, "size": size, "dtype": dt_name, "threads": nthreads,
                     "n": st["n"], "median_ms": st["median_ms"], "iqr_ms": st["iqr_ms"],
                     "value": work / (st["median_ms"] * 1e-3), "unit": unit})

    for n in GEMM_SIZES[device]:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        t = benchmark(lambda a=a, b=b: torch.matmul(a, b), device, **kw)
        add("gemm_flops", "torch.matmul", n, t, 2.0 * n**3, "FLOP/s")
        if device == "cpu":
            an, bn = a.numpy(), b.numpy()
            t = benchmark(lambda an=an, bn=bn: np.matmul(an, bn), device, **kw)
            add("gemm_flops", "numpy.matmul", n, t, 2.0 * n**3, "FLOP/s")
        del a, b
    nbytes = COPY_BYTES[device]
    elems = nbytes // torch.empty((), dtype=dtype).element_size()
    src = torch.rand(elems, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    t = benchmark(lambda dst=dst, src=src: dst.copy_(src), device, **kw)
    add("copy_bandwidth", "torch copy_", nbytes, t, 2.0 * nbytes, "B/s")
    if device == "cpu":
        sn, dn = src.numpy(), dst.numpy()
        t = benchmark(lambda dn=dn, sn=sn: np.copyto(dn, sn), device, **kw)
        add("copy_bandwidth", "numpy.copyto", nbytes, t, 2.0 * nbytes, "B/s")
    del src, dst
    if device == "cuda":
        torch.cuda.empty_cache()
    best = {}
    for i, r in enumerate(rows):
        if r["quantity"] not in best or r["value"] > rows[best[r["quantity"]]]["value"]:
            best[r["quantity"]] = i
    for i, r in enumerate(rows):
        r["peak"] = i == best[r["quantity"]]
    return rows
