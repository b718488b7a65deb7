"""What a pipeline job asks a batch scheduler (SLURM) for: GPU, memory and wall time.

Snakemake rules declare these as ``resources:``; the SLURM executor plugin turns them into
sbatch options (``gpu`` -> ``--gpus``, ``mem_mb`` -> ``--mem``, ``runtime`` -> ``-t`` in
minutes, ``threads`` -> ``--cpus-per-task``). A local run ignores them unless
``--resources`` caps them. Cluster specifics (partition, account, GPU model, gres) are not
here: they live in the Snakemake profile (``profiles/slurm/config.yaml``, ``docs/slurm.md``).

A job that fails (time limit, out of memory, node failure) is resubmitted up to the
profile's ``retries`` times with ``attempt`` = 2, 3, ...; each retry asks for more:
wall time doubles and memory grows linearly with the attempt. A gradient-flow block keeps
every finished cell in ``<block>.partial/``, so a retry only computes what is left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .hardware import resolve_device


@dataclass(frozen=True)
class JobClass:
    """First-attempt requests of one kind of job."""

    runtime_min: int  # wall time, minutes
    mem_mb: int  # host memory, MB (CPU run)
    mem_mb_gpu: int | None = None  # host memory when the job drives a GPU (CUDA context etc.)


# Sized for the full GPU sweep (config/gpu.yaml) with room to spare; the CPU default sweep
# needs far less (a default block: ~70 s and 0.6 GB peak RSS on one core). The profile's
# set-resources overrides any of them per rule.
JOB_CLASSES: dict[str, JobClass] = {
    # One block of cells (gradient_flow_block) or any other GPU-capable measurement.
    "compute": JobClass(runtime_min=60, mem_mb=4000, mem_mb_gpu=8000),
    # Gathering every cell record into the tables (the full sweep: ~10^7 rows).
    "collect": JobClass(runtime_min=30, mem_mb=8000),
    # Figures from the tables.
    "figures": JobClass(runtime_min=15, mem_mb=4000),
    # Manifest, HTML report and other file-sized steps.
    "small": JobClass(runtime_min=10, mem_mb=1000),
}


def uses_gpu(cfg: Mapping[str, Any]) -> bool:
    """True when the config's device resolves to CUDA (``auto`` is resolved on this host).

    On a cluster whose submit host has no GPU, ``device: auto`` resolves to ``cpu`` there:
    set ``device: cuda`` (and ``hardware_tag``) in the config to ask for GPUs.
    """
    device = cfg.get("device", "auto")
    if device == "cuda":
        return True
    if device == "cpu":
        return False
    return resolve_device(device) == "cuda"


def gpu_resources(cfg: Mapping[str, Any]) -> dict[str, int]:
    """``{"gpu": 1}`` for compute jobs when the device resolves to CUDA, else ``{}``."""
    return {"gpu": 1} if uses_gpu(cfg) else {}


def _job_class(kind: str) -> JobClass:
    if kind not in JOB_CLASSES:
        raise ValueError(f"unknown job class {kind!r}; allowed: {', '.join(JOB_CLASSES)}")
    return JOB_CLASSES[kind]


def _check_attempt(attempt: int) -> int:
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be an integer >= 1 (1 = first submission), got {attempt!r}")
    return attempt


def runtime_min(kind: str, attempt: int = 1) -> int:
    """Wall time in minutes: the class's first-attempt value, doubled on every retry."""
    return _job_class(kind).runtime_min * 2 ** (_check_attempt(attempt) - 1)


def mem_mb(kind: str, attempt: int = 1, gpu: bool = False) -> int:
    """Host memory in MB: the class's first-attempt value (GPU variant if any) times attempt."""
    job = _job_class(kind)
    base = job.mem_mb_gpu if gpu and job.mem_mb_gpu is not None else job.mem_mb
    return base * _check_attempt(attempt)
