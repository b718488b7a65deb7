"""Gradient-flow figures and the HTML report on small synthetic tables with fresh random values:
the censored horizon median, what gradient_norm_by_lag draws where seeds go non-finite, the
dtype limits, the captions folder check and the claims rows of the report."""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bpttbench.figures import plt

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def rng() -> np.random.Generator:
    seed = random.SystemRandom().randrange(2**31)
    print(f"random seed {seed}")
    return np.random.default_rng(seed)


def _reference_median(horizons: list[float], statuses: list[str]) -> float:
    """The rule written out: empty + ok -> +inf (censored), empty + non-finite -> left out."""
    values = [math.inf if (math.isnan(h) and st == "ok") else h
              for h, st in zip(horizons, statuses, strict=True)]
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def test_dtype_limits_match_torch(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    from bpttbench.gradient_flow.figures import LOG_DTYPE_LIMITS

    for name, (lo, hi) in LOG_DTYPE_LIMITS.items():
        dt = getattr(torch, name)
        fi = torch.finfo(dt)
        assert math.isclose(lo, math.log(fi.tiny * fi.eps), rel_tol=1e-12), name
        assert math.isclose(hi, math.log(fi.max), rel_tol=1e-12), name
        # the smallest subnormal is representable, half of it rounds to 0
        sub = torch.tensor(math.exp(lo), dtype=torch.float64).to(dt)
        assert sub.item() > 0 and (sub / 2).item() == 0, name
        assert torch.isinf(torch.tensor(math.exp(hi), dtype=torch.float64).to(dt) * 2), name


def test_median_horizon_counts_censored_seeds_as_longer_than_t(rng: np.random.Generator) -> None:
    from bpttbench.gradient_flow.figures import median_horizon

    t = int(rng.integers(60, 400))
    h1, h2 = (float(v) for v in rng.choice(np.arange(1, t), size=2, replace=False))
    nan = math.nan
    # the reviewer's case: (never, 49) -> never, not 49
    assert median_horizon(pd.Series([nan, h1]), pd.Series(["ok", "ok"])) == (math.inf, 2)
    # one of three censored: the middle value, not the mean of the finite ones
    med, used = median_horizon(pd.Series([h1, h2, nan]), pd.Series(["ok"] * 3))
    assert (med, used) == (max(h1, h2), 3) and med != (h1 + h2) / 2
    # a non-finite seed's empty horizon is unknown: left out
    assert median_horizon(pd.Series([h1, nan]), pd.Series(["ok", "overflow"])) == (h1, 1)
    med, used = median_horizon(pd.Series([nan, nan]), pd.Series(["nan", "overflow"]))
    assert math.isnan(med) and used == 0
    for _ in range(200):  # random mixes against the rule written out
        n = int(rng.integers(1, 7))
        h = [float(v) for v in rng.integers(1, t, size=n)]
        st = list(rng.choice(["ok", "ok", "ok", "nan", "overflow"], size=n))
        h = [nan if rng.random() < 0.4 else v for v in h]
        med, used = median_horizon(pd.Series(h, dtype=float), pd.Series(st))
        ref = _reference_median(h, st)
        assert (math.isnan(med) and math.isnan(ref)) or med == ref, (h, st)
        assert used == sum(not (math.isnan(v) and s != "ok") for v, s in zip(h, st, strict=True))


def _summary_rows(model: str, t: int, s: float, horizons: list[float], statuses: list[str],
                  hidden: int = 8) -> list[dict]:
    return [{"model": model, "init": "orthogonal", "hidden": hidden, "seq_len": t,
             "weight_scale": s, "seed": i, "horizon": h, "status": st,
             "growth_rate": -0.1, "first_nonfinite_lag": math.nan, "grad_dtype": "float32"}
            for i, (h, st) in enumerate(zip(horizons, statuses, strict=True))]


def test_horizon_heatmap_labels_censored_and_nonfinite_cells(rng: np.random.Generator) -> None:
    from bpttbench.gradient_flow.figures import horizon_heatmap

    t1, t2 = 300, 600
    h = [float(v) for v in rng.choice(np.arange(1, t1), size=5, replace=False)]
    nan = math.nan
    rows = (_summary_rows("rnn_tanh", t1, 0.5, [nan, h[0]], ["ok", "ok"])  # never
            + _summary_rows("rnn_tanh", t1, 2.0, [h[1], h[2]], ["ok", "ok"])  # median
            + _summary_rows("rnn_tanh", t2, 0.5, [h[3], nan], ["ok", "overflow"])  # h3*
            + _summary_rows("rnn_tanh", t2, 2.0, [nan, nan], ["nan", "overflow"]))  # status
    fig = horizon_heatmap(pd.DataFrame(rows))
    texts = [x.get_text() for ax in fig.axes for x in ax.texts]
    plt.close(fig)
    assert "never" in texts and f"{h[0]:g}" not in texts
    assert f"{(h[1] + h[2]) / 2:g}" in texts
    assert f"{h[3]:g}*" in texts
    assert "nan\noverflow" in texts


def test_long_range_horizons_censored_at_half(rng: np.random.Generator) -> None:
    from bpttbench.long_range.figures import _horizons

    t = int(rng.integers(100, 300))
    h1, h2 = (float(v) for v in rng.choice(np.arange(1, t), size=2, replace=False))
    nan = math.nan
    gf = pd.DataFrame(_summary_rows("rnn_tanh", t, 1.0, [nan, h1], ["ok", "ok"])
                      + _summary_rows("lstm", t, 1.0, [h1, h2, nan], ["ok"] * 3))
    hz, note = _horizons(gf, "orthogonal", 1.0, 8)
    hz = hz.set_index("model")
    assert note == "H=8"
    # exactly half censored: the median is censored, shown at T with an arrow
    assert bool(hz.loc["rnn_tanh", "censored"]) and hz.loc["rnn_tanh", "horizon"] == t
    # one of three censored: the middle of (h1, h2, >T), not the mean of h1 and h2
    assert not bool(hz.loc["lstm", "censored"]) and hz.loc["lstm", "horizon"] == max(h1, h2)


def _flow(model: str, t: int, s: float, seeds: int, rng: np.random.Generator,
          slope: float) -> pd.DataFrame:
    lags = np.arange(t + 1)
    return pd.concat([pd.DataFrame({
        "model": model, "init": "orthogonal", "hidden": 8, "seq_len": t, "weight_scale": s,
        "seed": seed, "lag": lags,
        "log_grad_norm": slope * lags + rng.normal(0, 0.3, lags.size)}) for seed in range(seeds)],
        ignore_index=True)


def test_gradient_norm_by_lag_draws_only_where_every_seed_is_finite(
        rng: np.random.Generator) -> None:
    from bpttbench.gradient_flow.figures import LOG_DTYPE_LIMITS, gradient_norm_by_lag

    t, cut, step = 40, int(rng.integers(5, 35)), int(rng.integers(3, 30))
    s_lo, s_hi = 0.5, 1.5
    gf = pd.concat([_flow("rnn_tanh", t, s_lo, 3, rng, -0.41), _flow("rnn_tanh", t, s_hi, 3, rng, 0.2),
                    _flow("rnn_linear", t, s_lo, 3, rng, 0.27), _flow("rnn_linear", t, s_hi, 3, rng, 0.3)],
                   ignore_index=True)
    bad = (gf["model"] == "rnn_tanh") & (gf["weight_scale"] == s_hi) & (gf["seed"] == 1) \
        & (gf["lag"] >= cut)
    gf.loc[bad, "log_grad_norm"] = np.nan
    gf.loc[(gf["model"] == "rnn_linear") & (gf["weight_scale"] == s_hi), "log_grad_norm"] = np.nan
    summary = pd.DataFrame([
        {"model": m, "init": "orthogonal", "hidden": 8, "seq_len": t, "weight_scale": s,
         "seed": seed, "status": st, "first_nonfinite_lag": lag, "first_nonfinite_step": fstep,
         "grad_dtype": "float16"}
        for m, s, seed, st, lag, fstep in (
            *[("rnn_tanh", s_lo, i, "ok", np.nan, np.nan) for i in range(3)],
            ("rnn_tanh", s_hi, 0, "ok", np.nan, np.nan), ("rnn_tanh", s_hi, 1, "nan", cut, np.nan),
            ("rnn_tanh", s_hi, 2, "ok", np.nan, np.nan),
            *[("rnn_linear", s_lo, i, "ok", np.nan, np.nan) for i in range(3)],
            *[("rnn_linear", s_hi, i, "nan", 0, step) for i in range(3)])])
    fig = gradient_norm_by_lag(gf, summary)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    texts = [x.get_text() for ax in fig.axes for x in ax.texts] + [x.get_text() for x in fig.texts]

    def mean_over_seeds(model: str, s: float) -> np.ndarray:
        cell = gf[(gf["model"] == model) & (gf["weight_scale"] == s)]
        wide = cell.pivot(index="lag", columns="seed", values="log_grad_norm")
        out = np.array(wide.mean(axis=1), dtype=float)
        out[~np.isfinite(wide.to_numpy()).all(axis=1)] = np.nan
        return out

    lines = [np.asarray(ln.get_ydata(), dtype=float) for ln in panels["rnn_tanh"].get_lines()]
    want = mean_over_seeds("rnn_tanh", s_hi)
    assert np.isnan(want[cut:]).all() and np.isfinite(want[:cut]).all()
    assert any(y.shape == want.shape and np.allclose(y, want, rtol=0, atol=1e-12,
                                                     equal_nan=True) for y in lines)
    assert any(y.shape == want.shape and np.allclose(y, mean_over_seeds("rnn_tanh", s_lo),
                                                     rtol=0, atol=1e-12) for y in lines)
    # the dtype's limits as horizontal lines, where the data come near them (ln||delta|| of
    # rnn_tanh reaches -16 near the float16 underflow, of rnn_linear +10.8 near its overflow)
    lo, hi = LOG_DTYPE_LIMITS["float16"]

    def flat(ax: plt.Axes) -> set[float]:
        return {round(float(ln.get_ydata()[0]), 9) for ln in ax.get_lines()
                if len(ln.get_ydata()) == 2 and ln.get_ydata()[0] == ln.get_ydata()[1]}

    assert round(lo, 9) in flat(panels["rnn_tanh"])
    assert round(hi, 9) in flat(panels["rnn_linear"])
    note = next(x for x in texts if x.startswith("inf or NaN gradients"))
    assert f"rnn_tanh, s={s_hi:g}: nan from lag {cut} (1/3 seeds)" in note
    assert f"rnn_linear, s={s_hi:g}: nan from lag 0, forward overflow at step {step} " \
           "(3/3 seeds)" in note
    plt.close(fig)


def _result_set(root: Path, rng: np.random.Generator) -> tuple[Path, pd.DataFrame]:
    from bpttbench.io import write_json

    (root / "tables").mkdir(parents=True)
    (root / "figures").mkdir()
    write_json(root / "manifest.json", {"hardware_tag": "synthetic"})
    groups = ["1_depth"] * 30 + ["5_mean_field"] * 20 + ["7_gating"] * 14 + ["8_precision"] * 9
    claims = pd.DataFrame({
        "claim_id": [f"{g[0]}x.{i}.{rng.integers(10**6)}" for i, g in enumerate(groups)],
        "description": "synthetic", "measured": rng.normal(size=len(groups)),
        "predicted": rng.normal(size=len(groups)), "tolerance": rng.uniform(0.1, 1, len(groups)),
        "passed": rng.random(len(groups)) < 0.8, "comparison": "|m-p|<=tol",
        "kind": "prediction", "score": rng.uniform(0, 2, len(groups)), "claim": groups,
        "condition": "c", "n": 2, "stderr": 0.1, "unit": "nats", "source": "s", "note": "n"})
    claims.to_csv(root / "tables" / "claims.csv", index=False)
    fig, ax = plt.subplots()
    ax.plot(rng.normal(size=5))
    fig.savefig(root / "figures" / "horizon_heatmap.png")
    plt.close(fig)
    return root, claims


def test_report_shows_every_claims_row_in_its_section(tmp_path: Path,
                                                     rng: np.random.Generator) -> None:
    from bpttbench.report import build_report

    res, claims = _result_set(tmp_path / "set", rng)
    page = build_report(res, tmp_path / "r.html").read_text()
    precision = page.index("<h2>Reduced precision</h2>")
    assert page.index("<h2>Claims</h2>") < precision
    for cid, group in zip(claims["claim_id"], claims["claim"], strict=True):
        assert page.count(f">{cid}<") == 1, cid
        assert (page.index(f">{cid}<") > precision) == (group == "8_precision"), cid
    assert f"{len(claims) - 9} rows of claims.csv" in page and "9 rows of claims.csv" in page


def test_report_captions_folder_is_checked(tmp_path: Path, rng: np.random.Generator,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    from bpttbench.cli import main
    from bpttbench.report import build_report

    res, _ = _result_set(tmp_path / "set", rng)
    out = tmp_path / "r.html"
    missing = tmp_path / "no_such_captions"
    with pytest.raises(ValueError, match="is not a directory") as err:
        build_report(res, out, captions_dir=missing)
    assert str(missing) in str(err.value) and not out.exists()
    partial = tmp_path / "captions"
    partial.mkdir()
    (partial / "claims_overview.rst").write_text("unused")
    with pytest.raises(ValueError, match="no caption") as err:
        build_report(res, out, captions_dir=partial)
    assert "horizon_heatmap.rst" in str(err.value) and not out.exists()
    assert main(["report", "build", str(res), "--out", str(out), "--captions", str(missing)]) == 2
    assert "is not a directory" in capsys.readouterr().err and not out.exists()
    # the default is the repository's captions, wherever the command runs from
    monkeypatch.chdir(tmp_path)
    assert main(["report", "build", str(res), "--out", str(out)]) == 0
    caption = " ".join((REPO / "workflow/report/horizon_heatmap.rst").read_text().split())
    assert caption[:60] in out.read_text()


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_long_range_trace_titles_say_what_the_band_is(rng: np.random.Generator,
                                                      n_seeds: int) -> None:
    """One seed per configuration: the title says there is no band; several: median and range
    over that many seeds (random traces)."""
    from bpttbench.long_range.figures import long_range_curves, long_range_grad_norm

    rows = [{"task": "adding", "model": model, "init": "orthogonal", "hidden": 16, "seq_len": t,
             "clip": clip, "seed": seed, "precision": "float32", "step": step,
             "eval_loss_ratio": float(rng.uniform(0.01, 2.0)),
             "grad_norm_max": float(rng.lognormal(0.0, 2.0)), "solved_fraction": 0.1}
            for model in ("lstm", "rnn_tanh") for t in (10, 20) for clip in (None, 1.0)
            for seed in range(n_seeds) for step in (0, 50, 100)]
    trace = pd.DataFrame(rows)
    for draw in (long_range_curves, long_range_grad_norm):
        fig = draw(trace)
        title = fig._suptitle.get_text()
        plt.close(fig)
        print(title)
        if n_seeds == 1:
            assert "one seed per configuration: no band" in title and "median" not in title
        else:
            assert f"median over up to {n_seeds} seeds; band: their range" in title
