"""One forward pass per gradient-flow cell: the Lyapunov chain reads the BPTT-delta chain's
forward record (issue 13, item 3: few launches per step).

The shared record is rebuilt from autograd's own trajectory (``bptt_deltas.
saved_from_states``); the chain's own (``jacobians.forward_saved``) runs the same cell with
the gate products summed in another order. In float64 the two trajectories differ by
rounding only, so every chain result agrees to 1e-9 (T = 40: a rounding difference of 1e-16
grows at most by e^(lambda_max T), about e^12 here for the expanding scale 1.5).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from bpttbench.config import CellSpec
from bpttbench.gradient_flow import cells
from bpttbench.gradient_flow.bptt_deltas import delta_chain
from bpttbench.gradient_flow.cells import cell_problem, run_cell, shares_forward
from bpttbench.jacobians import analyse_chain, report_lags
from bpttbench.models import MODELS, unroll

TOL_F64 = 1e-9


@pytest.fixture
def seed():
    s = int(np.random.SeedSequence().entropy % 100_000)
    print(f"seed={s}")
    return s


def _spec(model: str, seed: int, dtype: str = "float64", **kw) -> CellSpec:
    return CellSpec(model, "gaussian", 12, 40, kw.pop("scale", 1.5), seed, 4, 1.0, 0.0, 3, 4, 1,
                    "cpu", dtype, False, True, kw.pop("backend", "torch"),
                    bptt_method="jacobian_chain", autograd_reference_every=0, **kw)


def _chain(spec: CellSpec, cell, x, saved=None):
    k = min(spec.lyapunov_k, cell.weight_hh_l0.shape[1])
    with torch.no_grad():  # as gradient_flow.cells._chain
        return analyse_chain(spec.model, cell.params(), x, cell.initial_state(spec.batch), k=k,
                             qr_every=spec.qr_every, backend="torch", warmup_forward=4,
                             warmup_align=4, sv_lags=report_lags(spec.seq_len), saved=saved)


def _assert_close(model: str, name: str, a, b) -> None:
    """Equal where not finite (NaN unresolved, -inf a dead relu unit), within TOL_F64 elsewhere."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    fin = np.isfinite(a)
    assert np.array_equal(fin, np.isfinite(b)) and np.array_equal(a[~fin], b[~fin], equal_nan=True)
    err = float(np.abs(a[fin] - b[fin]).max()) if fin.any() else 0.0
    print(model, name, f"max abs diff {err:.2e}")
    assert err < TOL_F64


@pytest.mark.parametrize("model", MODELS)
def test_chain_on_the_shared_record_equals_its_own_forward(model, seed):
    """Exponents, frame stretching, singular values, sum of exponents and ln|det J| from the
    shared record agree with the chain's own forward pass (float64, TOL_F64); the record is
    autograd's trajectory: its final state is bitwise the unrolled cell's."""
    spec = _spec(model, seed)
    cell, x, w_out, target = cell_problem(spec, "cpu")
    state0 = cell.initial_state(spec.batch)
    got = delta_chain(model, cell.params(), x, state0, w_out, target, keep_saved=True)
    saved = got.saved
    assert saved is not None and saved.steps == spec.seq_len
    last = unroll(model, cell.params(), x, state0)[-1]
    for a, b in zip(saved.final_state, last, strict=True):
        assert (a == b).all()
    own, shared = _chain(spec, cell, x), _chain(spec, cell, x, saved)
    for name in ("exponents", "frame_log_stretch", "log_sv", "sum_exponents", "mean_log_det"):
        _assert_close(model, name, getattr(own, name), getattr(shared, name))
    # the default keeps no record (its memory is freed with the delta chain)
    assert delta_chain(model, cell.params(), x, state0, w_out, target).saved is None


def test_shared_record_is_checked(seed):
    """A record of another shape, dtype or for the numpy backend is refused, naming why."""
    spec = _spec("gru", seed)
    cell, x, w_out, target = cell_problem(spec, "cpu")
    state0 = cell.initial_state(spec.batch)
    saved = delta_chain("gru", cell.params(), x, state0, w_out, target, keep_saved=True).saved
    kw = {"k": 4, "sv_lags": np.array([1, 40])}
    with pytest.raises(ValueError, match="numpy runs its own float64 forward"):
        analyse_chain("gru", cell.params(), x, state0, backend="numpy", saved=saved, **kw)
    with pytest.raises(ValueError, match=r"\(model, H, T, B\)"):
        analyse_chain("gru", cell.params(), x[:20], state0, backend="torch", saved=saved, **kw)
    with pytest.raises(ValueError, match=r"\(model, H, T, B\)"):
        analyse_chain("lstm", cell.params(), x, state0, backend="torch", saved=saved, **kw)
    p32 = {n: p.float() for n, p in cell.params().items()}
    with pytest.raises(ValueError, match="params' dtype and device"):
        analyse_chain("gru", p32, x.float(), tuple(s.float() for s in state0),
                      backend="torch", saved=saved, **kw)


@pytest.mark.parametrize("model", ["rnn_tanh", "lstm"])
def test_cell_shares_its_forward_and_says_so(model, seed, monkeypatch):
    """A jacobian_chain cell runs one forward pass: its summary says chain_forward = shared,
    and its Lyapunov table equals that of the same cell with the chain's own forward
    (TOL_F64); autograd and numpy-backend cells use their own."""
    from bpttbench.tables import tables_from_records

    spec = _spec(model, seed % 1000)
    shared = run_cell(spec)
    monkeypatch.setattr(cells, "shares_forward", lambda s: False)
    own = run_cell(spec)
    monkeypatch.undo()
    auto = run_cell(replace(spec, bptt_method="autograd"))
    numpy_backend = run_cell(replace(spec, jacobian_backend="numpy"))
    summary = tables_from_records([shared, own, auto, numpy_backend])["summary"]
    assert list(summary["chain_forward"]) == ["shared", "own", "own", "own"]
    assert (summary["status"] != "error").all()
    _assert_close(model, "exponent", shared["lyapunov"]["exponent"], own["lyapunov"]["exponent"])
    assert shares_forward(spec) and not shares_forward(replace(spec, jacobian_backend="numpy"))
    assert not shares_forward(replace(spec, dtype="bfloat16"))


@pytest.mark.parametrize("determinism", [False, True], indirect=True)
@pytest.mark.parametrize("model", MODELS)
def test_shared_record_saves_the_forward_launches(model, determinism):
    """Per step, the chain on a shared record issues exactly forward_saved's launches fewer
    than the chain with its own forward (profiler counts; costmodel's "saved" launches in
    both determinism modes, which chain_step leaves out when ``forward_shared``)."""
    from bpttbench import costmodel as cm
    from bpttbench.profiling import count_launches, per_step

    def make(t, shared):
        spec = replace(_spec(model, 0, "float32", scale=1.0), seq_len=t)
        cell, x, w_out, target = cell_problem(spec, "cpu")
        saved = delta_chain(model, cell.params(), x, cell.initial_state(spec.batch), w_out,
                            target, keep_saved=True).saved if shared else None
        return lambda: _chain(spec, cell, x, saved)

    own = per_step(count_launches, lambda t: make(t, False), 20, 44)
    shared = per_step(count_launches, lambda t: make(t, True), 20, 44)
    print(model, f"chain launches per step: own forward {own}, shared {shared}")
    saved_launches = cm.launches_of(model, determinism)["saved"]
    assert own - shared == saved_launches
    args = (model, 12, 3, 4, 4, 1, "float32", "torch", determinism)
    assert (cm.chain_step(*args).launches - cm.chain_step(*args, forward_shared=True).launches
            == saved_launches)
