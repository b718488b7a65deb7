"""Fuzz the input boundary: configs and result sets (issue 19).

Random single-key mutations of the shipped configs and random damage to a copy of a small
result set. Every case must end in a clear message naming the key, file or column, or in a
correct result; never a traceback, never a silent omission, and the inputs are never
modified. The seed is printed; BPTTBENCH_FUZZ_SEED=<seed> replays a run.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import math
import os
import random
import shutil
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from _resultsets import REPO, file_digests

from bpttbench import compare as C
from bpttbench.cli import main
from bpttbench.config import ConfigError, _dotted, cells_by_id, load, validate
from bpttbench.tables import CELL_KEYS, read_table, write_table

pytestmark = pytest.mark.fuzz

SEED = int(os.environ.get("BPTTBENCH_FUZZ_SEED", random.SystemRandom().randrange(2**31)))
CONFIG_MUTATIONS_PER_FILE = 120
CLI_MUTATIONS_PER_FILE = 4  # of them also through `bpttbench plan validate` (~1 s each)
RESULT_SET_DAMAGES = 24
CLI_DAMAGES = 2  # of them also through `bpttbench compare` (writes the figure: slower)
COMMITTED = REPO / "results" / "cpu-intel-xeon"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- configs ---------------------------------------------------------------------------

#: Mutations that no key may accept.
MUST_REFUSE = {"nan", "inf", "-inf", "1e300", "10**12", "misspelled key", "unknown key"}


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a config: keys of mappings and indices of lists, containers included."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _get(cfg: Any, path: tuple) -> Any:
    for p in path:
        cfg = cfg[p]
    return cfg


def _misspell(key: str, rng: random.Random) -> str:
    i = rng.randrange(len(key))
    return key[:i] + key[i + 1:] if len(key) > 2 else key + "x"


def _mutate(cfg: dict, path: tuple, rng: random.Random) -> tuple[str, tuple, Any]:
    """Apply one random mutation at path; returns (kind, path of the change, new value)."""
    parent, last = _get(cfg, path[:-1]), path[-1]
    value = parent[last]
    kinds = ["nan", "inf", "-inf", "1e300", "10**12", "negative", "zero", "string", "bool",
             "null", "empty list", "list of strings", "mapping", "float for int"]
    if isinstance(parent, dict):
        kinds += ["misspelled key", "unknown key"]
    kind = rng.choice(kinds)
    if kind == "misspelled key":
        new = _misspell(str(last), rng)
        parent[new] = parent.pop(last)
        return kind, (*path[:-1], new), value
    if kind == "unknown key":
        parent["colour"] = "red"
        return kind, (*path[:-1], "colour"), "red"
    new = {
        "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "1e300": 1e300, "10**12": 10**12,
        "negative": -(abs(value) + 1) if isinstance(value, int | float) and not isinstance(
            value, bool) else -1,
        "zero": 0, "string": "abc", "bool": True, "null": None, "empty list": [],
        "list of strings": ["abc"], "mapping": {"abc": 1},
        "float for int": float(value) + 0.5 if isinstance(value, int) and not isinstance(
            value, bool) else 2.5,
    }[kind]
    parent[last] = new
    return kind, path, new


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def test_config_mutations_are_refused_naming_the_key_or_accepted_correctly(tmp_path, capsys):
    print(f"fuzz seed={SEED}")
    rng = random.Random(SEED)
    counts: Counter[str] = Counter()
    failures: list[str] = []
    for name in ("config/config.yaml", "config/gpu.yaml"):
        base = validate(yaml.safe_load((REPO / name).read_text()))
        paths = _paths(base)
        for i in range(CONFIG_MUTATIONS_PER_FILE):
            cfg = copy.deepcopy(base)
            kind, path, new = _mutate(cfg, rng.choice(paths), rng)
            key = _dotted([p for p in path if not isinstance(p, int)] if kind in (
                "misspelled key", "unknown key") else list(path))
            case = f"{name} #{i}: {key} <- {kind} ({new!r})"
            f = tmp_path / f"c{i}.yaml"
            f.write_text(yaml.safe_dump(cfg))
            before = _sha(f)
            try:
                try:
                    got = load(f)
                    cells_by_id(got)
                except ConfigError as err:
                    msg = str(err)
                    named = key.split("[")[0] if kind not in ("misspelled key", "unknown key") \
                        else str(path[-1])
                    if named in msg and "Traceback" not in msg:
                        counts["refused, key named"] += 1
                    else:
                        failures.append(f"{case}: refused without naming {named}: {msg}")
                else:
                    if kind in MUST_REFUSE:
                        failures.append(f"{case}: accepted although wrong")
                    elif not _same(_get(got, path), new):
                        failures.append(f"{case}: accepted but changed to {_get(got, path)!r}")
                    else:
                        counts["accepted, value kept as given"] += 1
                        print(f"  accepted: {case}")
                if i < CLI_MUTATIONS_PER_FILE:  # an exit status and one line, no traceback
                    with contextlib.redirect_stderr(io.StringIO()), \
                            contextlib.redirect_stdout(io.StringIO()):
                        rc = main(["plan", "validate", str(f)])
                    if rc not in (0, 2):
                        failures.append(f"{case}: validate-config exit status {rc}")
            except Exception:
                counts["traceback"] += 1
                failures.append(f"{case}: traceback\n{traceback.format_exc()}")
            if _sha(f) != before:
                failures.append(f"{case}: the config file was modified")
    total = sum(counts.values())
    print(f"config fuzz (seed {SEED}): {total} mutations: {dict(counts)}")
    assert not failures, f"seed {SEED}:\n" + "\n".join(failures[:20])
    assert total == 2 * CONFIG_MUTATIONS_PER_FILE
    assert counts["refused, key named"] > 0 and counts["traceback"] == 0


# --- result sets -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """A small copy of the committed result set: 9 gradient-flow cells, every other table as
    it is (claims, long-range, bench). The committed set is only read."""
    out = tmp_path_factory.mktemp("small") / "cpu-small"
    (out / "tables").mkdir(parents=True)
    shutil.copy(COMMITTED / "manifest.json", out / "manifest.json")
    src = COMMITTED / "tables"
    summary = read_table(src / "summary.csv")
    keep = summary[summary["model"].isin(["rnn_tanh", "rnn_relu", "lstm"])
                   & (summary["seq_len"] == 50) & (summary["seed"] == 0)
                   & summary["weight_scale"].isin([0.5, 1.0, 2.0])][CELL_KEYS]
    assert len(keep) == 9
    for name in ("gradient_flow", "summary", "lyapunov", "chain_spectrum"):
        f = src / f"{name}.parquet" if name != "summary" else src / "summary.csv"
        df = read_table(f).merge(keep, on=CELL_KEYS)
        write_table(df, out / "tables" / f.name, name, csv_twin=name != "chain_spectrum")
    for f in src.iterdir():
        if not (out / "tables" / f.name).exists() and not f.stem.startswith(
                ("gradient_flow", "summary", "lyapunov", "chain_spectrum")):
            shutil.copy(f, out / "tables" / f.name)
    return out


def _rewrite(path: Path, df: pd.DataFrame) -> None:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)


def _damage(b: Path, rng: random.Random) -> tuple[str, str, str | None]:
    """Damage set B at random; returns (kind, file name or folder, column or None)."""
    tables = sorted(f for f in (b / "tables").iterdir() if f.suffix in (".csv", ".parquet"))
    # Three times in four, a file the comparison reads (Parquet, else CSV; not a CSV twin).
    if rng.random() < 0.75:
        tables = [f for f in tables if f.suffix == ".parquet"
                  or not f.with_suffix(".parquet").exists()]
    kind = rng.choice(["missing file", "missing column", "renamed column", "wrong dtype",
                       "truncated file", "empty file", "NaN rows", "unrelated folder",
                       "folder in tables", "unknown table"])
    if kind in ("missing file", "truncated file", "empty file"):
        f = rng.choice([b / "manifest.json", *tables])
        if kind == "missing file":
            f.unlink()
        else:
            data = f.read_bytes()
            f.write_bytes(data[:int(len(data) * rng.uniform(0.05, 0.95))] if kind ==
                          "truncated file" else b"")
        return kind, f.name, None
    if kind == "unrelated folder":
        shutil.rmtree(b)
        (b / "notes").mkdir(parents=True)
        (b / "notes" / "todo.txt").write_text("not a result set\n")
        return kind, str(b), None
    if kind == "folder in tables":
        (b / "tables" / "old").mkdir()
        shutil.copy(b / "tables" / "summary.csv", b / "tables" / "old" / "summary.csv")
        return kind, "tables/old", None
    if kind == "unknown table":
        (b / "tables" / "notes.csv").write_text("a,b\n1,x\n")
        return kind, "notes.csv", None
    f = rng.choice(tables)
    df = read_table(f)
    col = rng.choice(list(df.columns))
    if kind == "missing column":
        df = df.drop(columns=[col])
    elif kind == "renamed column":
        df = df.rename(columns={col: col + "_old"})
    elif kind == "wrong dtype":
        numeric = pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(
            df[col])
        df[col] = [f"x{i}" for i in range(len(df))] if numeric else [
            rng.uniform(-1, 1) for _ in range(len(df))]
    else:  # NaN rows: every field of some rows empty
        rows = rng.sample(range(len(df)), k=min(len(df), rng.randint(1, 3)))
        df = df.astype(object)
        df.loc[rows, :] = None
        col = None
    _rewrite(f, df)
    return kind, f.name, col


def _mentions(cmp: C.Comparison, table: str, column: str | None) -> bool:
    """Does the comparison name the damaged table (and column) in its verdict or caveats, or
    flag its rows as outside tolerance?"""
    text = " ".join([C.verdict(cmp), *(f"{c.item} {c.value_a} {c.value_b} {c.effect}"
                                       for c in cmp.caveats)])
    if column is not None and f"{table}.{column}" in text:
        return True
    if column is None and table in text:
        return True
    if cmp.identical.get(table) is False:
        return True  # the summary lists it under "Different"
    outside = cmp.agreement[~cmp.agreement["within"].astype(bool)]
    return bool((outside["table"] == table).any())


def _same_result(cmp: C.Comparison, ref: C.Comparison) -> bool:
    """Agreement, timing ratios, caveats and the identical check all as without damage."""
    cols = ["table", "metric", "key", "value_a", "value_b"]
    same = [cmp.agreement[[*cols, "within"]].reset_index(drop=True).equals(
        ref.agreement[[*cols, "within"]].reset_index(drop=True)),
        cmp.timing[cols].reset_index(drop=True).equals(ref.timing[cols].reset_index(drop=True))]
    return (all(same) and cmp.caveats == ref.caveats and cmp.skipped == ref.skipped
            and cmp.not_compared == ref.not_compared and cmp.identical == ref.identical)


def test_damaged_result_sets_are_refused_or_named_never_silent(small_set, tmp_path):
    print(f"fuzz seed={SEED}")
    rng = random.Random(SEED + 1)
    a = shutil.copytree(small_set, tmp_path / "results" / "cpu-a")
    clean = shutil.copytree(small_set, tmp_path / "results" / "cpu-b")
    ref = C.compare_sets(a, clean)
    assert ref.n_outside == 0 and not ref.not_compared, C.verdict(ref)
    counts: Counter[str] = Counter()
    failures: list[str] = []
    for i in range(RESULT_SET_DAMAGES):
        b = shutil.copytree(small_set, tmp_path / "results" / f"cpu-b{i}")
        kind, target, column = _damage(b, rng)
        case = f"#{i} {kind}: {target}" + (f" column {column}" if column else "")
        before = (file_digests(a), file_digests(b))
        table = Path(target).stem
        outcome = "failed"
        detail = ""
        try:
            try:
                cmp = C.compare_sets(a, b)
            except C.ResultSetError as err:
                msg = str(err)
                if any(n in msg for n in (target, column or target)):
                    outcome = "refused, file/column named"
                else:
                    failures.append(f"{case}: refused without naming it: {msg}")
                detail = msg.split("\n")[0]
            else:
                detail = C.verdict(cmp)
                if _same_result(cmp, ref):
                    outcome = "correct result (same as undamaged: e.g. a CSV twin, not read)"
                elif _mentions(cmp, table, column):
                    outcome = "compared, damage named in the verdict/caveats"
                else:
                    failures.append(f"{case}: silent: {detail}")
            counts[outcome] += outcome != "failed"
            if i < CLI_DAMAGES:
                with contextlib.redirect_stderr(io.StringIO()), \
                        contextlib.redirect_stdout(io.StringIO()):
                    rc = main(["compare", "sets", str(a), str(b), "--out", str(tmp_path / f"out{i}")])
                if rc not in (0, 2):
                    failures.append(f"{case}: bpttbench compare exit status {rc}")
        except Exception:
            counts["traceback"] += 1
            failures.append(f"{case}: traceback\n{traceback.format_exc()}")
            outcome, detail = "traceback", ""
        if (file_digests(a), file_digests(b)) != before:
            failures.append(f"{case}: an input file was modified")
        print(f"  {case} -> {outcome}: {detail[:300]}")
    total = sum(counts.values())
    print(f"result-set fuzz (seed {SEED}): {total} damages: {dict(counts)}")
    assert not failures, f"seed {SEED}:\n" + "\n".join(failures[:20])
    assert total == RESULT_SET_DAMAGES and counts["traceback"] == 0


def _must_refuse(f: Path, kind: str, column: str | None) -> bool:
    """Must reading damaged table ``f`` fail? A declared, required column gone or of the
    wrong kind, an empty file, a truncated Parquet file or a CSV cut inside a line."""
    from bpttbench import contract

    spec = contract.TABLES.get(f.stem)
    declared = spec.column(column) if spec is not None and column else None
    if kind in ("missing column", "renamed column"):
        return declared is not None and not declared.optional
    if kind == "wrong dtype":  # text where numbers belong, or fractions in (-1, 1) elsewhere
        from bpttbench.tablecheck import read_table as read_raw

        values = read_raw(f)[column].dropna() if declared is not None else pd.Series([])
        if not len(values):
            return False  # an empty table or column: nothing was changed
        text = bool(values.map(lambda v: isinstance(v, str)).all())
        return declared.kind in (("float", "int", "bool") if text else ("str", "int", "bool"))
    if kind == "empty file":
        return True
    if kind == "truncated file":  # a CSV cut just after a newline is a shorter table
        return f.suffix == ".parquet" or not f.read_bytes().endswith(b"\n")
    return False


def test_damaged_tables_are_named_by_the_figure_and_report_reader(small_set, tmp_path):
    """bpttbench.tables.read_table (figures, the report, the manifest) on a damaged table:
    refused naming the file where the damage breaks the contract, never silent."""
    from bpttbench.tablecheck import TableReadError

    print(f"fuzz seed={SEED}")
    rng = random.Random(SEED + 2)
    failures: list[str] = []
    counts: Counter[str] = Counter()
    for i in range(RESULT_SET_DAMAGES):
        b = shutil.copytree(small_set, tmp_path / f"cpu-r{i}")
        kind, target, column = _damage(b, rng)
        f = b / "tables" / target
        if not (f.is_file() and f.suffix in (".csv", ".parquet")) or kind == "unknown table":
            counts["not a table of the set"] += 1
            continue
        case = f"#{i} {kind}: {target}" + (f" column {column}" if column else "")
        try:
            read_table(f)
            outcome = "read"
        except (TableReadError, OSError) as err:
            outcome = "refused"
            if str(f) not in str(err):
                failures.append(f"{case}: refused without naming the file: {err}")
        except Exception:
            failures.append(f"{case}: traceback\n{traceback.format_exc()}")
            continue
        if _must_refuse(f, kind, column) and outcome == "read":
            failures.append(f"{case}: read silently")
        counts[outcome] += 1
        print(f"  {case} -> {outcome}")
        if i < CLI_DAMAGES:  # and the report: built, or one error line naming the file
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = main(["report", "build", str(b), "--out", str(tmp_path / f"r{i}.html")])
            if rc not in (0, 2) or "Traceback" in err.getvalue():
                failures.append(f"{case}: report build exit {rc}: {err.getvalue()[-500:]}")
    print(f"table-reader fuzz (seed {SEED}): {dict(counts)}")
    assert not failures, f"seed {SEED}:\n" + "\n".join(failures[:20])
