"""The hardware tag and the device a config resolves to, without torch.

The tag names a result set (``results/<tag>/``): a GPU's name ("nvidia-h200") or "cpu-" and
the CPU model ("cpu-intel-xeon"). GPUs are read from ``nvidia-smi --query-gpu`` (filtered
by ``CUDA_VISIBLE_DEVICES``); ``BPTTBENCH_GPU_NAMES`` overrides that list ("" for none; a
comma-separated list of names otherwise), for tests and for hosts without nvidia-smi. Jobs
use ``bpttbench.hardware``, which asks torch, and name the same tag through
:func:`tag_from_gpu_name` and :func:`cpu_tag`.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GPU_NAMES_ENV = "BPTTBENCH_GPU_NAMES"


@dataclass(frozen=True)
class GpuInfo:
    index: int  # physical index (as nvidia-smi and CUDA_VISIBLE_DEVICES count)
    name: str
    total_bytes: int  # 0 when unknown (the environment override)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@", " ", text.lower())
    return re.sub(r"[^a-z0-9.]+", "-", text).strip("-.")


def cpu_tag() -> str:
    return "cpu-" + _slug(cpu_model())


def tag_from_gpu_name(name: str) -> str:
    """"NVIDIA H200 141GB HBM3e" -> "nvidia-h200" (memory size and form factor dropped)."""
    return _slug(re.sub(r"\b(\d+gb|hbm\d*e?|sxm\d*|pcie|nvl)\b", " ", name.lower()))


def _visible(gpus: list[GpuInfo]) -> list[GpuInfo]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    ids = [int(v) for v in visible.split(",") if v.strip().isdigit()]
    by_index = {g.index: g for g in gpus}
    return [by_index[i] for i in ids if i in by_index]


def visible_gpus() -> list[GpuInfo]:
    """The GPUs this process may use, from nvidia-smi (or ``BPTTBENCH_GPU_NAMES``)."""
    override = os.environ.get(GPU_NAMES_ENV)
    if override is not None:
        names = [n.strip() for n in override.split(",") if n.strip()]
        return [GpuInfo(i, n, 0) for i, n in enumerate(names)]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            mib = int(parts[2]) if parts[2].isdigit() else 0
            gpus.append(GpuInfo(int(parts[0]), parts[1], mib * 2**20))
    return _visible(gpus)


def planned_device(device: str) -> str:
    """The device the workflow plans for: 'auto' -> 'cuda' when a GPU is visible, else 'cpu';
    'cpu' and 'cuda' as they are.

    (A job resolves its device with torch: ``bpttbench.hardware.resolve_device``.)
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; allowed: auto, cpu, cuda")
    if device == "auto":
        return "cuda" if visible_gpus() else "cpu"
    return device


def uses_gpu(cfg: Mapping[str, Any]) -> bool:
    """True when the config's device resolves to CUDA (``auto`` is resolved on this host).

    On a cluster whose submit host has no GPU, ``device: auto`` resolves to ``cpu`` there:
    set ``device: cuda`` (and ``hardware_tag``) in the config to ask for GPUs.
    """
    return planned_device(cfg.get("device", "auto")) == "cuda"


def hardware_tag(cfg: Mapping[str, Any]) -> str:
    """The result-set name: the config's hardware_tag, or one derived from the device.

    GPU: its name ("nvidia-h200"); CPU: "cpu-" and the CPU model ("cpu-intel-xeon").
    """
    tag = cfg.get("hardware_tag", "auto")
    if tag != "auto":
        return tag
    if planned_device(cfg.get("device", "auto")) == "cuda":
        gpus = visible_gpus()
        if not gpus:
            raise RuntimeError("config device: cuda, but no CUDA GPU is visible (nvidia-smi); "
                               "use device: auto or cpu, or set hardware_tag")
        return tag_from_gpu_name(gpus[0].name)
    return cpu_tag()
