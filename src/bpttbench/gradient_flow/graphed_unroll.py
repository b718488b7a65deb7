"""``models.unroll`` without a graph, on CUDA as replays of one captured chunk of steps.

The BPTT-delta chain needs the states s_0..s_T of the very trajectory autograd
differentiates; ``models.unroll`` computes them with 5 (rnn_linear) to 17 (GRU,
deterministic) launches a step. A CUDA graph of :data:`CHUNK` steps of the same
``models.cell_step`` calls replays those kernels with one launch: per chunk, the chunk's
inputs and the state are copied into the graph's static buffers, the graph is replayed and
its states copied out (a handful of launches per chunk, a fraction of one per step). The
steps past the last whole chunk run eagerly.

A replay runs the kernels the capture recorded, with the same shapes and contiguity as the
eager calls, so its states should be bitwise the eager ones; that is checked, not assumed:
the first use for a (model, shapes, dtype, device) runs one chunk both ways and keeps the
graph only if every state is bitwise equal, else warns and unrolls eagerly from then on
(``DECISIONS`` records why). Any failure to capture does the same. Tested on the CPU with a
stand-in graph that replays by calling the captured function (tests/test_graphed_unroll.py);
the CUDA graph itself by the ``cuda`` tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import costmodel as cm
from ..models import Params, State, cell_step, unroll

#: steps per captured chunk (the cost model's GRAPH_CHUNK)
CHUNK = cm.GRAPH_CHUNK
#: (model, B, input, H, dtype, device) -> "" (graphs used) or why not
DECISIONS: dict[tuple[Any, ...], str] = {}


class CudaGraph:
    """The capture and replay of ``torch.cuda.CUDAGraph`` (warm-up on a side stream first,
    as torch's documentation asks)."""

    def __init__(self, body: Callable[[], None]) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                body()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            body()

    def replay(self) -> None:
        self.graph.replay()


class ChunkGraph:
    """One captured chunk of ``steps`` cell steps with static input, state and output buffers."""

    def __init__(self, model: str, params: Params, x_like: Tensor, state_like: State,
                 steps: int, graph: Callable[[Callable[[], None]], Any]) -> None:
        self.steps = steps
        self.x = torch.zeros((steps, *x_like.shape[1:]), dtype=x_like.dtype,
                             device=x_like.device)
        self.state0 = tuple(torch.zeros_like(s) for s in state_like)
        self.out = tuple(torch.zeros((steps, *s.shape), dtype=s.dtype, device=s.device)
                         for s in state_like)

        def body() -> None:
            s = self.state0
            for t in range(steps):
                s = cell_step(model, params, self.x[t], s)
                for buf, part in zip(self.out, s, strict=True):
                    buf[t].copy_(part)

        self.graph = graph(body)

    def run(self, x: Tensor, state: State) -> tuple[Tensor, ...]:
        """The states after each of the chunk's steps, [steps, ...] per state part (views of
        the static buffers: copy them before the next run)."""
        self.x.copy_(x)
        for buf, part in zip(self.state0, state, strict=True):
            buf.copy_(part)
        self.graph.replay()
        return self.out


def _key(model: str, x: Tensor, state0: State) -> tuple[Any, ...]:
    return (model, tuple(x.shape[1:]), tuple(state0[0].shape), str(x.dtype), str(x.device))


def unroll_chunked(model: str, params: Params, x: Tensor, state0: State, chunk: ChunkGraph
                   ) -> list[State]:
    """s_0..s_T: whole chunks by ``chunk``, the remaining steps eagerly."""
    steps, n = int(x.shape[0]), chunk.steps
    parts = [torch.empty((steps + 1, *s.shape), dtype=s.dtype, device=s.device)
             for s in state0]
    for buf, s in zip(parts, state0, strict=True):
        buf[0].copy_(s)
    done = 0
    while done + n <= steps:
        out = chunk.run(x[done:done + n], tuple(p[done] for p in parts))
        for buf, o in zip(parts, out, strict=True):
            buf[done + 1:done + n + 1].copy_(o)
        done += n
    state = tuple(p[done] for p in parts)
    for t in range(done, steps):
        state = cell_step(model, params, x[t], state)
        for buf, s in zip(parts, state, strict=True):
            buf[t + 1].copy_(s)
    return [tuple(p[t] for p in parts) for t in range(steps + 1)]


def unroll_fast(model: str, params: Params, x: Tensor, state0: State, *,
                graph: Callable[[Callable[[], None]], Any] | None = None,
                chunk: int = CHUNK) -> list[State]:
    """``models.unroll`` (no autograd graph; call under no_grad): on CUDA by replays of a
    captured chunk once the one-time bitwise check against the eager unroll has passed for
    these shapes; eagerly on the CPU, for T < 2 chunks, or where the check failed.
    ``graph``: how to capture (default :class:`CudaGraph`; the tests pass a stand-in)."""
    if graph is None:
        if x.device.type != "cuda":
            return unroll(model, params, x, state0)
        graph = CudaGraph
    if int(x.shape[0]) < 2 * chunk:
        return unroll(model, params, x, state0)
    key = _key(model, x, state0)
    why = DECISIONS.get(key)
    if why:
        return unroll(model, params, x, state0)
    try:
        cg = ChunkGraph(model, params, x, state0, chunk, graph)
        if why is None:  # first use: one chunk both ways, bitwise
            eager = unroll(model, params, x[:chunk], state0)
            got = unroll_chunked(model, params, x[:chunk], state0, cg)
            same = all(torch.equal(a, b) for sa, sb in zip(eager, got, strict=True)
                       for a, b in zip(sa, sb, strict=True))
            DECISIONS[key] = "" if same else "a replayed chunk is not bitwise the eager unroll"
        if not DECISIONS[key]:
            return unroll_chunked(model, params, x, state0, cg)
    except Exception as exc:  # never lose the cell to the optimisation: unroll eagerly
        DECISIONS[key] = f"{type(exc).__name__}: {exc}"
    warnings.warn(f"BPTT forward unrolled eagerly, not by CUDA graph replays: {DECISIONS[key]}",
                  RuntimeWarning, stacklevel=2)
    return unroll(model, params, x, state0)
