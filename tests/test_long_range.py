"""Tests of the long-range stage: task generators against exact baselines, training,
clipping, determinism, the config sweep and an end-to-end run of the stage's rules.

Monte Carlo comparisons use Z standard errors estimated from the same samples; generators
draw from fresh seeds (``rng_seed``) so a pass is not tied to one draw.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from bpttbench import theory
from bpttbench.config import ConfigError, validate
from bpttbench.long_range.sweep import clip_values, long_range_blocks, long_range_runs
from bpttbench.long_range.tables import collect, largest_solved
from bpttbench.long_range.tasks import (
    COPY_DELIM,
    COPY_N,
    COPY_SYMBOLS,
    TASKS,
    adding_batch,
    copy_baseline_logits,
    copy_batch,
    get_task,
)
from bpttbench.long_range.train import (
    RunSpec,
    SequenceModel,
    clip_gradients,
    grad_norm,
    init_cell,
    make_optimizer,
    run_block,
    train_run,
    train_step,
)
from bpttbench.models import RecurrentCell, init_parameters
from bpttbench.tables import COLUMNS

Z = 5.0


def spec(**kw) -> RunSpec:
    base = dict(task="adding", model="lstm", init="orthogonal", hidden=16, seq_len=10, clip=None,
                seed=0, weight_scale=1.0, input_scale=1.0, forget_bias=0.0, optimizer="adam",
                lr=0.01, steps=20, batch=16, eval_every=10, eval_batch=64, solved_fraction=0.1,
                device="cpu", dtype="float32", allow_tf32=False, deterministic=True)
    base.update(kw)
    return RunSpec(**base)


# --------------------------------------------------------------------------------------
# Tasks and baselines
# --------------------------------------------------------------------------------------


def test_baselines_are_the_exact_values() -> None:
    assert get_task("adding").baseline(50) == 1.0 / 6.0
    for t in (1, 10, 100, 1000):
        assert get_task("copy").baseline(t) == 10 * math.log(8) / (t + 20)
    with pytest.raises(ValueError, match="allowed: adding, copy"):
        get_task("parity")


@pytest.mark.parametrize("seq_len", [2, 7, 40])
def test_adding_generator_structure(seq_len: int, rng_seed: int) -> None:
    gen = torch.Generator().manual_seed(rng_seed)
    x, y = adding_batch(seq_len, 500, gen)
    assert x.shape == (seq_len, 500, 2) and y.shape == (500, 1)
    values, markers = x[..., 0].numpy(), x[..., 1].numpy()
    assert ((values >= 0) & (values < 1)).all()
    assert set(np.unique(markers)) <= {0.0, 1.0}
    assert (markers.sum(axis=0) == 2).all()
    half = seq_len // 2
    assert (markers[:half].sum(axis=0) == 1).all() and (markers[half:].sum(axis=0) == 1).all()
    # target = the sum of the two marked values, recomputed in float64 numpy
    np.testing.assert_allclose(y[:, 0].numpy(), (values * markers).sum(axis=0), rtol=0,
                               atol=1e-15)


def test_adding_marker_positions_are_uniform_in_each_half(rng_seed: int) -> None:
    seq_len, n = 20, 40_000
    x, _ = adding_batch(seq_len, n, torch.Generator().manual_seed(rng_seed))
    pos = x[..., 1].numpy().argmax(axis=0)  # first marked position
    counts = np.bincount(pos, minlength=seq_len // 2)
    assert len(counts) == seq_len // 2
    assert stats.chisquare(counts).pvalue > 1e-6


def test_adding_mean_predictor_mse_matches_one_sixth(rng_seed: int) -> None:
    gen = torch.Generator().manual_seed(rng_seed)
    err = np.concatenate([((adding_batch(30, 50_000, gen)[1] - 1.0) ** 2).numpy().ravel()
                          for _ in range(4)])
    se = err.std(ddof=1) / math.sqrt(err.size)
    assert abs(err.mean() - theory.adding_problem_baseline_mse()) < Z * se
    assert TASKS["adding"].loss(torch.ones(3, 1), torch.tensor([[1.0], [2.0], [0.5]])).item() == \
        pytest.approx((0 + 1 + 0.25) / 3, rel=1e-7)


@pytest.mark.parametrize("seq_len", [1, 5, 33])
def test_copy_generator_structure(seq_len: int, rng_seed: int) -> None:
    x, y = copy_batch(seq_len, 300, torch.Generator().manual_seed(rng_seed))
    length = seq_len + 2 * COPY_N
    assert x.shape == (length, 300, COPY_DELIM + 1) and y.shape == (length, 300)
    assert y.dtype == torch.int64
    np.testing.assert_array_equal(x.sum(-1).numpy(), 1.0)  # one-hot
    tokens = x.argmax(-1).numpy()
    symbols = tokens[:COPY_N]
    assert ((symbols >= 1) & (symbols <= COPY_SYMBOLS)).all()
    assert (tokens[COPY_N : seq_len + COPY_N - 1] == 0).all()
    assert (tokens[seq_len + COPY_N - 1] == COPY_DELIM).all()
    assert (tokens[seq_len + COPY_N :] == 0).all()
    np.testing.assert_array_equal(y[-COPY_N:].numpy(), symbols)
    assert (y[:-COPY_N].numpy() == 0).all()


def test_copy_baseline_is_the_entropy_of_the_targets(rng_seed: int) -> None:
    """Exact loss of the memoryless predictor, and the empirical per-step target entropy."""
    for seq_len in (1, 10, 100):
        _, y = copy_batch(seq_len, 64, torch.Generator().manual_seed(rng_seed))
        loss = TASKS["copy"].loss(copy_baseline_logits(seq_len, 64), y).item()
        assert loss == pytest.approx(theory.copy_memory_baseline_xent(seq_len), rel=1e-12)
    seq_len, n = 30, 40_000
    _, y = copy_batch(seq_len, n, torch.Generator().manual_seed(rng_seed))
    entropy = 0.0
    for row in y.numpy():  # plug-in entropy of each step's target; bias ~ (K-1)/(2n)
        p = np.bincount(row, minlength=COPY_SYMBOLS + 1) / n
        entropy -= float((p[p > 0] * np.log(p[p > 0])).sum())
    per_step = entropy / (seq_len + 2 * COPY_N)
    assert per_step == pytest.approx(theory.copy_memory_baseline_xent(seq_len), abs=2e-3)


# --------------------------------------------------------------------------------------
# Model, init, gradient norm, clipping
# --------------------------------------------------------------------------------------


def test_identity_init_is_orthogonal_with_q_identity(rng_seed: int) -> None:
    for model in ("rnn_relu", "gru"):
        cell = init_cell(RecurrentCell(model, 3, 6, dtype=torch.float64), "identity", 0.9,
                         seed=rng_seed)
        ref = init_parameters(RecurrentCell(model, 3, 6, dtype=torch.float64), "orthogonal", 0.9,
                              seed=rng_seed)
        blocks = cell.weight_hh_l0.detach().chunk(3 if model == "gru" else 1)
        for b in blocks:
            torch.testing.assert_close(b, 0.9 * torch.eye(6, dtype=torch.float64), rtol=0,
                                       atol=0)
        torch.testing.assert_close(cell.weight_ih_l0, ref.weight_ih_l0, rtol=0, atol=0)


def test_grad_norm_matches_float64_reference(rng_seed: int) -> None:
    torch.manual_seed(rng_seed)
    net = SequenceModel(spec(model="gru", seed=rng_seed % 1000), TASKS["adding"], "cpu")
    x, y = adding_batch(10, 8, torch.Generator().manual_seed(rng_seed))
    TASKS["adding"].loss(net(x.float()), y.float()).backward()
    ref = math.sqrt(sum(float((p.grad.double().numpy() ** 2).sum()) for p in net.parameters()))
    assert grad_norm(list(net.parameters())) == pytest.approx(ref, rel=1e-12)


def _exploding_setup(rng_seed: int, optimizer: str, clip: float | None):
    s = spec(model="rnn_relu", init="identity", weight_scale=1.3, seq_len=30,
             optimizer=optimizer, lr=0.1, seed=rng_seed % 1000, clip=clip)
    net = SequenceModel(s, TASKS["adding"], "cpu")
    opt = make_optimizer(optimizer, list(net.parameters()), s.lr)
    x, y = adding_batch(30, 16, torch.Generator().manual_seed(rng_seed))
    return s, net, opt, x.float(), y.float()


@pytest.mark.parametrize("clip", [0.5, 2.0])
def test_clipping_bounds_the_update_norm(clip: float, rng_seed: int) -> None:
    # SGD: the update is -lr * g, so clipping bounds ||delta theta|| by lr * clip.
    s, net, opt, x, y = _exploding_setup(rng_seed, "sgd", clip)
    before = torch.cat([p.detach().flatten().double() for p in net.parameters()])
    loss, norm, outcome = train_step(net, opt, TASKS["adding"], x, y, s.clip)
    after = torch.cat([p.detach().flatten().double() for p in net.parameters()])
    assert norm > 10 * clip and outcome == "clipped"  # the W = 1.3 I ReLU RNN explodes
    step = torch.linalg.vector_norm(after - before).item()
    assert step == pytest.approx(s.lr * clip, rel=1e-5)
    # Adam sees the clipped gradient: its norm is exactly the threshold.
    s, net, opt, x, y = _exploding_setup(rng_seed, "adam", clip)
    train_step(net, opt, TASKS["adding"], x, y, s.clip)
    assert grad_norm(list(net.parameters())) == pytest.approx(clip, rel=1e-5)


def test_without_clipping_the_update_is_the_full_gradient(rng_seed: int) -> None:
    s, net, opt, x, y = _exploding_setup(rng_seed, "sgd", None)
    before = torch.cat([p.detach().flatten().double() for p in net.parameters()])
    _, norm, outcome = train_step(net, opt, TASKS["adding"], x, y, None)
    after = torch.cat([p.detach().flatten().double() for p in net.parameters()])
    assert outcome == "ok"
    assert torch.linalg.vector_norm(after - before).item() == pytest.approx(s.lr * norm,
                                                                              rel=1e-4)
    assert clip_gradients(list(net.parameters()), 1.0, None) is False


def test_non_finite_loss_skips_the_update(rng_seed: int) -> None:
    s, net, opt, x, y = _exploding_setup(rng_seed, "adam", None)
    x[3, 0, 0] = math.nan
    before = [p.detach().clone() for p in net.parameters()]
    _, _, outcome = train_step(net, opt, TASKS["adding"], x, y, None)
    assert outcome == "skipped"
    for p, q in zip(net.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------


def test_lstm_learns_a_short_adding_task() -> None:
    rec = train_run(spec(steps=300, eval_every=50, hidden=16, batch=32, eval_batch=512),
                    progress=False)
    s = rec["summary"]
    assert s["status"] == "ok" and s["baseline_loss"] == 1.0 / 6.0
    first, last = rec["trace"]["eval_loss"][0], s["final_loss"]
    assert last < 0.5 * s["baseline_loss"] and last < first
    assert s["n_skipped"] == 0 and s["n_updates"] == 300
    assert len(rec["trace"]["step"]) == 300 // 50 + 1


def test_same_seed_same_curves_and_different_seed_different() -> None:
    runs = [spec(model=m, task=t, clip=c, steps=15, eval_every=5)
            for m, t, c in (("gru", "adding", 1.0), ("rnn_tanh", "copy", None))]
    a, b = collect(run_block(runs, progress=False)), collect(run_block(runs, progress=False))
    for name in ("long_range", "long_range_trace"):
        cols = [c for c in a[name].columns if c != "wall_s"]
        pd.testing.assert_frame_equal(a[name][cols], b[name][cols])
    other = collect(run_block([replace(r, seed=1) for r in runs], progress=False))
    assert not np.allclose(other["long_range_trace"]["eval_loss"],
                           a["long_range_trace"]["eval_loss"])


def test_tables_columns_documented_and_summary_consistent() -> None:
    runs = [spec(model="rnn_tanh", seq_len=t, clip=c, seed=seed, steps=6, eval_every=3)
            for t in (4, 8) for c in (None, 1.0) for seed in (0, 1)]
    tables = collect(run_block(runs, progress=False))
    for name, df in tables.items():
        assert list(df.columns) == [c for c in COLUMNS[name] if c in df.columns]
        assert set(df.columns) == set(COLUMNS[name]), name
    lr, summ = tables["long_range"], tables["long_range_summary"]
    assert len(lr) == 8 and len(tables["long_range_trace"]) == 8 * 3
    assert lr["clip"].isna().sum() == 4
    assert len(summ) == 4 and (summ["n_seeds"] == 2).all()
    assert (summ["baseline_loss"] == 1.0 / 6.0).all()
    # solved_rate is the mean of solved; force one solved to check the aggregation
    lr.loc[0, "solved"] = True
    from bpttbench.long_range.tables import summary_table

    s2 = summary_table(lr)
    assert s2["n_solved"].sum() == int(lr["solved"].sum())
    best = largest_solved(s2)
    assert best["largest_solved_seq_len"].notna().sum() == 1


# --------------------------------------------------------------------------------------
# Config sweep
# --------------------------------------------------------------------------------------


def test_sweep_expands_lists_and_applies_overrides() -> None:
    cfg = validate({"device": "cpu", "long_range": {
        "tasks": ["adding", "copy"], "models": ["rnn_tanh", "rnn_relu"], "seq_len": [5, 9],
        "clip": [None, 0, 2.5], "seeds": [0, 3]}})
    runs = long_range_runs(cfg)
    assert len(runs) == 2 * 2 * 2 * 2 * 2  # clip null and 0 are the same: no clipping
    assert {r.clip for r in runs} == {None, 2.5}
    assert {r.init for r in runs if r.model == "rnn_relu"} == {"identity"}
    assert {r.init for r in runs if r.model == "rnn_tanh"} == {"orthogonal"}
    blocks = long_range_blocks(cfg)
    assert len(blocks) == 8 and all(len(v) == 4 for v in blocks.values())
    assert long_range_blocks(validate({"long_range": {"enabled": False}})) == {}
    assert clip_values(None) == [None] and clip_values([1, 1.0, 0]) == [1.0, None]


def test_bad_long_range_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"long_range\.seq_len.*seq_len >= 2"):
        long_range_runs(validate({"long_range": {"seq_len": [1, 5]}}))
    with pytest.raises(ConfigError, match=r"long_range\.clip\[1\].*null or number >= 0"):
        validate({"long_range": {"clip": [None, -1]}})
    with pytest.raises(ConfigError, match=r"long_range\.init_by_model\.rnn_relu.*identity"):
        validate({"long_range": {"init_by_model": {"rnn_relu": "eye"}}})
    with pytest.raises(ConfigError, match=r"unknown config key long_range\.step\b"):
        validate({"long_range": {"step": 10}})


# --------------------------------------------------------------------------------------
# End to end: the stage's rules in a temporary directory
# --------------------------------------------------------------------------------------

TINY = {
    "hardware_tag": "e2e-long-range",
    "device": "cpu",
    "gradient_flow": {"models": ["rnn_tanh", "lstm"], "hidden": 8, "batch": 4, "seq_len": [20],
                      "weight_scale": [1.0], "seeds": [0], "lyapunov_k": 2},
    "long_range": {"tasks": ["adding", "copy"], "models": ["rnn_tanh", "rnn_relu", "lstm"],
                   "seq_len": [6], "clip": [None, 1.0], "seeds": [0, 1], "steps": 12,
                   "eval_every": 4, "hidden": 8, "eval_batch": 32},
}


@pytest.mark.slow
def test_stage_end_to_end(tmp_path: Path, repo: Path, snakemake_env: dict) -> None:
    """The stage's own rules (and the gradient-flow summary they need), not the whole report."""
    from bpttbench.io import write_json
    from bpttbench.report import build_report

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY))
    res = tmp_path / "results" / "e2e-long-range"
    figures = ["long_range_solved", "long_range_curves", "long_range_grad_norm",
               "long_range_vs_horizon"]
    cmd = ["snakemake", "-s", str(repo / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "--cores", "2",
           *(f"results/e2e-long-range/figures/{f}.png" for f in figures)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=snakemake_env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = pd.read_parquet(res / "tables" / "long_range.parquet")
    assert len(runs) == 2 * 3 * 2 * 2
    assert {"task", "model", "seq_len", "clip", "seed", "final_loss", "baseline_loss",
            "solved"} <= set(runs.columns)
    assert set(runs["status"]) == {"ok"}
    assert (runs["n_updates"] == 12).all()
    base = runs.set_index("task")["baseline_loss"]
    assert (base.loc["adding"] == 1.0 / 6.0).all()
    assert np.allclose(base.loc["copy"], 10 * math.log(8) / 26, rtol=1e-15)
    assert pd.read_csv(res / "tables" / "long_range.csv").shape == runs.shape
    trace = pd.read_parquet(res / "tables" / "long_range_trace.parquet")
    assert len(trace) == len(runs) * (12 // 4 + 1)
    summary = pd.read_csv(res / "tables" / "long_range_summary.csv")
    assert len(summary) == 2 * 3 * 2 and (summary["n_seeds"] == 2).all()
    for fig in figures:
        assert (res / "figures" / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any((res / "cells").rglob("*.json"))  # run records are temp()
    assert "block done" in (tmp_path / "logs" / "e2e-long-range" / "long_range"
                            / "copy-lstm-T6.log").read_text()
    # The report's long-range Section lists exactly these files.
    write_json(res / "manifest.json", {"hardware_tag": "e2e-long-range"})
    page = build_report(res, res / "report.html").read_text()
    section = page[page.index("Long-range dependencies in training"):]
    assert section.count("data:image/png;base64,") >= len(figures)
    assert "long_range_summary.csv" in section
