"""Reduced precision: float16 underflow/overflow lags, loss scaling, bfloat16 rates, autocast.

The exact cases use the orthogonal linear RNN W = sQ with zero inputs: the exact gradient
is ||delta_{T-k}|| = s^k ||delta_T||, so where float16 turns it into 0 or inf is known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bpttbench import precision as pr
from bpttbench.claims.common import make_cell
from bpttbench.config import ConfigError, gradient_flow_cells, validate
from bpttbench.gradient_flow.gradients import measure_gradient_flow, readout_problem

H, B, INP = 16, 6, 3


def _linear(scale: float, seed: int, dtype: str, steps: int):
    cell = make_cell("rnn_linear", INP, H, "orthogonal", scale, seed, device="cpu",
                     dtype=pr.DTYPES[dtype])
    x = torch.zeros(steps, B, INP, dtype=pr.DTYPES[dtype])
    w_out, target = readout_problem(H, B, seed=seed)
    return cell, x, w_out, target


def _deltas(cell, x, w, y, scale: float) -> torch.Tensor:
    """dL/dh_{T-k} (S L backpropagated), lag 0 first, in the cell's dtype."""
    from bpttbench.models import unroll

    s0 = (cell.initial_state(B)[0].requires_grad_(True),)
    states = unroll("rnn_linear", cell.params(), x, s0)
    h_T = states[-1][0]
    loss = 0.5 * ((h_T @ w.to(h_T.dtype).T - y.to(h_T.dtype)) ** 2).sum()
    grads = torch.autograd.grad(loss.float() * scale, [st[0] for st in reversed(states)])
    return torch.stack(grads)


def _per_element_first(log_norm: np.ndarray, bad) -> list[int | None]:
    out = []
    for b in range(log_norm.shape[1]):
        rows = np.flatnonzero(bad(log_norm[:, b]))
        out.append(int(rows[0]) if rows.size else None)
    return out


def test_limits_are_the_ieee_values():
    f16, bf16 = pr.limits("float16"), pr.limits("bfloat16")
    assert f16["ln_subnormal"] == pytest.approx(-24 * math.log(2), abs=1e-12)
    assert f16["ln_max"] == pytest.approx(math.log(65504.0), abs=1e-12)
    assert bf16["ln_subnormal"] == pytest.approx(-133 * math.log(2), abs=1e-12)
    assert bf16["unit_roundoff"] == 2.0**-8 and f16["unit_roundoff"] == 2.0**-11
    # the subnormal really is the smallest positive float16
    tiny = torch.tensor(math.exp(f16["ln_subnormal"]), dtype=torch.float16)
    assert float(tiny) > 0 and float(tiny / 2) == 0.0


@pytest.mark.parametrize("scale", [0.5, 0.25])
def test_float16_underflow_lag_of_every_batch_element_is_in_its_predicted_interval(
        scale, rng_seed):
    steps = 60
    cell, x, w, y = _linear(scale, rng_seed % 10_000, "float16", steps)
    flow = measure_gradient_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w, y)
    ref = pr.reference_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w, y)
    err = pr.step_error_bound(cell.weight_hh_l0, "float16")
    rate = pr.growth_rate_fit(ref.log_norm_h.mean(axis=1))[0]  # in [ln s_min, ln s_max] of W
    got = _per_element_first(flow.log_norm_h, np.isneginf)
    for b, m in enumerate(got):
        start = float(flow.log_norm_h[0, b])  # the measured lag-0 norm the chain starts from
        lo, hi, k_star = pr.underflow_interval(rate, start, "float16", H, err)
        print(f"element {b}: underflow lag {m}, earliest {lo} (theorem), predicted latest {hi}"
              f", k* {k_star:.2f}")
        # theorem: every lag's norm lies in the envelope of the per-step round-off (relative
        # u in the normal range, m/2 per entry in the subnormal range); the zero not earlier
        low, up = pr.norm_envelope(rate, start, "float16", H, err, steps)
        assert m is not None and lo <= m
        with np.errstate(invalid="ignore"):
            assert (flow.log_norm_h[:m, b] >= low[:m] - 1e-12).all()
            assert (flow.log_norm_h[:m, b] <= up[:m] + 1e-12).all()
        # prediction (no finite bound exists): the zero within E = ceil(ln(2R)/|ln g|) steps
        # of the lag where the upper trajectory falls below half an ulp (underflow_interval)
        assert m <= hi, f"element {b}: zero at lag {m}, predicted by lag {hi}"
        # after the zero nothing comes back (0 times anything is 0)
        assert np.isneginf(flow.log_norm_h[m:, b]).all()
    whole, first = pr.underflow_lags(flow)
    assert whole == min(got) and first is not None and first <= whole


@pytest.mark.parametrize("scale", [1.5, 2.0])
def test_float16_overflow_lag_of_every_batch_element_is_in_its_predicted_interval(
        scale, rng_seed):
    steps = 45
    cell, x, w, y = _linear(scale, rng_seed % 10_000, "float16", steps)
    flow = measure_gradient_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w, y)
    ref = pr.reference_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w, y)
    err = pr.step_error_bound(cell.weight_hh_l0, "float16")
    rate = pr.growth_rate_fit(ref.log_norm_h.mean(axis=1))[0]  # in [ln s_min, ln s_max] of W
    got = _per_element_first(flow.log_norm_h, lambda c: ~np.isfinite(c))
    for b, m in enumerate(got):
        lo, hi, _ = pr.overflow_interval(rate, float(flow.log_norm_h[0, b]), "float16", H, err)
        print(f"element {b}: first inf at lag {m}, predicted [{lo}, {hi}]")
        assert m is not None and lo <= m <= hi
    # before the overflow float16 follows float64 to its round-off, each from its own lag-0
    # norm (the float64 reference does not round the readout to float16: lag 0 differs by
    # more than u, 6e-4 > 2^-11 for seed 893725500): every step's change of ln||delta|| is
    # within err (+ the subnormal absolute round-off sqrt(H) 2^-25, relative to ||W^T d||)
    first = min(got)
    f16, f64 = flow.log_norm_h[:first], ref.log_norm_h[:first]
    dev = np.abs((f16 - f16[0]) - (f64 - f64[0]))
    sv_min = float(torch.linalg.svdvals(cell.weight_hh_l0.detach().double()).min())
    step = err + 2 * math.sqrt(H) * 2.0**-25 / (sv_min * np.exp(f16.min()))
    assert (dev <= np.arange(first)[:, None] * step + 1e-12).all()


def test_power_of_two_loss_scale_is_exact_in_the_normal_range_and_shifts_the_underflow(
        rng_seed):
    scale, steps, ln_s = 0.5, 70, 10 * math.log(2)
    cell, x, w, y = _linear(scale, rng_seed % 10_000, "float16", steps)
    plain = pr.scaled_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w, y,
                           pr.Precision("float16"))
    scaled = pr.scaled_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w, y,
                            pr.Precision("float16", None, 1024.0))
    assert scaled.loss_scale == 1024.0 and scaled.backoffs == 0
    # multiplying by 2^10 commutes with rounding while every element is a normal float16:
    # the deltas agree exactly before the first lag k_n with an element below 2^-14 (0
    # included), and at k_n in its normal elements (both came from exactly scaled inputs).
    # k_n can be 0: delta_T itself may have an element below 2^-14 (seed 812721884).
    d1, d2 = _deltas(cell, x, w, y, 1.0), _deltas(cell, x, w, y, 1024.0)
    normal = d1.abs() >= 2.0**-14
    k_normal = int(torch.nonzero(~normal.flatten(1).all(dim=1))[0])
    assert torch.equal(d1[:k_normal], d2[:k_normal] / 1024)
    at = normal[k_normal]
    assert at.any() and torch.equal(d1[k_normal][at], d2[k_normal][at] / 1024)
    np.testing.assert_allclose(scaled.flow.log_norm_h[:k_normal],  # ln(S x) - ln S in float64
                               plain.flow.log_norm_h[:k_normal], rtol=0, atol=1e-12)
    m1, _ = pr.underflow_lags(plain.flow)
    m2, _ = pr.underflow_lags(scaled.flow)
    shift = ln_s / math.log(2)  # = 10 lags at |lambda| = ln 2
    # each first zero over the batch lies in the batch minimum of the per-element intervals
    # (earliest: theorem, latest: prediction) from each run's own lag-0 norms, so the shift
    # lies in [lo2 - hi1, hi2 - lo1]
    ref = pr.reference_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w, y)
    rate = pr.growth_rate_fit(ref.log_norm_h.mean(axis=1))[0]
    err = pr.step_error_bound(cell.weight_hh_l0, "float16")

    def interval(flow, ln_scale):
        ends = [pr.underflow_interval(rate, float(v) + ln_scale, "float16", H, err)
                for v in flow.log_norm_h[0]]
        return min(e[0] for e in ends), min(e[1] for e in ends)

    (lo1, hi1), (lo2, hi2) = interval(plain.flow, 0.0), interval(scaled.flow, ln_s)
    print(f"underflow lag {m1} in [{lo1}, {hi1}] -> {m2} in [{lo2}, {hi2}] with S = 1024 "
          f"(shift {m2 - m1}, predicted {shift}, allowed [{lo2 - hi1}, {hi2 - lo1}])")
    assert lo1 <= m1 <= hi1 and lo2 <= m2 <= hi2
    assert lo2 - hi1 <= m2 - m1 <= hi2 - lo1


def test_dynamic_loss_scale_backs_off_until_finite_like_gradscaler(rng_seed):
    cell, x, w, y = _linear(2.0, rng_seed % 10_000, "float16", 30)
    sf = pr.scaled_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w, y,
                        pr.Precision("float16", None, "dynamic"))
    assert sf.loss_scale == pr.DYNAMIC_INIT_SCALE * 0.5**sf.backoffs
    assert np.isfinite(sf.flow.log_norm_h).all()
    # one halving fewer must have overflowed (that is why it backed off)
    worse = measure_gradient_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w, y,
                                  loss_scale=2 * sf.loss_scale)
    assert not np.isfinite(worse.log_norm_h).all()
    print(f"dynamic scale {sf.loss_scale:g} after {sf.backoffs} halvings")


@pytest.mark.parametrize("scale", [0.9, 1.1])
def test_bfloat16_rate_error_is_within_the_mantissa_bound(scale, rng_seed):
    cell, x, w, y = _linear(scale, rng_seed % 10_000, "bfloat16", 150)
    flow = measure_gradient_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w, y)
    ref = pr.reference_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w, y)
    rate, rate64, diff = pr.rate_vs_reference(flow, ref)
    bound = pr.step_error_bound(cell.weight_hh_l0, "bfloat16")
    print(f"bfloat16 rate {rate:.6f}, float64 {rate64:.6f}, error {diff:.2e}, bound {bound:.2e}")
    assert abs(diff) <= bound
    # the float64 reference is the exact linear chain of the rounded W: its rate is the
    # log of W's (nearly equal) singular values
    sv = torch.linalg.svdvals(cell.weight_hh_l0.detach().to(torch.float64))
    assert math.log(float(sv.min())) - 1e-9 <= rate64 <= math.log(float(sv.max())) + 1e-9


@pytest.mark.parametrize("ac", ["float16", "bfloat16"])
def test_autocast_returns_float32_deltas_computed_in_the_autocast_dtype(ac, rng_seed):
    cell, x, w, y = _linear(0.5, rng_seed % 10_000, "float32", 20)
    x = torch.randn(20, B, INP, generator=torch.Generator().manual_seed(rng_seed))
    with torch.autocast("cpu", dtype=pr.DTYPES[ac]):
        assert (x[0] @ cell.weight_ih_l0.T).dtype == pr.DTYPES[ac]  # what autocast casts
    flow = measure_gradient_flow("rnn_linear", cell.params(), x, cell.initial_state(B), w, y,
                                 autocast=pr.DTYPES[ac])
    assert flow.grad_dtype == "float32"
    from bpttbench.claims.precision import representability
    from bpttbench.claims.settings import Context

    ctx = Context("cpu", torch.float64, "torch", 3.0, (0,))
    bad, total, gdt = representability(0.5, 20, ac, {"hidden": H, "batch": B}, rng_seed % 10_000,
                                       ctx)
    assert gdt == "float32" and total == 21 * B * H and bad == 0
    # control: without autocast the float32 deltas are not all representable in ``ac``
    from bpttbench.models import unroll

    s0 = (cell.initial_state(B)[0].requires_grad_(True),)
    states = unroll("rnn_linear", cell.params(), torch.zeros(20, B, INP), s0)
    loss = 0.5 * ((states[-1][0] @ w.float().T - y.float()) ** 2).sum()
    d = torch.stack(torch.autograd.grad(loss, [st[0] for st in states]))
    assert int((d.to(pr.DTYPES[ac]).float() != d).sum()) > 0


def test_config_precision_keys_and_errors():
    cfg = validate({"dtype": "float32", "precision": {"mode": "autocast", "dtype": "float16"},
                    "loss_scale": "dynamic", "gradient_flow": {"models": "rnn_tanh",
                                                               "seq_len": 10,
                                                               "weight_scale": 0.5}})
    spec = next(gradient_flow_cells(cfg))
    assert spec.precision == "float16" and spec.loss_scale == "dynamic"
    spec = next(gradient_flow_cells(validate({"gradient_flow": {"seq_len": 10}})))
    assert spec.precision == "none" and spec.loss_scale == 1.0 and spec.dtype == "float32"
    with pytest.raises(ConfigError, match="autocast runs a float32 model"):
        validate({"dtype": "bfloat16", "precision": {"mode": "autocast"}})
    with pytest.raises(ConfigError, match="loss_scale"):
        validate({"loss_scale": -1})
    with pytest.raises(ConfigError, match="dtype"):
        validate({"dtype": "float8"})


def test_a_float16_cell_records_its_precision_and_a_float32_chain(rng_seed):
    from bpttbench.gradient_flow.cells import run_cell

    gf = {"models": "rnn_tanh", "hidden": 8, "batch": 3, "seq_len": 40, "weight_scale": 0.5,
          "seeds": rng_seed % 1000, "lyapunov_k": 4}
    half = run_cell(next(gradient_flow_cells(validate({"device": "cpu", "dtype": "float16",
                                                       "gradient_flow": gf}))))
    s = half["summary"]
    print({k: s[k] for k in ("growth_rate", "growth_rate_float64", "rate_error_vs_float64",
                             "underflow_lag", "underflow_lag_first")})
    assert s["status"] == "ok" and s["chain_dtype"] == "float32" and s["precision"] == "float16"
    assert s["grad_dtype"] == "float16" and s["loss_scale"] == 1.0
    assert s["rate_error_vs_float64"] == pytest.approx(s["growth_rate"] - s["growth_rate_float64"])
    assert abs(s["rate_error_vs_float64"]) < 0.05 and math.isfinite(s["lyapunov_max"])
    assert half["precision"]["dtype"] == "float16"
    plain = run_cell(next(gradient_flow_cells(validate({"device": "cpu", "gradient_flow": gf}))))
    assert math.isnan(plain["summary"]["rate_error_vs_float64"])
    assert plain["summary"]["chain_dtype"] == "float32"


# ----------------------------------------------------------------------------------------
# training: the long-range stage under reduced precision


def _run_spec(**kw):
    from bpttbench.long_range.train import RunSpec

    base = dict(task="adding", model="rnn_tanh", init="orthogonal", hidden=8, seq_len=6,
                clip=1.0, seed=0, weight_scale=1.0, input_scale=1.0, forget_bias=0.0,
                optimizer="adam", lr=0.01, steps=4, batch=8, eval_every=2, eval_batch=16,
                solved_fraction=0.1, device="cpu", dtype="float32", allow_tf32=False,
                deterministic=True)
    base.update(kw)
    return RunSpec(**base)


def test_loss_scaler_follows_the_gradscaler_rule(rng_seed):
    sc = pr.LossScaler("dynamic", growth_interval=3)
    assert sc.scale == 2.0**16
    sc.update(found_inf=True)
    sc.update(found_inf=True)
    assert sc.scale == 2.0**14 and sc.backoffs == 2
    for _ in range(3):
        sc.update(found_inf=False)
    assert sc.scale == 2.0**15
    static = pr.LossScaler(256.0)
    static.update(found_inf=True)
    assert static.scale == 256.0 and static.backoffs == 0
    # scaling then unscaling a float32 gradient by a power of two is exact
    p = torch.nn.Parameter(torch.randn(5, generator=torch.Generator().manual_seed(rng_seed)))
    (static.scale_loss((p**2).sum())).backward()
    static.unscale_([p])
    assert torch.equal(p.grad, 2 * p.detach())


def test_long_range_runs_under_autocast_and_dynamic_scaling_record_it():
    from bpttbench.long_range.tables import collect, precision_label
    from bpttbench.long_range.train import run_block

    runs = [_run_spec(), _run_spec(autocast="float16", loss_scale="dynamic")]
    assert runs[0].run_id.endswith("seed0") and runs[1].run_id.endswith("seed0-autocast_float16_S_dynamic")
    recs = run_block(runs, progress=False)
    for rec in recs:
        assert rec["summary"]["status"] == "ok", rec.get("error")
    s = recs[1]["summary"]
    assert s["loss_scale_final"] == 2.0**16 * 0.5 ** s["loss_scale_backoffs"]
    assert recs[1]["precision"]["autocast"] == "float16"
    tables = collect(recs)
    assert list(tables["long_range"]["precision"]) == ["autocast-float16, S dynamic", "float32"]
    assert precision_label({"dtype": "float16", "loss_scale": 1024.0}) == "float16, S=1024"
    out = tables["long_range_precision"]
    assert len(out) == 1 and out["reference"].iloc[0] == "float32"


def test_precision_outcomes_lost_and_restored():
    import pandas as pd

    from bpttbench.long_range.tables import precision_outcomes

    base = {"task": "adding", "model": "rnn_tanh", "init": "orthogonal", "clip": 1.0}
    rows = []
    for T, rates in ((10, (1.0, 1.0, 1.0)), (50, (1.0, 0.0, 1.0)), (100, (0.0, 0.0, 0.0))):
        for label, r in zip(("float32", "autocast-float16", "autocast-float16, S dynamic"), rates,
                            strict=True):
            rows.append({**base, "seq_len": T, "precision": label, "solved_rate": r})
    out = precision_outcomes(pd.DataFrame(rows)).set_index(["seq_len", "precision"])
    assert not out.loc[(10, "autocast-float16"), "lost_vs_reference"]
    assert out.loc[(50, "autocast-float16"), "lost_vs_reference"]
    assert out.loc[(50, "autocast-float16, S dynamic"), "restored_by_scaling"]
    assert not out.loc[(10, "autocast-float16, S dynamic"), "restored_by_scaling"]
    assert pd.isna(out.loc[(50, "autocast-float16"), "restored_by_scaling"])
    assert not out.loc[(100, "autocast-float16"), "lost_vs_reference"]


def test_long_range_precisions_config():
    from bpttbench.long_range.sweep import long_range_runs

    lr = {"models": "rnn_tanh", "seq_len": 10, "clip": None,
          "precisions": [{"dtype": "float32"}, {"autocast": "bfloat16"},
                         {"dtype": "float16", "loss_scale": "dynamic"}]}
    runs = long_range_runs(validate({"long_range": lr}))
    assert [(r.dtype, r.autocast, r.loss_scale) for r in runs] == [
        ("float32", None, 1.0), ("float32", "bfloat16", 1.0), ("float16", None, "dynamic")]
    with pytest.raises(ConfigError, match=r"long_range.precisions\[0\]"):
        long_range_runs(validate({"long_range": {**lr, "precisions": [
            {"dtype": "float16", "autocast": "float16"}]}}))
    # without the key: the top-level settings
    runs = long_range_runs(validate({"dtype": "bfloat16", "long_range": {"models": "lstm",
                                                                        "seq_len": 10,
                                                                        "clip": None}}))
    assert runs[0].dtype == "bfloat16" and runs[0].run_id.endswith("-bfloat16")


def test_tf32_row_code_path_on_this_device():
    """8i on the CPU: allow_tf32 does not touch CPU matmuls, so both rates are equal."""
    from bpttbench.claims.precision import _tf32
    from bpttbench.claims.settings import Context

    ctx = Context("cpu", torch.float64, "torch", 3.0, (0,))
    sec = {"hidden": 8, "batch": 2, "rate_scale": [0.9], "rate_steps": 30}
    r = _tf32(sec, ctx, 0, "test")
    assert r["measured"] == 0.0 and r["passed"] and r["tolerance"] > 2 * 2.0**-11
    assert torch.backends.cuda.matmul.allow_tf32 is False  # the switch is restored


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (TF32 matmuls)")
def test_tf32_rate_is_within_its_mantissa_bound_on_gpu():
    from bpttbench.claims.precision import _tf32
    from bpttbench.claims.settings import Context

    ctx = Context("cuda", torch.float64, "torch", 3.0, (0,))
    sec = {"hidden": 64, "batch": 8, "rate_scale": [1.05], "rate_steps": 400}
    r = _tf32(sec, ctx, 0, "test")
    print(r["measured"], r["tolerance"], r["note"])
    assert r["passed"]
