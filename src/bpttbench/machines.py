"""Per-machine calibration of the cost model: rates, per-launch cost, memory.

``MACHINES`` holds the GPU targets from their published peaks (NVIDIA H100 SXM and H200
data sheets: FP32 67 TFLOP/s, FP64 34 TFLOP/s, HBM 3.35 / 4.8 TB/s, 80 / 141 GB) scaled by
the fraction small recurrent GEMMs and element-wise kernels reach (``GPU_EFFICIENCY``), and
an eager-PyTorch launch cost of ``GPU_LAUNCH_S`` per op (host dispatch; kernels of an
unrolled cell are too small to hide it). These stay estimates until measured on the GPU.
``measure_this()`` calibrates the machine it runs on: the GEMM rate and copy bandwidth at
the sizes of a cell, and the launch cost as the wall time per counted launch of a small
unrolled BPTT (dispatch, autograd bookkeeping and Python loop together), and a job's start-up
as the wall time of a fresh process that imports the package and runs one tiny cell.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

GPU_LAUNCH_S = 10e-6  # eager PyTorch op dispatch on a fast host (assumed until measured)
GPU_EFFICIENCY = {"flops": 0.5, "bandwidth": 0.7}  # of the published peak, for these shapes


@dataclass(frozen=True)
class Machine:
    name: str
    kind: str  # cpu or cuda
    flops_fp32: float  # attainable FLOP/s
    flops_fp64: float
    bandwidth: float  # attainable B/s
    launch_s: float  # seconds per launch (dispatch)
    memory_bytes: int  # per device
    startup_s: float  # process start (imports, CUDA context) per job
    source: str

    def flop_rate(self, dtype: str) -> float:
        return self.flops_fp64 if dtype == "float64" else self.flops_fp32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gpu(name: str, fp32: float, fp64: float, bw: float, mem: float, sheet: str) -> Machine:
    return Machine(name, "cuda", fp32 * GPU_EFFICIENCY["flops"], fp64 * GPU_EFFICIENCY["flops"],
                   bw * GPU_EFFICIENCY["bandwidth"], GPU_LAUNCH_S, int(mem), 8.0,
                   f"published peaks ({sheet}) x efficiency {GPU_EFFICIENCY}; launch "
                   f"{GPU_LAUNCH_S * 1e6:.0f} us assumed; not yet measured")


MACHINES: dict[str, Machine] = {
    "h100": _gpu("h100", 67e12, 34e12, 3.35e12, 80e9, "H100 SXM5"),
    "h200": _gpu("h200", 67e12, 34e12, 4.8e12, 141e9, "H200 SXM"),
}


_STARTUP_SCRIPT = """
import bpttbench.cli
from bpttbench.gradient_flow.cells import run_cell
from bpttbench.config import CellSpec
run_cell(CellSpec("lstm", "orthogonal", 4, 3, 1.0, 0, 2, 1.0, 0.0, 2, 2, 1, "cpu", "float32",
                  False, True, "torch"))
"""


def _median_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure_this(device: str = "cpu") -> Machine:
    """Calibrate the machine this runs on (a few seconds)."""
    import torch

    from .config import CellSpec
    from .costmodel import launches_of
    from .gradient_flow.cells import build_cell, make_inputs
    from .gradient_flow.gradients import measure_gradient_flow, readout_problem
    from .memory import available_bytes

    torch.manual_seed(0)
    rates = {}
    for dt, name in ((torch.float32, "fp32"), (torch.float64, "fp64")):
        a = torch.randn(128, 256, dtype=dt, device=device)
        b = torch.randn(256, 1024, dtype=dt, device=device)
        rates[name] = 2 * 128 * 256 * 1024 * 20 / _median_time(lambda a=a, b=b: [a @ b for _ in range(20)])
    src = torch.empty(16 * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 * 10 / _median_time(lambda: [dst.copy_(src) for _ in range(10)])

    def flow(t: int):
        spec = CellSpec("rnn_tanh", "orthogonal", 8, t, 1.0, 0, 4, 1.0, 0.0, 2, 4, 1, device,
                        "float32", False, True, "torch")
        cell, x = build_cell(spec, device), make_inputs(spec, device)
        w, y = readout_problem(8, 2, seed=0)
        return lambda: measure_gradient_flow("rnn_tanh", cell.params(), x, cell.initial_state(2),
                                             w, y)

    short, long_ = flow(100), flow(1100)
    per_step = _median_time(long_, 3) - _median_time(short, 3)
    counted = launches_of("rnn_tanh", torch.are_deterministic_algorithms_enabled())["bptt"]
    launch_s = max(per_step / 1000 / counted, 1e-7)
    t0 = time.perf_counter()
    import subprocess
    import sys

    # a job's fixed cost: interpreter, imports and the first (warm-up) cell of a tiny shape
    subprocess.run([sys.executable, "-c", _STARTUP_SCRIPT], check=True)
    startup = time.perf_counter() - t0
    mem = (torch.cuda.get_device_properties(0).total_memory if device == "cuda"
           else available_bytes("cpu"))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return Machine("this", device, rates["fp32"], rates["fp64"], bandwidth, launch_s, int(mem),
                   startup, f"measured on this machine at {when}")


def get_machine(name: str) -> Machine:
    if name == "this":
        import torch

        return measure_this("cuda" if torch.cuda.is_available() else "cpu")
    if name not in MACHINES:
        raise ValueError(f"unknown machine {name!r}; allowed: this, {', '.join(MACHINES)}")
    return MACHINES[name]
