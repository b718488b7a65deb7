"""Peak memory of a gradient-flow cell, known from its shape before it runs (no torch: the
workflow sizes GPU jobs with it; ``bpttbench.memory`` checks it against free memory).

A cell runs in two phases that never overlap (the BPTT graph is freed before the chain).
With u = B x H x itemsize bytes per step:

1. BPTT by autograd over the unrolled cell. The graph keeps ``GRAPH_UNITS`` u per step
   (rnn_*: h_t; LSTM: i, f, g, o, c_t, tanh c_t, h_t and autograd's own buffers; GRU: r, z,
   1 - z, n, h_t and W_hh h + b_hh [B, 3H], which r * h_n holds a view of), and
   ``autograd.grad`` returns delta_t for all T + 1 steps (D = H, or 2H for the LSTM) while it
   frees the graph. Then the states (kept by the caller) and the deltas are alive while the
   norms are reduced in chunks (a stacked copy and, unless already float64, its float64
   cast; ``REDUCE_CHUNK_BYTES`` of float64 at most).
2. The Jacobian chain. ``forward_saved`` precomputes the input part of every gate for all
   steps ([T, B, G H]) and writes ``SAVED_UNITS`` u per step into preallocated [T, ...]
   arrays (lists stacked at the end used to hold them twice). LSTM/GRU chains then build
   time chunks
   of [n, B, D, D] Jacobians (``CHAIN_CHUNK_BYTES`` each) with ``JAC_TEMPS`` such arrays
   alive at once, next to the previous chunk and the stacked saved tensors. The full-frame
   pass (true singular values) adds its [B, D, D] frames and the results it holds on the
   device between read-backs (:func:`full_frame_bytes`).

Both phases hold the inputs x [T, B, I]. On a GPU the CUDA context, cuBLAS workspaces and
the caching allocator's rounding come on top (``CUDA_OVERHEAD_BYTES``, ``ALLOCATOR_SLACK``).
The per-step units were counted op by op and checked against the bytes torch allocates on
the CPU (``profiling.peak_allocated_bytes``; ``tests/test_scale.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import CellSpec
from .precision import DTYPE_BYTES
from .shapes import gate_count, state_size

#: float64 bytes of stacked per-step deltas reduced at once (gradient_flow.gradients)
REDUCE_CHUNK_BYTES = 64 * 2**20
#: bytes of one time chunk of LSTM/GRU Jacobians (jacobians.chain.CHUNK_BYTES; a test checks)
CHAIN_CHUNK_BYTES = 64 * 2**20


#: bytes of each kind of full-frame result held on the device per read-back
#: (jacobians.spectrum.RESULT_BYTES; a test checks)
FULL_FRAME_RESULT_BYTES = 64 * 2**20
#: most lags of a cell whose singular values are reported (jacobians.spectrum.report_lags)
REPORT_LAGS = 20


def full_frame_bytes(t: int, b: int, d: int, item: int) -> int:
    """The full-frame pass's own memory (jacobians.spectrum): the frames F, M = J^T F and the
    QR's Q, R in the working dtype, R A and A in float64 ([B, D, D] each), and its results
    held on the device until read back (per-step ln|diag R| [B, D] and ln|det J| [B]; the
    reported lags' A [B, D, D] and logs [B, D]), each at most FULL_FRAME_RESULT_BYTES plus
    one step, with one stacked copy alive while it is read back (after the loop, when the
    frames are gone)."""
    budget = FULL_FRAME_RESULT_BYTES
    lags = min(t, REPORT_LAGS)
    held = [min(n * size, budget + size) for n, size in
            ((t, b * d * 8), (t, b * 8), (lags, b * d * d * 8), (lags, b * d * 8))]
    return sum(held) + max(4 * b * d * d * item + 3 * b * d * d * 8, max(held))


def chain_chunk_steps(batch: int, dim: int, itemsize: int, budget: int = CHAIN_CHUNK_BYTES) -> int:
    """Steps per chunk of [n, B, D, D] Jacobians (as ``jacobians.chain._chunk_steps``)."""
    return max(1, budget // max(1, batch * dim * dim * itemsize))


ITEMSIZE = DTYPE_BYTES
#: B x H tensors the autograd graph keeps per step (see the module doc)
GRAPH_UNITS = {"rnn_tanh": 1, "rnn_relu": 1, "rnn_linear": 1, "lstm": 8, "gru": 10}
#: B x H state tensors per step the caller keeps (h, or h and c)
STATE_UNITS = {"rnn_tanh": 1, "rnn_relu": 1, "rnn_linear": 1, "lstm": 2, "gru": 1}
#: [n, B, D, D] arrays alive at once while step_jacobians builds a chunk (the four blocks,
#: the two half-width rows and the result for the LSTM; partial sums for the GRU)
JAC_TEMPS = 3
#: B x H tensors forward_saved keeps per step (deriv; gates 4H + dgates 4H + prev + aux + aux2
#: for the LSTM; gates 3H + dgates 3H + prev + aux + aux2 for the GRU)
SAVED_UNITS = {"rnn_tanh": 1, "rnn_relu": 1, "rnn_linear": 1, "lstm": 11, "gru": 9}
CUDA_OVERHEAD_BYTES = 600 * 2**20  # context, cuBLAS/cuDNN workspaces, kernels of the module
ALLOCATOR_SLACK = 1.10  # the CUDA caching allocator rounds and fragments


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of the two phases; ``peak_bytes`` is what the device must have free."""

    bptt_bytes: int
    chain_bytes: int
    inputs_bytes: int
    device: str

    @property
    def peak_bytes(self) -> int:
        peak = self.inputs_bytes + max(self.bptt_bytes, self.chain_bytes)
        if self.device == "cuda":
            return int(peak * ALLOCATOR_SLACK) + CUDA_OVERHEAD_BYTES
        return peak

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30


def estimate_cell(spec: CellSpec, device: str = "cpu") -> MemoryEstimate:
    """Peak memory of ``spec`` (on ``device``, cpu or cuda) from its shape alone."""
    item = ITEMSIZE[spec.dtype]
    t, b, h = spec.seq_len, spec.batch, spec.hidden
    d = state_size(spec.model, h)
    u = b * h * item
    deltas = (t + 1) * b * d * item
    # stacked chunk of per-step deltas, plus its float64 cast (a no-op for float64)
    chunk_steps = min(t + 1, max(1, REDUCE_CHUNK_BYTES // (b * h * 8)))
    reduce = chunk_steps * b * h * (item + (8 if item != 8 else 0))
    bptt = max(GRAPH_UNITS[spec.model] * u * t + deltas,
               STATE_UNITS[spec.model] * u * (t + 1) + deltas + reduce)
    saved = SAVED_UNITS[spec.model] * u * t
    chain = gate_count(spec.model) * u * t + saved
    if not spec.model.startswith("rnn_"):
        # chunks of n steps, the latest first; building one holds JAC_TEMPS arrays of its
        # size while the previous chunk is still referenced
        first = min(t, chain_chunk_steps(b, d, item))
        second = min(t - first, first)
        jac_steps = max(JAC_TEMPS * first, first + JAC_TEMPS * second)
        chain = max(chain, saved + jac_steps * b * d * d * item)
    # then the full-frame pass (the precomputed gate inputs are gone): with one chunk of
    # Jacobians, its results grow only after the chunk is built
    full = full_frame_bytes(t, b, d, item)
    if spec.model.startswith("rnn_"):
        chain = max(chain, saved + full)
    elif first >= t:
        chain = max(chain, saved + max(jac_steps, first) * b * d * d * item,
                    saved + first * b * d * d * item + full)
    else:
        chain = max(chain, saved + jac_steps * b * d * d * item + full)
    inputs = t * b * spec.input_size * item
    return MemoryEstimate(int(bptt), int(chain), int(inputs), device)


def block_peak_bytes(cells: list[CellSpec], device: str) -> int:
    """Peak of a job of cells run one after another (memory is released between cells)."""
    return max((estimate_cell(c, device).peak_bytes for c in cells), default=0)


def long_range_peak_bytes(runs: list, device: str) -> int:
    """Peak of a long-range job: the largest run's training graph (autograd over the
    unrolled cell, as in the BPTT phase of a cell) at its training or horizon batch."""
    from ..long_range.spec import FLOW_BATCH, TASK_INPUT_SIZE, seq_steps

    peak = 0
    for r in runs:
        spec = CellSpec(r.model, "orthogonal", r.hidden, seq_steps(r.task, r.seq_len), 1.0, 0,
                        TASK_INPUT_SIZE[r.task], 1.0, 0.0, max(r.batch, FLOW_BATCH), 1, 1, device,
                        r.dtype, False, True, "torch")
        est = estimate_cell(spec, device)
        extra = CUDA_OVERHEAD_BYTES if device == "cuda" else 0
        peak = max(peak, est.inputs_bytes + est.bptt_bytes + extra)
    return peak
