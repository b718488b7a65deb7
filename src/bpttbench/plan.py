"""``bpttbench plan estimate``: each job's estimated time and peak memory before anything runs.

From the config's jobs (gradient-flow blocks, long-range blocks, bench and claims jobs, the
post-processing steps), the per-step costs of ``costmodel`` and a machine of ``machines``:

- a step costs ``launches x launch_s + flops / rate + bytes / bandwidth`` on a CPU (one
  thread does both), and ``max(launches x launch_s, flops / rate + bytes / bandwidth)`` on a
  GPU (the host queues launches while the device runs earlier ones);
- a job costs its process start-up plus its cells or runs;
- the total on N GPUs starts the GPU jobs longest first, each on the GPU the local
  scheduler (``gpus.choose_gpu``) gives it once one has room for its estimated peak, never
  faster than the summed device time over N GPUs; then the post-processing steps, which
  run one after another, and so do the bench jobs (each takes every core).

Jobs the model does not cover are listed with ``est_seconds: null`` and left out of the
total (the output says which): the claims stage (its experiments are many different kinds).
Bench jobs are bounded by the config (``bench.max_op_s`` per op job). Long-range runs that
train the fused module (cuDNN on CUDA, ``long_range.fused``) are costed as the unrolled cell,
an upper bound, and their jobs say so in ``note``: the fused module's launches can only be
counted on a GPU.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Mapping
from typing import Any

from . import costmodel as cm
from .config import CellSpec, blocks_by_id
from .gpus import Gpu, Reservation, choose_gpu, global_resources, job_request_mb
from .gradient_flow.bptt_deltas import resolve_method
from .gradient_flow.cells import shares_forward
from .machines import Machine, get_machine
from .memory import block_peak_bytes, estimate_cell, long_range_peak_bytes

POST_JOBS = ("gradient_flow_collect", "gradient_flow_figures", "long_range_collect",
             "long_range_figures", "bench_collect", "bench_figures", "claims_collect",
             "claims_figures", "manifest", "report_html")
#: which stage a post-processing job belongs to (it runs only when the stage is on)
POST_STAGE = {"long_range": "long_range", "bench": "bench", "claims": "claims"}


def step_seconds(cost: cm.StepCost, machine: Machine, dtype: str) -> tuple[float, float]:
    """(wall seconds, device-busy seconds) of ``cost`` on ``machine``."""
    device = cost.flops / machine.flop_rate(dtype) + cost.bytes / machine.bandwidth
    host = cost.launches * machine.launch_s
    return (max(host, device) if machine.kind == "cuda" else host + device), device


def cell_step(spec: CellSpec, kind: str) -> cm.StepCost:
    """One time step of a gradient-flow cell on a machine of ``kind`` (cpu or cuda): its BPTT
    (autograd, or the Jacobian chain plus autograd on the sampled reference cells) and its
    Lyapunov chain."""
    backend = "cupy" if kind == "cuda" and spec.jacobian_backend in ("auto", "cupy") \
        else "torch"
    k = min(spec.lyapunov_k, cm.state_size(spec.model, spec.hidden))
    det = spec.deterministic
    bptt = cm.bptt_step(spec.model, spec.hidden, spec.batch, spec.input_size, spec.dtype, det)
    chain_method = resolve_method(spec.bptt_method, kind) == "jacobian_chain"
    if chain_method:
        every = spec.autograd_reference_every  # autograd on 1 in N cells (on average)
        graphed = kind == "cuda" and spec.seq_len >= 2 * cm.GRAPH_CHUNK
        bptt = (cm.bptt_chain_step(spec.model, spec.hidden, spec.batch, spec.input_size,
                                   spec.dtype, det, backend, graphed)
                + bptt * (1.0 / every if every else 0.0))
    return (bptt
            + cm.chain_step(spec.model, spec.hidden, spec.batch, spec.input_size, k,
                            spec.qr_every, spec.dtype, backend, det,
                            forward_shared=chain_method and shares_forward(spec)))


def cell_seconds(spec: CellSpec, machine: Machine, step: cm.StepCost | None = None
                 ) -> tuple[float, float]:
    """(wall, device-busy) seconds of one gradient-flow cell (``step``: its
    :func:`cell_step`, when the caller has it already)."""
    step = cell_step(spec, machine.kind) if step is None else step
    wall, dev = step_seconds(step * spec.seq_len, machine, spec.dtype)
    # per cell: weights, W_hh spectra (SVD + eigenvalues, ~30 H^3 per gate block), set-up
    g = cm.gate_count(spec.model)
    fixed = cm.StepCost(30.0 * g * spec.hidden**3, 0.0, 200.0)
    fw, fd = step_seconds(fixed, machine, "float64")
    return wall + fw, dev + fd


def gradient_flow_jobs(cfg: Mapping[str, Any], machine: Machine) -> list[dict[str, Any]]:
    jobs = []
    device = machine.kind
    for block, cells in blocks_by_id(cfg).items():
        # cells that cannot fit in the machine's memory are recorded too_large, not run
        fits = [c for c in cells if estimate_cell(c, device).peak_bytes <= machine.memory_bytes]
        per_step = [cell_step(c, machine.kind) for c in fits]
        times = [cell_seconds(c, machine, s) for c, s in zip(fits, per_step, strict=True)]
        steps = sum(c.seq_len for c in fits)
        launches = sum(s.launches * c.seq_len for c, s in zip(fits, per_step, strict=True))
        peak = block_peak_bytes(fits or cells, device)
        jobs.append({
            "job": f"gradient_flow_block[{block}]", "rule": "gradient_flow_block",
            "gpu": device == "cuda", "cells": len(cells), "too_large_cells": len(cells) - len(fits),
            "est_seconds": machine.startup_s + sum(t for t, _ in times),
            "device_seconds": sum(d for _, d in times),
            "peak_memory_gib": peak / 2**30, "modelled": True,
            # kernel launches per time step, averaged over the block's steps (by the model)
            "launches_per_step": launches / steps if steps else None,
        })
    return jobs


def long_range_jobs(cfg: Mapping[str, Any], machine: Machine) -> list[dict[str, Any]]:
    from .long_range.fused import resolve_fused
    from .long_range.sweep import long_range_blocks
    from .long_range.tasks import get_task
    from .long_range.train import FLOW_BATCH

    jobs = []
    for block, runs in long_range_blocks(cfg).items():
        wall = dev = 0.0
        fused = 0
        for r in runs:
            fused += resolve_fused(r.fused, r.model, machine.kind)
            task = get_task(r.task)
            steps = task.seq_steps(r.seq_len)
            inp, out = task.input_size, task.output_size
            det = r.deterministic
            update = (cm.train_step_cost(r.model, r.hidden, r.batch, inp, r.dtype, det) * steps
                      + cm.train_update_cost(r.model, r.hidden, inp, out, r.dtype, det))
            n_eval = r.steps // r.eval_every + 2
            evals = cm.eval_step_cost(r.model, r.hidden, r.eval_batch, inp, r.dtype,
                                      det) * steps
            flow = cm.bptt_step(r.model, r.hidden, FLOW_BATCH, inp, r.dtype, det) * steps
            for cost, n in ((update, r.steps), (evals, n_eval), (flow, 2)):
                w, d = step_seconds(cost, machine, r.dtype)
                wall, dev = wall + n * w, dev + n * d
        peak = long_range_peak_bytes(runs, machine.kind)
        jobs.append({
            "job": f"long_range_block[{block}]", "rule": "long_range_block",
            "gpu": machine.kind == "cuda", "runs": len(runs),
            "est_seconds": machine.startup_s + wall, "device_seconds": dev,
            "peak_memory_gib": peak / 2**30, "modelled": True,
        })
        if fused:  # the fused module's own launches are not counted (no GPU here to count)
            jobs[-1]["note"] = (f"upper bound: {fused} of {len(runs)} runs train the fused "
                                "module (cuDNN), costed as the unrolled cell's launches")
    return jobs


def other_jobs(cfg: Mapping[str, Any], machine: Machine) -> list[dict[str, Any]]:
    jobs = []
    bench = cfg.get("bench") or {}
    if bench.get("enabled"):
        from .planning.jobs import bench_parts

        for part, ops in bench_parts(bench).items():
            bound = machine.startup_s + float(bench["max_op_s"]) * len(ops)
            jobs.append({"job": f"bench_op[{part}]", "rule": "bench_op",
                         "gpu": machine.kind == "cuda", "est_seconds": bound,
                         "device_seconds": bound, "peak_memory_gib":
                         float(bench.get("max_memory_gib", 0)), "modelled": True,
                         "exclusive": True,
                         "note": "upper bound: the job stops starting sizes after max_op_s; "
                         "it takes every core, so nothing runs beside it"})
    claims = cfg.get("claims") or {}
    for claim in claims.get("run", []) or []:
        jobs.append({"job": f"claims_run[{claim}]", "rule": "claims_run",
                     "gpu": machine.kind == "cuda", "est_seconds": None,
                     "device_seconds": None, "peak_memory_gib": None, "modelled": False,
                     "note": "not modelled (the claims' experiments are many kinds)"})
    if machine.kind == "cuda":
        jobs.append({"job": "validate_kernels", "rule": "validate_kernels", "gpu": True,
                     "est_seconds": None, "device_seconds": None, "peak_memory_gib": None,
                     "modelled": False, "note": "not modelled (kernel checks: seconds)"})
    for name in POST_JOBS:
        stage = POST_STAGE.get(name.split("_")[0] if not name.startswith("long_range")
                               else "long_range")
        if stage == "long_range" and not (cfg.get("long_range") or {}).get("enabled", True):
            continue
        if stage == "bench" and not bench.get("enabled"):
            continue
        if stage == "claims" and not claims.get("run"):
            continue
        jobs.append({"job": name, "rule": name, "gpu": False, "est_seconds": machine.startup_s,
                     "device_seconds": 0.0, "peak_memory_gib": None, "modelled": True,
                     "note": "start-up only (streaming; seconds of work)"})
    return jobs


def makespan(jobs: list[dict[str, Any]], gpus: list[Gpu] | None, lanes: int = 1) -> float:
    """Seconds until the last compute job ends.

    GPU machine: jobs start longest first, each on the GPU ``gpus.choose_gpu`` gives it (the
    rule gpus run applies), when one has room; never faster than the summed device time over
    the GPUs. CPU: longest first onto ``lanes`` parallel jobs.
    """
    order = sorted(jobs, key=lambda j: -j["est_seconds"])
    if not gpus:
        ends = [0.0] * max(1, lanes)
        for j in order:
            heapq.heapreplace(ends, ends[0] + j["est_seconds"])
        return max(ends)
    now, running, waiting = 0.0, [], list(order)  # running: (end, Reservation)
    end_all = 0.0
    while waiting or running:
        started = True
        while started and waiting:
            started = False
            for j in list(waiting):
                need = job_request_mb(int((j["peak_memory_gib"] or 0) * 2**30), gpus)
                gpu = choose_gpu(gpus, [r for _, r in running], need)
                if gpu is not None:
                    running.append((now + j["est_seconds"], Reservation(gpu, need)))
                    waiting.remove(j)
                    started = True
        running.sort(key=lambda e: e[0])
        now, _ = running.pop(0)
        end_all = max(end_all, now)
    device_bound = sum(j["device_seconds"] for j in jobs) / len(gpus)
    return max(end_all, device_bound)


def plan(cfg: Mapping[str, Any], machine: Machine, n_gpus: int = 1) -> dict[str, Any]:
    jobs = gradient_flow_jobs(cfg, machine) + long_range_jobs(cfg, machine) + other_jobs(
        cfg, machine)
    compute = [j for j in jobs if j["rule"] not in POST_JOBS and j["modelled"]
               and not j.get("exclusive")]
    post = [j for j in jobs if j["rule"] in POST_JOBS or j.get("exclusive")]
    gpus = ([Gpu(i, machine.name, machine.memory_bytes) for i in range(n_gpus)]
            if machine.kind == "cuda" else None)
    for j in compute:
        if gpus:
            j["gpu_mem_mb"] = job_request_mb(int((j["peak_memory_gib"] or 0) * 2**30), gpus)
    total = makespan(compute, gpus, n_gpus) + sum(j["est_seconds"] for j in post)
    unmodelled = [j["job"] for j in jobs if not j["modelled"]]
    return {
        "machine": machine.to_dict(),
        "gpus": n_gpus,
        "resources": global_resources(gpus or []),
        "total_seconds": total,
        "total_hours": total / 3600,
        "serial_hours": sum(j["est_seconds"] or 0.0 for j in jobs) / 3600,
        "unmodelled_jobs": unmodelled,
        "jobs": jobs,
    }


def _format(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"machine {m['name']} ({m['kind']}; {m['source']})",
             f"{'job':58s} {'est':>10s} {'peak GiB':>9s} {'launches/step':>14s}"]
    for j in result["jobs"]:
        est = "n/a" if j["est_seconds"] is None else f"{j['est_seconds']:.1f}s"
        peak = "" if j["peak_memory_gib"] is None else f"{j['peak_memory_gib']:.2f}"
        per_step = j.get("launches_per_step")
        launches = "" if per_step is None else f"{per_step:.1f}"
        lines.append(f"{j['job']:58s} {est:>10s} {peak:>9s} {launches:>14s}")
    lines.append(f"total on {result['gpus']} {'GPU' if m['kind'] == 'cuda' else 'lane'}(s): "
                 f"{result['total_hours']:.3f} h "
                 f"(serial {result['serial_hours']:.3f} h)")
    if result["unmodelled_jobs"]:
        lines.append(f"not in the total (not modelled): {', '.join(result['unmodelled_jobs'])}")
    return "\n".join(lines)


def cmd_estimate(args: Any) -> int:
    """``bpttbench plan estimate``: each job's time and peak memory for a machine."""
    from .cli_options import load_config

    if args.gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {args.gpus}")
    result = plan(load_config(args), get_machine(args.machine), args.gpus)
    print(json.dumps(result, indent=1, default=_json_default) if args.json else _format(result))
    return 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)
