"""What a pipeline job asks for: GPU, memory and wall time, through one helper (``res``).

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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..gpus import Gpu, gpu_run_prefix, job_resources
from .hardware import uses_gpu

__all__ = ["JOB_CLASSES", "JobClass", "RuleResources", "gpu_resources", "mem_mb", "runtime_min",
           "uses_gpu"]


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
    # A short measurement on the compute device (the bench's peak rates).
    "probe": JobClass(runtime_min=10, mem_mb=4000, mem_mb_gpu=8000),
    # Every custom CUDA kernel against the float64 reference (GPU only).
    "kernels": JobClass(runtime_min=20, mem_mb=1000, mem_mb_gpu=8000),
}


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


class RuleResources:
    """The ``resources:`` of every rule, from one call: ``resources: **res("compute", gpu=...)``.

    ``gpu`` False: a host job (memory and wall time of its class). ``gpu`` True: a job on the
    config's device (``gpu: 1`` for a scheduler and the class's GPU memory when that device is
    CUDA). ``gpu`` a mapping ``wildcard -> {job id: estimated peak bytes}``: as True, plus the
    job's share of the local GPUs (``gpu_mem_mb``, ``gpu_jobs``; 0 without local GPUs), and
    :meth:`gpu_run` gives the shell prefix that starts it on a GPU of its own.
    """

    def __init__(self, cfg: Mapping[str, Any], local_gpus: Sequence[Gpu]) -> None:
        self.uses_gpu = uses_gpu(cfg)
        self.local_gpus = list(local_gpus)

    def res(self, kind: str, gpu: bool | Mapping[str, Mapping[str, int]] = False
            ) -> dict[str, Any]:
        _job_class(kind)  # an unknown class fails when the rule is defined
        on_gpu = bool(gpu) and self.uses_gpu
        out: dict[str, Any] = {
            "mem_mb": lambda wc, attempt: mem_mb(kind, attempt, gpu=on_gpu),
            "runtime": lambda wc, attempt: runtime_min(kind, attempt),
        }
        if isinstance(gpu, Mapping):
            for name in ("gpu_mem_mb", "gpu_jobs"):
                out[name] = self._per_job(gpu, lambda peak, name=name: job_resources(
                    self.local_gpus, peak).get(name, 0), 0)
        if on_gpu:
            out["gpu"] = 1
        return out

    def gpu_run(self, gpu: Mapping[str, Mapping[str, int]]) -> Callable[[Any], str]:
        """The ``bpttbench gpus run ... --`` prefix of each job (empty without local GPUs)."""
        return self._per_job(gpu, lambda peak: gpu_run_prefix(self.local_gpus, peak), "")

    @staticmethod
    def _per_job(gpu: Mapping[str, Mapping[str, int]], value: Callable[[int], Any],
                 missing: Any) -> Callable[[Any], Any]:
        ((wildcard, peaks),) = gpu.items()
        return lambda wc: value(peaks[getattr(wc, wildcard)]) if getattr(
            wc, wildcard) in peaks else missing
