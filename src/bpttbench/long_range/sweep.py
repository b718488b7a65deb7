"""Expand the ``long_range:`` config section into training runs and pipeline jobs.

Lists sweep and scalars fix, for ``tasks``, ``models``, ``seq_len``, ``clip`` and ``seeds``;
the training budget (steps, batch, lr, optimizer) and the model size and initialisation
are fixed for the whole stage. ``clip`` values null or 0 mean no clipping.
``init_by_model`` overrides ``init`` for some models (e.g. ``rnn_relu: identity``, the IRNN).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from ..config import ConfigError, as_list, precision_fields
from ..planning.precision import Precision
from .spec import RunSpec


def clip_values(value: Any) -> list[float | None]:
    """The clip list of the config as thresholds, None for no clipping (null or 0)."""
    out: list[float | None] = []
    for v in as_list(value):
        c = None if v is None or float(v) == 0.0 else float(v)
        if c is not None and c < 0:
            raise ConfigError(f"config key long_range.clip: {v!r} is not allowed; allowed: "
                              "null or 0 (no clipping) or a positive gradient-norm threshold")
        if c not in out:
            out.append(c)
    return out


def precision_settings(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The precision settings the stage sweeps: ``long_range.precisions`` if given, else the
    top-level ``dtype``, ``precision`` and ``loss_scale`` (one setting)."""
    items = cfg["long_range"].get("precisions")
    if not items:
        f = precision_fields(cfg)
        items = [{"dtype": cfg["dtype"], "autocast": f["precision"],
                  "loss_scale": f["loss_scale"]}]
    out = []
    for i, item in enumerate(items):
        ac = item.get("autocast", "none")
        setting = {"dtype": item.get("dtype", "float32"), "autocast": None if ac == "none" else ac,
                   "loss_scale": item.get("loss_scale", 1.0)}
        if setting["loss_scale"] != "dynamic":
            setting["loss_scale"] = float(setting["loss_scale"])
        try:
            Precision(**setting)
        except ValueError as exc:
            raise ConfigError(f"config key long_range.precisions[{i}]: {exc}") from None
        out.append(setting)
    return out


def long_range_runs(cfg: Mapping[str, Any]) -> list[RunSpec]:
    """Every run of the stage, in sweep order (task, model, seq_len, clip, seed, precision)."""
    lr = cfg["long_range"]
    overrides = dict(lr.get("init_by_model") or {})
    runs = []
    grid = itertools.product(as_list(lr["tasks"]), as_list(lr["models"]), as_list(lr["seq_len"]),
                             clip_values(lr["clip"]), as_list(lr["seeds"]),
                             precision_settings(cfg))
    for task, model, seq_len, clip, seed, prec in grid:
        spec = RunSpec(
            task=task, model=model, init=overrides.get(model, lr["init"]),
            hidden=int(lr["hidden"]), seq_len=int(seq_len), clip=clip, seed=int(seed),
            weight_scale=float(lr["weight_scale"]), input_scale=float(lr["input_scale"]),
            forget_bias=float(lr["forget_bias"]), optimizer=lr["optimizer"], lr=float(lr["lr"]),
            steps=int(lr["steps"]), batch=int(lr["batch"]), eval_every=int(lr["eval_every"]),
            eval_batch=int(lr["eval_batch"]), solved_fraction=float(lr["solved_fraction"]),
            device=cfg["device"], dtype=prec["dtype"], allow_tf32=bool(cfg["allow_tf32"]),
            deterministic=bool(cfg["deterministic"]), autocast=prec["autocast"],
            loss_scale=prec["loss_scale"], fused=lr.get("fused", "auto"),
        )
        try:
            spec.check()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        runs.append(spec)
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError("long_range: two runs share an id; clip values too close to tell apart, "
                          "or two precisions entries alike (float32 and float64 without autocast "
                          "or loss scale share the id)")
    return runs


def long_range_blocks(cfg: Mapping[str, Any]) -> dict[str, list[RunSpec]]:
    """The runs grouped into jobs (one per task, model and seq_len); empty when disabled."""
    if not cfg["long_range"].get("enabled", True):
        return {}
    blocks: dict[str, list[RunSpec]] = {}
    for run in long_range_runs(cfg):
        blocks.setdefault(run.block_id, []).append(run)
    return blocks


def block_spec_json(blocks: Mapping[str, list[RunSpec]], block: str) -> str:
    """The runs of one job as the JSON ``bpttbench long-range run`` reads."""
    from .spec import runs_to_json

    if block not in blocks:
        raise ValueError(f"long-range job {block} is not in the current config; jobs: "
                         f"{', '.join(blocks) or 'none (long_range.enabled is false)'}")
    return runs_to_json(blocks[block])


def block_record_files(blocks: Mapping[str, list[RunSpec]], hw: str) -> list[str]:
    """The run-record file of every job of a result set (inputs of the collect rule)."""
    return [f"results/{hw}/cells/long_range/{b}.json" for b in sorted(blocks)]
