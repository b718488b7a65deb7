"""The manifest of a result set: what ran, where, with which software and settings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .config import as_list, config_hash, precision_fields
from .hardware import apply_precision, device_facts, git_commit, resolve_device, software_versions
from .tables import read_table


def build_manifest(cfg: Mapping[str, Any], hw_tag: str, summary: pd.DataFrame,
                   repo: str | Path = ".") -> dict[str, Any]:
    """Manifest of ``results/<hw_tag>/`` from the config and the collected summary table.

    Start and end times, statuses and the Jacobian backends come from the cells
    themselves (summary.csv), so the manifest can be rebuilt without recomputing them.
    """
    device = resolve_device(cfg.get("device", "auto"))
    precision = apply_precision(bool(cfg.get("allow_tf32")), bool(cfg.get("deterministic", True)))
    backends = sorted(str(b) for b in summary["jacobian_backend"].dropna().unique())
    statuses = {str(k): int(v) for k, v in summary["status"].value_counts().items()}
    seeds = {name: as_list(section["seeds"]) for name, section in cfg.items()
             if isinstance(section, dict) and "seeds" in section}
    return {
        "hardware_tag": hw_tag,
        "hardware": device_facts(device),
        "software": software_versions(),
        "git_commit": git_commit(repo),
        "config": dict(cfg),
        "config_hash": config_hash(cfg),
        "precision": {"dtype": cfg.get("dtype"), **precision_fields(cfg), **precision},
        "jacobian_backend": {"requested": cfg.get("jacobian_backend"), "used": backends},
        "seeds": seeds,
        "cells": {"count": int(len(summary)), "status": statuses,
                  # GPUs the cells ran on (physical indices; empty on the CPU): gpus run
                  # gives each job its own, see docs/scale.md
                  "device_index": sorted({int(i) for i in summary["device_index"].dropna()})
                  if "device_index" in summary else []},
        "started_at": summary["started_at"].min() if len(summary) else None,
        "finished_at": summary["finished_at"].max() if len(summary) else None,
        "cell_wall_s_total": round(float(summary["wall_s"].sum()), 3),
    }


def write_manifest_from(config_json: str, hw_tag: str, summary_csv: str | Path,
                        repo: str | Path = ".") -> dict[str, Any]:
    return build_manifest(json.loads(config_json), hw_tag, read_table(summary_csv), repo)
