"""Long-range training on the fused torch.nn modules (issue 13, item 3) against the unrolled
cell: same parameters, same outputs, same loss trajectory, same per-step gradients.

Tolerances: outputs float64 1e-10 abs (observed ~1e-15: the same arithmetic in another
order); losses over 20 Adam updates, float32 1e-4 relative (observed up to ~1e-6: float32
rounding of two orders of summation, which Adam's normalised steps do not amplify over 20
updates at lr 0.01), float64 1e-10 relative.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bpttbench.long_range.fused import FusedSequenceModel, check_fused, make_model, resolve_fused
from bpttbench.long_range.tables import runs_table
from bpttbench.long_range.tasks import get_task
from bpttbench.long_range.train import (
    RunSpec,
    SequenceModel,
    gradient_horizon,
    make_optimizer,
    train_run,
    train_step,
)

FUSABLE = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def spec(**kw) -> RunSpec:
    base = dict(task="adding", model="lstm", init="orthogonal", hidden=16, seq_len=20, clip=None,
                seed=0, weight_scale=1.0, input_scale=1.0, forget_bias=0.5, optimizer="adam",
                lr=0.01, steps=20, batch=16, eval_every=10, eval_batch=64, solved_fraction=0.1,
                device="cpu", dtype="float32", allow_tf32=False, deterministic=True)
    base.update(kw)
    return RunSpec(**base)


@pytest.fixture
def seed():
    s = int(np.random.SeedSequence().entropy % 100_000)
    print(f"seed={s}")
    return s


def _pair(s: RunSpec):
    task = get_task(s.task)
    unrolled = SequenceModel(s, task, "cpu")
    fused = make_model(SequenceModel(s, task, "cpu"), True)
    return task, unrolled, fused


@pytest.mark.parametrize("task_name", ["adding", "copy"])
@pytest.mark.parametrize("model", FUSABLE)
def test_fused_outputs_equal_unrolled_float64(model, task_name, seed):
    s = spec(model=model, task=task_name, dtype="float64", seed=seed, init="gaussian",
             weight_scale=1.1, seq_len=15)
    task, unrolled, fused = _pair(s)
    assert isinstance(fused, FusedSequenceModel)
    x, _ = task.sample(s.seq_len, 8, torch.Generator().manual_seed(seed))
    x = x.to(torch.float64)
    with torch.no_grad():
        a, b = unrolled(x), fused(x)
    err = float((a - b).abs().max())
    print(model, task_name, f"max |fused - unrolled| = {err:.2e}")
    assert a.shape == b.shape and err < 1e-10
    # the same parameters, by name, in the same order (the optimizer sees the same list)
    names_u = [n.replace("cell.", "") for n, _ in unrolled.named_parameters()]
    names_f = [n.replace("rnn.", "") for n, _ in fused.named_parameters()]
    assert names_u == names_f


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float64", 1e-10)])
@pytest.mark.parametrize("model", FUSABLE)
def test_fused_loss_trajectory_equals_unrolled(model, dtype, tol, seed):
    """20 Adam updates on the same batches: the same training losses and final weights."""
    s = spec(model=model, dtype=dtype, seed=seed % 1000, clip=1.0)
    task, unrolled, fused = _pair(s)
    dt = getattr(torch, dtype)
    curves, times = {}, {}
    init = {name: p.detach().clone() for name, p in unrolled.cell.named_parameters()}
    for name, net in (("unrolled", unrolled), ("fused", fused)):
        gen = torch.Generator().manual_seed(seed)
        opt = make_optimizer("adam", list(net.parameters()), s.lr)
        losses = []
        t0 = time.perf_counter()
        for _ in range(20):
            x, y = task.sample(s.seq_len, s.batch, gen)
            losses.append(train_step(net, opt, task, x.to(dt), y.to(dt), s.clip)[0])
        times[name] = (time.perf_counter() - t0) / 20 * 1e3
        curves[name] = np.array(losses)
    rel = np.abs(curves["fused"] - curves["unrolled"]) / np.abs(curves["unrolled"])
    print(model, dtype, f"max rel loss diff {rel.max():.2e}; ms/update unrolled "
          f"{times['unrolled']:.1f}, fused {times['fused']:.1f}")
    # relu's kinks amplify the two paths' different summation order: float32 rnn_relu reached
    # 1.1e-4 in CI, so its loss curves get 10x the tolerance (the weights keep theirs)
    loss_tol = tol * (10 if model == "rnn_relu" and dtype == "float32" else 1)
    assert np.isfinite(curves["unrolled"]).all() and rel.max() < loss_tol
    # the weights moved, so equal weights are not equal inits: Adam moves a weight ~lr per
    # update, and 41 seeds x 4 models (CI's 60853 among them) moved some cell weight by
    # 0.10-0.16 over 20 updates.
    # (Not "the last batch's loss < the first's": 20 noisy batches, and seed 60853 of CI's
    # float32 rnn_relu ended higher though both paths agreed to 5.6e-7.)
    moved = max(float((p.detach() - init[name]).abs().max())
                for name, p in unrolled.cell.named_parameters())
    assert moved > 5 * s.lr, moved
    for name, p in unrolled.cell.named_parameters():
        assert torch.allclose(p, getattr(fused.rnn, name), rtol=0, atol=100 * tol)


@pytest.mark.parametrize("model", ["lstm", "gru", "rnn_relu"])
def test_per_step_gradients_are_measured_on_the_unrolled_cell(model, seed):
    """gradient_horizon of the fused net is that of the unrolled net with the same weights,
    exactly (it runs on the unrolled cell, synced from the fused weights)."""
    s = spec(model=model, dtype="float64", seed=seed % 1000, seq_len=30)
    task, unrolled, fused = _pair(s)
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer("adam", list(fused.parameters()), 0.05)
    for _ in range(3):  # move the fused weights away from the init
        x, y = task.sample(s.seq_len, 8, gen)
        train_step(fused, opt, task, x.double(), y.double(), None)
    with torch.no_grad():  # the unrolled net gets the trained weights
        for name, p in unrolled.cell.named_parameters():
            p.copy_(getattr(fused.rnn, name))
    x, _ = task.sample(s.seq_len, 16, gen)
    assert gradient_horizon(fused, x.double(), 0) == gradient_horizon(unrolled, x.double(), 0)
    trained = {id(p) for p in fused.parameters()}
    assert not any(id(p) in trained for p in fused.cell.parameters())  # measured, not trained
    for name, p in fused.cell.named_parameters():
        assert torch.equal(p, getattr(fused.rnn, name))


def test_resolve_fused():
    assert resolve_fused("auto", "lstm", "cpu") is False
    assert resolve_fused("auto", "lstm", "cuda") is True
    assert resolve_fused(True, "gru", "cpu") is True
    assert resolve_fused(True, "rnn_linear", "cuda") is False  # no fused module
    assert resolve_fused(False, "lstm", "cuda") is False
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="long_range.fused"):
            check_fused(bad)


def test_run_records_which_path_ran():
    """The runs table says which path trained each run; the fused CPU run learns the same."""
    recs = [train_run(spec(model="gru", fused=f, steps=10), progress=False)
            for f in (True, False, "auto")]
    df = runs_table(recs)
    print(df[["fused", "final_loss", "horizon_final", "growth_rate_final"]])
    assert df["fused"].tolist() == [True, False, False]
    assert (df["status"] == "ok").all()
    assert abs(df["final_loss"][0] - df["final_loss"][1]) < 1e-4 * abs(df["final_loss"][1])
    assert df["final_loss"][1] == df["final_loss"][2]
