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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..config import CellSpec
from ..gpus import assigned_gpu_index
from ..hardware import apply_precision, resolve_device
from ..io import run_checkpointed
from ..jacobians import Saved
from ..memory import estimate_cell, release, too_large_reason
from ..models import RecurrentCell, init_parameters, spectral_stats, state_size
from ..precision import (
    DTYPES,
    DYNAMIC,
    LOW_DTYPES,
    Precision,
    rate_vs_reference,
    reference_flow,
    scaled_flow,
    underflow_lags,
)
from ..records import finish_record, now_iso, record_error
from .blocks import thin_record
from .bptt_deltas import measure_cell, method_summary
from .gradients import (
    GradientFlow,
    first_lag_where,
    flow_status,
    growth_rate_fit,
    horizon,
    lag_statistics,
    readout_problem,
)

#: summary columns that come from the Jacobian chain (NaN when only the chain failed)
CHAIN_SUMMARY = ("lyapunov_max", "lyapunov_max_se", "lyapunov_sum", "mean_log_abs_det",
                 "lyapunov_det_gap")


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


def cell_problem(spec: CellSpec, device: str
                 ) -> tuple[RecurrentCell, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cell, inputs, readout weights, target) of a cell: everything its BPTT runs on."""
    cell, x = build_cell(spec, device), make_inputs(spec, device)
    w_out, target = readout_problem(spec.hidden, spec.batch, seed=spec.seed)
    return cell, x, w_out, target


def _columns(values: dict[str, np.ndarray]) -> dict[str, list[Any]]:
    return {k: np.asarray(v).tolist() for k, v in values.items()}


def warmups(spec: CellSpec) -> tuple[int, int]:
    """(forward, alignment) warm-ups of a cell: the configured ones, each capped at T // 4."""
    cap = spec.seq_len // 4
    return min(spec.warmup_forward, cap), min(spec.warmup_align, cap)


def _chain(spec: CellSpec, cell: RecurrentCell, x: torch.Tensor, saved: Saved | None = None
           ) -> dict[str, Any]:
    """Lyapunov spectrum (after the warm-ups) and true chain singular values; ``saved``: the
    BPTT-delta chain's forward record of the same trajectory (no second forward pass)."""
    from ..jacobians import analyse_chain, report_lags

    k = min(spec.lyapunov_k, state_size(spec.model, spec.hidden))
    wf, wa = warmups(spec)
    with torch.no_grad():
        res = analyse_chain(spec.model, cell.params(), x, cell.initial_state(spec.batch), k=k,
                            qr_every=spec.qr_every, backend=spec.jacobian_backend,
                            warmup_forward=wf, warmup_align=wa,
                            sv_lags=report_lags(spec.seq_len), saved=saved)
    lags = res.sv_lags
    return {
        "backend": res.backend,
        "lyapunov": _columns({
            "index": np.arange(1, k + 1),
            "exponent": res.exponents,
            "exponent_std": res.exponents_std,
            "exponent_se": res.exponents_se,
            "exponent_first_half": res.exponents_half[0],
            "exponent_second_half": res.exponents_half[1],
            "warmup_forward": np.full(k, wf),
            "warmup_align": np.full(k, wa),
        }),
        "chain_spectrum": _columns({
            "lag": np.repeat(lags, k),
            "index": np.tile(np.arange(1, k + 1), lags.size),
            "log_sv": res.log_sv.reshape(-1),
            "frame_log_stretch": res.frame_log_stretch[lags - 1].reshape(-1),
        }),
        "summary": {
            "lyapunov_max": float(res.exponents[0]),
            "lyapunov_max_se": float(res.exponents_se[0]),
            "lyapunov_sum": res.sum_exponents,
            "mean_log_abs_det": res.mean_log_det,
            "lyapunov_det_gap": res.det_gap,
        },
    }


def shares_forward(spec: CellSpec) -> bool:
    """Does the Lyapunov chain read the BPTT-delta chain's forward record (one forward pass
    per cell)? When both run in the cell's dtype on a backend that takes a torch record:
    not for half-precision cells (their chain runs on a float32 copy) nor the numpy backend
    (its forward is float64); autograd cells make no record."""
    return spec.dtype not in LOW_DTYPES and spec.jacobian_backend != "numpy"


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
        record["precision"] = {"dtype": spec.dtype, "autocast": spec.precision,
                               "loss_scale": spec.loss_scale,
                               **apply_precision(spec.allow_tf32, spec.deterministic)}
        cell, x, w_out, target = cell_problem(spec, device)
        norm, radius = spectral_stats(spec.model, cell.weight_hh_l0)
        summary.update(spectral_norm_whh=norm, spectral_radius_whh=radius)

        prec = cell_precision(spec)
        saved = None  # the BPTT-delta chain's forward record, shared with the Lyapunov chain
        if prec.is_default:  # autograd, or the one-column Jacobian chain (bptt_deltas)
            measured = measure_cell(spec, cell.params(), x, cell.initial_state(spec.batch),
                                    w_out, target, device, keep_saved=shares_forward(spec))
            flow, saved = measured.flow, measured.saved
            summary.update(precision_summary(spec, prec, flow, None, 1.0, 0), **measured.summary)
        else:  # the precision study: autocast and/or loss scaling, float64 reference
            sf = scaled_flow(spec.model, cell.params(), x, cell.initial_state(spec.batch), w_out,
                             target, prec)
            flow = sf.flow
            ref = reference_flow(spec.model, cell.params(), x, cell.initial_state(spec.batch),
                                 w_out, target)
            summary.update(precision_summary(spec, prec, flow, ref, sf.loss_scale, sf.backoffs),
                           **method_summary("autograd", None, None))
        stats = lag_statistics(flow.log_norm_h)
        gf = {"lag": flow.lags, **stats}
        if flow.log_norm_c is not None:
            gf["log_grad_norm_c"] = lag_statistics(flow.log_norm_c)["log_grad_norm"]
        record["gradient_flow"] = _columns(gf)

        status, bad_lag = flow_status(flow)
        # R^2 is 1 within the round-off of the products' dtype (TF32 where it is in force)
        tf32 = spec.allow_tf32 and prec.compute_dtype == "float32" and device == "cuda"
        rate, r2 = growth_rate_fit(stats["log_grad_norm"], "tf32" if tf32 else prec.compute_dtype)
        wf, wa = warmups(spec)
        # lags wa .. T - wf: the fit without the alignment and forward transients
        steady, _ = growth_rate_fit(stats["log_grad_norm"][wa:spec.seq_len - wf + 1])
        summary.update(
            status=status,
            growth_rate=rate,
            growth_fit_r2=r2,
            growth_rate_steady=steady,
            horizon=horizon(stats["log_grad_norm"]),
            first_nonfinite_lag=bad_lag,
            first_nonfinite_step=flow.first_nonfinite_step,
            underflow_lag=first_lag_where(np.isneginf(flow.log_norm_h)),
            loss=flow.loss,
        )
        try:
            if spec.dtype in LOW_DTYPES:  # no half-precision chain: float32, same weights
                chain = _chain(spec, *float32_copy(spec, cell, x, device))
            else:
                chain = _chain(spec, cell, x, saved)
            record["chain_forward"] = "own" if saved is None else "shared"
            saved = None
            record["lyapunov"], record["chain_spectrum"] = chain["lyapunov"], chain["chain_spectrum"]
            record["jacobian_backend"] = chain["backend"]
            summary.update(chain["summary"])
        except Exception as exc:  # the chain failing must not lose the BPTT measurement
            summary.update({c: math.nan for c in CHAIN_SUMMARY})
            record["chain_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    except torch.OutOfMemoryError as exc:  # the estimate was short: still data, not a crash
        summary["status"], record["error"] = "too_large", f"out of memory: {exc}"
    except Exception as exc:
        record_error(record, summary, exc)
    return finish_record(record, summary, t0)


def cell_precision(spec: CellSpec) -> Precision:
    return Precision(spec.dtype, None if spec.precision == "none" else spec.precision,
                     spec.loss_scale)


def precision_summary(spec: CellSpec, prec: Precision, flow: GradientFlow,
                      ref: GradientFlow | None, loss_scale: float, backoffs: int
                      ) -> dict[str, Any]:
    """The precision columns of summary.csv (the float64 rate only for the precision study)."""
    _, first = underflow_lags(flow)
    out: dict[str, Any] = {
        "underflow_lag_first": first,
        "precision": prec.label.split(",")[0],
        "compute_dtype": prec.compute_dtype,
        "grad_dtype": flow.grad_dtype,
        "loss_scale": loss_scale,
        "loss_scale_mode": "dynamic" if prec.loss_scale == DYNAMIC else "static",
        "loss_scale_backoffs": backoffs,
        "chain_dtype": "float32" if spec.dtype in LOW_DTYPES else spec.dtype,
        "growth_rate_float64": math.nan,
        "rate_error_vs_float64": math.nan,
    }
    if ref is not None:
        _, rate64, err = rate_vs_reference(flow, ref)
        out.update(growth_rate_float64=rate64, rate_error_vs_float64=err)
    return out


def float32_copy(spec: CellSpec, cell: RecurrentCell, x: torch.Tensor, device: str
                 ) -> tuple[RecurrentCell, torch.Tensor]:
    """The same (low-precision) weights and inputs in a float32 cell: exact upcasts."""
    copy = RecurrentCell(spec.model, spec.input_size, spec.hidden, dtype=torch.float32,
                         device=device)
    with torch.no_grad():
        for p, q in zip(copy.parameters(), cell.parameters(), strict=True):
            p.copy_(q.to(torch.float32))
    return copy, x.to(torch.float32)


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
