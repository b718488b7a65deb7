"""The config expanded into pipeline jobs, per stage, and what each job is given.

Gradient flow: one job per block of cells (model x init x hidden; ``config.blocks_by_id``).
Claims: one job per claim of ``claims.run``. Long range: one job per task x model x
seq_len (``long_range.sweep``). Bench: one timing job per op, or one for all ops
(``bench.jobs``). Each stage's jobs come with their estimated peak memory on the config's
device (``peaks``), which sizes GPU jobs (``resources.RuleResources``). No torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..claims import CLAIM_IDS, job_config
from ..claims.settings import claims_section
from ..config import CellSpec, as_list, block_to_json, blocks_by_id
from ..long_range.spec import RunSpec
from ..long_range.sweep import block_record_files, block_spec_json, long_range_blocks
from .hardware import uses_gpu
from .memory import block_peak_bytes, long_range_peak_bytes

__all__ = ["CLAIM_IDS", "Plan", "bench_config_json", "bench_parts", "block_record_files",
           "block_spec_json", "config_json", "job_config", "part_ops"]

#: the top-level keys the bench jobs read (a change elsewhere does not rerun the timing)
BENCH_KEYS = ("hardware_tag", "device", "dtype", "allow_tf32", "bench")


def bench_parts(bench: Mapping[str, Any]) -> dict[str, list[str]]:
    """Pipeline timing jobs -> their ops: one per op, or {"all": ops} when jobs is single.

    (The op and variant names were checked against the schema's enums when the config was
    validated; a job checks them again against the factory table.)
    """
    ops = [str(op) for op in as_list(bench["ops"])]
    return {"all": ops} if bench.get("jobs") == "single" else {op: [op] for op in ops}


def part_ops(parts: Mapping[str, list[str]], part: str) -> str:
    """The ops of timing job ``part`` as a command-line list (clear error for an unknown job)."""
    if part not in parts:
        raise ValueError(f"bench job {part!r} is not in the current config; its jobs: "
                         f"{', '.join(parts)} (bench.jobs decides: per_op or single)")
    return " ".join(parts[part])


def bench_config_json(cfg: Mapping[str, Any]) -> str:
    return json.dumps({k: cfg[k] for k in BENCH_KEYS}, sort_keys=True)


def config_json(cfg: Mapping[str, Any]) -> str:
    """The config a result set records (the manifest job's params), less ``compare``: which
    sets to compare is not part of a measurement, and a params change would rerun the sweep."""
    return json.dumps({k: v for k, v in cfg.items() if k != "compare"}, sort_keys=True)


class Plan:
    """Every stage's jobs for one validated config (what the workflow's rules iterate over)."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.device = "cuda" if uses_gpu(cfg) else "cpu"
        self.blocks: dict[str, list[CellSpec]] = blocks_by_id(cfg)
        self.claims: list[str] = list(claims_section(cfg)["run"])
        self.long_range: dict[str, list[RunSpec]] = long_range_blocks(cfg)
        self.bench_parts: dict[str, list[str]] = bench_parts(cfg["bench"])

    def block_spec(self, block: str) -> str:
        """The cells of one gradient-flow job as the JSON ``gradient-flow block`` reads."""
        if block not in self.blocks:
            raise ValueError(f"block {block} is not in the current config's sweep; "
                             f"blocks: {', '.join(self.blocks)}")
        return block_to_json(self.blocks[block])

    def long_range_spec(self, block: str) -> str:
        return block_spec_json(self.long_range, block)

    def peaks(self, stage: str) -> dict[str, int]:
        """Estimated peak bytes of each job of ``stage`` (gradient_flow or long_range)."""
        if stage == "gradient_flow":
            return {b: block_peak_bytes(cells, self.device) for b, cells in self.blocks.items()}
        if stage == "long_range":
            return {b: long_range_peak_bytes(runs, self.device)
                    for b, runs in self.long_range.items()}
        raise ValueError(f"no memory estimate for stage {stage!r}; allowed: gradient_flow, "
                         "long_range")
