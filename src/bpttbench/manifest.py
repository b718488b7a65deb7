"""The manifest of a result set: what ran, where, with which software and settings."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .config import ConfigError, as_list, config_hash, load, precision_fields, schema
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


def manifest_config(config_json: str) -> dict[str, Any]:
    """The config a manifest records, from ``--config-json``: valid, and complete (every key
    and every section key a default would fill in present, as the pipeline passes it), so
    that the manifest says exactly what the set was computed with; ``compare`` may be left
    out (planning.jobs.config_json leaves it out)."""
    cfg = load(json_text=config_json)  # ConfigError names --config-json and the bad key
    raw = json.loads(config_json)
    missing = [k for k in cfg if k not in raw and k != "compare"]
    missing += [f"{k}.{sub}" for k, section in cfg.items() if k in raw
                and isinstance(section, dict) and isinstance(raw[k], dict)
                for sub in section if sub not in raw[k]]
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)"
                                          if len(missing) > 8 else "")
        raise ConfigError(f"--config-json lacks the key(s) {shown}: a manifest records the "
                          "full config the set was computed with, every default filled in "
                          "(the pipeline passes it: planning.jobs.config_json)")
    return raw


def check_hw_tag_name(hw_tag: str) -> str:
    """``--hw-tag``: a result set's folder name (the schema's hardware_tag pattern, not auto)."""
    pattern = schema()["properties"]["hardware_tag"]["pattern"]
    if hw_tag == "auto" or not re.fullmatch(pattern, hw_tag):
        raise ConfigError(f"--hw-tag {hw_tag!r} is not a result set's tag; allowed: a folder "
                          f"name matching {pattern} (results/<tag>/), not auto")
    return hw_tag


def write_manifest_from(config_json: str, hw_tag: str, summary_csv: str | Path,
                        repo: str | Path = ".") -> dict[str, Any]:
    return build_manifest(manifest_config(config_json), check_hw_tag_name(hw_tag),
                          read_table(summary_csv), repo)
