"""The manifest of a result set: what ran, where, with which software and settings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .config import as_list, config_hash
from .hardware import device_facts, git_commit, resolve_device, software_versions
from .tables import read_records


def build_manifest(cfg: Mapping[str, Any], hw_tag: str, cell_paths: Iterable[str | Path],
                   repo: str | Path = ".") -> dict[str, Any]:
    """Manifest of ``results/<hw_tag>/``; start/end times come from the cells themselves."""
    records = read_records(cell_paths)
    device = resolve_device(cfg.get("device", "auto"))
    backends = sorted({r.get("jacobian_backend") for r in records if r.get("jacobian_backend")})
    precision = next((r["precision"] for r in records if "precision" in r), {})
    statuses: dict[str, int] = {}
    for r in records:
        status = r["summary"].get("status", "error")
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "hardware_tag": hw_tag,
        "hardware": device_facts(device),
        "software": software_versions(),
        "git_commit": git_commit(repo),
        "config": dict(cfg),
        "config_hash": config_hash(cfg),
        "precision": {"dtype": cfg.get("dtype"), "allow_tf32": cfg.get("allow_tf32"),
                      "deterministic": cfg.get("deterministic"), **precision},
        "jacobian_backend": {"requested": cfg.get("jacobian_backend"), "used": backends},
        "seeds": {"gradient_flow": as_list(cfg.get("gradient_flow", {}).get("seeds", []))},
        "cells": {"count": len(records), "status": statuses},
        "started_at": min((r["started_at"] for r in records), default=None),
        "finished_at": max((r["finished_at"] for r in records), default=None),
        "cell_wall_s_total": round(sum(r.get("wall_s", 0.0) for r in records), 3),
    }
