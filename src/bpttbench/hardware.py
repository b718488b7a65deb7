"""What machine and software a job uses: the device torch gives it, device facts, the result-set
tag check, precision settings. (The tag itself is named without torch: planning.hardware.)"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

# The tag is named without torch (the workflow plans with it); a job checks it against the
# device torch gives it (check_result_set_tag).
from .planning.hardware import cpu_model, cpu_tag, hardware_tag, tag_from_gpu_name

__all__ = ["apply_precision", "check_result_set_tag", "cpu_model", "device_facts",
           "git_commit", "hardware_tag", "resolve_device", "software_versions"]


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config device: cuda, but torch sees no CUDA GPU; use device: auto or cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; allowed: auto, cpu, cuda")
    return device


def check_result_set_tag(hw_tag: str, device: str, explicit: bool = False) -> None:
    """Refuse to compute into another machine's result set (unless the tag was set on purpose).

    Regenerating figures from a committed set never calls this; computing does.
    """
    if explicit:
        return
    here = tag_from_gpu_name(torch.cuda.get_device_name(0)) if device == "cuda" else cpu_tag()
    if here != hw_tag:
        raise SystemExit(
            f"refusing to compute into result set {hw_tag!r}: this machine's tag is {here!r}. "
            "Set hardware_tag in the config to write a set under another name on purpose."
        )


def apply_precision(allow_tf32: bool, deterministic: bool) -> dict[str, Any]:
    """Set TF32 and determinism switches for this process and return what was set.

    Both ways: a process that ran a deterministic cell and then a non-deterministic one (a
    bench after a cell, a test after another) runs the second as its record says. cuBLAS needs
    CUBLAS_WORKSPACE_CONFIG before its first use to be deterministic; once set it stays (it
    cannot be taken back after cuBLAS starts) and is recorded as it is. cuDNN's autotuner stays
    off either way: it picks algorithms by timing, so two runs could differ.
    """
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    return {
        "allow_tf32": allow_tf32,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cupy_version() -> str | None:
    for dist in ("cupy-cuda13x", "cupy-cuda12x", "cupy"):
        v = _version(dist)
        if v:
            return f"{dist} {v}"
    return None


def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def device_facts(device: str) -> dict[str, Any]:
    """The hardware a run used (GPU name, memory, driver, CUDA; CPU model and cores)."""
    facts: dict[str, Any] = {
        "device": device,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu_name=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_multiprocessors=props.multi_processor_count,
            gpu_compute_capability=f"{props.major}.{props.minor}",
            cuda_runtime=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            driver=nvidia_driver(),
        )
    return facts


def software_versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "bpttbench": _version("bpttbench"),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "pandas": _version("pandas"),
        "scipy": _version("scipy"),
        "seaborn": _version("seaborn"),
        "matplotlib": _version("matplotlib"),
        "snakemake": _version("snakemake"),
        "cupy": cupy_version(),
    }


def git_commit(repo: str | Path = ".") -> str | None:
    """HEAD's commit (with '-dirty' if tracked code changed), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        # Result sets and logs are outputs, not code: rewriting one in place is not "dirty".
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results", ":(exclude)logs"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=True).stdout
        return head + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
