"""Fault injection: kills at random moments, corrupt checkpoints and block records, a full
disk, two pipelines at once. After each, a rerun gives the tables of an uninterrupted run
(timing columns aside) and no finished cell is lost (docs/reproducibility.md, "Faults").

Every test prints its seed (``fault_seed=...``); ``BPTTBENCH_FAULT_SEED=<seed>`` replays it.
What each fault cost is counted from the cell ledger (bpttbench.io.CELL_LEDGER_ENV): one line
per cell computed, reused from a checkpoint or found corrupt, across every process of a run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import yaml
from _resultsets import TINY_GRADIENT_FLOW

from bpttbench.compare import identical_apart_from_timings
from bpttbench.config import blocks_by_id, validate
from bpttbench.io import (
    CELL_LEDGER_ENV,
    CORRUPT_SUFFIX,
    FAULT_ENOSPC_ENV,
    UnreadableFile,
    hold_result_lock,
    read_json,
    run_checkpointed,
    write_json,
)
from bpttbench.tables import read_records

pytestmark = pytest.mark.faults

TAG = "faults"
#: Two blocks (one per model) of four cells; ~0.1 s a cell after the first, so a kill lands
#: between cells as often as inside one.
CONFIG = {"hardware_tag": TAG, "device": "cpu",
          "gradient_flow": {**TINY_GRADIENT_FLOW, "models": ["rnn_tanh", "gru"], "hidden": 16,
                            "batch": 8, "seq_len": [200], "weight_scale": [0.5, 1.5],
                            "seeds": [0, 1]},
          "claims": {"run": []}}
BLOCKS = {b: [c.cell_id for c in cells] for b, cells in blocks_by_id(validate(CONFIG)).items()}
N_CELLS = sum(len(c) for c in BLOCKS.values())
TARGET = f"results/{TAG}/tables/summary.csv"  # gradient_flow_collect writes every table
CELLS_DIR = f"results/{TAG}/cells/gradient_flow"
REFUSED = ("Directory cannot be locked", "another pipeline is writing this result set")


@pytest.fixture
def fault_rng() -> random.Random:
    seed = int(os.environ.get("BPTTBENCH_FAULT_SEED") or random.SystemRandom().randrange(2**31))
    print(f"fault_seed={seed}")
    return random.Random(seed)


# --- unit level: the readers and the checkpoint loop ----------------------------------------


def _toy_run(calls: list[str]):
    def run(item: str) -> dict:
        calls.append(item)
        return {"spec": {"item": item}, "summary": {"status": "ok", "value": len(item) ** 0.5}}
    return run


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a record"])
def test_unreadable_checkpoint_is_moved_aside_and_recomputed(tmp_path, capfd, fault_rng,
                                                             damage):
    items = [f"cell{i}" for i in range(5)]
    ckpt = tmp_path / "block.partial"
    first: list[str] = []
    records = run_checkpointed(items, str, lambda i: {"item": i}, _toy_run(first), ckpt)
    assert first == items
    victim = fault_rng.choice(items)
    path = ckpt / f"{victim}.json"
    text = path.read_text()
    cut = fault_rng.randrange(1, len(text) - 2)  # never a whole object
    path.write_text({"truncated": text[:cut], "empty": "", "not a record": "[1, 2]\n"}[damage])
    capfd.readouterr()
    again: list[str] = []
    assert run_checkpointed(items, str, lambda i: {"item": i}, _toy_run(again), ckpt) == records
    assert again == [victim]  # only the damaged one is recomputed, the others are reused
    err = capfd.readouterr().err
    assert str(path) in err and f"{path.name}{CORRUPT_SUFFIX}" in err
    assert (ckpt / f"{victim}.json{CORRUPT_SUFFIX}").exists()
    assert read_json(path) == records[items.index(victim)]


def test_unreadable_block_records_are_all_named_and_moved_aside(tmp_path, fault_rng):
    paths = []
    for b in range(4):
        recs = [{"spec": {"b": b, "i": i}, "summary": {"status": "ok"}} for i in range(3)]
        paths.append(write_json(tmp_path / f"block{b}.json", recs))
    good = read_records(paths)
    assert len(good) == 12
    bad = fault_rng.sample(paths, 2)
    bad[0].write_bytes(bad[0].read_bytes()[:fault_rng.randrange(1, 40)])
    bad[1].write_bytes(b"")
    with pytest.raises(UnreadableFile) as err:
        read_records(paths)
    for p in bad:  # both named at once, so one rerun recomputes both
        assert str(p) in str(err.value)
        assert not p.exists() and p.with_name(p.name + CORRUPT_SUFFIX).exists()
    assert len(read_records([p for p in paths if p not in bad])) == 6


def test_collect_steps_name_an_unreadable_input_and_write_nothing(tmp_path, capsys,
                                                                   fault_rng):
    """claims collect (JSON records) and the bench parts reader (Parquet)."""
    import pandas as pd

    from bpttbench.cli import main
    from bpttbench.io import read_intermediates

    record = tmp_path / "cells" / "claim.json"
    write_json(record, {"rows": [], "wall_s": 1.0})
    record.write_bytes(record.read_bytes()[:fault_rng.randrange(1, 10)])
    table = tmp_path / "tables" / "claims.csv"
    assert main(["claims", "collect", "--out", str(table), "--curves",
                 str(tmp_path / "tables" / "curves.parquet"), str(record)]) == 2
    err = capsys.readouterr().err
    assert f"bpttbench claims collect: error: 1 unreadable intermediate file(s): {record}" in err
    assert not table.exists() and record.with_name(record.name + CORRUPT_SUFFIX).exists()

    parts = [tmp_path / f"part{i}.parquet" for i in range(3)]
    for i, p in enumerate(parts):
        pd.DataFrame({"op": ["chain"] * 4, "x": [float(i + j) for j in range(4)]}).to_parquet(p)
    bad = fault_rng.choice(parts)
    bad.write_bytes(bad.read_bytes()[:fault_rng.randrange(1, bad.stat().st_size - 1)])
    with pytest.raises(UnreadableFile, match=str(bad)):
        read_intermediates(parts, pd.read_parquet)
    assert [p.exists() for p in parts] == [p != bad for p in parts]


def test_full_disk_leaves_no_partial_file(tmp_path, monkeypatch, fault_rng):
    import bpttbench.io as bio

    n = fault_rng.randrange(1, 4)
    monkeypatch.setenv(FAULT_ENOSPC_ENV, f"{n}:*.json")
    monkeypatch.setattr(bio, "_writes_seen", 0)
    for i in range(1, n):
        write_json(tmp_path / f"ok{i}.json", {"i": i})
    target = tmp_path / "full.json"
    with pytest.raises(OSError, match="No space left"):
        write_json(target, {"x": list(range(100))})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"ok{i}.json" for i in range(1, n)])  # no temp file, no half-written target


def test_result_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    code = ("import sys, time; from bpttbench.io import hold_result_lock; "
            "hold_result_lock(sys.argv[1]); print('held', flush=True); time.sleep(60)")
    link = tmp_path / "other-workdir-results"
    (tmp_path / "set").mkdir()
    link.symlink_to(tmp_path / "set")
    holder = subprocess.Popen(["python", "-c", code, str(tmp_path / "set")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        probe = subprocess.run(["python", "-c", code, str(link)], capture_output=True,
                               text=True, timeout=60)
        assert probe.returncode != 0 and REFUSED[1] in probe.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    hold_result_lock(link)  # free again once the holder is killed


# --- end to end: the Snakemake workflow under faults ------------------------------------------


class Pipeline:
    """The tiny sweep in its own working directory; every run appends to one cell ledger."""

    def __init__(self, workdir: Path, repo: Path, env: dict[str, str]):
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
        self.ledger = workdir / "ledger.txt"
        self.env = {**env, CELL_LEDGER_ENV: str(self.ledger)}
        self.repo = repo
        self.runs = 0

    def cmd(self, *extra: str) -> list[str]:
        return ["snakemake", "-s", str(self.repo / "Snakefile"), "--directory", str(self.dir),
                "--configfile", str(self.dir / "config.yaml"), "--cores", "2", *extra, TARGET]

    def start(self, *extra: str, fault: dict[str, str] | None = None) -> subprocess.Popen:
        self.runs += 1
        out = open(self.dir / f"run{self.runs}.out", "w")  # noqa: SIM115 (closed by wait)
        proc = subprocess.Popen(self.cmd(*extra), stdout=out, stderr=subprocess.STDOUT,
                                env={**self.env, **(fault or {})}, start_new_session=True)
        proc.out_path = out.name
        proc.out_file = out
        return proc

    @staticmethod
    def wait(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
        rc = proc.wait(timeout=timeout)
        proc.out_file.close()
        return rc, Path(proc.out_path).read_text()

    def run(self, *extra: str, fault: dict[str, str] | None = None) -> tuple[int, str]:
        return self.wait(self.start(*extra, fault=fault))

    def events(self) -> list[tuple[str, str]]:
        if not self.ledger.exists():
            return []
        return [tuple(line.split()[:2]) for line in self.ledger.read_text().splitlines()]

    def count(self, event: str, since: int = 0) -> Counter:
        return Counter(k for e, k in self.events()[since:] if e == event)

    def checkpoints(self) -> set[str]:
        """Cells with a readable checkpoint in an interrupted block's .partial folder."""
        out = set()
        for p in (self.dir / CELLS_DIR).glob("*.partial/*.json"):
            try:
                read_json(p)
                out.add(p.stem)
            except ValueError:
                pass
        return out

    def finished_blocks(self) -> set[str]:
        """Blocks whose output folder (a Parquet table per contract table) is written."""
        return {p.name for p in (self.dir / CELLS_DIR).glob("*")
                if p.is_dir() and (p / "summary.parquet").exists()}

    def tables(self) -> Path:
        return self.dir / "results" / TAG / "tables"


def _assert_same_tables(got: Path, want: Path) -> None:
    names = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in got.iterdir()) == names
    for name in names:
        if name.endswith((".csv", ".parquet")):
            assert identical_apart_from_timings(got / name, want / name) is True, name
        else:
            assert (got / name).read_bytes() == (want / name).read_bytes(), name


def _finish(pipe: Pipeline, baseline: Path, fault: str, rep: int, mark: int,
            kept: set[str]) -> int:
    """Rerun with --rerun-incomplete; check the tables and that every cell kept by the fault
    was reused; print and return how many cell computations the fault cost."""
    rerun_from = len(pipe.events())
    rc, out = pipe.run("--rerun-incomplete")
    assert rc == 0, out[-3000:]
    _assert_same_tables(pipe.tables(), baseline)
    reused = set(pipe.count("reused", rerun_from))
    lost = kept & set(pipe.count("computed", rerun_from))
    assert not lost, f"finished cells recomputed: {sorted(lost)}"
    computed = pipe.count("computed", mark)
    assert set(computed) == {c for cells in BLOCKS.values() for c in cells}
    cost = sum(computed.values()) - N_CELLS
    print(f"FAULT {fault} rep={rep}: kept {len(kept)} checkpoint(s), reused "
          f"{len(reused)}, computed {sum(computed.values())} for {N_CELLS} cells: "
          f"cost {cost} cell(s)")
    return cost


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """The tables of an uninterrupted run: the pipeline's two CLI steps (block per block, then
    collect), called in this process with one torch thread like a Snakemake job (threads: 1).
    In-process, because a Snakemake run costs 20 s on two busy cores."""
    import torch

    from bpttbench.cli import main
    from bpttbench.config import block_to_json

    root = tmp_path_factory.mktemp("baseline")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        records = []
        cfg = validate(CONFIG)
        for block, cells in blocks_by_id(cfg).items():  # block folders, as the pipeline writes
            records.append(str(root / "cells" / block))
            assert main(["gradient-flow", "block", "--spec", block_to_json(cells), "--out", records[-1],
                         "--lags", cfg["gradient_flow"]["lags"]]) == 0
        assert main(["gradient-flow", "collect", "--out", str(root / "tables"), *records]) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "tables"


def _block_jobs(root: psutil.Process) -> list[psutil.Process]:
    jobs = []
    for p in root.children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if any(a.endswith("bpttbench") for a in cmd[:2]) and "block" in cmd:
            jobs.append(p)
    return jobs


def _random_moment(pipe: Pipeline, proc: subprocess.Popen, rng: random.Random
                   ) -> list[psutil.Process]:
    """Wait for a random moment inside the compute (a block job running, 0-3 cells done,
    then 0-0.3 s more); return the block jobs running then."""
    n, extra = rng.randrange(0, 4), rng.uniform(0, 0.3)
    root = psutil.Process(proc.pid)
    print(f"fault moment: after {n} computed cell(s) + {extra:.3f} s")
    while proc.poll() is None:
        if sum(pipe.count("computed").values()) >= n and _block_jobs(root):
            time.sleep(extra)
            jobs = _block_jobs(root)
            if jobs:
                return jobs
        time.sleep(0.02)
    raise AssertionError("the run ended before the fault could be injected")


@pytest.mark.parametrize("rep", range(3))
def test_sigkill_of_a_job_at_a_random_moment(tmp_path, repo, snakemake_env, baseline,
                                             fault_rng, rep):
    pipe = Pipeline(tmp_path / "w", repo, snakemake_env)
    proc = pipe.start()
    jobs = _random_moment(pipe, proc, fault_rng)
    while True:  # a job may exit between the look and the kill: then take another
        victim = fault_rng.choice(jobs)
        try:
            victim.send_signal(signal.SIGKILL)
            break
        except psutil.NoSuchProcess:
            jobs = _block_jobs(psutil.Process(proc.pid)) or _random_moment(pipe, proc, fault_rng)
    rc, out = pipe.wait(proc)
    assert rc != 0 and "Error in rule gradient_flow_block" in out
    kept = pipe.checkpoints()
    _finish(pipe, baseline, "sigkill-job", rep, 0, kept)


@pytest.mark.parametrize("rep", range(2))
def test_sigkill_of_snakemake(tmp_path, repo, snakemake_env, baseline, fault_rng, rep):
    pipe = Pipeline(tmp_path / "w", repo, snakemake_env)
    proc = pipe.start()
    _random_moment(pipe, proc, fault_rng)
    orphans = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)  # Snakemake alone: its running jobs are orphaned
    pipe.wait(proc)
    _, alive = psutil.wait_procs(orphans, timeout=240)  # they finish (or fail) on their own
    assert not alive, f"orphaned jobs still running: {alive}"
    kept = pipe.checkpoints()
    if rep == 0:  # Snakemake's own lock outlives it: a rerun is refused, clearly, until --unlock
        rc, out = pipe.run("--rerun-incomplete")
        assert rc != 0 and REFUSED[0] in out and "--unlock" in out
    assert pipe.run("--unlock")[0] == 0
    _finish(pipe, baseline, "sigkill-snakemake", rep, 0, kept)


def _damage(path: Path, how: str, rng: random.Random) -> None:
    """Cut a file as a crash on a full disk leaves it: to a random prefix, or to nothing."""
    data = path.read_bytes()
    path.write_bytes(data[:rng.randrange(1, len(data) - 2)] if how == "truncated" else b"")
    print(f"{how}: {path} ({path.stat().st_size} of {len(data)} bytes)")


@pytest.mark.parametrize("rep", range(2))
def test_full_disk_then_damaged_checkpoints(tmp_path, repo, snakemake_env, baseline,
                                            fault_rng, rep):
    pipe = Pipeline(tmp_path / "w", repo, snakemake_env)
    # the disk fills at the n-th checkpoint write of each block job
    n = fault_rng.randrange(3, 5)
    print(f"disk full at checkpoint write {n}")
    rc, out = pipe.run(fault={FAULT_ENOSPC_ENV: f"{n}:*.partial/*"})
    assert rc != 0
    logs = "".join(p.read_text() for p in (pipe.dir / "logs").rglob("*.log"))
    assert "No space left on device" in logs
    kept = pipe.checkpoints()
    assert len(kept) == len(BLOCKS) * (n - 1), kept
    # then two surviving checkpoints are damaged: one truncated, one zero-length
    victims = fault_rng.sample(sorted(kept), 2)
    paths = [next((pipe.dir / CELLS_DIR).glob(f"*.partial/{v}.json")) for v in victims]
    for path, how in zip(paths, ["truncated", "zero-length"], strict=True):
        _damage(path, how, fault_rng)
    cost = _finish(pipe, baseline, "full-disk+truncated+zero-length-checkpoints", rep, 0,
                   kept - set(victims))
    assert pipe.count("corrupt") == Counter({v: 1 for v in victims})
    for path in paths:  # the warning in the block's log names the file
        log = pipe.dir / "logs" / TAG / "gradient_flow" / f"{path.parent.stem}.log"
        assert f"warning: {path.relative_to(pipe.dir)} is unreadable" in log.read_text()
    # cost: the cell cut off by the full disk in each block, plus the two damaged ones
    assert cost == len(BLOCKS) + 2


def test_full_disk_on_the_tables_then_a_damaged_block_record(tmp_path, repo, snakemake_env,
                                                            baseline, fault_rng):
    pipe = Pipeline(tmp_path / "w", repo, snakemake_env)
    # the disk fills while the tables are written: every block record is kept (temp outputs)
    rc, out = pipe.run(fault={FAULT_ENOSPC_ENV: "1:*/tables/*"})
    assert rc != 0 and pipe.finished_blocks() == set(BLOCKS)
    block = fault_rng.choice(sorted(BLOCKS))
    path = pipe.dir / CELLS_DIR / block  # the block's output folder: one of its tables is cut
    _damage(path / fault_rng.choice(["summary.parquet", "gradient_flow.parquet"]),
            fault_rng.choice(["truncated", "zero-length"]), fault_rng)
    # the collect job names the file, moves it aside and fails: no table from partial input
    rc, out = pipe.run("--rerun-incomplete")
    log = (pipe.dir / "logs" / TAG / "gradient_flow_collect.log").read_text()
    named = str(path.relative_to(pipe.dir))  # jobs run in the working directory
    assert rc != 0 and f"error: 1 unreadable intermediate file(s): {named}" in log, log
    assert f"moved aside to {path.name}{CORRUPT_SUFFIX}" in log, log
    assert path.with_name(path.name + CORRUPT_SUFFIX).exists() and not path.exists()
    assert not (pipe.tables() / "summary.csv").exists()
    kept = pipe.checkpoints()  # the block's checkpoints stay until the tables are written
    assert set(BLOCKS[block]) <= kept
    cost = _finish(pipe, baseline, "full-disk+damaged-block-record", 0, 0, kept)
    assert cost == 0  # its block job reran and took every cell from the checkpoints
    assert set(pipe.count("reused")) == set(BLOCKS[block])


@pytest.mark.parametrize("where", ["same working directory", "linked result folder"])
def test_two_pipelines_at_once(tmp_path, repo, snakemake_env, baseline, where):
    one = Pipeline(tmp_path / "one", repo, snakemake_env)
    if where == "same working directory":
        two = Pipeline(tmp_path / "one", repo, snakemake_env)
    else:  # another working directory whose results/ is the first one's
        two = Pipeline(tmp_path / "two", repo, snakemake_env)
        (one.dir / "results").mkdir()
        (two.dir / "results").symlink_to(one.dir / "results")
        two.ledger = one.ledger
        two.env[CELL_LEDGER_ENV] = str(one.ledger)
    two.runs = 100
    procs = [one.start(), two.start()]
    done = [Pipeline.wait(p) for p in procs]
    ok = [rc == 0 for rc, _ in done]
    assert sorted(ok) == [False, True], [out[-2000:] for _, out in done]
    refused = done[ok.index(False)][1]
    assert any(r in refused for r in REFUSED), refused[-3000:]
    print(f"FAULT two-pipelines ({where}): second refused with: "
          + next(line for line in refused.splitlines() if any(r in line for r in REFUSED)))
    _finish(one, baseline, f"two-pipelines-{where.replace(' ', '-')}", 0, 0, set())
    assert sum(one.count("computed").values()) == N_CELLS  # nothing done twice
    shutil.rmtree(tmp_path / "one" / ".snakemake", ignore_errors=True)
