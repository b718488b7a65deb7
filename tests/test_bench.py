"""The bench stage: variants agree, formulas count right, the table honours its contract.

Tolerances: every CPU variant against the float64 reference on fresh random problems at
the stage's own check tolerance (float32: 1e-4, float64: 1e-9; observed float32 errors are
1e-7..5e-6). FLOP formulas are compared with hand counts and, for their GEMM terms, with
torch's FlopCounterMode (exact). Nothing here asserts on wall time: timing logic is tested
with a scripted clock.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bpttbench.bench import plots, runner, timing, variants
from bpttbench.bench.ops import (
    BENCH_CHECK_TOLERANCES,
    OPS,
    Shape,
    check_tolerance,
    compare,
    get_op,
    make_problem,
    qr_flops,
    reference,
    rescaled_chain64,
    summarise,
)
from bpttbench.cli import main as cli_main
from bpttbench.config import ConfigError, validate
from bpttbench.jacobians import analytic, cupy_backend
from bpttbench.jacobians.backends import NumpyBackend
from bpttbench.jacobians.chain import run_chain
from bpttbench.planning import jobs

CUPY_OK, CUPY_WHY = cupy_backend.cupy_available()
CPU_PAIRS = sorted(k for k in variants.FACTORY if k[1] != "cupy")
CONTRACT = ["op", "variant", "hidden", "batch", "seq_len", "median_ms", "speedup_vs_torch",
            "fraction_of_peak"]


def fresh_seed() -> int:
    return int(np.random.default_rng().integers(0, 2**31 - 1))


def tiny_cfg(**bench) -> dict:
    base = {"hidden": [6], "batch": [3], "seq_len": [9], "k": 4, "repeats": 2, "warmup": 1,
            "time_budget_s": 0.05, "threads": 1, "check_steps": 5}
    return validate({"device": "cpu", "bench": {**base, **bench}})


# ------------------------------------------------------------------------ variants agree


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("op", "variant"), CPU_PAIRS, ids=[f"{o}-{v}" for o, v in CPU_PAIRS])
def test_variant_matches_float64_reference(op, variant, dtype):
    spec = get_op(op)
    seed = fresh_seed()
    problem = make_problem(spec, Shape(7, 3, 6), k=5, dtype=dtype, device="cpu", seed=seed)
    got = summarise(spec, variants.FACTORY[(op, variant)](problem)())
    ref = reference(problem)
    err, keys = compare(got, ref)
    tol = BENCH_CHECK_TOLERANCES["float32" if dtype == torch.float32 else "float64"]
    assert keys, "nothing was compared"
    assert err <= tol, f"seed {seed}: {op}/{variant} err {err:.3g} > {tol:g} on {keys}"


@pytest.mark.parametrize(("op", "variant"), [("chain", "numpy"), ("lyapunov", "torch_func"),
                                             ("lstm_jacobians", "torch"),
                                             ("gru_jacobians", "torch_func"),
                                             ("bptt_lstm", "fused")])
def test_variants_agree_with_each_other(op, variant):
    """Two implementations on the same float32 inputs agree with each other (not only with f64)."""
    spec = get_op(op)
    problem = make_problem(spec, Shape(8, 4, 5), k=3, dtype=torch.float32, device="cpu",
                           seed=fresh_seed())
    a = summarise(spec, variants.FACTORY[(op, "torch")](problem)())
    b = summarise(spec, variants.FACTORY[(op, variant)](problem)())
    err, keys = compare(b, a)
    assert keys and err <= 1e-4


@pytest.mark.cuda
@pytest.mark.skipif(not CUPY_OK, reason=CUPY_WHY)
@pytest.mark.parametrize("op", [o for o in OPS if (o, "cupy") in variants.FACTORY])
def test_cupy_variant_matches_reference(op):
    spec = get_op(op)
    problem = make_problem(spec, Shape(32, 4, 12), k=8, dtype=torch.float32, device="cuda",
                           seed=fresh_seed())
    err, keys = compare(summarise(spec, variants.FACTORY[(op, "cupy")](problem)()),
                        reference(problem))
    assert keys and err <= BENCH_CHECK_TOLERANCES["float32"]


def test_chain_reference_matches_engine_on_well_conditioned_columns():
    """The float64 rescale-only chain equals the engine's run_chain(qr_every=T) where it is
    well conditioned (1e-12), and the mask keeps column 1 always."""
    spec = get_op("chain")
    p = make_problem(spec, Shape(12, 5, 15), k=12, dtype=torch.float64, device="cpu",
                     seed=fresh_seed())
    saved = analytic.forward_saved("rnn_tanh", p.params64, p.x64, None, NumpyBackend())
    engine, _ = run_chain(saved, NumpyBackend(), 12, 15, p.frame0)
    totals, ratio = rescaled_chain64(saved.deriv, saved.w_hh, p.frame0)
    mask = ratio >= 1e-2
    assert mask[:, 0].all()
    np.testing.assert_allclose(totals[mask], engine[mask], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ratio[:, 0], 1.0, atol=1e-12)


def test_compare_metrics():
    ref = {"log_stretch": np.array([[10.0, -0.5]]), "grad_whh": np.array([[2.0, -4.0]])}
    got = {"log_stretch": np.array([[10.001, -0.5005]]), "grad_whh": np.array([[2.0, -4.004]])}
    err, keys = compare(got, ref)
    # logs: |diff| / max(1, |ref|) -> 1e-4 and 5e-4; arrays: max|diff| / max|ref| = 1e-3
    assert keys == ["log_stretch", "grad_whh"]
    assert err == pytest.approx(1e-3, rel=1e-9)
    masked = {**ref, "log_stretch_mask": np.array([[True, False]])}
    err, keys = compare({"log_stretch": np.array([[10.0, 99.0]])}, masked)
    assert err == 0.0 and keys == ["log_stretch[1/2 well-conditioned]"]
    assert compare({"log_stretch": np.array([[np.nan, 0.0]])}, ref)[0] == math.inf
    with pytest.raises(ValueError, match="none of the reference keys"):
        compare({"other": np.zeros(1)}, ref)


# -------------------------------------------------------------------------- formulas


def test_flop_and_byte_formulas_match_hand_counts():
    h, b, t, k, s = 3, 2, 5, 2, 4
    sh = Shape(h, b, t)
    # chain, per step and batch element: W^T (H x H) times the scaled frame (H x k): 2*9*2 = 36;
    # scaling by phi': 6; column norms (square + add): 12; divide by the norms: 6 -> 60.
    # Final Householder QR of a 3 x 2 frame with Q formed: 2 * (4*3*4 - 4*8/3).
    assert get_op("chain").flops(sh, k) == pytest.approx(t * b * 60 + b * (48 - 32 / 3))
    # Lyapunov: GEMM 36 + scaling 6 + QR (48 - 32/3) every step.
    assert get_op("lyapunov").flops(sh, k) == pytest.approx(t * b * (42 + 48 - 32 / 3))
    # bytes: phi' 5*2*3 = 30 values, W 9, frame in 12 and out 12 (float32), totals 2*2 float64.
    assert get_op("chain").bytes(sh, k, s) == 4 * (30 + 9 + 12 + 12) + 8 * 4
    # LSTM, H = 2, per (t, b): dc/dh = 3 scaled 2x2 blocks summed (12 mul + 8 add = 20),
    # dh/dh = 2 scaled blocks + 1 add (4 + 4 + 4 = 12), six H-vectors of coefficients (12).
    assert get_op("lstm_jacobians").flops(Shape(2, 1, 1), 1) == 20 + 12 + 12
    # bytes: gates + dgates (16), c, tanh c', 1 - tanh^2 c' (6), W_hh 16, J written 16.
    assert get_op("lstm_jacobians").bytes(Shape(2, 1, 1), 1, 1) == 16 + 6 + 16 + 16
    # GRU, H = 2: three scaled 2x2 blocks summed (12 mul + 8 add) + diag(z) (2) + 6 H coefficients.
    assert get_op("gru_jacobians").flops(Shape(2, 1, 1), 1) == 20 + 2 + 12
    assert get_op("gru_jacobians").bytes(Shape(2, 1, 1), 1, 1) == 18 + 12 + 4
    assert qr_flops(4, 4) == pytest.approx(4 * 64 - 4 * 64 / 3)


@pytest.mark.parametrize("op", ["chain", "lyapunov", "bptt_rnn", "bptt_lstm", "bptt_gru"])
def test_gemm_flops_match_torch_flop_counter(op):
    """torch's FlopCounterMode counts the matmuls of the torch variant: for BPTT they are the
    whole formula, for the chains its GEMM term 2 T B H^2 k."""
    spec = get_op(op)
    sh = Shape(5, 3, 7)
    p = make_problem(spec, sh, k=4, dtype=torch.float64, device="cpu", seed=fresh_seed())
    run = variants.FACTORY[(op, "torch")](p)  # set-up (the forward pass) is not counted
    with FlopCounterMode(display=False) as counter:
        run()
    want = 2 * 7 * 3 * 25 * 4 if spec.kind == "chain" else spec.flops(sh, 4)
    assert counter.get_total_flops() == want


def test_check_shape_is_a_prefix_of_the_same_inputs():
    spec = get_op("bptt_gru")
    p = make_problem(spec, Shape(4, 20, 30), k=2, dtype=torch.float32, device="cpu", seed=3)
    c = p.prefix(spec.check_shape(p.shape, 7))
    assert (c.seq_len, c.batch) == (7, 16)
    assert torch.equal(c.x, p.x[:7, :16])
    jac = get_op("lstm_jacobians").check_shape(Shape(2048, 64, 100), 20)
    assert (jac.seq_len, jac.batch) == (1, 1)  # one 4096 x 4096 Jacobian is over the budget
    jac = get_op("gru_jacobians").check_shape(Shape(256, 1024, 100), 20)
    assert (jac.seq_len, jac.batch) == (2, 32)  # 2 * 32 * 256^2 = 2^22 float64 values


# ---------------------------------------------------------------------- factory, config


def test_factory_rejects_unknown_names_clearly():
    with pytest.raises(ValueError, match=r"unknown bench op\(s\) 'nope'; allowed: chain"):
        variants.get_variant("nope", "torch")
    with pytest.raises(ValueError, match=r"unknown bench variant\(s\) 'jax'; allowed: cupy"):
        variants.get_variant("chain", "jax")
    with pytest.raises(ValueError, match="'fused' is not registered for op 'chain'"):
        variants.get_variant("chain", "fused")
    assert variants.get_variant("lyapunov", "numpy") is variants.chain_numpy
    with pytest.raises(ConfigError, match=r"bench\.ops\[0\]: 'nope' is not allowed"):
        validate({"bench": {"ops": ["nope"]}})
    with pytest.raises(ConfigError, match="unknown config key bench.repeat"):
        validate({"bench": {"repeat": 3}})


def test_schema_enums_match_the_factory():
    cfg = validate({})
    assert cfg["bench"]["ops"] == list(OPS)
    assert cfg["bench"]["variants"] == list(variants.VARIANTS)
    assert {v for _, v in variants.FACTORY} == set(variants.VARIANTS)
    assert set(plots.PALETTE) == set(variants.VARIANTS)


def test_shapes_product_axes_and_extras():
    bench = validate({"bench": {"hidden": [8, 16], "batch": [1, 4], "seq_len": [10, 100],
                                "shapes": [{"op": "chain", "hidden": 32, "batch": 2,
                                            "seq_len": 5, "label": "deepbench"},
                                           {"op": "bptt_gru", "hidden": 3, "batch": 1,
                                            "seq_len": 1}]}})["bench"]
    prod = runner.shapes_for(bench, "chain")
    assert len(prod) == 9 and Shape(32, 2, 5, "deepbench") in prod
    flops = [get_op("chain").flops(s, 16) for s in prod]
    assert flops == sorted(flops)
    axes = runner.shapes_for({**bench, "sweep": "axes", "base": {"hidden": 16}, "shapes": []},
                             "lyapunov")
    assert set(axes) == {Shape(8, 1, 10), Shape(16, 1, 10), Shape(16, 4, 10), Shape(16, 1, 100)}


def test_pipeline_jobs_and_tolerances():
    bench = validate({"bench": {"ops": ["chain", "bptt_gru"], "jobs": "per_op"}})["bench"]
    parts = jobs.bench_parts(bench)
    assert parts == {"chain": ["chain"], "bptt_gru": ["bptt_gru"]}
    assert jobs.bench_parts({**bench, "jobs": "single"}) == {"all": ["chain", "bptt_gru"]}
    assert jobs.part_ops(parts, "bptt_gru") == "bptt_gru"
    with pytest.raises(ValueError, match="bench job 'all' is not in the current config"):
        jobs.part_ops(parts, "all")
    assert check_tolerance("float32", False, "cuda") == 1e-4
    assert check_tolerance("float32", True, "cuda") == BENCH_CHECK_TOLERANCES["tf32"]
    assert check_tolerance("float32", True, "cpu") == 1e-4  # no TF32 on a CPU
    assert check_tolerance("float64", True, "cuda") == 1e-9


# -------------------------------------------------------------------------------- timing


def test_benchmark_stops_on_budget_and_slow_calls(monkeypatch):
    clock = iter(np.cumsum([0.0] + [0.010, 0.0] * 100))  # every call takes exactly 10 ms
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
    t = timing.benchmark(lambda: 1, "cpu", warmup=2, repeats=50, time_budget_s=0.045,
                         max_call_s=1.0)
    assert t.n == 5 and len(t.warmup_ms) == 2  # 5 x 10 ms > 45 ms budget
    st = t.stats()
    assert st["median_ms"] == pytest.approx(10.0) and st["iqr_ms"] == pytest.approx(0.0)
    slow = iter(np.cumsum([0.0] + [3.0, 0.0] * 10))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(slow)))
    t = timing.benchmark(lambda: 1, "cpu", warmup=3, repeats=9, time_budget_s=100,
                         max_call_s=2.0)
    assert len(t.warmup_ms) == 1 and t.n == 1  # a 3 s call: no more warm-ups, one timed call


def test_slow_shapes_are_skipped_from_smaller_evidence():
    spec = get_op("chain")
    hist = [(Shape(16, 4, 100), 0.3)]
    assert runner._slow_reason(hist, spec, Shape(16, 4, 1000), 2.0).startswith("predicted")
    assert runner._slow_reason(hist, spec, Shape(16, 4, 500), 2.0) is None
    assert runner._slow_reason(hist, spec, Shape(8, 4, 10_000), 2.0) is None  # not larger
    assert runner._slow_reason(hist, get_op("gru_jacobians"), Shape(16, 4, 1000), 2.0) is None


def test_blas_threads_can_be_set():
    before = timing.blas_threads()
    if before is None:
        pytest.skip("NumPy's BLAS is not OpenBLAS here")
    try:
        assert timing.blas_threads(1) == 1
    finally:
        timing.blas_threads(before)


# ------------------------------------------------------------------- table and targets


def _fake_peaks(gemm=1e11, bw=1e10):
    return pd.DataFrame([
        {"device": "cpu", "quantity": "gemm_flops", "value": gemm},
        {"device": "cpu", "quantity": "copy_bandwidth", "value": bw},
    ])


def test_run_op_records_mismatch_and_skips_without_timing(monkeypatch):
    def wrong(p):
        run = variants.chain_numpy(p)
        return lambda: run() * 1.01  # 1% off: a wrong kernel

    monkeypatch.setitem(variants.FACTORY, ("chain", "numpy"), wrong)
    df = runner.run_op(tiny_cfg(variants=["cupy", "torch", "numpy"]), "chain", log=lambda m: None)
    by = df.set_index("variant")
    assert by.loc["numpy", "status"] == "mismatch" and np.isnan(by.loc["numpy", "median_ms"])
    assert by.loc["numpy", "check_err"] > 1e-3
    assert by.loc["torch", "status"] == "ok" and by.loc["torch", "n"] >= 1
    assert by.loc["cupy", "status"] == "skipped" and "CUDA" in by.loc["cupy", "reason"]
    df = runner.run_op(tiny_cfg(max_memory_gib=1e-9), "bptt_rnn", log=lambda m: None)
    assert (df["status"] == "skipped").all() and df["reason"].str.contains("max_memory").all()


def test_collect_has_contract_columns_and_consistent_roofline():
    cfg = tiny_cfg(variants=["torch", "numpy", "fused"])
    parts = [runner.run_op(cfg, op, log=lambda m: None) for op in ("gru_jacobians", "bptt_gru")]
    df = runner.collect(parts, _fake_peaks())
    assert set(CONTRACT) <= set(df.columns)
    assert (df["status"] == "ok").all()
    torch_rows = df[df["variant"] == "torch"]
    np.testing.assert_allclose(torch_rows["speedup_vs_torch"], 1.0)
    for r in df.itertuples():
        bound = min(1e11, r.intensity * 1e10)
        assert r.fraction_of_peak == pytest.approx(r.flops / (r.median_ms * 1e-3) / bound)
        assert r.bound == ("compute" if r.intensity * 1e10 >= 1e11 else "memory")
        other = df[(df.op == r.op) & (df.variant == "torch")].iloc[0]
        assert r.speedup_vs_torch == pytest.approx(other.median_ms / r.median_ms)
    assert df["threads"].isin([1]).all()


def _target_table():
    rows = []
    for h, t, cupy_ms, torch_ms in [(32, 1000, 1.0, 12.0), (64, 2000, 1.0, 15.0),
                                    (64, 100, 1.0, 2.0), (256, 1000, 1.0, 3.0)]:
        for v, ms in (("cupy", cupy_ms), ("torch", torch_ms)):
            rows.append({"op": "chain", "variant": v, "hidden": h, "batch": 8, "seq_len": t,
                         "label": "grid", "status": "ok", "median_ms": ms, "device": "cuda",
                         "fraction_of_peak": 0.6 if h >= 256 else 0.1, "reason": ""})
    return pd.DataFrame(rows)


def test_targets_are_evaluated_on_matching_rows(tmp_path):
    targets = runner.load_targets("benchmarks/targets.yaml")
    assert {t["target"] for t in targets} >= {"chain_fused_vs_torch_loop",
                                               "lstm_jacobians_vs_jacrev"}
    mine = [
        {"target": "a", "op": "chain", "variant": "cupy", "metric": "speedup", "baseline": "torch",
         "threshold": 10, "where": {"hidden": {"max": 64}, "seq_len": {"min": 1000}},
         "aggregate": "min", "device": "cuda"},
        {"target": "b", "op": "chain", "variant": "cupy", "metric": "fraction_of_peak",
         "threshold": 0.5, "where": {"hidden": {"min": 256}}, "aggregate": "min",
         "device": "cuda"},
        {"target": "c", "op": "chain", "variant": "cupy", "metric": "speedup", "baseline": "torch",
         "threshold": 1, "where": {"hidden": {"min": 4096}}, "aggregate": "min",
         "device": "cuda"},
    ]
    res = runner.evaluate_targets(_target_table(), mine).set_index("target")
    assert res.loc["a", "measured"] == pytest.approx(12.0) and res.loc["a", "met"] is True
    assert res.loc["a", "rows"] == 2
    assert res.loc["b", "measured"] == pytest.approx(0.6) and res.loc["b", "met"] is True
    assert pd.isna(res.loc["c", "met"]) and "no chain/cupy rows" in res.loc["c", "note"]
    cpu = _target_table().assign(device="cpu")
    res = runner.evaluate_targets(cpu, targets)
    assert res["met"].isna().all()
    assert res["note"].str.startswith("not applicable on this device (cpu)").all()
    bad = tmp_path / "t.yaml"
    bad.write_text("targets:\n  - {target: x, op: chain, variant: cupy, metric: speed, "
                   "threshold: 1}\n")
    with pytest.raises(ValueError, match=r"targets\[0\]: metric 'speed'; allowed: speedup"):
        runner.load_targets(bad)


def test_figures_draw_gpu_and_cpu_rows(tmp_path):
    """A synthetic GPU result set (cuda rows plus numpy rows on the CPU): two roofline panels,
    one speedup row per op, with labelled log axes."""
    rng = np.random.default_rng()
    rows = []
    for op in ("chain", "lstm_jacobians"):
        for h in (16, 64, 256):
            for t in (100, 1000):
                for v, dev in (("cupy", "cuda"), ("torch", "cuda"), ("numpy", "cpu")):
                    sh = Shape(h, 256, t)
                    rows.append({
                        "op": op, "model": get_op(op).model, "variant": v, "hidden": h,
                        "batch": 256, "seq_len": t, "k": 16, "label": "grid", "status": "ok",
                        "median_ms": float(rng.uniform(0.1, 10)), "device": dev,
                        "device_name": "NVIDIA H100" if dev == "cuda" else "some CPU",
                        "flops": get_op(op).flops(sh, 16), "bytes": get_op(op).bytes(sh, 16, 4),
                    })
    raw = pd.DataFrame(rows).reindex(columns=runner.RAW_COLUMNS)
    raw["intensity"] = raw["flops"] / raw["bytes"]
    raw["achieved_gflops"] = raw["flops"] / raw["median_ms"] / 1e6
    peaks = pd.concat([_fake_peaks().assign(device=d, value=v)
                       for d, v in (("cpu", [1e11, 1e10]), ("cuda", [5e13, 3e12]))])
    df = runner.collect([raw], peaks)
    fig = plots.bench_roofline(df, peaks)
    assert [ax.get_title().split(":")[0] for ax in fig.axes[:2]] == ["cuda", "cpu"]
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in fig.axes[:2])
    fig = plots.bench_speedup(df)
    axes = [ax for ax in fig.axes if ax.get_xlabel()]
    assert len(axes) == 4 and all(ax.get_yscale() == "log" for ax in axes)
    assert {ax.get_xlabel().split(" (")[0] for ax in axes} == {"hidden size H",
                                                                  "sequence length T"}
    empty = plots.bench_speedup(df.iloc[0:0])
    assert "no timed rows" in empty.axes[0].texts[0].get_text()
    plots.plt.close("all")


# ------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_bench_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(timing.GEMM_SIZES, "cpu", (256, 512))  # small peaks: a fast test
    monkeypatch.setitem(timing.COPY_BYTES, "cpu", 32 * 2**20)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({"device": "cpu", "bench": {
        "ops": ["chain", "gru_jacobians", "bptt_rnn"], "hidden": [6, 10], "batch": [2],
        "seq_len": [5, 9], "repeats": 2, "time_budget_s": 0.05, "threads": 1, "k": 3}}))
    out = tmp_path / "res"
    rc = cli_main(["bench", "run", "--config", str(cfg), "--out", str(out),
                   "--targets", "benchmarks/targets.yaml"])
    assert rc == 0
    df = pd.read_parquet(out / "tables" / "bench.parquet")
    csv = pd.read_csv(out / "tables" / "bench.csv")
    assert len(df) == len(csv) == 4 * (4 + 4 + 2)  # 4 sizes; bptt_rnn has 2 variants, others 4
    assert set(CONTRACT) <= set(csv.columns)
    ok = df[df["status"] == "ok"]
    assert len(ok) == 4 * (3 + 3 + 2) and (ok["median_ms"] > 0).all()  # all but cupy
    assert (ok["fraction_of_peak"] > 0).all()
    peak = pd.read_csv(out / "tables" / "peak.csv")
    assert peak.groupby("quantity")["peak"].sum().to_dict() == {"copy_bandwidth": 1,
                                                                "gemm_flops": 1}
    targets = pd.read_csv(out / "tables" / "bench_targets.csv")
    assert list(targets.columns[:1]) == ["target"] and {"measured", "met", "note"} <= set(targets)
    assert targets["note"].str.contains("not applicable on this device").all()
    for name in ("bench_speedup", "bench_roofline"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
