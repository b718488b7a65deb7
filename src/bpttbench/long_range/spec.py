"""A long-range training run by its spec, without torch: what the planning layer expands
from the config (``sweep``), passes to a job as JSON, and sizes (``planning.memory``).

The tasks' shapes live here too (the copy task's alphabet and delay, each task's input size
and number of recurrent steps); ``tasks`` generates their batches with torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from ..planning.precision import Precision
from ..planning.shapes import INITS

TASK_NAMES: tuple[str, ...] = ("adding", "copy")
COPY_N = 10  # symbols to remember
COPY_SYMBOLS = 8  # alphabet size (1..8)
COPY_BLANK, COPY_DELIM = 0, COPY_SYMBOLS + 1
#: inputs per step of each task: (value, marker), or a one-hot of blank, symbols, delimiter
TASK_INPUT_SIZE: dict[str, int] = {"adding": 2, "copy": COPY_DELIM + 1}


def check_task(name: str) -> str:
    if name not in TASK_NAMES:
        raise ValueError(f"unknown long_range task {name!r}; allowed: {', '.join(TASK_NAMES)}")
    return name


def seq_steps(task: str, seq_len: int) -> int:
    """Number of recurrent steps L of an input sequence for task length ``seq_len``."""
    return seq_len + 2 * COPY_N if check_task(task) == "copy" else seq_len


def check_seq_len(name: str, seq_len: int) -> None:
    low = 2 if name == "adding" else 1
    if int(seq_len) < low:
        raise ValueError(f"long_range.seq_len: the {name} task needs seq_len >= {low}, "
                         f"got {seq_len}")


LONG_RANGE_INITS: tuple[str, ...] = (*INITS, "identity")
OPTIMIZERS = ("adam", "sgd")
FLOW_BATCH = 16  # sequences of the evaluation set used for the gradient horizon of a run


def clip_label(clip: float | None) -> str:
    return "none" if clip is None else f"{clip:g}"


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one training run of the long-range benchmark."""

    task: str
    model: str
    init: str
    hidden: int
    seq_len: int
    clip: float | None  # None: no clipping
    seed: int
    weight_scale: float
    input_scale: float
    forget_bias: float
    optimizer: str
    lr: float
    steps: int
    batch: int
    eval_every: int
    eval_batch: int
    solved_fraction: float
    device: str
    dtype: str
    allow_tf32: bool
    deterministic: bool
    autocast: str | None = None  # float16 | bfloat16: forward and loss under torch.autocast
    loss_scale: float | str = 1.0  # S, or "dynamic" (GradScaler's rule)
    fused: bool | str = "auto"  # train the fused torch.nn module (long_range/fused.py)

    @property
    def precision(self) -> Precision:
        return Precision(self.dtype, self.autocast, self.loss_scale)

    @property
    def run_id(self) -> str:
        prec = self.precision
        tag = "" if prec.is_default else "-" + re.sub(r"[^A-Za-z0-9.]+", "_", prec.label)
        return f"{self.block_id}-clip{clip_label(self.clip)}-seed{self.seed}{tag}"

    @property
    def block_id(self) -> str:
        """Runs of one task, model and seq_len form one pipeline job."""
        return f"{self.task}-{self.model}-T{self.seq_len}"

    def check(self) -> None:
        check_task(self.task)
        check_seq_len(self.task, self.seq_len)
        if self.init not in LONG_RANGE_INITS:
            raise ValueError(f"long_range.init: unknown init {self.init!r}; allowed: "
                             f"{', '.join(LONG_RANGE_INITS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"long_range.optimizer: {self.optimizer!r}; allowed: "
                             f"{', '.join(OPTIMIZERS)}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be None or > 0, got {self.clip}")
        check_fused(self.fused)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_fused(setting: Any) -> None:
    if not (isinstance(setting, bool) or setting == "auto"):
        raise ValueError(f"long_range.fused: {setting!r}; allowed: auto, true, false")


def runs_to_json(runs: list[RunSpec]) -> str:
    return json.dumps([asdict(r) for r in runs], sort_keys=True)


#: RunSpec field -> the config key whose schema it follows (default: long_range.<field>).
RUN_FIELD_KEYS: dict[str, tuple[str, ...]] = {
    "task": ("long_range", "tasks"), "model": ("long_range", "models"),
    "seed": ("long_range", "seeds"), "autocast": ("precision", "dtype"),
    **{k: (k,) for k in ("device", "dtype", "allow_tf32", "deterministic", "loss_scale")},
}


def runs_from_json(text: str, where: str = "--spec") -> list[RunSpec]:
    """The runs of a block job from its JSON list of run specs, each checked before any
    run starts (ValueError naming ``where``, the run and the key)."""
    from ..jobspec import check_spec_keys, json_list

    runs = []
    for i, d in enumerate(json_list(text, where, "run specs")):
        check_spec_keys(d, RunSpec, lambda key: RUN_FIELD_KEYS.get(key, ("long_range", key)),
                        f"{where} run {i}", "run spec", unset=("autocast",))
        run = RunSpec(**d)
        try:
            run.check()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where} run {i}: {exc}") from None
        runs.append(run)
    return runs
