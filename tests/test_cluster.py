"""What jobs ask a scheduler for (bpttbench.planning.resources), and that the rules and profile use it.

No SLURM needed: the resources are checked in Snakemake's dry run (tests/test_slurm.py
checks them again in real sbatch submissions where a SLURM runs).
"""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from bpttbench.planning import resources as cluster
from bpttbench.planning.hardware import visible_gpus

CFG = {
    "hardware_tag": "cluster-test",
    "device": "cpu",
    "gradient_flow": {"models": ["rnn_tanh", "gru"], "hidden": 8, "seq_len": [10], "seeds": [0],
                      "weight_scale": [1.0]},
}
# Rule -> job class, as the rule files declare them.
RULE_CLASSES = {
    "gradient_flow_block": "compute",
    "gradient_flow_collect": "collect",
    "gradient_flow_figures": "figures",
    "manifest": "small",
    "report_html": "small",
}


def test_runtime_doubles_and_memory_grows_with_each_attempt(rng_seed) -> None:
    rng = random.Random(rng_seed)
    for kind, job in cluster.JOB_CLASSES.items():
        attempt = rng.randint(1, 6)
        assert cluster.runtime_min(kind, attempt) == job.runtime_min * 2 ** (attempt - 1)
        assert cluster.mem_mb(kind, attempt) == job.mem_mb * attempt
        assert cluster.runtime_min(kind, attempt + 1) == 2 * cluster.runtime_min(kind, attempt)
        gpu_base = job.mem_mb_gpu if job.mem_mb_gpu is not None else job.mem_mb
        assert cluster.mem_mb(kind, attempt, gpu=True) == gpu_base * attempt


def test_gpu_asked_only_when_the_device_resolves_to_cuda() -> None:
    assert cluster.gpu_resources({"device": "cpu"}) == {}
    assert cluster.gpu_resources({"device": "cuda"}) == {"gpu": 1}
    expected = {"gpu": 1} if visible_gpus() else {}  # nvidia-smi: the planning layer has no torch
    assert cluster.gpu_resources({"device": "auto"}) == expected
    assert cluster.gpu_resources({}) == expected


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_attempt_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="attempt must be an integer >= 1"):
        cluster.runtime_min("compute", bad)


def test_unknown_job_class_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="allowed: compute, collect, figures, small, probe, kernels"):
        cluster.mem_mb("gpu_job")


def _dry_run(repo: Path, tmp_path: Path, env: dict, *extra: str) -> str:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CFG))
    cmd = ["snakemake", "-s", str(repo / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "-n", "--cores", "1", *extra,
           "results/cluster-test/report.html"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def _resources_by_rule(text: str) -> dict[str, dict[str, str]]:
    """Rule name -> its jobs' resources, from the job listing of a dry run."""
    found: dict[str, dict[str, str]] = {}
    rule = None
    for line in text.splitlines():
        head = re.match(r"(?:local)?rule (\w+):$", line.strip())
        if head:
            rule = head.group(1)
        elif rule and line.strip().startswith("resources: "):
            items = line.strip().removeprefix("resources: ").split(", ")
            found[rule] = dict(kv.split("=", 1) for kv in items)
            rule = None
    return found


@pytest.mark.parametrize("attempt", [1, 2])
def test_rules_declare_the_class_resources(repo, snakemake_env, tmp_path, attempt) -> None:
    text = _dry_run(repo, tmp_path, snakemake_env, "--attempt", str(attempt))
    found = _resources_by_rule(text)
    for rule, kind in RULE_CLASSES.items():
        assert rule in found, f"no resources line for {rule} in the dry run"
        res = found[rule]
        assert int(res["mem_mb"]) == cluster.mem_mb(kind, attempt), (rule, res)
        assert int(res["runtime"]) == cluster.runtime_min(kind, attempt), (rule, res)
        # A CPU config asks no GPU from any rule.
        assert "gpu" not in res and "gpu_model" not in res, (rule, res)


def test_profile_is_valid_and_groups_the_post_processing(repo, snakemake_env, tmp_path) -> None:
    profile = yaml.safe_load((repo / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["retries"] >= 1 and profile["rerun-incomplete"] is True
    groups = dict(g.split("=") for g in profile["groups"])
    assert groups["gradient_flow_collect"] == groups["gradient_flow_figures"] == groups["manifest"]
    # Snakemake accepts the profile (the SLURM plugin's options in it too) and forms the
    # groups without a cycle through the other stages, in a dry run of the whole pipeline.
    pytest.importorskip("snakemake_executor_plugin_slurm")
    text = _dry_run(repo, tmp_path, snakemake_env, "--profile", str(repo / "profiles/slurm"))
    for group in set(groups.values()):
        assert f"Group job {group}" in text or f"group job {group}" in text.lower(), group
