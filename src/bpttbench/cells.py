"""One gradient-flow cell: build the model, run BPTT, measure delta_t and the Jacobian chain.

A cell is fully defined by its CellSpec. Weights depend only on (model's gate count,
init, hidden, weight_scale, seed); inputs and readout only on (seq_len, batch, seed).
All random draws are float64 on the CPU, so every device sees the same numbers.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .blocks import thin_record
from .config import CellSpec
from .gpus import assigned_gpu_index
from .gradients import (
    first_lag_where,
    flow_status,
    growth_rate,
    horizon,
    lag_statistics,
    measure_gradient_flow,
    readout_problem,
)
from .hardware import apply_precision, resolve_device
from .io import run_checkpointed
from .memory import estimate_cell, release, too_large_reason
from .models import RecurrentCell, init_parameters, spectral_stats, state_size

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_error(record: dict[str, Any], summary: dict[str, Any], exc: Exception) -> None:
    """A failed cell or run is data: status error, the message kept, the traceback logged."""
    summary["status"] = "error"
    record["error"] = f"{type(exc).__name__}: {exc}"
    traceback.print_exc()


def finish_record(record: dict[str, Any], summary: dict[str, Any], t0: float) -> dict[str, Any]:
    """Attach the summary, the end time and the wall time (from perf_counter ``t0``)."""
    record["summary"] = summary
    record["finished_at"] = now_iso()
    record["wall_s"] = time.perf_counter() - t0
    return record


def make_inputs(spec: CellSpec, device: str) -> torch.Tensor:
    """x_t ~ N(0, 1) of shape [T, B, input_size], drawn in float64 on the CPU."""
    gen = torch.Generator().manual_seed(1_000_003 * (spec.seed + 1) + spec.seq_len)
    x = torch.randn(spec.seq_len, spec.batch, spec.input_size, generator=gen, dtype=torch.float64)
    return x.to(device=device, dtype=DTYPES[spec.dtype])


def build_cell(spec: CellSpec, device: str) -> RecurrentCell:
    cell = RecurrentCell(spec.model, spec.input_size, spec.hidden, dtype=DTYPES[spec.dtype],
                         device=device)
    return init_parameters(cell, spec.init, spec.weight_scale, input_scale=spec.input_scale,
                           bias_scale=spec.bias_scale, seed=spec.seed)


def _columns(values: dict[str, np.ndarray]) -> dict[str, list[Any]]:
    return {k: np.asarray(v).tolist() for k, v in values.items()}


def _chain(spec: CellSpec, cell: RecurrentCell, x: torch.Tensor) -> dict[str, Any]:
    """Lyapunov spectrum and chain singular values from the Jacobian engine."""
    from .jacobians import analyse_chain

    k = min(spec.lyapunov_k, state_size(spec.model, spec.hidden))
    with torch.no_grad():
        res = analyse_chain(spec.model, cell.params(), x, cell.initial_state(spec.batch), k=k,
                            qr_every=spec.qr_every, backend=spec.jacobian_backend)
    lags = np.arange(1, res.log_sv.shape[0] + 1)
    return {
        "backend": res.backend,
        "lyapunov": _columns({
            "index": np.arange(1, k + 1),
            "exponent": res.exponents,
            "exponent_std": res.exponents_std,
        }),
        "chain_spectrum": _columns({
            "lag": np.repeat(lags, k),
            "index": np.tile(np.arange(1, k + 1), lags.size),
            "log_sv": res.log_sv.reshape(-1),
        }),
        "lyapunov_max": float(res.exponents[0]),
    }


def run_cell(spec: CellSpec) -> dict[str, Any]:
    """Measure one cell. Never raises for a numerical blow-up: status says what happened."""
    started, t0 = now_iso(), time.perf_counter()
    record: dict[str, Any] = {"cell_id": spec.cell_id, "spec": asdict(spec), "started_at": started}
    summary: dict[str, Any] = {"status": "error"}
    try:
        device = resolve_device(spec.device)
        record["device"] = device
        record["device_index"] = assigned_gpu_index() if device == "cuda" else None
        record["memory_estimate_gib"] = estimate_cell(spec, device).peak_gib
        reason = too_large_reason(spec, device)
        if reason is not None:  # recorded, never an out-of-memory crash that loses the block
            summary["status"], record["error"] = "too_large", reason
            return finish_record(record, summary, t0)
        record["precision"] = apply_precision(spec.allow_tf32, spec.deterministic)
        cell = build_cell(spec, device)
        x = make_inputs(spec, device)
        w_out, target = readout_problem(spec.hidden, spec.batch, seed=spec.seed)
        norm, radius = spectral_stats(spec.model, cell.weight_hh_l0)
        summary.update(spectral_norm_whh=norm, spectral_radius_whh=radius)

        flow = measure_gradient_flow(spec.model, cell.params(), x, cell.initial_state(spec.batch),
                                     w_out, target)
        stats = lag_statistics(flow.log_norm_h)
        gf = {"lag": flow.lags, **stats}
        if flow.log_norm_c is not None:
            gf["log_grad_norm_c"] = lag_statistics(flow.log_norm_c)["log_grad_norm"]
        record["gradient_flow"] = _columns(gf)

        status, bad_lag = flow_status(flow)
        rate, r2 = growth_rate(stats["log_grad_norm"])
        summary.update(
            status=status,
            growth_rate=rate,
            growth_fit_r2=r2,
            horizon=horizon(stats["log_grad_norm"]),
            first_nonfinite_lag=bad_lag,
            first_nonfinite_step=flow.first_nonfinite_step,
            underflow_lag=first_lag_where(np.isneginf(flow.log_norm_h)),
            loss=flow.loss,
        )
        try:
            chain = _chain(spec, cell, x)
            record["lyapunov"], record["chain_spectrum"] = chain["lyapunov"], chain["chain_spectrum"]
            record["jacobian_backend"] = chain["backend"]
            summary["lyapunov_max"] = chain["lyapunov_max"]
        except Exception as exc:  # the chain failing must not lose the BPTT measurement
            summary["lyapunov_max"] = math.nan
            record["chain_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    except torch.OutOfMemoryError as exc:  # the estimate was short: still data, not a crash
        summary["status"], record["error"] = "too_large", f"out of memory: {exc}"
    except Exception as exc:
        record_error(record, summary, exc)
    return finish_record(record, summary, t0)


def run_cell_released(spec: CellSpec) -> dict[str, Any]:
    """run_cell, then give its memory back before the next cell of the block."""
    try:
        return run_cell(spec)
    finally:
        release(spec.device if spec.device != "auto" else resolve_device("auto"))


def run_block(cells: list[CellSpec], checkpoint_dir: Path, progress: bool = True,
              lags: str = "full") -> list[dict[str, Any]]:
    """Run the cells of one job, keeping each finished cell in ``checkpoint_dir``.

    A rerun after an interruption reuses every checkpoint whose spec equals the cell's,
    so no finished cell is lost; the caller removes the folder once the block is written.
    """
    def report(spec: CellSpec, record: dict[str, Any]) -> None:
        s = record["summary"]
        tqdm.write(f"{spec.cell_id}: status={s['status']} "
                   f"growth_rate={s.get('growth_rate', math.nan):.4g} "
                   f"lyapunov_max={s.get('lyapunov_max', math.nan):.4g} ({record['wall_s']:.2f}s)")

    bar = tqdm(cells, desc="cells", unit="cell", disable=not progress, mininterval=2)
    def run(spec: CellSpec) -> dict[str, Any]:  # per-lag rows thinned before the checkpoint
        return thin_record(run_cell_released(spec), lags)

    return run_checkpointed(bar, lambda c: c.cell_id, asdict, run, checkpoint_dir, report)
