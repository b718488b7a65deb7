"""The claims stage: each claim's experiment on a tiny size against theory and references.

Every experiment test runs the claim's own ``run`` on fresh random weights at a small size
and checks its numbers against an independent reference (float64 numpy, closed forms from
bpttbench.theory) with the tolerance the row states, plus the verdict machinery: a wrong
prediction must come out as passed=False.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bpttbench import theory as th
from bpttbench.claims import (
    CLAIM_IDS,
    CLAIMS,
    collect,
    depth,
    figure_names,
    float32,
    gating,
    job_config,
    mean_field,
    orthogonal,
    pascanu,
    run_claim,
    tied_untied,
)
from bpttbench.claims import common as cm
from bpttbench.claims.figures import claim_figure, overview_figure
from bpttbench.claims.settings import Context, claims_section
from bpttbench.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONTRACT = ["claim_id", "description", "measured", "predicted", "tolerance", "passed"]


#: eight seeds: seed-level standard errors with 7 degrees of freedom (t factor 4.5 at z = 3)
SEEDS8 = tuple(range(8))


def setup(section: str, seeds=SEEDS8, **settings):
    cfg = {"device": "cpu", "claims": {"seeds": list(seeds), section: settings}}
    return claims_section(cfg)[section], Context.from_config(cfg)


def rows_by_id(result) -> dict[str, dict]:
    return {r["claim_id"]: r for r in result.rows}


# ----------------------------------------------------------------------------------------
# verdicts, scores and statistics helpers


@pytest.mark.parametrize(
    ("m", "p", "tol", "comparison", "passed"),
    [
        (1.05, 1.0, 0.1, "|m-p|<=tol", True),
        (1.2, 1.0, 0.1, "|m-p|<=tol", False),
        (0.0, 0.0, 0.0, "m<=p+tol", True),
        (1.0, 0.0, 0.0, "m<=p+tol", False),
        (0.99999, 1.0, 1e-4, "m>=p-tol", True),
        (0.9, 1.0, 1e-4, "m>=p-tol", False),
        (218, 216, 5, "p<=m<=p+tol", True),
        (215, 216, 5, "p<=m<=p+tol", False),
        (math.nan, 0.0, 1.0, "|m-p|<=tol", False),
    ],
)
def test_verdict_and_score_agree(m, p, tol, comparison, passed):
    r = cm.row("x", "d", m, p, tol, comparison)
    assert r["passed"] is passed
    if math.isnan(m):
        assert math.isnan(r["score"])
    else:
        assert (r["score"] <= 1.0) is passed


def test_a_wrong_prediction_is_reported_as_failing():
    # a true measurement against a deliberately wrong prediction: 2 sigma too far is fine
    # at z = 3, 4 sigma is not
    assert cm.row("x", "d", 0.0, 2.0, 3.0)["passed"]
    bad = cm.row("x", "d", 0.0, 4.0, 3.0)
    assert bad["passed"] is False and bad["score"] == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="allowed"):
        cm.row("x", "d", 0.0, 0.0, 1.0, "m==p")


@pytest.mark.parametrize(
    ("claim_id", "kind"),
    [
        ("1a.rnn_tanh.s0.5", "prediction"),
        ("1b.lstm.s3", "method agreement"),
        ("2a", "prediction"),  # its finite-k bound is an approximation
        *((c, "exactness") for c in ("2b", "2c", "2d", "2e", "2f", "2g")),  # Gaussian theorems
        ("5a.sw1.5", "prediction"),
        ("6a.s1.5", "exactness"),  # element <= norm and >= norm / sqrt(H)
        ("6e", "prediction"),
        ("7c.lstm", "prediction"),
        ("8a.s0.5", "prediction"),  # its latest lag is a prediction
        ("8b.s1.5", "exactness"),
        ("8c.underflow.s0.5.S1024", "prediction"),
        ("8c.overflow.s1.5.S1024", "exactness"),
        ("8d.underflow.s0.25.dynamic", "prediction"),
        ("8e.s2", "exactness"),
        ("8f.s0.9.seed1", "exactness"),  # a round-off bound, like 6b
        ("8g.s0.5", "prediction"),
        ("8h.bfloat16", "exactness"),
        ("8i.s0.9", "exactness"),
    ],
)
def test_row_kind_follows_the_rule(claim_id, kind):
    # prediction: a correct implementation could fail it; exactness: only a bug, round-off
    # beyond its bound or a sampling accident can; the longest id prefix decides
    assert cm.row_kind(claim_id) == kind
    assert cm.row(claim_id, "d", 0.0, 0.0, 1.0)["kind"] == kind


def test_t_factor_and_bonferroni_z():
    from scipy import stats

    assert cm.t_factor(3.0, 7) == pytest.approx(stats.t.isf(stats.norm.sf(3.0), 7))
    assert cm.t_factor(3.0, 10**6) == pytest.approx(3.0, abs=1e-3)
    assert cm.t_factor(3.0, 3) > cm.t_factor(3.0, 7) > cm.t_factor(3.0, 31) > 3.0
    assert cm.z_family(3.0, 1) == 3.0
    p = 2 * stats.norm.sf(cm.z_family(3.0, 8))
    assert p * 8 == pytest.approx(2 * stats.norm.sf(3.0))


def test_weighted_line_matches_polyfit_and_recovers_a_known_line():
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 0.02, 6)
    y = 0.3 - 2.0 * x + rng.normal(0, 1e-4, 6)
    a, a_se, b, _ = cm.weighted_line(x, y, np.full(6, 1e-4))
    b_np, a_np = np.polyfit(x, y, 1)  # equal weights: ordinary least squares
    assert (a, b) == pytest.approx((a_np, b_np), rel=1e-9)
    assert abs(a - 0.3) < 4 * a_se


def test_seed_mean_se_uses_seeds_as_units():
    rng = np.random.default_rng(1)
    per_seed = rng.normal(size=(6, 1))
    data = per_seed + 1e-3 * rng.normal(size=(6, 50))  # strongly correlated within a seed
    mean, se, dof = cm.seed_mean_se(data)
    assert dof == 5
    assert se == pytest.approx(data.mean(axis=1).std(ddof=1) / math.sqrt(6))
    assert se > 5 * data.std() / math.sqrt(data.size)  # pooled understates it ~sqrt(50)x


def test_crossing_of_a_linear_function_is_exact():
    xs = np.array([1.0, 1.5, 2.0, 2.5])
    ys = 0.4 * (xs - 1.8)
    x, se = mean_field.crossing(xs, ys, np.full(4, 0.01))
    assert x == pytest.approx(1.8, abs=1e-12)
    assert se > 0
    assert math.isnan(mean_field.crossing(xs, -np.abs(ys) - 1)[0])


def test_tied_slope_bias_bound_covers_the_exact_quadratic():
    a, c = 0.03, 1.2
    for b in (-math.sqrt(a * c), 0.0, math.sqrt(a * c)):  # extremes of Cauchy-Schwarz
        for k in (60.0, 200.0):
            var = k**2 * a + 2 * k * b + c
            local = (2 * k**2 * a + 2 * k * b) / var
            assert abs(local - 2) <= tied_untied.tied_slope_bias_bound(k, a, c) + 1e-12
    assert tied_untied.tied_slope_bias_bound(2.0, a, c) == math.inf


# ----------------------------------------------------------------------------------------
# the experiments at tiny sizes


def test_depth_linear_rnn_rate_is_exactly_ln_s_and_tanh_rows_pass():
    sec, ctx = setup("depth", models=["rnn_linear", "rnn_tanh"], weight_scale=[0.7],
                     hidden=8, seq_len=60, batch=3, warmup=5)
    res = depth.run(sec, ctx)
    rows = rows_by_id(res)
    lin = rows["1b.rnn_linear.s0.7"]
    # W = 0.7 Q: every Jacobian is W, so both rates are ln 0.7 up to round-off
    assert lin["measured"] == pytest.approx(math.log(0.7), abs=1e-10)
    assert lin["predicted"] == pytest.approx(math.log(0.7), abs=1e-10)
    assert rows["1a.rnn_linear.s0.7"]["measured"] == pytest.approx(0.0, abs=1e-10)
    assert all(r["passed"] for r in res.rows), [r for r in res.rows if not r["passed"]]
    tanh = rows["1b.rnn_tanh.s0.7"]
    assert tanh["measured"] < math.log(0.7)  # tanh' < 1 only shrinks (Pascanu)
    curves = pd.DataFrame(res.curves.records)
    assert set(curves["kind"]) == {"measured", "predicted"}


def test_tied_untied_products_match_the_gaussian_theory():
    sec, ctx = setup("tied_untied", n=4, draws=600, steps=160, fit_from=20, bootstrap=60)
    rows = rows_by_id(tied_untied.run(sec, ctx))
    assert set(rows) == {"2a", "2b", "2c", "2d", "2e", "2f", "2g"}
    for r in rows.values():  # every row's verdict (2b-2e: exact Gaussian results)
        assert r["passed"], r
    assert rows["2c"]["predicted"] == pytest.approx(0.25 * 0.6449340668482264)  # trigamma(2)/4
    assert rows["2d"]["predicted"] == pytest.approx(th.newman_lyapunov_spectrum(4)[0])
    assert rows["2a"]["measured"] > 1.6 and rows["2b"]["measured"] < 1.3  # k^2 vs k


def test_tied_untied_simulation_agrees_with_direct_numpy_products():
    ks = np.array([1, 3, 7])
    sim = tied_untied.simulate(3, 1.3, 5, 7, ks, seed=4, device="cpu")
    gen = torch.Generator().manual_seed(7_919 * 5)
    w = (torch.randn(5, 3, 3, generator=gen, dtype=torch.float64) * 1.3 / math.sqrt(3)).numpy()
    frame = torch.linalg.qr(torch.randn(5, 3, 3, generator=gen, dtype=torch.float64))[0].numpy()
    v = frame[:, :, 0]
    for j, k in enumerate(ks):
        direct = np.log(np.linalg.norm(np.einsum("dij,dj->di", np.linalg.matrix_power(w, k), v),
                                       axis=1))
        np.testing.assert_allclose(sim["tied"][j], direct, rtol=1e-10, atol=1e-10)
    rho = np.abs(np.linalg.eigvals(w)).max(axis=1)
    np.testing.assert_allclose(sim["log_rho"], np.log(rho), rtol=1e-10)


def test_orthogonal_linear_rnn_singular_values_are_s_to_the_k():
    sec, ctx = setup("orthogonal", hidden=6, steps=30, weight_scale=[0.5, 1.7])
    res = orthogonal.run(sec, ctx)
    assert all(r["passed"] for r in res.rows)
    rows = rows_by_id(res)
    assert rows["3a"]["measured"] < 1e-11 and rows["3b"]["measured"] < 1e-11
    assert rows["3c"]["measured"] < 1e-10  # sum of exponents vs mean ln|det J| (tanh too)
    assert rows["3c"]["kind"] == "exactness"
    # reference: numpy singular values of W^k for the same weights
    cell = cm.make_cell("rnn_linear", orthogonal.INPUT_SIZE, 6, "orthogonal", 1.7, 0,
                        device="cpu", dtype=torch.float64)
    w = cell.weight_hh_l0.detach().numpy()
    sv = np.linalg.svd(np.linalg.matrix_power(w, 30), compute_uv=False)
    np.testing.assert_allclose(np.log(sv), 30 * math.log(1.7), atol=1e-11)


def test_pascanu_bound_and_explicit_product_norms():
    sec, ctx = setup("pascanu", seeds=(0, 1), hidden=8, seq_len=30, batch=3,
                     spectral_norm=[0.9], sweep_spectral_norm=[0.5, 8.0], warmup=3)
    rows = rows_by_id(pascanu.run(sec, ctx))
    assert rows["4a"]["measured"] == 0 and rows["4a"]["passed"]
    assert rows["4a"]["n"] == 2 * 3 * 30
    assert rows["4b"]["passed"]
    cell = pascanu.tanh_rnn(8, 4, 0.9, 3, ctx)
    assert torch.linalg.matrix_norm(cell.weight_hh_l0, ord=2).item() == pytest.approx(0.9)
    # product norms against numpy on random matrices
    rng = np.random.default_rng(2)
    jac = rng.normal(size=(5, 2, 4, 4))
    got = pascanu.log_product_norms(torch.from_numpy(jac))
    for k in range(1, 6):
        for b in range(2):
            prod = np.eye(4)
            for i in range(5 - 1, 5 - k - 1, -1):
                prod = prod @ jac[i, b]
            assert got[k - 1, b] == pytest.approx(np.log(np.linalg.norm(prod, 2)), rel=1e-12)


def test_mean_field_rates_and_critical_sigma_w_agree_with_theory():
    sec, ctx = setup("mean_field", hidden=[48, 96], sigma_w=[1.0, 2.5], seq_len=120, batch=8,
                     warmup=10, calibration_hidden=[16, 24])
    res = mean_field.run(sec, ctx)
    rows = rows_by_id(res)
    assert rows["5a.sw1"]["predicted"] == pytest.approx(th.log_norm_rate(1.0, 1.0, 0.0))
    assert rows["5b"]["predicted"] == pytest.approx(th.critical_sigma_w(1.0, 0.0))
    assert all(r["passed"] for r in res.rows), [r for r in res.rows if not r["passed"]]
    assert "calibrated in advance on H=[16, 24]" in rows["5a.sw1"]["note"]
    # 8 seeds (7 dof): the tolerance is a small fraction of the rates it checks
    assert rows["5a.sw1"]["tolerance"] < 0.2 * abs(rows["5a.sw1"]["predicted"])
    assert 1.0 < rows["5b"]["measured"] < 2.5


def test_mean_field_correction_from_theory_and_calibration_on_other_data():
    sec, ctx = setup("mean_field", hidden=[32, 64], sigma_w=[1.0], seq_len=100, batch=8,
                     warmup=10, calibration_hidden=[])
    row = rows_by_id(mean_field.run(sec, ctx))["5a.sw1"]
    assert row["predicted"] == pytest.approx(th.log_norm_rate(1.0, 1.0, 0.0))
    assert "c = -1/2 from theory" in row["note"] and row["passed"]
    assert row["tolerance"] < 0.1 * abs(row["predicted"])
    with pytest.raises(ValueError, match="must not overlap"):
        sec, ctx = setup("mean_field", hidden=[32, 64], calibration_hidden=[32, 48])
        mean_field.run(sec, ctx)


def test_float32_overflow_onset_matches_float32_numpy_and_clipping_rows():
    sec, ctx = setup("float32", seeds=(0,), hidden=32, batch=4, weight_scale=[2.0],
                     chain_steps=200, clip_max_len=260, clip_len_step=10, clip_sigma_w=3.0)
    res = float32.run(sec, ctx)
    rows = rows_by_id(res)
    assert all(r["passed"] for r in res.rows), [r for r in res.rows if not r["passed"]]
    assert rows["6e"]["measured"] - rows["6e"]["tolerance"] <= 0.5 * th.LOG_FLOAT32_MAX
    # reference: the same chain delta_t = W^T delta_{t+1} in float64 numpy; float32 overflows
    # where max_i |delta_i| first exceeds FLT_MAX, give or take one step (the summation order
    # of float32 dot products can overflow a partial sum one step before the result does)
    cell = cm.make_cell("rnn_linear", 8, 32, "orthogonal", 2.0, 0, device="cpu",
                        dtype=torch.float32)
    w = cell.weight_hh_l0.detach().numpy().astype(np.float64)
    from bpttbench.gradient_flow.gradients import readout_problem

    w_out, y = readout_problem(32, 4, seed=0)
    delta = (-(w_out.T.numpy() @ y.numpy().T)).T  # h_T = 0, so delta_T = -W_out^T y
    k_ref = None
    for k in range(1, 400):
        delta = delta @ w
        if np.abs(delta).max() > th.FLOAT32_MAX:
            k_ref = k
            break
    assert abs(rows["6a.s2"]["measured"] - k_ref) <= 1
    early = math.floor(th.float32_overflow_lag(math.log(2.0), rows_max_log_start(w_out, y))) + 1
    assert rows["6a.s2"]["predicted"] == early


def rows_max_log_start(w_out, y) -> float:
    return float(np.log(np.linalg.norm(w_out.T.numpy() @ y.numpy().T, axis=0)).max())


def test_float32_clipping_breakdown_not_reached_is_a_failing_row():
    # a short sweep of a small net never reaches ln||g|| = 44.4: 6e cannot be measured
    sec, ctx = setup("float32", seeds=(0,), hidden=8, batch=2, weight_scale=[3.0],
                     chain_steps=20, clip_max_len=40, clip_len_step=10)
    row = rows_by_id(float32.run(sec, ctx))["6e"]
    assert row["passed"] is False and math.isnan(row["measured"])
    assert "did not reach" in row["note"]
    assert row["predicted"] == pytest.approx(0.5 * th.LOG_FLOAT32_MAX)


def test_gating_exact_chains_and_the_forget_bias_sweep():
    sec, ctx = setup("gating", hidden=6, input_size=3, seq_len=40, batch=2,
                     warmup=4, weight_scale=[0.5], gate_bias=[-1.0, 2.0], exact_steps=20,
                     forget_bias=[0.0, 2.0], forget_bias_seq_len=80, forget_bias_warmup=20)
    res = gating.run(sec, ctx)
    rows = rows_by_id(res)
    assert set(rows) == {"7a", "7b", "7c.lstm", "7c.gru", "7f.lstm", "7f.gru", "7d", "7e"}
    for r in res.rows:  # every verdict: at s = 0.5 (vanishing) all of them hold
        assert r["passed"], r
    assert rows["7a"]["kind"] == "exactness" and rows["7f.lstm"]["kind"] == "prediction"
    # reference: sigmoid(b)^k in float64 numpy
    logs = gating.gate_chain_log_norms("lstm", 2.0, sec, 0, ctx)
    ref = np.arange(21) * np.log(1.0 / (1.0 + np.exp(-2.0)))
    np.testing.assert_allclose(logs, ref, atol=1e-12)
    curves = pd.DataFrame(res.curves.records)
    lam = curves[(curves["panel"] == "models")].set_index("group")["y"]
    assert abs(lam["lstm"]) < abs(lam["rnn_tanh"]) and abs(lam["gru"]) < abs(lam["rnn_tanh"])
    fb = curves[curves["panel"] == "forget_bias"]
    fb = fb[fb["kind"] == "points"].sort_values("x")["y"].to_numpy()
    assert fb[1] > fb[0]  # b_f = 2 is closer to 0 than b_f = 0
    assert "T=80" in rows["7d"]["condition"]
    with pytest.raises(ValueError, match="memory times"):  # T not >> the memory time
        sec, ctx = setup("gating", forget_bias=[0.0, 5.0], forget_bias_seq_len=200,
                         forget_bias_warmup=50)
        gating.run(sec, ctx)


def test_gating_rows_fail_when_the_stated_effect_is_absent(monkeypatch):
    # every model and forget bias gets the same exponent (no effect at all): each of 7c-7f
    # must count every scale / bias step as a miss and fail; a test of "no significant
    # reversal" would pass this
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    per_seed = {s: -0.3 + 0.01 * rng.standard_normal() for s in SEEDS8}
    monkeypatch.setattr(gating, "top_exponent",
                        lambda model, scale, s, *a, **k: (per_seed[s], 0.01))
    sec, ctx = setup("gating", hidden=4, input_size=2, seq_len=30, batch=2, warmup=3,
                     weight_scale=[0.5, 1.0], gate_bias=[0.0], exact_steps=8,
                     forget_bias=[0.0, 1.0, 2.0], forget_bias_seq_len=80,
                     forget_bias_warmup=5)
    rows = rows_by_id(gating.run(sec, ctx))
    expect = {"7c.lstm": 2, "7c.gru": 2, "7f.lstm": 2, "7f.gru": 2, "7d": 2, "7e": 2}
    for cid, misses in expect.items():
        assert rows[cid]["measured"] == misses and rows[cid]["passed"] is False, rows[cid]
    assert "not significantly closer" in rows["7c.lstm"]["note"]
    assert "not significantly longer" in rows["7f.gru"]["note"]
    assert "not significant" in rows["7d"]["note"] and "not significant" in rows["7e"]["note"]
    # a clear effect passes: gated exponents at half the tanh RNN's, rising with b_f
    monkeypatch.setattr(
        gating, "top_exponent",
        lambda model, scale, s, *a, forget_bias=0.0, **k: (
            per_seed[s] * (1.0 if model == "rnn_tanh" else 0.5) / (1.0 + forget_bias), 0.01))
    rows = rows_by_id(gating.run(sec, ctx))
    for cid in expect:
        assert rows[cid]["measured"] == 0 and rows[cid]["passed"], rows[cid]


def test_a_wrong_theory_makes_the_row_fail(monkeypatch):
    # feed the GRU gate chain a prediction 1 % off: 7b must come out failing
    monkeypatch.setattr(th, "gru_update_chain_log",
                        lambda b, lag: 1.01 * lag * th.log_sigmoid(b))
    sec, ctx = setup("gating", seeds=(0, 1), hidden=4, input_size=2, seq_len=30, batch=2,
                     warmup=3, weight_scale=[1.0], gate_bias=[0.0], exact_steps=10,
                     forget_bias=[0.0, 1.0], forget_bias_seq_len=40, forget_bias_warmup=5)
    rows = rows_by_id(gating.run(sec, ctx))
    assert rows["7a"]["passed"] and not rows["7b"]["passed"]
    assert rows["7b"]["score"] > 1


# ----------------------------------------------------------------------------------------
# registry, table contract, figures, config errors


def test_table_has_the_contract_columns_and_registry_order():
    records = []
    for claim in ("3_orthogonal", "7_gating"):
        records.append({"claim": claim, "rows": [cm.row(f"{claim[0]}x", "d", 1.0, 1.0, 0.1)],
                        "curves": [{"panel": "p", "group": "g", "kind": "measured", "x": 1.0,
                                    "y": 2.0, "y_err": math.nan}]})
    table, curves = collect(records[::-1])
    assert list(table.columns[: len(CONTRACT)]) == CONTRACT
    assert list(table.columns) == list(cm.ROW_COLUMNS)
    assert list(table["claim"]) == ["3_orthogonal", "7_gating"]
    assert list(curves.columns) == ["claim", "panel", "group", "kind", "x", "y", "y_err"]


def test_run_claim_record_and_job_config(tmp_path):
    cfg = {"device": "cpu", "claims": {"seeds": [0], "orthogonal": {"hidden": 4, "steps": 5}}}
    rec = run_claim("3_orthogonal", cfg)
    assert rec["claim"] == "3_orthogonal" and rec["settings"]["hidden"] == 4
    assert {r["claim_id"] for r in rec["rows"]} == {"3a", "3b", "3c"}
    json.dumps(rec)  # JSON-ready
    job = json.loads(job_config(cfg, "3_orthogonal"))
    assert set(job["claims"]) == {"dtype", "z", "seeds", "orthogonal"}
    with pytest.raises(ValueError, match="allowed: 1_depth"):
        run_claim("9_nothing", cfg)


def test_bad_claims_config_names_the_key():
    with pytest.raises(ConfigError, match=r"claims\.depth\.hiden"):
        claims_section({"claims": {"depth": {"hiden": 3}}})
    with pytest.raises(ConfigError, match=r"claims\.run\[0\]"):
        claims_section({"claims": {"run": ["8_magic"]}})


def test_an_empty_run_list_switches_the_stage_off(tmp_path):
    from bpttbench.cli import main

    assert claims_section({"claims": {"run": []}})["run"] == []
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("device: cpu\nclaims: {run: []}\n")
    code = main(["claims", "all", "--config", str(cfg), "--out", str(tmp_path / "c.csv"),
                 "--figures", str(tmp_path)])
    assert code == 2 and not (tmp_path / "c.csv").exists()


def test_report_lists_every_claim_figure():
    from bpttbench.report import SECTIONS

    claims = next(s for s in SECTIONS if s.title == "Claims")
    precision = next(s for s in SECTIONS if s.title == "Reduced precision")
    assert claims.figures + precision.figures == figure_names()
    assert claims.tables == ["claims.csv"]
    for name in figure_names():
        assert (REPO / "workflow" / "report" / f"{name}.rst").exists(), name
    assert set(CLAIM_IDS) == set(CLAIMS)


def test_figures_have_labelled_axes():
    table = pd.DataFrame([cm.row("1a", "d", 0.0, 0.0, 1.0), cm.row("1b", "e", 5.0, 0.0, 1.0)])
    table["claim"] = "1_depth"
    curves = pd.DataFrame({"claim": "1_depth", "panel": "rnn_tanh", "group": "s=1",
                           "kind": ["measured", "predicted"], "x": [0.0, 1.0],
                           "y": [0.0, -1.0], "y_err": [math.nan, math.nan]})
    fig = claim_figure("1_depth", "t", table, curves)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("lag") and "nats" in ax.get_ylabel()
    fig2 = overview_figure(table)
    title = fig2.axes[0].get_title()  # the headline by kind: 1a predicts, 1b compares methods
    assert "1 of 1 predictions hold" in title and "0 of 1 method agreements" in title
    # the x axis names what is plotted for every comparison, intervals in half-widths
    xlabel = fig2.axes[0].get_xlabel()
    assert "|m-p|/tol" in xlabel and "half-widths" in xlabel and "max(m-p, 0)/tol" in xlabel


def test_a_short_log_axis_gets_readable_ticks():
    # claim 4's necessity panel: lambda_1 from 0.44 to 6.8 on a log axis (1.2 decades);
    # with powers of ten alone only the tick 1 would show
    lam1 = np.geomspace(0.44, 6.8, 6)
    curves = pd.DataFrame({"claim": "4_pascanu", "panel": "necessity", "group": "tanh RNN",
                           "kind": "points", "x": lam1, "y": 0.1 * np.log(lam1),
                           "y_err": 0.01})
    table = pd.DataFrame([cm.row("4b", "d", 0.0, 0.0, 0.0, "m<=p+tol")])
    fig = claim_figure("4_pascanu", "t", table, curves)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    shown = [t.get_text() for t, v in zip(ax.get_xticklabels(), ax.get_xticks(), strict=True)
             if lo <= v <= hi and t.get_text()]
    assert {"0.5", "1", "2", "5"} <= set(shown), shown


# ----------------------------------------------------------------------------------------
# end to end: the claims target of the workflow in a temporary folder


TINY = {
    "hardware_tag": "claims-e2e",
    "device": "cpu",
    "claims": {
        "seeds": [0, 1],
        "depth": {"models": ["rnn_tanh"], "weight_scale": [0.5], "hidden": 8, "seq_len": 40,
                  "batch": 2, "warmup": 4},
        "tied_untied": {"n": 4, "draws": 200, "steps": 60, "fit_from": 10, "bootstrap": 30},
        "orthogonal": {"hidden": 4, "steps": 10, "weight_scale": [0.5]},
        "pascanu": {"hidden": 6, "seq_len": 20, "batch": 2, "spectral_norm": [0.9],
                    "sweep_spectral_norm": [0.5, 6.0], "warmup": 2},
        "mean_field": {"hidden": [16, 32], "sigma_w": [1.0, 2.5], "seq_len": 40, "batch": 2,
                       "warmup": 5},
        "float32": {"hidden": 4, "batch": 2, "weight_scale": [3.0], "chain_steps": 50,
                    "clip_max_len": 120, "clip_len_step": 20},
        "gating": {"hidden": 4, "input_size": 2, "seq_len": 30, "batch": 2, "warmup": 3,
                   "weight_scale": [0.5], "gate_bias": [0.0], "exact_steps": 8,
                   "forget_bias": [0.0, 2.0]},
        "precision": {"hidden": 8, "batch": 2, "vanish_scale": [0.5], "explode_scale": [2.0],
                      "rate_steps": 40, "rate_seeds": 1},
    },
}


@pytest.mark.slow
def test_claims_target_end_to_end(tmp_path):
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent))
    if snakemake is None:
        pytest.skip("snakemake is not installed next to this Python")
    (tmp_path / "cfg.yaml").write_text(json.dumps(TINY))
    hw = TINY["hardware_tag"]
    targets = [f"results/{hw}/tables/claims.csv", f"results/{hw}/figures/claims_overview.png"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [snakemake, "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(tmp_path / "cfg.yaml"), "--cores", "2", *targets],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = pd.read_csv(tmp_path / targets[0])
    assert list(table.columns[: len(CONTRACT)]) == CONTRACT
    assert set(table["claim"]) == set(CLAIM_IDS)
    assert table["claim_id"].is_unique
    for name in figure_names():
        assert (tmp_path / "results" / hw / "figures" / f"{name}.png").stat().st_size > 10_000
    curves = pd.read_parquet(tmp_path / "results" / hw / "tables" / "claim_curves.parquet")
    assert set(curves["claim"]) == set(CLAIM_IDS)
    # exact claims must pass even at this size
    exact = table[table["claim_id"].isin(["3a", "3b", "4a", "7a", "7b", "6b"])]
    assert exact["passed"].all(), exact
