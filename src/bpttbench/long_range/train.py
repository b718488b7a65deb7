"""Train one unrolled recurrent cell plus a linear readout on a long-range task.

A run is fully defined by its ``RunSpec``. The model under study is
``bpttbench.models.RecurrentCell`` (unrolled step by step, the same cell whose gradients the
gradient-flow stage measures) followed by a linear readout. Training uses a fixed budget:
``steps`` updates of Adam (or SGD) at learning rate ``lr`` on fresh batches of ``batch``
sequences; every ``eval_every`` steps the loss is measured on a fixed evaluation set.

Per update the total gradient norm ||g||_2 (over all parameters, before clipping) is recorded.
A non-finite loss or gradient skips the update (counted in ``n_skipped``): exploding
gradients are data, not crashes. With ``clip`` set, g is rescaled to norm ``clip`` when
||g|| > clip (clipping by global norm, Pascanu et al. 2013) before the optimizer sees it.

Solved: the evaluation loss at the end of training is below ``solved_fraction`` (config
``long_range.solved_fraction``, default 0.1) times the task's baseline loss (the best
memoryless predictor). Steps to solve: the first evaluation step at which the loss was below
that threshold (a run can cross it and end above it, unsolved).

Random streams: weights and readout from ``seed``; training batches and the evaluation set
from separate generators keyed by (seed, task, seq_len), so every model and clip setting of
a seed sees the same data. All draws are float64 on the CPU, cast afterwards.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..gradient_flow.gradients import (
    growth_rate_fit,
    horizon,
    lag_statistics,
    measure_gradient_flow,
    readout_problem,
)
from ..hardware import apply_precision, resolve_device
from ..io import run_checkpointed
from ..models import RecurrentCell, gate_count, init_parameters
from ..precision import DTYPES, LossScaler
from ..records import finish_record, now_iso, record_error
from .fused import make_model, resolve_fused
from .spec import (
    FLOW_BATCH,
    LONG_RANGE_INITS,
    OPTIMIZERS,
    RunSpec,
    clip_label,
    runs_from_json,
    runs_to_json,
)
from .tables import max_norm
from .tasks import Task, get_task

__all__ = ["FLOW_BATCH", "LONG_RANGE_INITS", "OPTIMIZERS", "RunSpec", "clip_label",
           "runs_from_json", "runs_to_json"]

def _stream(seed: int, task: str, seq_len: int, purpose: int) -> int:
    """A generator seed per (seed, task, seq_len, purpose); purposes: 1 train, 2 eval."""
    task_code = sum((i + 1) * ord(c) for i, c in enumerate(task))
    return (1_000_003 * (int(seed) + 1) + 7919 * int(seq_len) + 104_729 * task_code
            + 15_485_863 * purpose) % (2**63 - 1)


@torch.no_grad()
def init_cell(cell: RecurrentCell, init: str, weight_scale: float, *, input_scale: float = 1.0,
              forget_bias: float = 0.0, seed: int = 0) -> RecurrentCell:
    """``models.init_parameters``, plus ``identity``: orthogonal with Q = I (W_hh = s I per gate).

    ``identity`` with rnn_relu is the IRNN of Le, Jaitly and Hinton (2015).
    """
    if init not in LONG_RANGE_INITS:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(LONG_RANGE_INITS)}")
    base = "orthogonal" if init == "identity" else init
    init_parameters(cell, base, weight_scale, input_scale=input_scale, forget_bias=forget_bias,
                    seed=seed)
    if init == "identity":
        eye = torch.eye(cell.hidden_size, dtype=torch.float64) * weight_scale
        w_hh = torch.cat([eye] * gate_count(cell.model))
        cell.weight_hh_l0.copy_(w_hh.to(cell.weight_hh_l0))
    return cell


class SequenceModel(nn.Module):
    """The unrolled RecurrentCell plus a linear readout (of h_T, or of every h_t)."""

    def __init__(self, spec: RunSpec, task: Task, device: str) -> None:
        super().__init__()
        dtype = DTYPES[spec.dtype]
        self.per_step = task.per_step
        self.cell = RecurrentCell(spec.model, task.input_size, spec.hidden, dtype=dtype,
                                  device=device)
        init_cell(self.cell, spec.init, spec.weight_scale, input_scale=spec.input_scale,
                  forget_bias=spec.forget_bias, seed=spec.seed)
        self.readout = nn.Linear(spec.hidden, task.output_size, dtype=dtype, device=device)
        gen = torch.Generator().manual_seed(20_011 + int(spec.seed))
        with torch.no_grad():
            w = torch.randn(task.output_size, spec.hidden, generator=gen, dtype=torch.float64)
            self.readout.weight.copy_(w / math.sqrt(spec.hidden))
            self.readout.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.cell(x)
        return self.readout(outputs if self.per_step else outputs[-1])


def grad_norm(params: list[nn.Parameter]) -> float:
    """Global L2 norm of the gradients, accumulated in float64 (inf/NaN pass through)."""
    grads = [p.grad.detach().to(torch.float64) for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                       for g in grads])))


@torch.no_grad()
def clip_gradients(params: list[nn.Parameter], norm: float, clip: float | None) -> bool:
    """Rescale the gradients to global norm ``clip`` when ``norm`` exceeds it; True if clipped."""
    if clip is None or not norm > clip:
        return False
    scale = clip / norm
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale)
    return True


def make_optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"long_range.optimizer: {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def autocast_context(device: str, autocast: str | None):
    """torch.autocast for ``autocast`` (float16 | bfloat16), or nothing."""
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[autocast])


def train_step(net: nn.Module, opt: torch.optim.Optimizer, task: Task, x: Tensor, y: Tensor,
               clip: float | None, *, scaler: LossScaler | None = None,
               autocast: str | None = None) -> tuple[float, float, str]:
    """One update: (training loss, gradient norm before clipping, outcome).

    outcome is ``skipped`` (non-finite loss or gradient: no update), ``clipped`` or ``ok``.
    With a ``scaler`` the loss is multiplied by its S before backward and the gradients
    divided by S before the norm, clipping and the update (as torch.amp.GradScaler); a
    non-finite gradient halves a dynamic S.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    opt.zero_grad(set_to_none=True)
    with autocast_context(x.device.type, autocast):
        loss = task.loss(net(x), y)
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        if scaler:  # its gradient would be non-finite too: GradScaler would halve S
            scaler.update(found_inf=True)
        return loss_value, math.nan, "skipped"
    (scaler.scale_loss(loss) if scaler else loss).backward()
    if scaler:
        scaler.unscale_(params)
    norm = grad_norm(params)
    if not math.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.update(found_inf=True)
        return loss_value, norm, "skipped"
    clipped = clip_gradients(params, norm, clip)
    opt.step()
    if scaler:
        scaler.update(found_inf=False)
    return loss_value, norm, "clipped" if clipped else "ok"


@torch.no_grad()
def evaluate(net: nn.Module, task: Task, x: Tensor, y: Tensor, autocast: str | None = None
             ) -> float:
    with autocast_context(x.device.type, autocast):
        return float(task.loss(net(x), y))


def gradient_horizon(net: nn.Module, x: Tensor, seed: int, autocast: str | None = None
                     ) -> tuple[int | None, float]:
    """(horizon, growth rate) of ln||dL/dh_{T-k}|| for this network on task inputs ``x``.

    The same measurement as the gradient-flow stage (random fixed readout, loss at the last
    step), so the numbers are comparable with ``summary.csv``; in the run's dtype and
    autocast, without loss scaling.
    """
    cell = net.cell
    w_out, target = readout_problem(cell.hidden_size, x.shape[1], seed=seed)
    with torch.enable_grad():
        flow = measure_gradient_flow(cell.model, cell.params(), x,
                                     cell.initial_state(x.shape[1]), w_out, target,
                                     autocast=DTYPES[autocast] if autocast else None)
    mean = lag_statistics(flow.log_norm_h)["log_grad_norm"]
    return horizon(mean), growth_rate_fit(mean)[0]


def _window_row(step: int, eval_loss: float, losses: list[float], norms: list[float],
                n_clipped: int, n_skipped: int) -> dict[str, Any]:
    finite = np.asarray([n for n in norms if math.isfinite(n) and n > 0], dtype=np.float64)
    finite_losses = [v for v in losses if math.isfinite(v)]
    return {
        "step": step,
        "eval_loss": eval_loss,
        "train_loss": float(np.mean(finite_losses)) if finite_losses else math.nan,
        "log_grad_norm_mean": float(np.log(finite).mean()) if finite.size else math.nan,
        "grad_norm_max": max_norm(norms),
        "n_updates": len(losses),
        "n_clipped": n_clipped,
        "n_skipped": n_skipped,
    }


def train_run(spec: RunSpec, progress: bool = True) -> dict[str, Any]:
    """Train one run; returns its record (spec, summary, trace). Never raises for a blow-up."""
    spec.check()
    started, t0 = now_iso(), time.perf_counter()
    record: dict[str, Any] = {"run_id": spec.run_id, "spec": spec.to_dict(),
                              "started_at": started}
    task = get_task(spec.task)
    baseline = task.baseline(spec.seq_len)
    threshold = spec.solved_fraction * baseline
    summary: dict[str, Any] = {"status": "error", "baseline_loss": baseline,
                               "solved_threshold": threshold}
    try:
        device = resolve_device(spec.device)
        record["device"] = device
        record["precision"] = {"dtype": spec.dtype, "autocast": spec.autocast,
                               "loss_scale": spec.loss_scale,
                               **apply_precision(spec.allow_tf32, spec.deterministic)}
        dtype = DTYPES[spec.dtype]
        ac = spec.autocast
        scaler = None if spec.precision.loss_scale == 1 else LossScaler(spec.loss_scale)
        fused = resolve_fused(spec.fused, spec.model, device)
        net = make_model(SequenceModel(spec, task, device), fused)
        summary["fused"] = fused
        opt = make_optimizer(spec.optimizer, list(net.parameters()), spec.lr)
        gen_train = torch.Generator().manual_seed(_stream(spec.seed, spec.task, spec.seq_len, 1))
        gen_eval = torch.Generator().manual_seed(_stream(spec.seed, spec.task, spec.seq_len, 2))
        x_eval, y_eval = task.sample(spec.seq_len, spec.eval_batch, gen_eval)
        x_eval = x_eval.to(device=device, dtype=dtype)
        y_eval = y_eval.to(device=device, dtype=dtype if not task.per_step else torch.int64)
        x_flow = x_eval[:, :FLOW_BATCH]
        summary["horizon_init"], summary["growth_rate_init"] = gradient_horizon(
            net, x_flow, spec.seed, ac)

        trace = [_window_row(0, evaluate(net, task, x_eval, y_eval, ac), [], [], 0, 0)]
        losses: list[float] = []
        norms: list[float] = []
        n_clipped = n_skipped = w_clipped = w_skipped = 0
        steps_to_solve = None
        bar = tqdm(range(1, spec.steps + 1), desc=spec.run_id, unit="step", mininterval=5,
                   disable=not progress)
        for step in bar:
            x, y = task.sample(spec.seq_len, spec.batch, gen_train)
            x = x.to(device=device, dtype=dtype)
            y = y.to(device=device, dtype=dtype if not task.per_step else torch.int64)
            loss, norm, outcome = train_step(net, opt, task, x, y, spec.clip, scaler=scaler,
                                             autocast=ac)
            losses.append(loss)
            norms.append(norm)
            w_clipped += outcome == "clipped"
            w_skipped += outcome == "skipped"
            if step % spec.eval_every == 0 or step == spec.steps:
                eval_loss = evaluate(net, task, x_eval, y_eval, ac)
                trace.append(_window_row(step, eval_loss, losses, norms, w_clipped, w_skipped))
                n_clipped += w_clipped
                n_skipped += w_skipped
                losses, norms, w_clipped, w_skipped = [], [], 0, 0
                if steps_to_solve is None and eval_loss < threshold:
                    steps_to_solve = step
                bar.set_postfix(eval_loss=f"{eval_loss:.4g}", baseline=f"{baseline:.4g}",
                                refresh=False)
        bar.close()
        final = trace[-1]["eval_loss"]
        params_finite = all(bool(torch.isfinite(p).all()) for p in net.parameters())
        summary["horizon_final"], summary["growth_rate_final"] = gradient_horizon(
            net, x_flow, spec.seed, ac)
        summary.update(
            status="ok" if params_finite and math.isfinite(final) else "diverged",
            final_loss=final,
            final_loss_ratio=final / baseline,
            best_loss=float(np.nanmin([r["eval_loss"] for r in trace])),
            solved=bool(math.isfinite(final) and final < threshold),
            steps_to_solve=steps_to_solve,
            n_updates=spec.steps,
            n_clipped=n_clipped,
            n_skipped=n_skipped,
            grad_norm_max=max_norm(r["grad_norm_max"] for r in trace[1:]),
            loss_scale_final=scaler.scale if scaler else 1.0,
            loss_scale_backoffs=scaler.backoffs if scaler else 0,
        )
        record["trace"] = {k: [r[k] for r in trace] for k in trace[0]}
    except Exception as exc:
        record_error(record, summary, exc)
    return finish_record(record, summary, t0)


def run_block(runs: list[RunSpec], checkpoint_dir: Path | None = None, progress: bool = True
              ) -> list[dict[str, Any]]:
    """Train the runs of one job, keeping each finished run in ``checkpoint_dir``.

    A rerun after an interruption reuses every checkpoint whose spec equals the run's.
    """
    def report(spec: RunSpec, record: dict[str, Any]) -> None:
        s = record["summary"]
        tqdm.write(f"{spec.run_id}: status={s['status']} final_loss={s.get('final_loss', math.nan):.4g}"
                   f" baseline={s['baseline_loss']:.4g} solved={s.get('solved')}"
                   f" steps_to_solve={s.get('steps_to_solve')} skipped={s.get('n_skipped')}"
                   f" ({record['wall_s']:.1f}s)")

    return run_checkpointed(runs, lambda r: r.run_id, lambda r: r.to_dict(),
                            lambda r: train_run(r, progress=progress), checkpoint_dir, report)
