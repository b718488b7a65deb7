"""GPUs as a resource of a local run: one GPU per compute job, as many jobs as fit.

On a machine with N GPUs the workflow registers two Snakemake resources (unless the user
set them): ``gpu_mem_mb``, the usable memory of all GPUs together, and ``gpu_jobs``, at most
``MAX_JOBS_PER_GPU`` jobs per GPU. Every GPU job asks for its estimated peak
(``bpttbench.memory``, the largest cell of the job) and one ``gpu_jobs``, so Snakemake never
starts more GPU jobs than fit; CPU-only jobs ask for neither and go on beside them.

Which GPU a job gets is decided when it starts, by ``bpttbench gpus run``: under a short
global lock it reads the live reservations (one file per running job, held with ``flock``
for the job's life, so a job that dies frees its share) and takes the GPU with the fewest
jobs among those with room for it (then the most free memory, then the lowest index): jobs
spread over every GPU before any GPU takes a second one. If no GPU has room (the memory is
split between GPUs) it waits. A job larger than any GPU runs alone on an idle one, and
records its too-large cells as such. The job runs with ``CUDA_VISIBLE_DEVICES`` set to its
GPU and ``BPTTBENCH_GPU_INDEX`` recording it. The choice takes a device list, so it is
tested on the CPU with stand-ins.
"""

from __future__ import annotations

import fcntl
import math
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX_ENV = "BPTTBENCH_GPU_INDEX"
#: share of a GPU's memory that jobs may plan to use (the rest: fragmentation, other users)
USABLE_FRACTION = 0.9
#: jobs per GPU at most, however small they are (they share its SMs and copy engines)
MAX_JOBS_PER_GPU = 4


@dataclass(frozen=True)
class Gpu:
    index: int  # physical index (as nvidia-smi and CUDA_VISIBLE_DEVICES count)
    name: str
    total_bytes: int

    @property
    def usable_mb(self) -> int:
        return int(USABLE_FRACTION * self.total_bytes / 2**20)


#: a stand-in device list "INDEX:USABLE_MB,..." that replaces detection (tests, dry runs)
STANDIN_ENV = "BPTTBENCH_STANDIN_GPUS"


def detect_gpus() -> list[Gpu]:
    """The CUDA devices this process sees (empty without CUDA), or the stand-in list.

    Read without torch (``nvidia-smi``, filtered by CUDA_VISIBLE_DEVICES), so that the
    workflow plans GPU jobs where torch cannot be imported.
    """
    if os.environ.get(STANDIN_ENV):
        return plan_from_arg(os.environ[STANDIN_ENV])
    from .planning.hardware import visible_gpus

    # a GPU named by BPTTBENCH_GPU_NAMES alone has no known memory: nothing to plan with
    return [Gpu(g.index, g.name, g.total_bytes) for g in visible_gpus() if g.total_bytes > 0]


def global_resources(gpus: Sequence[Gpu]) -> dict[str, int]:
    """The Snakemake resources of a local run on ``gpus``: total usable MB and job count."""
    if not gpus:
        return {}
    return {"gpu_mem_mb": sum(g.usable_mb for g in gpus),
            "gpu_jobs": MAX_JOBS_PER_GPU * len(gpus)}


def job_request_mb(peak_bytes: int, gpus: Sequence[Gpu]) -> int:
    """What a job of estimated peak ``peak_bytes`` asks of ``gpu_mem_mb``: its peak in MB,
    capped at one GPU's usable memory (a larger job runs alone and records too_large cells)."""
    cap = max((g.usable_mb for g in gpus), default=0)
    need = max(1, math.ceil(peak_bytes / 2**20))
    return min(need, cap) if cap else need


@dataclass(frozen=True)
class Reservation:
    gpu: int
    mb: int


def choose_gpu(gpus: Sequence[Gpu], live: Sequence[Reservation], need_mb: int) -> int | None:
    """The GPU a job needing ``need_mb`` gets, given the live reservations; None: wait."""
    best = None
    for g in gpus:
        mine = [r for r in live if r.gpu == g.index]
        used = sum(r.mb for r in mine)
        free = g.usable_mb - used
        fits = (len(mine) < MAX_JOBS_PER_GPU and need_mb <= free) or not mine
        if not fits:
            continue
        key = (len(mine), -free, g.index)
        if best is None or key < best[0]:
            best = (key, g.index)
    return None if best is None else best[1]


def plan_to_arg(gpus: Sequence[Gpu]) -> str:
    """``[Gpu(0, .., 80 GB), ...]`` -> ``"0:76800,1:76800"`` (index:usable MB), for gpus run."""
    return ",".join(f"{g.index}:{g.usable_mb}" for g in gpus)


def plan_from_arg(text: str) -> list[Gpu]:
    gpus = []
    for part in filter(None, text.split(",")):
        idx, _, mb = part.partition(":")
        if not (idx.strip().isdigit() and mb.strip().isdigit() and int(mb) >= 1):
            raise ValueError(f"--gpus {text!r}: each entry must be INDEX:USABLE_MB, e.g. 0:72000")
        gpus.append(Gpu(int(idx), f"gpu{idx}", math.ceil(int(mb) * 2**20 / USABLE_FRACTION)))
    if not gpus:
        raise ValueError("--gpus names no GPU; expected INDEX:USABLE_MB entries, e.g. 0:72000")
    return gpus


def local_gpus(cfg: Any, local: bool) -> list[Gpu]:
    """GPUs the local scheduler hands out: none for a cluster run (SLURM assigns them) or a
    CPU config."""
    from .planning.hardware import uses_gpu

    return detect_gpus() if local and uses_gpu(cfg) else []


def job_resources(gpus: Sequence[Gpu], peak_bytes: int) -> dict[str, int]:
    """The Snakemake resources of one GPU job of estimated peak ``peak_bytes``."""
    return {"gpu_mem_mb": job_request_mb(peak_bytes, gpus), "gpu_jobs": 1} if gpus else {}


def gpu_run_prefix(gpus: Sequence[Gpu], peak_bytes: int) -> str:
    """Shell prefix that runs a job on its own GPU (empty without local GPUs)."""
    if not gpus:
        return ""
    return (f"bpttbench gpus run --gpus {plan_to_arg(gpus)} "
            f"--mem-mb {job_request_mb(peak_bytes, gpus)} --")


def _live_reservations(lock_dir: Path) -> list[Reservation]:
    """Reservations whose owner still holds its lock; stale files (dead jobs) are removed."""
    live = []
    for path in sorted(lock_dir.glob("gpu*.res")):
        try:
            fh = open(path)  # noqa: SIM115
        except FileNotFoundError:
            continue
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:  # held by a running job
                gpu, mb = fh.read().split()[:2]
                live.append(Reservation(int(gpu), int(mb)))
                continue
            path.unlink(missing_ok=True)
    return live


@contextmanager
def reserve_gpu(gpus: Sequence[Gpu], need_mb: int, lock_dir: str | Path, poll_s: float = 0.5,
                timeout_s: float | None = None) -> Iterator[int]:
    """Hold a reservation of ``need_mb`` on the chosen GPU until the block exits."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    while True:
        with open(lock_dir / "alloc.lock", "a") as glock:
            fcntl.flock(glock, fcntl.LOCK_EX)
            gpu = choose_gpu(gpus, _live_reservations(lock_dir), need_mb)
            if gpu is not None:
                path = lock_dir / f"gpu{gpu}.{os.getpid()}.{time.monotonic_ns()}.res"
                fh = open(path, "w")  # noqa: SIM115
                fcntl.flock(fh, fcntl.LOCK_EX)
                fh.write(f"{gpu} {need_mb}\n")
                fh.flush()
        if gpu is not None:
            break
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no GPU with {need_mb} MB free after {timeout_s} s")
        time.sleep(poll_s)
    try:
        yield gpu
    finally:
        path.unlink(missing_ok=True)
        fh.close()


def run_on_gpu(cmd: Sequence[str], gpus: Sequence[Gpu], need_mb: int, lock_dir: str | Path) -> int:
    """Run ``cmd`` on the GPU ``reserve_gpu`` picks: CUDA_VISIBLE_DEVICES and INDEX_ENV set."""
    with reserve_gpu(gpus, need_mb, lock_dir) as gpu:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu), **{INDEX_ENV: str(gpu)})
        print(f"gpus run: GPU {gpu} ({need_mb} MB reserved): {' '.join(cmd)}", flush=True)
        return subprocess.call(list(cmd), env=env)


def assigned_gpu_index() -> int | None:
    """The physical GPU this job was given (gpus run), else the current CUDA device, else None."""
    value = os.environ.get(INDEX_ENV)
    if value is not None and value.strip().isdigit():
        return int(value)
    import torch

    return int(torch.cuda.current_device()) if torch.cuda.is_available() else None


def _cmd_gpu_run(args: Any) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ValueError("gpus run: no command given; usage: bpttbench gpus run --gpus 0:72000 "
                         "--mem-mb 4000 -- bpttbench gradient-flow block ...")
    if args.mem_mb < 1:
        raise ValueError(f"--mem-mb must be >= 1, got {args.mem_mb}")
    return run_on_gpu(cmd, plan_from_arg(args.gpus), args.mem_mb, args.lock_dir)


def _cmd_list(args: Any) -> int:
    gpus = detect_gpus()
    for g in gpus:
        print(f"{g.index}: {g.name}, {g.usable_mb} MB usable")
    print(f"{len(gpus)} GPU(s); the workflow's resources: {global_resources(gpus) or 'none'}")
    return 0


def register(sub: Any) -> None:
    import argparse

    from .cli_options import add_stage

    verbs = add_stage(sub, "gpus", "the GPUs of this machine as a resource of local runs")

    p = verbs.add_parser("list", help="the GPUs this process sees (nvidia-smi, or the stand-in)")
    p.set_defaults(func=_cmd_list)

    p = verbs.add_parser("run", help="run a command on a free GPU of this machine (local runs)")
    p.add_argument("--gpus", required=True, help="INDEX:USABLE_MB,... (the workflow passes it)")
    p.add_argument("--mem-mb", type=int, required=True, help="estimated peak of the job, MB")
    p.add_argument("--lock-dir", default=".snakemake/bpttbench-gpus")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_gpu_run)
