"""The workflow on a real SLURM through Snakemake's executor plugin and profiles/slurm.

Needs running SLURM daemons on this machine (``bash .ci/slurm-up.sh`` as root starts a
single-node one) and ``snakemake-executor-plugin-slurm``; skipped otherwise. One tiny
sweep (two blocks of eight cells) runs locally and once through ``--profile profiles/slurm``.
While the SLURM run goes on, one block is requeued by SLURM mid-way (what SLURM does to a
pre-empted job under PreemptMode=REQUEUE) and the other is cancelled mid-way (a failed job:
Snakemake resubmits it with attempt 2). Both must resume from their per-cell checkpoints,
the retry must ask for more time and memory, and the tables must equal the local run's
exactly (timing columns aside).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bpttbench.planning import resources as cluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

HW = "slurm-e2e"
# Two blocks (gru, lstm) of 2 x 2 x 2 = 8 cells, 0.5-1 s each on one core here (12 s a
# block): long enough to interrupt a block between its 2nd and 6th cell, short enough for CI.
SWEEP = {
    "hardware_tag": HW,
    "device": "cpu",
    "gradient_flow": {
        "models": ["gru", "lstm"],
        "hidden": 16,
        "batch": 8,
        "input_size": 3,
        "seq_len": [600, 1200],
        "weight_scale": [0.8, 1.5],
        "seeds": [0, 1],
        "lyapunov_k": 3,
    },
}
N_CELLS = 8
REQUEUED = "gru-orthogonal-h16"  # requeued by SLURM mid-way
CANCELLED = "lstm-orthogonal-h16"  # cancelled mid-way: a failed job, retried by Snakemake
TABLES = ("gradient_flow.parquet", "summary.csv", "lyapunov.parquet", "chain_spectrum.parquet")
# When and how long, not what: differs between any two runs.
TIMING_COLUMNS = {"wall_s", "started_at", "finished_at"}
# The gradient-flow stage and the manifest (the report would pull in every other stage).
TARGETS = (f"results/{HW}/tables/summary.csv", f"results/{HW}/figures/gradient_norm_by_lag.png",
           f"results/{HW}/manifest.json")
FIGURES = ("gradient_norm_by_lag", "growth_rate_by_scale", "horizon_heatmap",
           "lyapunov_spectrum", "chain_singular_values")


def _run(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def slurm_unavailable() -> str | None:
    """Why the SLURM test cannot run here, or None when it can."""
    missing = [c for c in ("sbatch", "squeue", "scontrol", "sinfo") if shutil.which(c) is None]
    if missing:
        return (f"SLURM client commands absent ({', '.join(missing)}); "
                "start a local SLURM with `bash .ci/slurm-up.sh` (root)")
    try:
        ping = _run(["scontrol", "ping"], timeout=10)
    except subprocess.TimeoutExpired:
        return "scontrol ping timed out: slurmctld not answering"
    if "UP" not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip().splitlines() or ["no output"]
        return (f"SLURM daemons absent (scontrol ping: {said[-1][:120]}); "
                "start a local SLURM with `bash .ci/slurm-up.sh` (root)")
    nodes = _run(["sinfo", "-h", "-N", "-o", "%t %c %m"]).stdout.split()
    if len(nodes) < 3 or nodes[0].rstrip("*") not in ("idle", "mix", "alloc"):
        return f"no SLURM node takes jobs (sinfo: {' '.join(nodes) or 'no nodes'})"
    cpus, mem = int(nodes[1].rstrip("+")), int(nodes[2].rstrip("+"))
    # Both blocks at once (1 CPU each), then the retry at attempt 2 and the post-processing
    # group (collect + manifest side by side).
    need = max(2 * cluster.mem_mb("compute", 2), cluster.mem_mb("collect") + cluster.mem_mb("small"))
    if cpus < 2 or mem < need:
        return f"SLURM node too small for this test ({cpus} CPUs, {mem} MB; need 2, {need})"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm not installed (pip install -e '.[test]')"
    return None


def snakemake_cmd(repo: Path, workdir: Path, *extra: str) -> list[str]:
    return ["snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), *extra, *TARGETS]


def _jobs_in(workdir: Path) -> list[dict[str, str]]:
    """Every SLURM job squeue still shows (finished ones for MinJobAge) run in ``workdir``."""
    out = _run(["squeue", "--states=all", "-h", "-o", "%i|%T|%r|%k|%l|%m|%Z"]).stdout
    jobs = []
    for line in out.splitlines():
        jobid, state, reason, comment, limit, mem, wd = line.split("|", 6)
        if Path(wd) == workdir:
            jobs.append(dict(id=jobid, state=state, reason=reason, comment=comment,
                             time_limit=limit, mem=mem))
    return jobs


def _checkpoints(workdir: Path, block: str) -> int:
    return len(list((workdir / f"results/{HW}/cells/gradient_flow/{block}.partial").glob("*.json")))


class Interrupter(threading.Thread):
    """Requeue one block and cancel the other once each has finished two cells.

    Also keeps the last state of every job of the run: squeue forgets a finished job after
    MinJobAge (5 min), which a slow run can outlast.
    """

    def __init__(self, workdir: Path, deadline_s: float = 900):
        super().__init__(daemon=True)
        self.workdir, self.deadline = workdir, time.monotonic() + deadline_s
        self.done: dict[str, dict] = {}
        self.seen: dict[str, dict[str, str]] = {}
        self.shown: dict[str, str] = {}  # job id -> `scontrol show job` at its last new state
        self.stop = threading.Event()

    def run(self) -> None:
        actions = {REQUEUED: ["scontrol", "requeue"], CANCELLED: ["scancel"]}
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            for job in _jobs_in(self.workdir):
                if self.seen.get(job["id"], {}).get("state") != job["state"]:
                    self.shown[job["id"]] = _run(["scontrol", "show", "job", job["id"]]).stdout
                self.seen[job["id"]] = job
                for block, cmd in list(actions.items()):
                    if block not in job["comment"] or job["state"] != "RUNNING":
                        continue
                    n = _checkpoints(self.workdir, block)
                    if 2 <= n <= N_CELLS - 2:
                        res = _run([*cmd, job["id"]])
                        self.done[block] = dict(job=job["id"], checkpoints=n, rc=res.returncode,
                                                err=res.stderr.strip())
                        del actions[block]
                # SLURM holds a requeued job for about two minutes (BeginTime) before it may
                # start again; release it at once so that the test stays short.
                if (job["id"] == self.done.get(REQUEUED, {}).get("job")
                        and job["state"] == "PENDING" and job["reason"] == "BeginTime"):
                    _run(["scontrol", "update", f"JobId={job['id']}", "StartTime=now"])
            time.sleep(0.2)


def slurm_time(minutes: int) -> str:
    """A time limit as squeue prints it (%l): M:SS, H:MM:SS or D-HH:MM:SS."""
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{mins:02d}:00"
    return f"{hours}:{mins:02d}:00" if hours else f"{mins}:00"


def computed_cells(log: Path) -> int:
    """Cells a block's (last) run computed itself; reused checkpoints print no status line."""
    return len(re.findall(r"^\S+: status=", log.read_text(), flags=re.M))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, repo, snakemake_env):
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    local, slurm = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("slurm")
    for wd in (local, slurm):
        (wd / "config.yaml").write_text(yaml.safe_dump(SWEEP))
    t0 = time.monotonic()
    out = subprocess.run(snakemake_cmd(repo, local, "--cores", "2"), capture_output=True,
                         text=True, env=snakemake_env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    local_s = time.monotonic() - t0

    # The profile as shipped, plus what this test cluster needs: no accounting, so job
    # status comes from squeue; a short first status check so the test stays quick;
    # --cores: the cluster's cores (rules with `threads: workflow.cores` need a number).
    cluster_cores = _run(["sinfo", "-h", "-o", "%C"]).stdout.strip().split("/")[-1]
    interrupter = Interrupter(slurm)
    interrupter.start()
    t0 = time.monotonic()
    try:
        out = subprocess.run(
            snakemake_cmd(repo, slurm, "--profile", str(repo / "profiles" / "slurm"),
                          "--slurm-status-command", "squeue",
                          "--slurm-init-seconds-before-status-checks", "1",
                          "--cores", cluster_cores),
            capture_output=True, text=True, env=snakemake_env, timeout=900)
    finally:
        interrupter.stop.set()
        interrupter.join()
    slurm_s = time.monotonic() - t0
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    print(f"tiny sweep: local {local_s:.1f} s, SLURM {slurm_s:.1f} s")
    jobs = interrupter.seen | {j["id"]: j for j in _jobs_in(slurm)}
    return dict(local=local, slurm=slurm, log=log, jobs=list(jobs.values()),
                interrupted=interrupter.done, shown=interrupter.shown)


def test_slurm_tables_equal_local_tables(runs) -> None:
    for name in TABLES:
        read = pd.read_csv if name.endswith(".csv") else pd.read_parquet
        here = read(runs["local"] / f"results/{HW}/tables/{name}")
        there = read(runs["slurm"] / f"results/{HW}/tables/{name}")
        assert len(here) > 0
        cols = [c for c in here.columns if c not in TIMING_COLUMNS]
        assert list(there.columns) == list(here.columns), name
        # Same config, seeds and CPU, one thread each: bit-for-bit the same numbers.
        pd.testing.assert_frame_equal(there[cols], here[cols], check_exact=True, obj=name)
    summary = pd.read_csv(runs["slurm"] / f"results/{HW}/tables/summary.csv")
    assert len(summary) == 2 * N_CELLS and set(summary["status"]) == {"ok"}
    for fig in FIGURES:
        png = runs["slurm"] / f"results/{HW}/figures/{fig}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig


def test_jobs_went_through_slurm_with_declared_resources(runs) -> None:
    jobs = runs["jobs"]
    blocks = [j for j in jobs if j["comment"].startswith("rule_gradient_flow_block")]
    # Two blocks + one retry of the cancelled block; tables, figures and manifest are ONE
    # grouped job (group gradient_flow_post of the profile).
    assert len(blocks) == 3, jobs
    post = [j for j in jobs if j["comment"].startswith("rule_gradient_flow_post_")]
    assert len(post) == 1, jobs
    for rule in ("gradient_flow_collect", "gradient_flow_figures", "manifest"):
        assert f"_{rule}" in post[0]["comment"], post
    assert len(jobs) == 4 and len(re.findall(r"submitted with SLURM jobid", runs["log"])) == 4
    first = [j for j in blocks if j["state"] == "COMPLETED" and CANCELLED not in j["comment"]]
    assert len(first) == 1
    # sbatch -t / --mem from the rules' resources (attempt 1); no GPU asked on a CPU config.
    assert first[0]["time_limit"] == slurm_time(cluster.runtime_min("compute", 1))
    assert first[0]["mem"] == f"{cluster.mem_mb('compute', 1)}M"
    shown = runs["shown"][first[0]["id"]]
    tres = re.search(r"\bTRES=(\S+)", shown)
    assert tres and "cpu=1" in tres.group(1) and "gpu" not in tres.group(1), shown
    assert "TresPerJob" not in shown, shown


def test_requeued_block_resumes_from_its_checkpoints(runs) -> None:
    act = runs["interrupted"].get(REQUEUED)
    assert act is not None, f"the watcher never caught {REQUEUED} mid-way: {runs['interrupted']}"
    assert act["rc"] == 0, act
    shown = runs["shown"][act["job"]]  # as last seen: finished after its restart
    assert re.search(r"\bRestarts=1\b", shown), shown
    assert "JobState=COMPLETED" in shown, shown
    computed = computed_cells(runs["slurm"] / f"logs/{HW}/gradient_flow/{REQUEUED}.log")
    # The rerun computed only what the checkpoints did not hold.
    assert 1 <= computed <= N_CELLS - act["checkpoints"], (computed, act)


def test_failed_block_is_retried_with_more_time_and_memory(runs) -> None:
    act = runs["interrupted"].get(CANCELLED)
    assert act is not None, f"the watcher never caught {CANCELLED} mid-way: {runs['interrupted']}"
    assert act["rc"] == 0, act
    mine = sorted((j for j in runs["jobs"] if CANCELLED in j["comment"]), key=lambda j: int(j["id"]))
    assert [j["state"] for j in mine] == ["CANCELLED", "COMPLETED"], mine
    first, retry = mine
    assert first["time_limit"] == slurm_time(cluster.runtime_min("compute", 1))
    assert retry["time_limit"] == slurm_time(cluster.runtime_min("compute", 2))
    assert first["mem"] == f"{cluster.mem_mb('compute', 1)}M"
    assert retry["mem"] == f"{cluster.mem_mb('compute', 2)}M"
    computed = computed_cells(runs["slurm"] / f"logs/{HW}/gradient_flow/{CANCELLED}.log")
    assert 1 <= computed <= N_CELLS - act["checkpoints"], (computed, act)
    # Nothing left over: checkpoints go once the block is written, cells are temp().
    assert not list((runs["slurm"] / f"results/{HW}/cells").rglob("*.json"))
