"""What the Snakefile and the ``.smk`` files import: the planning layer, and nothing else.

``common.smk`` validates the config and builds one :class:`Plan` (every stage's jobs) and one
:class:`RuleResources` (``res``: each rule's resources); the stage files read the job lists and
peaks from the plan. No torch is imported (``tests/test_torch_free.py``).
"""

from __future__ import annotations

from ..claims import CLAIM_IDS, CURVES, OVERVIEW, TABLE, job_config
from ..config import ConfigError, read_config_file
from ..config import validate as validate_config
from ..gpus import global_resources, local_gpus
from ..io import hold_result_lock
from .hardware import hardware_tag, uses_gpu
from .jobs import Plan, bench_config_json, block_record_files, config_json, part_ops
from .resources import RuleResources

__all__ = ["CLAIM_IDS", "CURVES", "OVERVIEW", "TABLE", "ConfigError", "Plan", "RuleResources",
           "bench_config_json", "block_record_files", "config_json", "global_resources",
           "hardware_tag", "hold_result_lock", "job_config", "local_gpus", "part_ops",
           "read_config_file", "uses_gpu", "validate_config"]
