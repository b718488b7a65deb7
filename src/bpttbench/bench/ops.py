"""The benchmarked operations: problem instances, FLOP/byte formulas, float64 references.

Every op is one :class:`OpSpec`. A :class:`Problem` is one instance of an op at one shape
(hidden H, batch B, seq_len T): weights, inputs and the forward quantities, built once on
the bench device in the bench dtype and handed to every variant, so all variants see
bit-identical inputs. Notation in the formulas: s = bytes per element of the dtype,
k = frame size, D = state size (H, or 2H for the LSTM), G = gate blocks (1 RNN, 4 LSTM,
3 GRU), I = input size, O = readout outputs (10).

FLOPs count the arithmetic the op *must* do with the cheapest textbook algorithm; a
variant that does more (recomputing the cell, forming full Jacobians by autodiff, two
passes of Gram-Schmidt) is not credited for it. Bytes count the compulsory traffic to
device memory: every input read once, every output written once, nothing re-read.

- ``chain`` (rnn_tanh; the adjoint chain M = W^T (phi'(a_t) * Q) applied to a k-vector
  frame, columns rescaled every step, one QR at the last step):
  FLOPs = T B (2 H^2 k + 4 H k) + B qr(H, k);
  bytes = s (T B H + H^2 + 2 B H k) + 8 B k.
- ``lyapunov`` (the same with QR re-orthonormalisation every step):
  FLOPs = T B (2 H^2 k + H k + qr(H, k)); bytes as ``chain``.
- ``lstm_jacobians`` (all T B Jacobians [2H, 2H] from the saved gates):
  FLOPs = T B (8 H^2 + 6 H); bytes = s (T B (11 H + 4 H^2) + 4 H^2).
- ``gru_jacobians`` (all T B Jacobians [H, H]):
  FLOPs = T B (5 H^2 + 7 H); bytes = s (T B (9 H + H^2) + 3 H^2).
- ``bptt_rnn`` / ``bptt_lstm`` / ``bptt_gru`` (forward + backward through T steps with a
  loss on h_T, parameter gradients and every per-step dL/dh_t; I = H as in DeepBench):
  FLOPs = T B G H (6 H + 4 I) + 4 B H O (GEMMs only: forward x W_ih^T and h W_hh^T, backward
  dh, dW_hh and dW_ih; no input gradient);
  bytes = s (T B I + 2 G H (H + I + 2) + 2 T B (G H + D) + T B H).

qr(m, n) = 4 m n^2 - 4 n^3 / 3 (Householder factorisation plus forming the thin Q).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from bpttbench.jacobians import analytic
from bpttbench.jacobians.backends import NumpyBackend, TorchBackend
from bpttbench.jacobians.chain import CHUNK_BYTES, initial_frame, run_chain
from bpttbench.models import RecurrentCell, gate_count, init_parameters, state_size, unroll

#: input size of the Jacobian ops (their forward pass is not timed)
JACOBIAN_INPUT_SIZE = 16
#: readout outputs of the BPTT loss (as gradients.readout_problem)
READOUT_OUTPUTS = 10
#: batch elements in the equality check (the first ones of the same inputs)
CHECK_BATCH = 16
#: float64 elements of the Jacobians built by the reference in the check
CHECK_JACOBIAN_ELEMENTS = 1 << 22
#: recurrent weight scale of the benchmark cells (orthogonal init, tanh stays unsaturated)
WEIGHT_SCALE = 1.0
BIAS_SCALE = 0.1

#: the top-level dtypes the bench can time (its float64 reference needs a wider one)
BENCH_DTYPES: tuple[str, ...] = ("float32", "float64")


@dataclass(frozen=True)
class Shape:
    """One problem size of an op; ``label`` tells grid points from reference points."""

    hidden: int
    batch: int
    seq_len: int
    label: str = "grid"


def qr_flops(m: int, n: int) -> float:
    """Householder thin QR of an m x n matrix including forming Q: 4 m n^2 - 4 n^3 / 3."""
    return 4.0 * m * n * n - 4.0 * n**3 / 3.0


def _chain_flops(h: int, b: int, t: int, k: int) -> float:
    return t * b * (2.0 * h * h * k + 4.0 * h * k) + b * qr_flops(h, k)


def _lyapunov_flops(h: int, b: int, t: int, k: int) -> float:
    return t * b * (2.0 * h * h * k + h * k + qr_flops(h, k))


def _chain_bytes(h: int, b: int, t: int, k: int, s: int) -> float:
    return s * (t * b * h + h * h + 2.0 * b * h * k) + 8.0 * b * k


def _lstm_jac_flops(h: int, b: int, t: int) -> float:
    return t * b * (8.0 * h * h + 6.0 * h)


def _lstm_jac_bytes(h: int, b: int, t: int, s: int) -> float:
    return s * (t * b * (11.0 * h + 4.0 * h * h) + 4.0 * h * h)


def _gru_jac_flops(h: int, b: int, t: int) -> float:
    return t * b * (5.0 * h * h + 7.0 * h)


def _gru_jac_bytes(h: int, b: int, t: int, s: int) -> float:
    return s * (t * b * (9.0 * h + h * h) + 3.0 * h * h)


def _bptt_flops(model: str, h: int, b: int, t: int) -> float:
    g, i = gate_count(model), h
    return t * b * g * h * (6.0 * h + 4.0 * i) + 4.0 * b * h * READOUT_OUTPUTS


def _bptt_bytes(model: str, h: int, b: int, t: int, s: int) -> float:
    g, i, d = gate_count(model), h, state_size(model, h)
    return s * (t * b * i + 2.0 * g * h * (h + i + 2) + 2.0 * t * b * (g * h + d) + t * b * h)


@dataclass(frozen=True)
class OpSpec:
    """An op: its model, what it computes, and its cost formulas (see the module docstring)."""

    name: str
    model: str
    kind: str  # "chain", "jacobians" or "bptt"
    description: str
    #: QR every this many steps (chain ops); None: the last step only
    qr_every: int | None = None

    def input_size_for(self, hidden: int) -> int:
        return hidden if self.kind == "bptt" else JACOBIAN_INPUT_SIZE

    def frame_size(self, hidden: int, k: int) -> int | None:
        return min(k, state_size(self.model, hidden)) if self.kind == "chain" else None

    def flops(self, shape: Shape, k: int) -> float:
        h, b, t = shape.hidden, shape.batch, shape.seq_len
        if self.kind == "chain":
            kk = self.frame_size(h, k)
            return _chain_flops(h, b, t, kk) if self.qr_every is None else _lyapunov_flops(
                h, b, t, kk
            )
        if self.kind == "jacobians":
            return _lstm_jac_flops(h, b, t) if self.model == "lstm" else _gru_jac_flops(h, b, t)
        return _bptt_flops(self.model, h, b, t)

    def bytes(self, shape: Shape, k: int, itemsize: int) -> float:
        h, b, t = shape.hidden, shape.batch, shape.seq_len
        if self.kind == "chain":
            return _chain_bytes(h, b, t, self.frame_size(h, k), itemsize)
        if self.kind == "jacobians":
            if self.model == "lstm":
                return _lstm_jac_bytes(h, b, t, itemsize)
            return _gru_jac_bytes(h, b, t, itemsize)
        return _bptt_bytes(self.model, h, b, t, itemsize)

    def memory_estimate(self, shape: Shape, k: int, itemsize: int) -> float:
        """A rough upper estimate of the bytes a variant holds at once (used only to skip rows).

        chain: saved phi' and the states h_t (T B H each), x, and a few frames;
        jacobians: the saved gates and states (T B (13 H)), x, and a few 64 MiB chunks;
        bptt: the autograd graph of the unrolled cell, about T B H (4 G + 6) values.
        """
        h, b, t = shape.hidden, shape.batch, shape.seq_len
        i = self.input_size_for(h)
        s = float(itemsize)
        if self.kind == "chain":
            kk = self.frame_size(h, k)
            return s * (t * b * (3.0 * h + i) + 6.0 * b * h * kk) + 16.0 * b * kk
        if self.kind == "jacobians":
            return s * t * b * (13.0 * h + i) + 4.0 * CHUNK_BYTES
        g = gate_count(self.model)
        return s * t * b * (h * (4.0 * g + 6.0) + i)

    def check_shape(self, shape: Shape, check_steps: int) -> Shape:
        """The prefix of the same inputs on which outputs are compared with float64."""
        d = state_size(self.model, shape.hidden)
        if self.kind == "jacobians":
            t = min(shape.seq_len, 2 if 2 * d * d <= CHECK_JACOBIAN_ELEMENTS else 1)
            b = min(shape.batch, max(1, CHECK_JACOBIAN_ELEMENTS // (t * d * d)))
        else:
            t = min(shape.seq_len, check_steps)
            b = min(shape.batch, CHECK_BATCH)
        return Shape(shape.hidden, b, t, label="check")


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("chain", "rnn_tanh", "chain",
               "adjoint Jacobian chain of a tanh RNN on a k-vector frame, rescaled every step, "
               "QR at the last step"),
        OpSpec("lyapunov", "rnn_tanh", "chain",
               "one full Lyapunov step per time step: chain step plus QR of the k-frame",
               qr_every=1),
        OpSpec("lstm_jacobians", "lstm", "jacobians",
               "all T*B LSTM Jacobians d(h,c)_t/d(h,c)_{t-1} [2H, 2H] from the saved gates"),
        OpSpec("gru_jacobians", "gru", "jacobians",
               "all T*B GRU Jacobians dh_t/dh_{t-1} [H, H] from the saved gates"),
        OpSpec("bptt_rnn", "rnn_tanh", "bptt",
               "tanh RNN forward + BPTT backward: parameter gradients (and dL/dh_t for every t)"),
        OpSpec("bptt_lstm", "lstm", "bptt",
               "LSTM forward + BPTT backward: parameter gradients (and dL/dh_t, dL/dc_t)"),
        OpSpec("bptt_gru", "gru", "bptt",
               "GRU forward + BPTT backward: parameter gradients (and dL/dh_t for every t)"),
    )
}


def get_op(name: str) -> OpSpec:
    if name not in OPS:
        raise ValueError(f"unknown bench op {name!r}; allowed: {', '.join(OPS)}")
    return OPS[name]


# --------------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """One instance of an op: parameters, inputs and forward quantities on one device.

    ``params``/``x`` are in the bench dtype on ``device``; ``params64``/``x64`` are the
    very same values in float64 on the CPU (for the reference). Forward quantities are
    built lazily, once, and shared by every variant.
    """

    op: OpSpec
    shape: Shape
    k: int | None
    dtype: torch.dtype
    device: torch.device
    params: dict[str, torch.Tensor]
    x: torch.Tensor
    seed: int
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.op.model

    @property
    def hidden(self) -> int:
        return self.shape.hidden

    @property
    def batch(self) -> int:
        return int(self.x.shape[1])

    @property
    def seq_len(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        return state_size(self.model, self.hidden)

    @property
    def qr_every(self) -> int:
        """Chain ops: QR every this many steps (the ``chain`` op: only at the last step)."""
        return self.op.qr_every or self.seq_len

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @cached_property
    def params64(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", torch.float64) for n, p in self.params.items()}

    @cached_property
    def x64(self) -> torch.Tensor:
        return self.x.to("cpu", torch.float64)

    @cached_property
    def saved(self) -> analytic.Saved:
        """Forward quantities (engine layout) on the device, in the bench dtype."""
        bk = TorchBackend(self.device, self.dtype)
        return analytic.forward_saved(self.model, self.params, self.x, None, bk)

    @cached_property
    def states(self) -> tuple[torch.Tensor, ...]:
        """States s_0..s_T stacked: (hs [T+1, B, H],) or (hs, cs) for the LSTM."""
        with torch.no_grad():
            z = torch.zeros(self.batch, self.hidden, dtype=self.dtype, device=self.device)
            state0 = (z, z.clone()) if self.model == "lstm" else (z,)
            seq = unroll(self.model, self.params, self.x, state0)
            return tuple(torch.stack([s[j] for s in seq]) for j in range(len(state0)))

    @cached_property
    def frame0(self) -> np.ndarray:
        """The initial orthonormal frame [D, k] (float64), the engine's fixed one."""
        return initial_frame(self.dim, self.k)

    @cached_property
    def readout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_out [O, H], target [B, O]) in the bench dtype on the device."""
        from bpttbench.gradient_flow.gradients import readout_problem

        w_out, target = readout_problem(self.hidden, self.batch, outputs=READOUT_OUTPUTS,
                                        seed=self.seed)
        return (w_out.to(self.device, self.dtype), target.to(self.device, self.dtype))

    def prefix(self, shape: Shape) -> Problem:
        """The problem on the first ``shape.seq_len`` steps and ``shape.batch`` elements."""
        x = self.x[: shape.seq_len, : shape.batch].contiguous()
        return Problem(self.op, shape, self.k, self.dtype, self.device, self.params, x, self.seed)


def make_problem(op: OpSpec, shape: Shape, *, k: int, dtype: torch.dtype, device: str | torch.device,
                 seed: int = 0) -> Problem:
    """Weights (orthogonal, scale 1, biases N(0, 0.1^2)) drawn in float64 on the CPU and cast;
    inputs x ~ N(0, 1) drawn in the bench dtype on the device from a seeded generator."""
    device = torch.device(device)
    inp = op.input_size_for(shape.hidden)
    cell = RecurrentCell(op.model, inp, shape.hidden, dtype=dtype, device=device)
    init_parameters(cell, "orthogonal", WEIGHT_SCALE, bias_scale=BIAS_SCALE, seed=seed)
    params = {n: p.detach() for n, p in cell.params().items()}
    gen = torch.Generator(device=device).manual_seed(7919 * (seed + 1) + shape.seq_len)
    x = torch.randn(shape.seq_len, shape.batch, inp, generator=gen, dtype=dtype, device=device)
    return Problem(op, shape, op.frame_size(shape.hidden, k), dtype, device, params, x, seed)


# ------------------------------------------------------------------------ outputs, references


def to_numpy64(a: Any) -> np.ndarray:
    """Any backend's array (torch, cupy, numpy) or a Python number as float64 NumPy."""
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    if type(a).__module__.startswith("cupy"):
        import cupy as cp

        return cp.asnumpy(a).astype(np.float64)
    return np.asarray(a, dtype=np.float64)


def summarise(op: OpSpec, out: Any) -> dict[str, np.ndarray]:
    """A variant's raw output -> the float64 quantities compared with the reference.

    chain ops: ``log_stretch`` [B, k], accumulated log stretching of the frame after the
    final QR; jacobians: ``jacobians`` [n, B, D, D] (the last time chunk); bptt: ``loss``,
    ``grad_whh`` and, where the variant has them, ``log_delta`` [T+1, B] = ln||dL/dh_t||.
    """
    if op.kind == "chain":
        return {"log_stretch": to_numpy64(out)}
    if op.kind == "jacobians":
        return {"jacobians": to_numpy64(out)}
    res = {"loss": to_numpy64(out["loss"]), "grad_whh": to_numpy64(out["grad_whh"])}
    if "delta_h" in out:
        deltas = [to_numpy64(g) for g in out["delta_h"]]
        with np.errstate(divide="ignore"):
            res["log_delta"] = np.log(np.stack([np.linalg.norm(d, axis=-1) for d in deltas]))
    return res


def bptt_autograd(model: str, params: dict[str, torch.Tensor], x: torch.Tensor,
                  w_out: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """Unrolled-cell BPTT by autograd: loss, parameter gradients and every dL/dh_t (dL/dc_t).

    Returns raw tensors: ``loss``, ``grad_whh`` and ``delta_h`` (list over t = 0..T).
    """
    names = analytic.PARAM_NAMES
    leaves = {n: params[n].detach().requires_grad_(True) for n in names}
    batch, hidden = int(x.shape[1]), int(leaves["weight_hh_l0"].shape[1])
    n_state = 2 if model == "lstm" else 1
    state0 = tuple(
        torch.zeros(batch, hidden, dtype=x.dtype, device=x.device, requires_grad=True)
        for _ in range(n_state)
    )
    states = unroll(model, leaves, x, state0)
    h_last = states[-1][0]
    loss = 0.5 * ((h_last @ w_out.T - target) ** 2).sum()
    nodes = [s[j] for j in range(n_state) for s in states]
    grads = torch.autograd.grad(loss, nodes + [leaves[n] for n in names])
    steps = len(states)
    return {"loss": loss.detach(), "grad_whh": grads[len(nodes) + 1],
            "delta_h": list(grads[:steps])}


def reference(problem: Problem) -> dict[str, np.ndarray]:
    """The float64 CPU oracle of an op on ``problem`` (exactly the problem's inputs)."""
    op = problem.op
    params, x = problem.params64, problem.x64
    if op.kind == "chain":
        bk = NumpyBackend()
        saved = analytic.forward_saved(op.model, params, x, None, bk)
        if op.qr_every is not None:
            totals, _ = run_chain(saved, bk, problem.k, problem.qr_every, problem.frame0)
            return {"log_stretch": totals}
        totals, ratio = rescaled_chain64(saved.deriv, saved.w_hh, problem.frame0)
        return {"log_stretch": totals, "log_stretch_mask": ratio >= CONDITION_MIN}
    if op.kind == "jacobians":
        bk = NumpyBackend()
        saved = analytic.forward_saved(op.model, params, x, None, bk)
        return {"jacobians": analytic.step_jacobians(saved, bk)}
    w_out, target = (t.to("cpu", torch.float64) for t in problem.readout)
    return summarise(op, bptt_autograd(op.model, params, x, w_out, target))


def rescaled_chain64(deriv: np.ndarray, w_hh: np.ndarray,
                     frame0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``chain`` op in float64: columns rescaled every step, one QR after the last.

    Returns (totals [B, k] = accumulated log column scales + log|diag R|, and
    |R_jj| / ||m_j|| [B, k]: the part of column j orthogonal to the columns before it
    when the final QR is taken; 1 for j = 1).
    """
    steps, batch, _ = deriv.shape
    q = np.broadcast_to(frame0, (batch, *frame0.shape))
    scale = np.zeros((batch, frame0.shape[1]))
    w_t = w_hh.T
    for i in range(steps - 1, -1, -1):
        m = np.matmul(w_t, deriv[i][..., None] * q)
        if i > 0:
            nrm = np.linalg.norm(m, axis=-2)
            scale += np.log(nrm)
            q = m / nrm[..., None, :]
    r = np.linalg.qr(m, mode="r")
    d = np.abs(np.diagonal(r, axis1=-2, axis2=-1))
    return scale + np.log(d), d / np.linalg.norm(m, axis=-2)


# --------------------------------------------------------------------------------- checking

#: columns of the final QR of the ``chain`` op compared in the check: |R_jj| / ||m_j|| >= this.
#: Rescaling alone lets every column turn toward the top direction; once a column's part
#: orthogonal to the others is near the float32 rounding level, its log|R_jj| is noise in
#: every implementation (float32 error ~ 6e-8 / ratio), so such columns are left out.
CONDITION_MIN = 1e-2

#: max error allowed in the equality check, by dtype (see :func:`compare`); "tf32" applies to
#: float32 on a GPU with allow_tf32 (10-bit mantissas in the matmuls: ~1e-3 per GEMM)
BENCH_CHECK_TOLERANCES: dict[str, float] = {"float32": 1e-4, "float64": 1e-9, "tf32": 2e-2}


def check_tolerance(dtype_name: str, allow_tf32: bool, device: str) -> float:
    if dtype_name == "float32" and allow_tf32 and device == "cuda":
        return BENCH_CHECK_TOLERANCES["tf32"]
    return BENCH_CHECK_TOLERANCES[dtype_name]


def _err(key: str, got: np.ndarray, ref: np.ndarray) -> float:
    """log quantities: max |got - ref| / max(1, |ref|); arrays: max |got - ref| / max |ref|."""
    if got.shape != ref.shape:
        return math.inf
    if not np.isfinite(got).all():
        return math.inf
    diff = np.abs(got - ref)
    if key.startswith("log_"):
        return float((diff / np.maximum(1.0, np.abs(ref))).max(initial=0.0))
    return float(diff.max(initial=0.0) / max(float(np.abs(ref).max(initial=0.0)), 1e-300))


def compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> tuple[float, list[str]]:
    """(max error over the keys both have, what was compared); metrics as :func:`_err`.

    A reference key ``<name>_mask`` restricts the comparison of ``<name>`` to its True
    entries (the well-conditioned columns of the ``chain`` op; the count is reported).
    """
    keys = [k for k in ref if k in got and not k.endswith("_mask")]
    if not keys:
        raise ValueError(f"variant output has none of the reference keys {sorted(ref)}")
    errs, names = [], []
    for k in keys:
        g, r = got[k], ref[k]
        mask = ref.get(f"{k}_mask")
        if mask is not None and g.shape == r.shape:
            g, r = g[mask], r[mask]
            names.append(f"{k}[{int(mask.sum())}/{mask.size} well-conditioned]")
        else:
            names.append(k)
        errs.append(_err(k, g, r))
    return max(errs), names


def op_names() -> list[str]:
    return list(OPS)

