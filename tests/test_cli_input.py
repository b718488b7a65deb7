"""Bad command-line input and damaged inputs of figures and the report: refused with one
error naming the option or file, before any work (nothing computed is lost), never a
traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bpttbench.cli import main
from bpttbench.cli_options import OutPathError, check_out
from bpttbench.tablecheck import TableReadError
from bpttbench.tables import read_table

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "cpu-intel-xeon"


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("bpttbench ") and " error: " in err, err
    return err


@pytest.fixture
def a_file(tmp_path) -> Path:
    f = tmp_path / "outfile"
    f.write_text("x\n")
    return f


def test_out_under_a_file_is_refused_before_the_work(capsys, a_file, tmp_path):
    cell = "rnn_tanh-orthogonal-h32-T50-s0.5-seed0"  # a cell of the default config
    for argv in (["gradient-flow", "cell", cell, "--out", f"{a_file}/cell.json"],
                 ["claims", "run", "3_orthogonal", "--out", f"{a_file}/c.json"],
                 ["compare", "sets", str(COMMITTED), str(COMMITTED), "--out", f"{a_file}/x"]):
        err = _error(capsys, argv)
        assert f"--out {a_file}/" in err and f"because {a_file} is a file" in err, err
    err = _error(capsys, ["report", "build", str(COMMITTED), "--out", str(tmp_path)])
    assert f"--out {tmp_path} is a folder; it takes the path of a file" in err
    err = _error(capsys, ["gradient-flow", "figures", "--tables", str(COMMITTED / "tables"),
                          "--out", str(a_file)])
    assert f"--out {a_file} is a file; it takes the path of a folder" in err
    assert a_file.read_text() == "x\n"


def test_check_out_accepts_new_folders_and_creates_nothing(tmp_path):
    check_out(tmp_path / "a" / "b" / "c.json", "file")
    check_out(tmp_path / "new" / "figures", "folder")
    check_out(tmp_path / "x.json", "any")
    assert not any(tmp_path.iterdir())
    with pytest.raises(OutPathError, match="is a folder"):
        check_out(tmp_path, "file")


@pytest.mark.parametrize("value, why", [
    ("-3", "-3 is out of range"), ("1025", "1025 is out of range"),
    ("abc", "'abc' is not an integer"), ("2.5", "'2.5' is not an integer")])
def test_threads_outside_its_range_is_an_argparse_error(capsys, value, why):
    with pytest.raises(SystemExit) as done:
        main(["claims", "run", "3_orthogonal", "--threads", value, "--out", "never.json"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --threads: {why}; allowed: an integer from 0 (torch's default) to 1024" \
        in err and "Traceback" not in err


def test_an_oserror_is_one_line_naming_the_file(capsys, tmp_path):
    (tmp_path / "tables").mkdir()
    err = _error(capsys, ["report", "build", str(tmp_path), "--out", str(tmp_path / "r.html")])
    assert f"{tmp_path / 'manifest.json'}: No such file or directory" in err


# --- damaged tables and manifests: every reader names the file ----------------------------

@pytest.fixture
def set_copy(tmp_path) -> Path:
    """manifest.json and summary.csv of the committed set (which is only read)."""
    out = tmp_path / "cpu-copy"
    (out / "tables").mkdir(parents=True)
    shutil.copy(COMMITTED / "manifest.json", out / "manifest.json")
    shutil.copy(COMMITTED / "tables" / "summary.csv", out / "tables" / "summary.csv")
    return out


def test_every_committed_table_passes_the_read_checks():
    files = [p for p in sorted((COMMITTED / "tables").iterdir())
             if p.suffix in (".csv", ".parquet")]
    assert len(files) > 10
    for p in files:
        assert len(read_table(p).columns) > 0, p


def test_a_truncated_csv_is_named_not_drawn(set_copy, capsys):
    summary = set_copy / "tables" / "summary.csv"
    text = summary.read_text()
    summary.write_text(text[: len(text) * 2 // 3])  # cut inside a row
    with pytest.raises(TableReadError, match=r"summary.csv: damaged or cut short \(line \d+ has"):
        read_table(summary)
    other = set_copy / "other.csv"
    other.write_text("a,b\n1,2345\n"[:-3])  # cut inside the last field: the fields fit
    with pytest.raises(TableReadError,
                       match=r"other.csv: damaged or cut short \(the last line has no newline"):
        read_table(other)
    err = _error(capsys, ["gradient-flow", "figures", "--tables", str(summary.parent),
                          "--out", str(set_copy / "figures"), "growth_rate_by_scale"])
    assert f"{summary}: damaged or cut short" in err
    assert not (set_copy / "figures").exists()


def test_a_missing_or_mistyped_column_is_named_with_the_table(set_copy, capsys):
    import pandas as pd

    summary = set_copy / "tables" / "summary.csv"
    df = pd.read_csv(summary, keep_default_na=False, na_values=[""])
    df.drop(columns=["weight_scale"]).to_csv(summary, index=False)
    err = _error(capsys, ["gradient-flow", "figures", "--tables", str(summary.parent),
                          "--out", str(set_copy / "figures"), "growth_rate_by_scale"])
    assert (f"{summary}: does not match the contract of table summary (tables/COLUMNS.md): "
            "summary.weight_scale missing") in err
    df.assign(hidden="abc").to_csv(summary, index=False)
    with pytest.raises(TableReadError, match="summary.hidden expected integers"):
        read_table(summary)
    df.assign(extra=1).to_csv(summary, index=False)  # a column the contract lacks: read
    assert "extra" in read_table(summary).columns


def test_an_empty_table_or_a_damaged_manifest_is_named(set_copy, capsys):
    summary = set_copy / "tables" / "summary.csv"
    summary.write_text("")
    err = _error(capsys, ["report", "build", str(set_copy)])
    assert f"{summary}: cannot be read as a csv table: EmptyDataError" in err
    shutil.copy(COMMITTED / "tables" / "summary.csv", summary)
    manifest = set_copy / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    err = _error(capsys, ["report", "build", str(set_copy)])
    assert f"{manifest}: not valid JSON: line " in err
    manifest.write_text("[1, 2]\n")
    err = _error(capsys, ["report", "build", str(set_copy)])
    assert f"{manifest}: expected a JSON object, found a list" in err
    assert not (set_copy / "report.html").exists()
    err = _error(capsys, ["compare", "sets", str(set_copy), str(COMMITTED), "--out",
                          str(set_copy / "cmp")])
    assert f"{manifest}: expected a JSON object" in err
