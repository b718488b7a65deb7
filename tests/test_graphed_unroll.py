"""The BPTT-delta chain's unroll by replays of a captured chunk (gradient_flow.graphed_unroll).

On the CPU a stand-in graph replays by calling the captured function, so the chunking, the
static buffers, the eager tail, the one-time bitwise check and the fallback run here; the
CUDA graph capture itself runs in the ``cuda`` tests (tests/test_cupy_kernels.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bpttbench.gradient_flow import graphed_unroll as gu
from bpttbench.models import MODELS, RecurrentCell, init_parameters, unroll


class CallGraph:
    """Stand-in for a CUDA graph: the capture runs the body once, a replay runs it again."""

    captures = 0

    def __init__(self, body):
        self.body = body
        CallGraph.captures += 1
        body()

    def replay(self):
        self.body()


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch):
    monkeypatch.setattr(gu, "DECISIONS", {})


@pytest.fixture
def seed():
    s = int(np.random.SeedSequence().entropy % 100_000)
    print(f"seed={s}")
    return s


def _case(model, seed, steps, dtype=torch.float32):
    cell = RecurrentCell(model, 3, 7, dtype=torch.float64)
    init_parameters(cell, "gaussian", 1.2, bias_scale=0.3, seed=seed)
    params = {n: p.detach().to(dtype) for n, p in cell.params().items()}
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, 4, 3, generator=gen, dtype=torch.float64).to(dtype)
    state0 = tuple(torch.randn(4, 7, generator=gen, dtype=torch.float64).to(dtype)
                   for _ in range(2 if model == "lstm" else 1))
    return params, x, state0


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("steps", [16, 8 * 3 + 5])
def test_chunked_replays_are_bitwise_the_eager_unroll(model, steps, seed):
    """Whole chunks by replays, the tail eagerly: every state bitwise equal to models.unroll,
    the caller's state0 untouched, the check passed and recorded."""
    params, x, state0 = _case(model, seed, steps)
    keep = tuple(s.clone() for s in state0)
    with torch.no_grad():
        want = unroll(model, params, x, state0)
        got = gu.unroll_fast(model, params, x, state0, graph=CallGraph, chunk=8)
    assert len(got) == steps + 1
    for a, b in zip(want, got, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(state0, keep, strict=True))
    assert list(gu.DECISIONS.values()) == [""]


def test_short_sequences_and_the_cpu_unroll_eagerly(seed):
    params, x, state0 = _case("gru", seed, 15)
    before = CallGraph.captures
    with torch.no_grad():
        gu.unroll_fast("gru", params, x, state0, graph=CallGraph, chunk=8)  # T < 2 chunks
        gu.unroll_fast("gru", params, x, state0)  # CPU tensors, no graph asked for
    assert CallGraph.captures == before and gu.DECISIONS == {}




def test_a_replay_that_differs_or_fails_falls_back_to_eager(seed, monkeypatch):
    """The first use's bitwise check or a failing capture: a warning naming why, the eager
    states, and no graph for those shapes afterwards."""
    params, x, state0 = _case("rnn_tanh", seed, 24)
    with torch.no_grad():
        want = unroll("rnn_tanh", params, x, state0)

        orig = gu.ChunkGraph.run

        def off_by_an_ulp(self, x_chunk, state):
            return tuple(torch.nextafter(o, o + 1) for o in orig(self, x_chunk, state))

        monkeypatch.setattr(gu.ChunkGraph, "run", off_by_an_ulp)
        with pytest.warns(RuntimeWarning, match="not bitwise the eager unroll"):
            got = gu.unroll_fast("rnn_tanh", params, x, state0, graph=CallGraph, chunk=8)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(want, got, strict=True))
        before = CallGraph.captures
        again = gu.unroll_fast("rnn_tanh", params, x, state0, graph=CallGraph, chunk=8)
        assert CallGraph.captures == before  # decided: no capture, no warning
        assert all(torch.equal(a[0], b[0]) for a, b in zip(want, again, strict=True))

        def broken(body):
            raise RuntimeError("capture failed")

        gu.DECISIONS.clear()
        with pytest.warns(RuntimeWarning, match="capture failed"):
            got = gu.unroll_fast("rnn_tanh", params, x, state0, graph=broken, chunk=8)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(want, got, strict=True))


class CountingGraph:
    """A replay that only counts (the launches of a replay are the graph's one launch)."""

    replays = 0

    def __init__(self, body):
        self.body = body

    def replay(self):
        CountingGraph.replays += 1


@pytest.mark.parametrize("model", MODELS)
def test_launches_per_step_are_the_cost_models(model):
    """costmodel.GRAPHED_FORWARD_LAUNCHES: per chunk, the copies in and out (profiler) plus
    one replay, over the chunk's steps."""
    from bpttbench import costmodel as cm
    from bpttbench.profiling import count_launches

    params, x, state0 = _case(model, 1, 8 * 12)
    with torch.no_grad():
        chunk = gu.ChunkGraph(model, params, x, state0, 8, CountingGraph)
        n = {}
        for steps in (8 * 4, 8 * 12):
            CountingGraph.replays = 0
            ops = count_launches(lambda s=steps: gu.unroll_chunked(model, params, x[:s], state0,
                                                                   chunk))
            n[steps] = ops + CountingGraph.replays
    per_step = (n[96] - n[32]) / 64
    print(model, f"graphed forward: {per_step} launches a step with chunks of 8")
    assert per_step == pytest.approx(cm.graphed_forward_launches(model, chunk=8))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
@pytest.mark.parametrize("model", ["rnn_tanh", "lstm", "gru"])
def test_cuda_graph_replays_are_bitwise_the_eager_unroll(model):
    """On a GPU, the real capture: T = 3 chunks + 7 steps, float32 and deterministic as the
    pipeline runs, every state bitwise equal to the eager unroll, the graph kept."""
    params, x, state0 = _case(model, 5, 3 * gu.CHUNK + 7)
    cuda = {n: p.cuda() for n, p in params.items()}
    x, state0 = x.cuda(), tuple(s.cuda() for s in state0)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.no_grad():
            want = unroll(model, cuda, x, state0)
            got = gu.unroll_fast(model, cuda, x, state0)
    finally:
        torch.use_deterministic_algorithms(before, warn_only=True)
    print(model, gu.DECISIONS)
    assert list(gu.DECISIONS.values()) == [""]
    for a, b in zip(want, got, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
