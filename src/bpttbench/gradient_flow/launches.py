"""Launches and host reads per time step of a gradient-flow cell, measured, against the model.

``bpttbench gradient-flow launches`` runs what a pipeline cell runs (its BPTT by the cell's
method, then the Lyapunov chain, on the shared forward record where the cell shares it) at two
sequence lengths under the torch profiler and reports the difference per step, beside the
cost model's launches per step (``costmodel.bptt_chain_step`` / ``bptt_step`` +
``chain_step``). On a GPU the profiler's CUDA activity (CUPTI) sees every kernel that ran,
torch's, cuBLAS's and our CuPy kernels alike, and every device-to-host copy (a host read, a
sync); on the CPU the counts are the leaf aten ops that do work and the tensor-to-host calls
(:mod:`bpttbench.profiling`), the numbers the cost model's torch tables were counted with.
scripts/gpu-check.sh runs it, so a lent GPU measures what the model assumes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..config import CellSpec
from ..profiling import count_host_reads, count_launches

#: CUPTI memcpy events of a device-to-host copy start with this (kineto's names)
DTOH = "Memcpy DtoH"
#: CUDA runtime/driver calls that wait for the device
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


@dataclasses.dataclass(frozen=True)
class Counts:
    """What ran while a function ran: kernels (GPU) or leaf aten ops (CPU), device-to-host
    copies or tensor-to-host calls, and explicit synchronisations (GPU only; 0 on the CPU)."""

    launches: int
    host_reads: int
    syncs: int


def classify(events: Iterable[Any]) -> Counts:
    """Counts of profiler events: ``device_type`` CUDA events are kernels, memcpys and
    memsets (a memset launches too); CPU events named in SYNC_CALLS are syncs."""
    launches = reads = syncs = 0
    for ev in events:
        name = ev.name
        if str(ev.device_type).endswith("CUDA"):
            if name.startswith(DTOH):
                reads += 1
            elif not name.startswith("Memcpy"):  # kernels and memsets
                launches += 1
        elif name in SYNC_CALLS:
            syncs += 1
    return Counts(launches, reads, syncs)


def count(fn: Callable[[], Any], device: str) -> Counts:
    """Run ``fn`` once under the profiler: CUDA activity on a GPU, CPU ops on the CPU."""
    if torch.device(device).type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return classify(prof.events())
    return Counts(count_launches(fn), count_host_reads(fn), 0)


def cell_run(spec: CellSpec, device: str) -> tuple[Callable[[], Any], str]:
    """A function running the cell's BPTT and Lyapunov chain as ``run_cell`` does, and
    whether the chain reads the shared forward record."""
    from ..hardware import apply_precision
    from .bptt_deltas import measure_cell, resolve_method
    from .cells import _chain, cell_problem, shares_forward

    apply_precision(spec.allow_tf32, spec.deterministic)  # as run_cell: the same kernels
    cell, x, w_out, target = cell_problem(spec, device)
    keep = shares_forward(spec)
    # only the Jacobian-chain BPTT makes a record to share (autograd keeps none)
    shared = keep and resolve_method(spec.bptt_method, device) == "jacobian_chain"

    def run() -> None:
        measured = measure_cell(spec, cell.params(), x, cell.initial_state(spec.batch),
                                w_out, target, device, keep_saved=keep)
        _chain(spec, cell, x, measured.saved)

    return run, "shared" if shared else "own"


def modelled(spec: CellSpec, device: str) -> float:
    """The cost model's launches per step of the cell on this device kind."""
    from ..plan import cell_step

    return cell_step(spec, torch.device(device).type).launches


#: (short, long) sequence lengths measured, by device: whole graph chunks
#: (``graphed_unroll.CHUNK`` = 64) plus the same 32-step tail, long enough for the graphed
#: forward on CUDA; the CPU unrolls eagerly, so shorter ones count the same per step (checked
#: equal at 160/416 for rnn_tanh and lstm) in half the time.
LENGTHS = {"cuda": (160, 416), "cpu": (96, 224)}


def measure(spec: CellSpec, device: str, short: int | None = None, long: int | None = None
            ) -> dict[str, Any]:
    """One row: counts at T = ``short`` and ``long`` (default :data:`LENGTHS` of the device;
    after a warm-up run that loads the kernels), differenced per step. Both lengths report 20
    singular-value lags (``jacobians.report_lags``) and end in the same tail after whole
    graph chunks, so per-lag and per-tail work cancel."""
    default = LENGTHS[torch.device(device).type]
    short, long = short or default[0], long or default[1]
    per = {}
    before = torch.are_deterministic_algorithms_enabled()
    try:  # the spec's mode, as run_cell sets it; the caller's mode comes back after
        torch.use_deterministic_algorithms(spec.deterministic, warn_only=True)
        for steps in (short, short, long):  # the first is the warm-up
            run, shared = cell_run(dataclasses.replace(spec, seq_len=steps), device)
            per[steps] = count(run, device)
    finally:
        torch.use_deterministic_algorithms(before, warn_only=True)
    span = long - short
    return {"model": spec.model, "hidden": spec.hidden, "batch": spec.batch,
            "dtype": spec.dtype, "device": device, "bptt_method": spec.bptt_method,
            "chain_forward": shared,
            "launches_per_step": (per[long].launches - per[short].launches) / span,
            "model_launches_per_step": modelled(dataclasses.replace(spec, seq_len=long), device),
            "host_reads_per_step": (per[long].host_reads - per[short].host_reads) / span,
            "syncs_per_step": (per[long].syncs - per[short].syncs) / span}


def default_spec(model: str, device: str, hidden: int, batch: int) -> CellSpec:
    """A config/gpu.yaml-like cell (float32, deterministic, k = 32, QR every step, the
    Jacobian-chain BPTT without the sampled autograd reference) of the given size."""
    return CellSpec(model, "orthogonal", hidden, 48, 1.0, 0, 16, 1.0, 0.0, batch, 32, 1, device,
                    "float32", False, True, "auto", bptt_method="jacobian_chain",
                    autograd_reference_every=0)


def measure_models(models: Iterable[str], device: str, hidden: int, batch: int
                   ) -> list[dict[str, Any]]:
    """One row per model (:func:`measure` of :func:`default_spec`), printed as it comes."""
    rows = []
    for model in models:
        row = measure(default_spec(model, device, hidden, batch), device)
        print(f"{model}: {row['launches_per_step']:.2f} launches a step (model "
              f"{row['model_launches_per_step']:.2f}), {row['host_reads_per_step']:.3f} host "
              f"reads, {row['syncs_per_step']:.3f} syncs", flush=True)
        rows.append(row)
    return rows
