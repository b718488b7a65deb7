"""The table-and-figure contract (bpttbench.contract): light to import, one source for the
writers, the checks, the figures, the report and COLUMNS.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bpttbench import contract
from bpttbench.tables import TableContractError, write_table

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "matplotlib", "seaborn", "cupy")


@pytest.mark.parametrize("module,also_light", [
    ("bpttbench.contract", ("numpy", "pandas", "pyarrow")),
    ("bpttbench.compare", ("numpy", "pandas", "pyarrow")),
])
def test_import_is_light(module, also_light):
    # a fresh interpreter: what importing the module alone pulls in
    code = (f"import sys, json, {module}; "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & {*HEAVY, *also_light}, f"{module} imports {loaded & {*HEAVY, *also_light}}"


def test_compare_pair_helpers_work_without_loading_the_maths():
    code = ("import sys; from bpttbench.compare import OUTPUT_FILES, compare_pairs, "
            "pair_folders, pair_input_files; print(sorted(OUTPUT_FILES)); "
            "print('bpttbench.compare.agreement' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[1] == "False"


def test_committed_columns_doc_is_generated_from_the_contract():
    want = contract.columns_markdown()
    got = (REPO / "docs" / "COLUMNS.md").read_text()
    assert got == want, ("docs/COLUMNS.md is out of date: regenerate it with "
                         "`python -m bpttbench.contract > docs/COLUMNS.md`")


def test_every_table_declaration_is_consistent():
    files = [t.file for t in contract.TABLES.values() if t.stage != "compare"]
    assert len(files) == len(set(files)), "two tables share a file name"
    for t in contract.TABLES.values():
        assert t.keys and all(k in t.column_names for k in t.keys), t.name
        assert len(set(t.column_names)) == len(t.column_names), t.name
        for c in t.columns:
            assert c.doc and c.kind in contract.KINDS and c.role in contract.ROLES, (t.name, c)
            # a timing or rate is a number (a timestamp is text: dropped, never divided)
            if c.role == "rate":
                assert c.kind == "float", (t.name, c.name)


def test_every_figure_resolves_and_has_its_caption():
    captions = REPO / "workflow" / "report"
    titles = {s.title for s in contract.report_sections()}
    for f in contract.FIGURES.values():
        assert callable(contract.plot_function(f.name)), f.plot
        assert (captions / f.caption_file).is_file(), f.caption_file
        assert all(t in contract.TABLES for t in f.inputs), f.inputs
        assert f.section in titles or f.stage == "compare", f.section
    # the stage registries are the contract's (same names, same inputs)
    from bpttbench.gradient_flow.figures import GRADIENT_FLOW_FIGURES
    from bpttbench.long_range.figures import LONG_RANGE_FIGURES
    assert {n: t for n, (t, _) in GRADIENT_FLOW_FIGURES.items()} == {
        f.name: f.inputs for f in contract.figures("gradient_flow")}
    assert {n: t for n, (t, _) in LONG_RANGE_FIGURES.items()} == {
        f.name: f.inputs for f in contract.figures("long_range")}


def test_claim_figures_follow_the_claims_registry():
    from bpttbench.claims import CLAIMS, figure_names
    assert tuple(CLAIMS) == contract.STAGES["claims"].CLAIM_IDS
    assert [f.name for f in contract.figures("claims")] == figure_names()


def test_report_sections_show_every_figure_once():
    shown = [n for s in contract.report_sections() for n in contract.section_figures(s)]
    assert sorted(shown) == sorted(n for n, f in contract.FIGURES.items() if f.section)
    from bpttbench.report import SECTIONS
    assert [s.title for s in SECTIONS] == [s.title for s in contract.report_sections()]


def test_figure_outputs_wrap_each_figure_in_report():
    def report(path, **kw):  # stands in for Snakemake's report()
        return (path, kw)

    out = contract.figure_outputs("bench", report)
    assert out == {
        "bench_speedup": ("results/{hw}/figures/bench_speedup.png",
                          {"caption": "../report/bench_speedup.rst", "category": "Performance"}),
        "bench_roofline": ("results/{hw}/figures/bench_roofline.png",
                           {"caption": "../report/bench_roofline.rst",
                            "category": "Performance"})}
    with pytest.raises(KeyError, match="claim_9"):
        contract.figure_outputs("claims", report, names=["claim_9"])


def _peak_frame(rng: np.random.Generator) -> pd.DataFrame:
    n = 3
    return pd.DataFrame({
        "device": "cpu", "device_name": "test cpu", "quantity": "gemm_flops",
        "method": "numpy.matmul", "size": rng.integers(64, 512, n), "dtype": "float32",
        "threads": 1, "n": rng.integers(3, 9, n), "median_ms": rng.random(n),
        "iqr_ms": rng.random(n), "value": rng.random(n) * 1e9, "unit": "FLOP/s",
        "peak": [True, False, False]})


def test_write_table_checks_the_frame_against_the_contract(tmp_path):
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    df = _peak_frame(rng)
    path = write_table(df, tmp_path / "peak.csv", "peak")
    pd.testing.assert_frame_equal(pd.read_csv(path), df, check_dtype=False)

    with pytest.raises(TableContractError, match="known tables: gradient_flow, summary"):
        write_table(df, tmp_path / "peaks.csv", "peaks")
    with pytest.raises(TableContractError, match="peak.size expected integers"):
        write_table(df.assign(size=df["size"] + 0.5), tmp_path / "p2.csv", "peak")
    with pytest.raises(TableContractError, match="peak.unit missing"):
        write_table(df.drop(columns="unit"), tmp_path / "p3.csv", "peak")
    with pytest.raises(TableContractError, match="peak.extra is not in the table contract"):
        write_table(df.assign(extra=1.0), tmp_path / "p4.csv", "peak")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peak.csv"]  # nothing else written


def test_table_lookups():
    assert contract.FILE["summary"] == "summary.csv"
    assert contract.table_path("results/x", "lyapunov") == Path("results/x/tables/lyapunov.parquet")
    assert contract.twin_file("bench") == "bench.csv"
    with pytest.raises(KeyError, match="known tables"):
        contract.table("no_such_table")
    # bench_part is a job's intermediate: writable, but never a result-set table
    assert contract.table("bench_part").intermediate
    assert "bench_part" not in contract.columns_markdown()
