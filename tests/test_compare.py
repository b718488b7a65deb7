"""The compare stage: agreement within tolerance, caveats, timing ratios, bad input.

Result sets are tiny sweeps measured here (tests/_resultsets.py); B is a copy of A with
chosen values changed, or a set measured with other settings. Expected rows are computed
from the tables and from bpttbench.compare.TOLERANCES, never written in by hand.
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
import yaml
from _resultsets import (
    REPO,
    build_set,
    copy_set,
    edit_csv,
    file_digests,
    tiny_config,
)

from bpttbench import compare as C
from bpttbench import contract
from bpttbench.cli import main
from bpttbench.tables import CELL_KEYS, COLUMNS


@pytest.fixture(scope="module")
def set_a(tmp_path_factory) -> Path:
    return build_set(tmp_path_factory.mktemp("sets") / "results", "cpu-a")


@pytest.fixture(scope="module")
def set_f64(tmp_path_factory) -> Path:
    return build_set(tmp_path_factory.mktemp("sets64") / "results", "cpu-f64", dtype="float64")


@pytest.fixture
def pair(set_a, tmp_path) -> tuple[Path, Path]:
    """A fresh copy of set A as 'results/cpu-a' and another as 'results/cpu-b'."""
    a = copy_set(set_a, tmp_path / "results" / "cpu-a")
    b = copy_set(set_a, tmp_path / "results" / "cpu-b")
    return a, b


def _summary(path: Path) -> pd.DataFrame:
    return C.load_result_set(path).read("summary")


def _cell_match(row: pd.Series) -> dict[str, str]:
    """The CSV text of a summary row's key fields (as pandas wrote them)."""
    return {"model": row["model"], "init": row["init"], "hidden": str(row["hidden"]),
            "seq_len": str(row["seq_len"]), "weight_scale": repr(float(row["weight_scale"])),
            "seed": str(row["seed"])}


def _key(row: pd.Series, keys=CELL_KEYS) -> str:
    return C._key_string(row.to_frame().T, keys).iloc[0]


# --- the tolerance rule -----------------------------------------------------------------


def test_within_tolerance_matches_numpy_reference():
    rng = np.random.default_rng(20261121)
    a = rng.normal(size=2000) * 10 ** rng.uniform(-6, 2, 2000)
    b = a * (1 + rng.normal(size=2000) * 10 ** rng.uniform(-8, -1, 2000))
    tol = C.Tolerance(rel=float(rng.uniform(1e-5, 1e-2)), abs=float(rng.uniform(1e-8, 1e-4)))
    expect = np.abs(a - b) <= tol.abs + tol.rel * np.maximum(np.abs(a), np.abs(b))
    assert 0 < expect.sum() < len(a)  # both outcomes occur
    np.testing.assert_array_equal(C.within_tolerance(a, b, tol), expect)
    # symmetric in a and b
    np.testing.assert_array_equal(C.within_tolerance(b, a, tol), expect)
    # undefined in both agrees, in one does not; equal infinities agree, opposite ones not
    special = C.within_tolerance([np.nan, np.nan, np.inf, np.inf, -np.inf],
                                 [np.nan, 1.0, np.inf, -np.inf, -np.inf], tol)
    np.testing.assert_array_equal(special, [True, False, True, False, True])


def test_every_regime_and_metric_has_a_tolerance():
    for metric in C.SUMMARY_METRICS:
        for regime in C.REGIMES:
            tol = C.tolerance_for("summary", metric, regime)
            assert tol.rel >= 0 and tol.abs >= 0
    for regime in C.REGIMES:
        assert C.tolerance_for("lyapunov", "exponent", regime).rel > 0
    # statistical regimes are never tighter than the regular one
    reg = C.tolerance_for("summary", "growth_rate", C.REGULAR)
    for regime in (C.CHAOTIC, C.NONFINITE):
        loose = C.tolerance_for("summary", "growth_rate", regime)
        assert loose.rel >= reg.rel and loose.abs >= reg.abs


def test_timing_columns_come_from_the_contract():
    # the roles are declared per table (bpttbench.contract), not guessed from names
    assert all(C.is_timing_column(c, "bench") for c in ("median_ms", "q25_ms", "iqr_ms"))
    assert C.is_timing_column("wall_s", "summary") and C.is_timing_column("wall_s_total")
    assert not any(C.is_timing_column(c, "summary") for c in
                   COLUMNS["summary"].keys() - {"wall_s", "started_at", "finished_at"})
    assert not any(C.is_timing_column(c) for c in (
        *COLUMNS["lyapunov"], *COLUMNS["gradient_flow"], "steps", "n_seeds", "stderr", "flops"))
    assert not C.is_timing_column("elapsed") and not C.is_timing_column("wall_s", "no_table")
    assert C.is_rate_column("achieved_gflops", "bench") and not C.is_rate_column("flops", "bench")
    assert C.is_performance_column("speedup_vs_torch", "bench")
    assert not C.is_performance_column("measured", "claims")
    # every numeric column of a timing table is a key, a timing, a rate, a ratio or science
    for t in contract.tables():
        assert set(t.keys) == set(t.names_with_role("key")), t.name
        assert all(k in t.column_names for k in t.keys), t.name


def test_agreement_columns_are_documented():
    assert list(COLUMNS["compare_agreement"]) == C.AGREEMENT_COLUMNS
    assert list(COLUMNS["compare_timing_ratio"]) == C.TIMING_COLUMNS_OUT
    assert list(COLUMNS["compare_caveats"]) == ["item", "value_a", "value_b", "severity",
                                                "effect"]


# --- agreement ---------------------------------------------------------------------------


def test_copy_agrees_bitwise_with_expected_rows(pair):
    a, b = pair
    cmp = C.compare_sets(a, b)
    summary = _summary(a)
    lyap = C.load_result_set(a).read("lyapunov")
    ag = cmp.agreement
    # one row per cell and summary metric (+ status), one per Lyapunov exponent
    assert len(ag) == len(summary) * (len(C.SUMMARY_METRICS) + 1) + len(lyap)
    assert ag["within"].all()
    numeric = ag[ag["metric"] != "status"]
    values = numeric["value_a"].to_numpy()
    np.testing.assert_array_equal(values, numeric["value_b"].to_numpy())
    assert (numeric.loc[np.isfinite(values), "abs_diff"] == 0).all()
    assert cmp.caveats == []
    assert all(cmp.identical.values()) and set(cmp.identical) >= {"summary", "lyapunov",
                                                                   "gradient_flow"}
    assert cmp.only_a == cmp.only_b == 0
    # the tiny sweep covers these regimes (see tests/_resultsets.py)
    assert {C.REGULAR, C.CHAOTIC, C.NONFINITE} <= set(ag["regime"])


def _regular_cell(summary: pd.DataFrame) -> pd.Series:
    ok = summary[(summary["status"] == "ok") & summary["underflow_lag"].isna()
                 & (summary["lyapunov_max"] < 0) & ~summary["model"].isin(C.NONSMOOTH_MODELS)
                 & ~summary["model"].isin(C.LINEAR_MODELS)]
    assert len(ok), "the tiny sweep must hold a regular cell"
    return ok.iloc[0]


def _chaotic_cell(summary: pd.DataFrame) -> pd.Series:
    ch = summary[(summary["status"] == "ok") & summary["underflow_lag"].isna()
                 & (summary["lyapunov_max"] > C.CHAOS_THRESHOLD)
                 & ~summary["model"].isin(C.LINEAR_MODELS)]
    assert len(ch), "the tiny sweep must hold a chaotic cell"
    return ch.iloc[0]


@pytest.mark.parametrize("factor, outside", [(0.5, False), (2.0, True)])
def test_perturbed_regular_growth_rate_is_flagged_alone(pair, factor, outside):
    a, b = pair
    cell = _regular_cell(_summary(a))
    tol = C.tolerance_for("summary", "growth_rate", C.REGULAR)
    old = float(cell["growth_rate"])
    new = old + factor * tol.allowed(np.float64(old), np.float64(old))
    assert edit_csv(b / "tables" / "summary.csv", _cell_match(cell), "growth_rate",
                    repr(float(new))) == 1
    ag = C.compare_sets(a, b).agreement
    bad = ag[~ag["within"]]
    if outside:
        assert len(bad) == 1
        row = bad.iloc[0]
        assert (row["table"], row["metric"], row["regime"]) == ("summary", "growth_rate",
                                                                  C.REGULAR)
        assert row["key"] == _key(cell)
        assert row["value_a"] == old and row["value_b"] == new
        assert math.isclose(row["abs_diff"], abs(new - old), rel_tol=1e-12)
    else:
        assert bad.empty
    # only that one value differs from bitwise equality
    numeric = ag[(ag["metric"] != "status") & np.isfinite(ag["value_a"])]
    assert (numeric["abs_diff"] > 0).sum() == 1


def test_chaotic_cell_gets_the_loose_tolerance(pair):
    a, b = pair
    cell = _chaotic_cell(_summary(a))
    old = float(cell["lyapunov_max"])
    loose = C.tolerance_for("summary", "lyapunov_max", C.CHAOTIC)
    regular = C.tolerance_for("summary", "lyapunov_max", C.REGULAR)
    # far outside the regular tolerance, within the chaotic one
    new = old + 0.5 * loose.allowed(np.float64(old), np.float64(old))
    assert abs(new - old) > 10 * regular.allowed(np.float64(old), np.float64(new))
    edit_csv(b / "tables" / "summary.csv", _cell_match(cell), "lyapunov_max", repr(float(new)))
    ag = C.compare_sets(a, b).agreement
    row = ag[(ag["metric"] == "lyapunov_max") & (ag["key"] == _key(cell))].iloc[0]
    assert row["regime"] == C.CHAOTIC and bool(row["within"])
    assert ag["within"].all()


def test_status_change_is_flagged_and_moves_the_cell_to_nonfinite(pair):
    a, b = pair
    cell = _regular_cell(_summary(a))
    edit_csv(b / "tables" / "summary.csv", _cell_match(cell), "status", "overflow")
    ag = C.compare_sets(a, b).agreement
    bad = ag[~ag["within"]]
    assert list(bad["metric"]) == ["status"] and bad.iloc[0]["note"] == "ok vs overflow"
    assert set(ag.loc[ag["key"].str.startswith(_key(cell)), "regime"]) == {C.NONFINITE}


def test_float32_vs_float64_agree_within_documented_tolerance(set_a, set_f64):
    """The hardest pairing the tolerances are sized for. Only the smallest Lyapunov exponent of
    a ReLU cell may disagree: a rank-deficient frame measures ln(eps) of the dtype."""
    cmp = C.compare_sets(set_a, set_f64)
    items = {c.item: c.severity for c in cmp.caveats}
    assert items.get("precision.dtype") == C.WARNING
    ag = cmp.agreement
    bad = ag[~ag["within"]]
    k = tiny_config()["gradient_flow"]["lyapunov_k"]
    assert all(r.table == "lyapunov" and r.model in C.NONSMOOTH_MODELS and r.key.endswith(
        f"index={k}") for r in bad.itertuples()), bad
    # regular cells agree far inside their tolerance: float32 rounding, not more
    reg = ag[(ag["regime"] == C.REGULAR) & (ag["metric"].isin(["growth_rate", "lyapunov_max"]))]
    assert len(reg) and (reg["rel_diff"] < 1e-5).all()
    assert not any(cmp.identical.values())


def test_lyapunov_rows_use_the_statistical_allowance(pair):
    a, b = pair
    ag = C.compare_sets(a, b).agreement
    ly = ag[ag["table"] == "lyapunov"].set_index("key")
    lyap = C.load_result_set(a).read("lyapunov")
    lyap.index = C._key_string(lyap, [*CELL_KEYS, "index"])
    assert set(ly.index) == set(lyap.index)
    batch = tiny_config()["gradient_flow"]["batch"]
    stat = ly["regime"].isin(C.STATISTICAL_REGIMES) & np.isfinite(lyap.loc[ly.index,
                                                                           "exponent_std"])
    expect = np.where(stat, C.STAT_Z * np.sqrt(2 * lyap.loc[ly.index, "exponent_std"] ** 2
                                               / batch), 0.0)
    np.testing.assert_allclose(ly["tol_stat"].to_numpy(float), expect, rtol=1e-12)
    assert stat.any() and (~stat).any()


# --- other stages' tables and timings -----------------------------------------------------


def test_claims_table_rows_flagged(pair):
    a, b = pair
    rng = np.random.default_rng(7)
    claims = pd.DataFrame({
        "claim_id": [f"c{i}" for i in range(6)], "condition": ["s=0.5"] * 3 + ["s=2"] * 3,
        "description": ["text"] * 6, "measured": rng.normal(size=6),
        "predicted": rng.normal(size=6), "tolerance": rng.uniform(0.1, 0.2, 6),
        "passed": [True, False, True, True, False, True],
    })
    claims.to_csv(a / "tables" / "claims.csv", index=False)
    tol = C.GENERIC_TOLERANCES["claims"]
    changed = claims.copy()
    m = float(changed.loc[2, "measured"])
    changed.loc[2, "measured"] = m + 3 * tol.allowed(np.float64(m), np.float64(m))
    changed.loc[4, "passed"] = True
    changed.to_csv(b / "tables" / "claims.csv", index=False)
    ag = C.compare_sets(a, b).agreement
    cl = ag[ag["table"] == "claims"]
    assert set(cl["metric"]) == {"measured", "predicted", "tolerance", "passed"}
    assert len(cl) == 6 * 4
    bad = cl[~cl["within"]]
    assert sorted(zip(bad["metric"], bad["key"], strict=True)) == [
        ("measured", "claim_id=c2 condition=s=0.5"), ("passed", "claim_id=c4 condition=s=2")]


def test_timing_ratios_from_summary_and_bench(pair):
    a, b = pair
    rng = np.random.default_rng(11)
    wall = _summary(a)
    for row in wall.itertuples():
        edit_csv(b / "tables" / "summary.csv", _cell_match(pd.Series(row._asdict())), "wall_s",
                 repr(3.0 * row.wall_s))
    bench = pd.DataFrame({
        "op": ["chain"] * 4, "model": ["rnn_tanh", "gru"] * 2,
        "variant": ["torch"] * 2 + ["numpy"] * 2, "hidden": 16, "batch": 8, "seq_len": 32, "k": 4,
        "status": "ok", "median_ms": rng.uniform(0.1, 5, 4), "achieved_gflops": rng.uniform(1, 9, 4),
    })
    bench.to_csv(a / "tables" / "bench.csv", index=False)
    bench.assign(median_ms=bench["median_ms"] / 2, achieved_gflops=bench["achieved_gflops"] * 2
                 ).to_csv(b / "tables" / "bench.csv", index=False)
    cmp = C.compare_sets(a, b)
    t = cmp.timing
    wall_rows = t[(t["table"] == "summary") & (t["metric"] == "wall_s")]
    assert len(wall_rows) == len(wall)
    np.testing.assert_allclose(wall_rows["ratio_b_over_a"], 3.0, rtol=1e-12)
    np.testing.assert_allclose(wall_rows["speedup_b_vs_a"], 1 / 3.0, rtol=1e-12)
    med = t[(t["table"] == "bench") & (t["metric"] == "median_ms")]
    gf = t[(t["table"] == "bench") & (t["metric"] == "achieved_gflops")]
    assert len(med) == len(gf) == 4 and set(gf["kind"]) == {"rate"}
    np.testing.assert_allclose(med["speedup_b_vs_a"], 2.0, rtol=1e-12)
    np.testing.assert_allclose(gf["speedup_b_vs_a"], 2.0, rtol=1e-12)
    # timings never enter the science comparison, which stays bitwise equal
    assert "wall_s" not in set(cmp.agreement["metric"]) and cmp.agreement["within"].all()
    assert cmp.identical["summary"] is True  # identical apart from its timing column
    ov = C.timing_overview(t)
    row = ov[(ov["table"] == "summary")].iloc[0]
    assert math.isclose(row["geomean_speedup_b_vs_a"], 1 / 3.0, rel_tol=1e-12)


# --- caveats -----------------------------------------------------------------------------


def test_caveats_name_what_makes_the_sets_unequal(pair, tmp_path):
    a, b = pair
    mf = json.loads((b / "manifest.json").read_text())
    mf["precision"]["dtype"] = "float64"
    mf["precision"]["allow_tf32"] = True
    mf["software"]["torch"] = "2.0.0"
    mf["config"]["gradient_flow"]["batch"] = 64
    mf["config_hash"] = "0123456789abcdef"
    mf["jacobian_backend"]["used"] = ["cupy"]
    mf["git_commit"] = "f" * 40 + "-dirty"
    (b / "manifest.json").write_text(json.dumps(mf))
    cmp = C.compare_sets(a, b)
    got = {c.item: c.severity for c in cmp.caveats}
    assert got["precision.dtype"] == C.WARNING
    assert got["precision.allow_tf32"] == C.WARNING
    assert got["software.torch"] == C.INFO
    assert got["config.gradient_flow"] == C.WARNING
    assert got["config_hash"] == C.WARNING
    assert got["jacobian_backend.used"] == C.INFO
    assert got["git_commit"] == C.WARNING and got["git_commit (B)"] == C.WARNING
    cav = next(c for c in cmp.caveats if c.item == "config.gradient_flow")
    batch = tiny_config()["gradient_flow"]["batch"]
    assert f"batch={batch}" in cav.value_a and "batch=64" in cav.value_b
    out = tmp_path / "cmp"
    paths = C.write_comparison(cmp, out)
    table = pd.read_csv(paths["caveats"])
    assert list(table["item"]) == [c.item for c in cmp.caveats]
    md = paths["summary_md"].read_text()
    assert md.index("## Caveats") < md.index("## Agreement")
    for item in got:
        assert f"`{item}`" in md


def test_config_sections_absent_in_one_set_are_info(pair):
    a, b = pair
    mf = json.loads((b / "manifest.json").read_text())
    mf["config"]["long_range"] = {"steps": 10}
    mf["config_hash"] = "fedcba9876543210"
    (b / "manifest.json").write_text(json.dumps(mf))
    mfa = json.loads((a / "manifest.json").read_text())
    mfa["config"].pop("long_range", None)
    (a / "manifest.json").write_text(json.dumps(mfa))
    got = {c.item: c.severity for c in C.compare_sets(a, b).caveats}
    assert got == {"config_hash": C.WARNING, "config.long_range": C.INFO}


# --- outputs, CLI, read-only --------------------------------------------------------------


def test_cli_writes_every_output_and_never_touches_the_sets(pair, capsys):
    a, b = pair
    edit_csv(b / "tables" / "summary.csv", _cell_match(_regular_cell(_summary(a))),
             "spectral_norm_whh", "123.0")
    before = {**{f"A/{k}": v for k, v in file_digests(a).items()},
              **{f"B/{k}": v for k, v in file_digests(b).items()}}
    assert main(["compare", "sets", str(a), str(b)]) == 0
    out = a.parent / "compare" / "cpu-a__vs__cpu-b"
    for name in C.OUTPUT_FILES.values():
        assert (out / name).stat().st_size > 0, name
    after = {**{f"A/{k}": v for k, v in file_digests(a).items()},
             **{f"B/{k}": v for k, v in file_digests(b).items()}}
    assert after == before
    assert (out / "agreement.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in (out / "summary.html").read_text()
    ag = pd.read_csv(out / "agreement.csv")
    assert list(ag.columns) == C.AGREEMENT_COLUMNS
    assert (~ag["within"]).sum() == 1
    assert "1 of" in (out / "summary.md").read_text()
    printed = capsys.readouterr().out
    assert "outside tolerance" in printed
    assert main(["compare", "sets", str(a), str(b), "--out", str(out), "--fail-outside"]) == 1


@pytest.mark.parametrize("breakage, message", [
    ("no_folder", "no such folder"),
    ("no_manifest", "missing manifest.json"),
    ("no_tables", "missing tables/"),
    ("no_summary", "missing tables/summary.csv"),
    ("no_common_cells", "no common cells"),
])
def test_bad_input_is_refused_naming_folder_and_what_is_missing(pair, breakage, message,
                                                                capsys):
    a, b = pair
    if breakage == "no_folder":
        shutil.rmtree(b)
    elif breakage == "no_manifest":
        (b / "manifest.json").unlink()
    elif breakage == "no_tables":
        shutil.rmtree(b / "tables")
    elif breakage == "no_summary":
        (b / "tables" / "summary.csv").unlink()
    else:
        s = pd.read_csv(b / "tables" / "summary.csv")
        s.assign(seed=s["seed"] + 100).to_csv(b / "tables" / "summary.csv", index=False)
    with pytest.raises(C.ResultSetError, match=message) as err:
        C.compare_sets(a, b)
    assert str(b) in str(err.value)
    assert main(["compare", "sets", str(a), str(b), "--out", str(a.parent / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (a.parent / "x").exists()


def test_refuses_same_folder_and_output_inside_a_set(pair):
    a, b = pair
    with pytest.raises(C.ResultSetError, match="same folder"):
        C.compare_sets(a, a)
    cmp = C.compare_sets(a, b)
    with pytest.raises(C.ResultSetError, match="inside the result set"):
        C.write_comparison(cmp, b / "cmp")
    assert not (b / "cmp").exists()


def test_compare_pairs_names_and_errors():
    pairs = C.compare_pairs(["results/x", "results/y/", "/abs/z"])
    assert pairs == {"x__vs__y": ("results/x", "results/y"), "x__vs__z": ("results/x", "/abs/z"),
                     "y__vs__z": ("results/y", "/abs/z")}
    assert C.compare_pairs([]) == {}
    for bad, msg in ((["results/x"], "two or more"), (["a/x", "b/x"], "same name"),
                     (["results/x", "results/a b"], "result-set name")):
        with pytest.raises(ValueError, match=msg) as err:
            C.compare_pairs(bad)
        assert "config key compare" in str(err.value)
    assert C.pair_folders("p__vs__q", {}) == ("results/p", "results/q")


def test_pair_inputs_never_plan_work_on_another_machines_set(pair):
    a, b = pair
    root = a.parent.parent
    cwd = os.getcwd()
    os.chdir(root)
    try:
        files = C.pair_input_files("cpu-a__vs__cpu-b", {}, "results/cpu-a",
                                   ["results/cpu-a/manifest.json"])
        assert files[0] == "results/cpu-a/manifest.json"
        assert all(os.path.isabs(f) and os.path.exists(f) for f in files[1:])
        assert str(b / "tables" / "summary.csv") in files
        with pytest.raises(C.ResultSetError, match="not a result set"):
            C.pair_input_files("cpu-a__vs__missing", {}, "results/cpu-a", [])
    finally:
        os.chdir(cwd)


# --- Snakemake -----------------------------------------------------------------------------


@pytest.mark.slow
def test_snakemake_compare_target_reads_sets_without_recomputing(pair, tmp_path):
    a, b = pair
    work = a.parent.parent
    cfg = {"hardware_tag": "this-machine", "device": "cpu",
           "gradient_flow": tiny_config()["gradient_flow"],
           "compare": ["results/cpu-a", "results/cpu-b"]}
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    before = {**file_digests(a), **{f"B/{k}": v for k, v in file_digests(b).items()}}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    base = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
            str(work), "--configfile", str(work / "cfg.yaml"), "--cores", "1"]
    dry = subprocess.run([*base, "-n", "compare"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    jobs = set(_planned_rules(dry.stdout))
    assert jobs == {"compare", "compare_pair"}, dry.stdout
    run = subprocess.run([*base, "compare"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    out = work / "results" / "compare" / "cpu-a__vs__cpu-b"
    assert all((out / n).exists() for n in C.OUTPUT_FILES.values())
    assert pd.read_csv(out / "agreement.csv")["within"].all()
    assert {**file_digests(a), **{f"B/{k}": v for k, v in file_digests(b).items()}} == before
    # a compare list of one folder is a config error naming the key
    (work / "cfg.yaml").write_text(yaml.safe_dump({**cfg, "compare": ["results/cpu-a"]}))
    bad = subprocess.run([*base, "-n", "compare"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert bad.returncode != 0 and "config key compare" in bad.stdout + bad.stderr


def _planned_rules(dry_run_output: str) -> list[str]:
    """Rule names of the jobs a Snakemake dry run plans ('rule X:' / 'localrule X:')."""
    import re

    return re.findall(r"^(?:local)?rule (\w+):", dry_run_output, flags=re.M)


# --- the table contract (issue 19) -------------------------------------------------------

from bpttbench.tablecheck import check_file, series_kind_problem  # noqa: E402
from bpttbench.tables import COLUMN_KINDS, KINDS  # noqa: E402


def test_column_kinds_declare_only_contract_columns():
    for table, kinds in COLUMN_KINDS.items():
        assert table in COLUMNS, table
        for col, kind in kinds.items():
            assert col in COLUMNS[table], f"{table}.{col} has a kind but no doc"
            assert kind.rstrip("?") in KINDS, f"{table}.{col}: unknown kind {kind}"


def test_sets_written_by_the_current_code_meet_the_contract(set_a, set_f64):
    """The committed set (read only) and two sets measured now: no column problem at all."""
    committed = REPO / "results" / "cpu-intel-xeon"
    for path in (committed, set_a, set_f64):
        rs = C.load_result_set(path)
        assert rs.problems == [] and rs.unknown_tables == [], (path, rs.problems)
        # CSV twins too (not read by compare when the Parquet file exists)
        for f in sorted((path / "tables").glob("*.csv")):
            assert check_file(f.stem, f) == [], f


@pytest.mark.parametrize("values, kind, ok", [
    ([1, 2, 3], "int", True),
    ([1.0, np.nan, 3.0], "int", True),  # a CSV column of a nullable integer
    ([1.0, 2.5], "int", False),
    ([1.0, np.inf], "int", False),
    ([True, False], "int", False),
    (["a", None], "str", True),
    ([np.nan, np.nan], "str", True),  # an empty CSV column
    ([1.5, 2.0], "str", False),
    ([True, np.nan, False], "bool", True),
    (["yes", "no"], "bool", False),
    ([0.1, np.nan, -np.inf], "float", True),
    (["x1", "x2"], "float", False),
])
def test_column_kind_check(values, kind, ok):
    assert (series_kind_problem(pd.Series(values), kind) is None) == ok


def test_missing_growth_rate_is_named_in_the_verdict(pair):
    """The issue's case: B's summary.csv lacks growth_rate. Before: 'All ... agree, caveats:
    none'. Now the verdict and a warning caveat say it was not compared."""
    a, b = pair
    s = pd.read_csv(b / "tables" / "summary.csv")
    s.drop(columns=["growth_rate"]).to_csv(b / "tables" / "summary.csv", index=False)
    cmp = C.compare_sets(a, b)
    text = C.verdict(cmp)
    assert "Not compared: summary.growth_rate (missing in B)" in text
    assert "growth_rate" not in set(cmp.agreement["metric"])
    cav = {c.item: c for c in cmp.caveats}
    assert cav["summary.growth_rate"].severity == C.WARNING
    assert cav["summary.growth_rate"].value_b == "missing"
    assert "summary.growth_rate" in C.summary_markdown(cmp)


def test_mistyped_and_renamed_columns_are_caveats_not_values(pair):
    a, b = pair
    ly = pd.read_parquet(b / "tables" / "lyapunov.parquet")
    ly["exponent_std"] = ly["exponent_std"].map(lambda v: f"{v:.3f}")  # text, not numbers
    ly.to_parquet(b / "tables" / "lyapunov.parquet", index=False)
    s = pd.read_csv(b / "tables" / "summary.csv")
    s.rename(columns={"horizon": "horizon_steps"}).to_csv(b / "tables" / "summary.csv",
                                                          index=False)
    cmp = C.compare_sets(a, b)
    cav = {c.item: c for c in cmp.caveats}
    assert "expected numbers" in cav["lyapunov.exponent_std"].value_b
    assert cav["lyapunov.exponent_std"].severity == C.WARNING  # no statistical allowance
    assert cav["summary.horizon"].value_b == "missing"
    assert cav["summary.horizon_steps"].severity == C.INFO
    assert "summary.horizon (missing in B)" in C.verdict(cmp)
    assert "horizon" not in set(cmp.agreement["metric"])
    # the Lyapunov exponents themselves are still compared, and agree
    ly_rows = cmp.agreement[cmp.agreement["table"] == "lyapunov"]
    assert len(ly_rows) == len(ly) and ly_rows["within"].all()


@pytest.mark.parametrize("damage, message", [
    ("mistyped key", "summary.csv: column hidden expected integers, found 8.5"),
    ("missing key", "summary.csv: column seed missing; the comparison needs it"),
    ("empty key", "row(s) with an empty key column model"),
    ("repeated cell", "row(s) repeat the key"),
    ("truncated parquet", "lyapunov.parquet: cannot be read as a parquet table"),
])
def test_broken_needed_columns_are_refused_naming_file_and_column(pair, damage, message):
    a, b = pair
    f = b / "tables" / "summary.csv"
    s = pd.read_csv(f)
    if damage == "mistyped key":
        s["hidden"] = s["hidden"] + 0.5
    elif damage == "missing key":
        s = s.drop(columns=["seed"])
    elif damage == "empty key":
        s.loc[2, "model"] = None
    elif damage == "repeated cell":
        s = pd.concat([s, s.iloc[[0]]])
    if damage == "truncated parquet":
        p = b / "tables" / "lyapunov.parquet"
        p.write_bytes(p.read_bytes()[:300])
    else:
        s.to_csv(f, index=False)
    before = file_digests(b)
    with pytest.raises(C.ResultSetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        C.compare_sets(a, b)
    assert file_digests(b) == before


def test_rows_only_in_one_set_are_named(pair):
    a, b = pair
    ly = pd.read_parquet(b / "tables" / "lyapunov.parquet")
    ly[ly["index"] != 4].to_parquet(b / "tables" / "lyapunov.parquet", index=False)
    cmp = C.compare_sets(a, b)
    n_cells = len(pd.read_csv(a / "tables" / "summary.csv"))
    assert f"lyapunov: {n_cells} row(s) only in A" in C.verdict(cmp)
