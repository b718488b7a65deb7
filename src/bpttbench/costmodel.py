"""Cost of one step of each pipeline computation: FLOPs, bytes and kernel launches.

A step's time on a machine is ``launches x launch_s + flops / flop_rate + bytes / bandwidth``
(``machines.Machine``): for the small per-step kernels of an unrolled recurrent cell the
launch (dispatch) cost dominates; for big shapes the FLOPs or bytes do.

Launches per step are those of the code as it is, counted with the torch profiler
(``profiling.count_launches``: leaf aten ops that do work) and re-counted by
``tests/test_scale.py``; CuPy launches per step of the chain are those of ``analyse_chain``
on the cupy backend, k-frame chain and full-frame pass (``CUPY_STEP_LAUNCHES``: our kernels
counted through the kernel-emulation stand-in, the CuPy array ops written out).

FLOPs count multiply-adds as 2; bytes count each weight matrix read once per step plus
the B x H-sized operands of the element-wise launches (three arrays each: two in, one out).
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import gate_count, state_size

ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}

#: torch launches per step (and per call: the fixed part), counted by the profiler on the CPU.
#: bptt: measure_gradient_flow (unrolled forward with autograd, backward, norm reduction);
#: saved: jacobians.forward_saved; chain_qr / chain_rescale: a step of analyse_chain less
#: forward_saved, with qr_every = 1 / without a QR. Both include the full-frame pass (true
#: singular values), which QRs a D x D frame every step and updates the float64 triangular
#: factor A = R A with its column logs on the device. With qr_every = 1 the pass is all of
#: it: its first k columns are the k-frame chain (chain.k_frame_from_full), which then does
#: not run; without a QR the k-frame rescale runs beside it;
#: train: one update of the long-range
#: model per time step, train_update its fixed part (loss, norms, clipping, Adam);
#: eval: no-grad forward per time step.
TORCH_LAUNCHES: dict[str, dict[str, float]] = {
    "rnn_tanh": {"bptt": 8, "saved": 17, "chain_qr": 33, "chain_rescale": 73, "train": 17,
                 "train_update": 94, "eval": 6},
    "rnn_relu": {"bptt": 8, "saved": 10, "chain_qr": 33, "chain_rescale": 73, "train": 17,
                 "train_update": 94, "eval": 6},
    "rnn_linear": {"bptt": 6, "saved": 7, "chain_qr": 33, "chain_rescale": 73, "train": 15,
                   "train_update": 94, "eval": 5},
    "lstm": {"bptt": 28, "saved": 55, "chain_qr": 32, "chain_rescale": 70, "train": 37,
             "train_update": 93, "eval": 14},
    "gru": {"bptt": 30, "saved": 43, "chain_qr": 32, "chain_rescale": 70, "train": 40,
            "train_update": 92, "eval": 16},
}
#: launches that torch.use_deterministic_algorithms(True) (config ``deterministic: true``, the
#: default) adds per step to TORCH_LAUNCHES: torch then fills every uninitialised allocation
#: (one more launch each). The chain and optimizer phases allocate alike for every model;
#: per-model entries add to (or, for ``train_update``, replace) the shared ones.
_DETERMINISTIC_FILLS_SHARED = {"chain_qr": 14, "chain_rescale": 26, "train_update": 36}
DETERMINISTIC_FILLS: dict[str, dict[str, float]] = {
    "rnn_tanh": {"saved": 6},
    "rnn_relu": {"saved": 3},
    "rnn_linear": {"saved": 2},
    "lstm": {"saved": 12, "train_update": 37},
    "gru": {"bptt": 1, "saved": 7, "train": 1, "eval": 1},
}


#: bpttbench.gradient_flow.bptt_deltas.delta_chain (gradient_flow.bptt_method jacobian_chain) per step,
#: float32, counted by the profiler (tests/test_bptt_deltas.py): the graph-free unrolled
#: forward (as bptt's) plus the two-column adjoint step without forming J (RNN: scale by
#: phi' + product; LSTM/GRU: a gate-sized vector times W_hh, a few element-wise launches),
#: the float64 norm of the rescaled column and the rescale. More than autograd's for the
#: vanilla RNNs (autograd's backward is 2 launches a step); fewer for the LSTM and GRU.
DELTAS_LAUNCHES = {"rnn_tanh": 12, "rnn_relu": 12, "rnn_linear": 11, "lstm": 24, "gru": 24}
DELTAS_LAUNCHES_DETERMINISTIC = {"rnn_tanh": 15, "rnn_relu": 15, "rnn_linear": 14, "lstm": 27,
                                 "gru": 28}


#: the CuPy path of delta_chain (on CUDA, bpttbench.gradient_flow.bptt_delta_cupy): one
#: persistent launch per chunk of up to 4096 steps (counted through the kernel-emulation
#: stand-in by tests/kernel_emulation/test_bptt_delta_kernel.py and, for the LSTM and GRU,
#: test_bptt_delta_gated_kernel.py); the forward stays torch's. The LSTM/GRU chunks are also
#: bounded by 64 MiB of coefficients (min(4096, 64 MiB / (10 B H itemsize)) steps), which
#: torch computes with a few launches per chunk: none per step, as the RNN's row set-up
CUPY_DELTAS = {"rnn": 0, "lstm": 0, "gru": 0}
#: largest H the LSTM/GRU delta kernels take (48 KB of shared memory, kernels/
#: bptt_delta_gated.cu); beyond, delta_chain falls back to the torch path
CUPY_DELTAS_MAX_H = {"lstm": {"float32": 896, "float64": 448},
                     "gru": {"float32": 1344, "float64": 672}}
#: the cupy backend's forward record (jacobians.cupy_forward, kernels/forward_record.cu) in
#: place of TORCH_LAUNCHES' "saved": one persistent launch per chunk of up to 4096 steps, 0 per
#: step (counted through the kernel-emulation stand-in by
#: tests/kernel_emulation/test_forward_record_kernel.py); the input part x W_ih^T + b_ih is one
#: matmul for all steps per call (amortised over T: not counted per step)
CUPY_FORWARD_RECORD = 0
#: largest H the forward record kernel takes (48 KB of shared memory: h twice, the LSTM's c);
#: beyond, the cupy backend runs torch's forward ("saved")
CUPY_FORWARD_MAX_H = {**{m: {"float32": 6144, "float64": 3072}
                         for m in ("rnn_tanh", "rnn_relu", "rnn_linear", "gru")},
                      "lstm": {"float32": 4096, "float64": 2048}}
#: of delta_chain's torch launches per step, those of the unrolled forward (the rest is the chain)
FORWARD_LAUNCHES = {"rnn_tanh": 6, "rnn_relu": 6, "rnn_linear": 5, "lstm": 14, "gru": 16}
FORWARD_LAUNCHES_DETERMINISTIC = {**FORWARD_LAUNCHES, "gru": 17}


#: steps of the BPTT-delta forward's captured chunk on CUDA (gradient_flow.graphed_unroll.CHUNK)
GRAPH_CHUNK = 64


def graphed_forward_launches(model: str, chunk: int = GRAPH_CHUNK) -> float:
    """Launches per step of the BPTT-delta forward by CUDA graph replays: per chunk the
    inputs and each state part copied in, one replay, each state part copied out (counted by
    tests/test_graphed_unroll.py with a stand-in graph); the eager tail and the one-time
    capture are per cell."""
    parts = 2 if model == "lstm" else 1
    return (1 + 2 * parts + 1) / chunk


def launches_of(model: str, deterministic: bool) -> dict[str, float]:
    """Torch launches per step of ``model``'s phases in the given determinism mode."""
    base = TORCH_LAUNCHES[model]
    if not deterministic:
        return dict(base)
    fills = {**_DETERMINISTIC_FILLS_SHARED, **DETERMINISTIC_FILLS[model]}
    return {phase: n + fills.get(phase, 0) for phase, n in base.items()}


#: CuPy launches per step of analyse_chain on the cupy backend, by part of the chain, as
#: (our own kernels, other CuPy launches: array ops and memsets). Our kernels are counted
#: through the kernel-emulation stand-in (tests/kernel_emulation/test_launch_counts.py); the
#: others are those the code issues (CupyBackend hooks of bpttbench.jacobians.loop.frame_loop):
#: - k-frame chain, LSTM/GRU: J^T Q matmul, then QR step = mgs_qr_logdiag + total += scale
#:   + scale = 0 + row mean, or rescale step = colnorm_rescale + row mean;
#: - k-frame chain, vanilla RNN above the persistent kernel's limit: the tiled step kernel in
#:   place of the matmul; within it (H <= 128) one launch runs a chunk of steps (~0 per step);
#: - full-frame pass (true singular values, every cell; QR every step; CupyBackend.full_frame_step):
#:   J^T F (the tiled kernel or a matmul), the out-of-place MGS QR (mgs_qr_logdiag_out: logs
#:   written, M kept), R = Q^T M (a matmul) and full_frame_update (full_frame.cu: the float64
#:   A = triu(R) A with unit columns and accumulated logs; it reads R's upper triangle in the
#:   working dtype: no mask, no float32 cast), in float32 and float64 alike (counted with the
#:   stand-in's counting arrays, test_launch_counts.py). Its results (per-step logs, the A of
#:   the reported lags) come back in transfers of spectrum.RESULT_BYTES at most (a few per
#:   cell), not per step.
#: Per-chunk work (the gate-Jacobian kernel, ln|det J|) is amortised over the steps of a
#: CHUNK_BYTES chunk: not counted.
CUPY_STEP_LAUNCHES: dict[str, tuple[int, int]] = {
    "gated_qr": (1, 4),
    "gated_rescale": (1, 2),
    "tiled_qr": (2, 3),
    "tiled_rescale": (2, 1),
    "persistent": (0, 0),
    "full_frame_rnn": (3, 1),
    "full_frame_gated": (2, 2),
}
#: of which our own kernels (RawKernel launches), per step, by part
CUPY_CUSTOM_KERNELS = {part: n[0] for part, n in CUPY_STEP_LAUNCHES.items()}
#: the vanilla RNN's k-frame chain runs in the persistent kernel up to this hidden size
CUPY_PERSISTENT_MAX_H = 128


def cupy_chain_parts(model: str, hidden: int, qr_every: int, warmups: bool = True,
                     full_frame: bool = True) -> dict[str, float]:
    """Steps of each part of CUPY_STEP_LAUNCHES per time step of analyse_chain on CUDA.

    The full-frame pass runs once per step (with ``full_frame``). With qr_every = 1 the
    k-frame chain is read off it (chain.k_frame_from_full) and does not run. With
    qr_every > 1 and warm-ups (the pipeline's cells have them), the exponents' window comes
    from a second k-frame run over the window (about T more steps: analyse_chain's
    _window_exponents), so the k-frame part counts twice.
    """
    qr_share = 1.0 / qr_every
    if full_frame and qr_every == 1:
        runs = 0.0
    else:
        runs = 2.0 if qr_every > 1 and warmups else 1.0
    if model.startswith("rnn_"):
        kind = "persistent" if hidden <= CUPY_PERSISTENT_MAX_H else "tiled"
        parts = {"full_frame_rnn": 1.0} if full_frame else {}
    else:
        kind, parts = "gated", {"full_frame_gated": 1.0} if full_frame else {}
    if runs and kind == "persistent":
        parts["persistent"] = runs
    elif runs:
        parts[f"{kind}_qr"] = runs * qr_share
        parts[f"{kind}_rescale"] = runs * (1 - qr_share)
    return parts


def cupy_chain_launches(model: str, hidden: int, qr_every: int,
                        warmups: bool = True, full_frame: bool = True) -> float:
    """CuPy launches per step of analyse_chain (k-frame chain + full-frame pass) on CUDA; the
    same for every dtype (the full-frame pass widens R to float64 inside its kernel)."""
    parts = cupy_chain_parts(model, hidden, qr_every, warmups, full_frame)
    return sum(n * sum(CUPY_STEP_LAUNCHES[p]) for p, n in parts.items())


@dataclass(frozen=True)
class StepCost:
    flops: float
    bytes: float
    launches: float

    def __add__(self, other: StepCost) -> StepCost:
        return StepCost(self.flops + other.flops, self.bytes + other.bytes,
                        self.launches + other.launches)

    def __mul__(self, n: float) -> StepCost:
        return StepCost(self.flops * n, self.bytes * n, self.launches * n)


ZERO = StepCost(0.0, 0.0, 0.0)


def _elementwise_bytes(launches: float, batch: int, width: int, item: int) -> float:
    return 3.0 * launches * batch * width * item


def bptt_step(model: str, hidden: int, batch: int, inputs: int, dtype: str,
              deterministic: bool = False) -> StepCost:
    """One step of measure_gradient_flow: forward with autograd, backward, norms."""
    g, item = gate_count(model), ITEMSIZE[dtype]
    launches = launches_of(model, deterministic)["bptt"]
    flops = 2 * batch * (inputs + hidden) * g * hidden + 2 * batch * g * hidden * hidden
    weights = 2 * g * hidden * (hidden + inputs) * item  # read forward and backward
    return StepCost(flops, weights + _elementwise_bytes(launches, batch, g * hidden, item) / g,
                    launches)


def bptt_chain_step(model: str, hidden: int, batch: int, inputs: int, dtype: str,
                    deterministic: bool = False, backend: str = "torch",
                    graphed: bool = False) -> StepCost:
    """One step of bptt_deltas.delta_chain: forward without a graph, pre-activations
    recomputed for all steps, the two-column adjoint step, its norm and rescale.
    ``graphed``: on CUDA the forward runs as CUDA graph replays (T >= 2 chunks;
    gradient_flow.graphed_unroll), :func:`graphed_forward_launches` a step."""
    g, d, item = gate_count(model), state_size(model, hidden), ITEMSIZE[dtype]
    launches = (DELTAS_LAUNCHES_DETERMINISTIC if deterministic else DELTAS_LAUNCHES)[model]
    kernel = model.startswith("rnn_") or hidden <= CUPY_DELTAS_MAX_H[model].get(dtype, 0)
    if backend == "cupy" and kernel:  # the forward, then the kernel
        forward = FORWARD_LAUNCHES_DETERMINISTIC if deterministic else FORWARD_LAUNCHES
        eager = graphed_forward_launches(model) if graphed else forward[model]
        launches = eager + CUPY_DELTAS["rnn" if model.startswith("rnn_") else model]
    forward = 2 * 2 * batch * (inputs + hidden) * g * hidden  # the forward, then recomputed
    weights = 3 * g * hidden * (hidden + inputs) * item
    # two columns times W_hh (RNN: [B, 2, H] x [H, H]; LSTM/GRU: [B, 2, gH] x [gH, H])
    adjoint = 2 * batch * 2 * g * hidden * hidden + 8 * batch * d
    return StepCost(forward + adjoint,
                    weights + _elementwise_bytes(launches, batch, g * hidden, item) / g, launches)


#: FP32 FLOPs one FP64 FLOP costs on the GPUs the model knows (H100/H200: 67 vs 34 TFLOP/s)
FP64_COST = 2.0


def full_frame_matmul_flops(model: str, hidden: int, batch: int) -> float:
    """FLOPs of the full-frame pass's three batched products per step: J^T F (the vanilla
    RNNs: W^T (phi' * F)), R = Q^T M and A = R A, F [B, D, D] (tests/test_scale.py checks them
    against the torch profiler's counts)."""
    d = state_size(model, hidden)
    apply = 2 * batch * hidden * hidden * d if model.startswith("rnn_") else 2 * batch * d**3
    return apply + 2 * 2 * batch * d**3


def full_frame_step(model: str, hidden: int, batch: int, dtype: str) -> StepCost:
    """FLOPs and bytes of one step of the full-frame pass (bpttbench.jacobians.spectrum), on
    the device: J^T F with F [B, D, D] (the gated cells build J again and take ln|det J| by
    a float64 LU, 2/3 D^3), the MGS QR twice (4 B D^3), R = Q^T M (2 B D^3), then in float64
    A = R A (2 B D^3), its column norms and logs. The float64 work counts FP64_COST times its
    FLOPs when the cell runs in a lower precision (the step time uses the cell dtype's rate).
    Launches are in chain_step's counts (TORCH_LAUNCHES, CUPY_STEP_LAUNCHES)."""
    d, item = state_size(model, hidden), ITEMSIZE[dtype]
    cube = 2 * batch * d**3  # one [B, D, D] x [B, D, D] product
    lu = 0.0
    if model.startswith("rnn_"):  # phi' * F before the product
        elementwise = batch * d * d
        extra_bytes = hidden * hidden * item
    else:  # build J [B, D, D] again (several passes) and its float64 LU
        elementwise = 8 * batch * d * d
        lu = (2 / 3) * batch * d**3
        extra_bytes = 4 * batch * d * d * item
    fp64 = 1.0 if item == 8 else FP64_COST
    working = full_frame_matmul_flops(model, hidden, batch) - cube  # J^T F and Q^T M
    flops = working + elementwise + 2 * cube + fp64 * (cube + 12 * batch * d * d + lu)
    # frames F, M, Q, R (working dtype) and A, V (float64): each read and written once or twice
    frame_bytes = 8 * batch * d * d * item + 6 * batch * d * d * 8
    return StepCost(flops, extra_bytes + frame_bytes, 0.0)


def _forward_record_step(model: str, hidden: int, batch: int, inputs: int, dtype: str,
                         backend: str, torch_launches: float) -> StepCost:
    """One step of jacobians.forward_saved: torch's ``torch_launches`` element-wise launches,
    or on cupy the forward record kernel, 0 launches a step (counted by
    tests/kernel_emulation/test_forward_record_kernel.py): gi read, the record written."""
    g, item = gate_count(model), ITEMSIZE[dtype]
    launches = torch_launches
    record_bytes = _elementwise_bytes(launches, batch, g * hidden, item) / g
    if backend == "cupy" and hidden <= CUPY_FORWARD_MAX_H[model].get(dtype, 0):
        launches = CUPY_FORWARD_RECORD
        record_bytes = batch * (g * hidden + (hidden if g == 1 else 2 * g * hidden + 3 * hidden)
                                ) * item
    return StepCost(2 * batch * (inputs + hidden) * g * hidden,
                    g * hidden * hidden * item + record_bytes, launches)


def chain_step(model: str, hidden: int, batch: int, inputs: int, k: int, qr_every: int,
               dtype: str, backend: str = "torch", deterministic: bool = False,
               full_frame: bool = True, forward_shared: bool = False) -> StepCost:
    """One step of the Jacobian chain: forward_saved plus the adjoint step (QR or rescale),
    and with ``full_frame`` (the gradient-flow cells: true singular values) one step of the
    full-frame pass (:func:`full_frame_step`; its launches are in the counted tables).
    ``forward_shared``: the chain reads the BPTT-delta chain's forward record (a cell with
    bptt_method jacobian_chain, gradient_flow.cells.shares_forward), whose cost
    :func:`bptt_chain_step` counts: no forward_saved (tests/test_shared_forward.py)."""
    d, item = state_size(model, hidden), ITEMSIZE[dtype]
    counts = launches_of(model, deterministic)
    saved = ZERO if forward_shared else _forward_record_step(
        model, hidden, batch, inputs, dtype, backend, counts["saved"])
    qr_share = 1.0 / qr_every
    k_frame = 0.0 if full_frame and qr_every == 1 else 1.0  # else read off the full frame
    if model.startswith("rnn_"):
        mult = 2 * batch * hidden * hidden * k
        frame_bytes = batch * d * k * item * 3 + hidden * hidden * item
    else:  # build J [B, D, D] (several passes over it), then J^T Q
        mult = 2 * batch * d * d * k + 8 * batch * d * d
        frame_bytes = 4 * batch * d * d * item + batch * d * k * item * 3
    qr_flops = 4 * batch * d * k * k * qr_share + 3 * batch * d * k * (1 - qr_share)
    if backend == "cupy":
        launches = cupy_chain_launches(model, hidden, qr_every, full_frame=full_frame)
    else:
        launches = qr_share * counts["chain_qr"] + (1 - qr_share) * counts["chain_rescale"]
    step = saved + StepCost((mult + qr_flops) * k_frame, frame_bytes * k_frame, launches)
    return step + full_frame_step(model, hidden, batch, dtype) if full_frame else step


def train_step_cost(model: str, hidden: int, batch: int, inputs: int, dtype: str,
                    deterministic: bool = False) -> StepCost:
    """One time step of one long-range update (forward, backward with weight gradients)."""
    g, item = gate_count(model), ITEMSIZE[dtype]
    launches = launches_of(model, deterministic)["train"]
    flops = 3 * 2 * batch * (inputs + hidden) * g * hidden
    weights = 3 * g * hidden * (hidden + inputs) * item
    return StepCost(flops, weights + _elementwise_bytes(launches, batch, g * hidden, item) / g,
                    launches)


def train_update_cost(model: str, hidden: int, inputs: int, outputs: int,
                      dtype: str, deterministic: bool = False) -> StepCost:
    """The fixed part of an update: loss, gradient norm, clipping and the optimizer step."""
    n_params = gate_count(model) * hidden * (hidden + inputs + 2) + outputs * (hidden + 1)
    item = ITEMSIZE[dtype]
    return StepCost(20.0 * n_params, 8.0 * n_params * item,
                    launches_of(model, deterministic)["train_update"])


def eval_step_cost(model: str, hidden: int, batch: int, inputs: int, dtype: str,
                   deterministic: bool = False) -> StepCost:
    """One time step of a no-grad forward pass (evaluation)."""
    g, item = gate_count(model), ITEMSIZE[dtype]
    launches = launches_of(model, deterministic)["eval"]
    return StepCost(2 * batch * (inputs + hidden) * g * hidden,
                    g * hidden * (hidden + inputs) * item
                    + _elementwise_bytes(launches, batch, g * hidden, item) / g, launches)
