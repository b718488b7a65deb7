"""Load and validate a bpttbench config once, into typed objects.

The JSON schema (``schemas/config.schema.yaml``, also ``workflow/schemas/``) is the
single source of truth for keys, types, ranges, upper bounds and defaults. Errors are
reported with the dotted key and the allowed values, before any job runs.

On top of standard JSON schema: NaN and infinity are refused for every number, an integer
key takes only integers (``32``, not ``32.0`` or ``1e300``), and ``x-limit`` gives a key an
upper (or lower) bound with its reason (memory, time, float range). ``allow_large: true``
at the top level lifts every bound that is not marked ``hard``.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .config_files import WHAT_A_CONFIG_IS, ConfigError
from .config_files import read_config_file as read_config_file  # re-exported
from .planning.precision import DTYPE_BYTES

SCHEMA_RESOURCE = "schemas/config.schema.yaml"


LIMIT_KEYWORD = "x-limit"
ALLOW_LARGE = "allow_large"
#: Rough memory of one gradient-flow cell: BPTT keeps, for every step and sequence, the
#: state, the gate activations and autograd's saved inputs, at most this many H-vectors
#: (LSTM: h, c, four gates and their pre-activations and derivatives).
CELL_VECTORS_PER_STEP = 16
#: Largest estimated cell memory accepted without allow_large (GiB).
CELL_MEMORY_LIMIT_GIB = 64.0


def _is_number(checker: Any, instance: Any) -> bool:
    """A finite int or float (bool is not a number; NaN and infinity are refused)."""
    if isinstance(instance, bool) or not isinstance(instance, int | float):
        return False
    return isinstance(instance, int) or math.isfinite(instance)


def _is_integer(checker: Any, instance: Any) -> bool:
    """An int (not bool, not a float such as 32.0 or 1e300)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else f"{value:g}"


def _limit_text(limit: Mapping[str, Any]) -> str:
    parts = []
    if "min" in limit:
        parts.append(f">= {_num(limit['min'])}")
    if "max" in limit:
        parts.append(f"<= {_num(limit['max'])}")
    how = "a hard limit" if limit.get("hard") else f"{ALLOW_LARGE}: true lifts it"
    return f"{' and '.join(parts)} ({limit['why']}; {how})"


def _limit_validator(allow_large: bool) -> Any:
    def check(validator: Any, limit: Mapping[str, Any], instance: Any, node: Any) -> Iterator[Any]:
        if not _is_number(None, instance) or (allow_large and not limit.get("hard")):
            return
        if node.get("type") == "integer" and not _is_integer(None, instance):
            return  # the type error says it all
        above = "max" in limit and instance > limit["max"]
        below = "min" in limit and instance < limit["min"]
        if above or below:
            yield jsonschema.ValidationError(
                f"{instance!r} is {'above' if above else 'below'} the limit "
                f"{_num(limit['max' if above else 'min'])}: allowed {_limit_text(limit)}")
    return check


@cache
def _validator(allow_large: bool) -> Any:
    """Draft 2020-12 with finite numbers, strict integers and the x-limit keyword."""
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine_many({"number": _is_number, "integer": _is_integer})
    cls = jsonschema.validators.extend(base, validators={LIMIT_KEYWORD: _limit_validator(
        allow_large)}, type_checker=checker)
    return cls(schema())


@cache
def schema() -> dict[str, Any]:
    text = resources.files("bpttbench").joinpath(SCHEMA_RESOURCE).read_text()
    return yaml.safe_load(text)


def _dotted(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _subschema(path: Any) -> dict[str, Any]:
    """The schema node that applies at a config path (following $ref and oneOf lists)."""
    root = schema()

    def deref(node: dict[str, Any]) -> dict[str, Any]:
        return _deref(root, node)

    node = root
    for part in path:
        node = deref(node)
        if isinstance(part, int):
            arrays = [deref(n) for n in node.get("oneOf", [node]) if deref(n).get("type") == "array"]
            node = arrays[0]["items"] if arrays else {}
        else:
            node = node.get("properties", {}).get(part, {})
    return deref(node)


def _deref(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow $ref; keywords next to a $ref (minimum, x-limit, ...) override the target's."""
    while "$ref" in node:
        target = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _allowed(node: dict[str, Any]) -> str:
    """A human description of what a schema node accepts."""
    node = dict(node)
    if "enum" in node:
        return "one of " + ", ".join(map(str, node["enum"]))
    if "oneOf" in node:
        root = schema()
        parts: list[str] = []
        for alt in node["oneOf"]:
            alt = _deref(root, alt)
            if alt.get("type") == "array":
                item = _allowed(_deref(root, alt["items"]))
                same = item in parts or item == " or ".join(parts)
                once = ", each once" if alt.get("uniqueItems") else ""
                parts.append(f"a non-empty list of such values{once}" if same
                             else f"a non-empty list of ({item}){once}")
            else:
                parts.append(_allowed(alt))
        return " or ".join(parts)
    desc = node.get("type", "value")
    if desc == "array":
        return _list_text(node)
    if desc == "object":
        keys = sorted(node.get("properties", {}))
        return "a mapping" + (f" of the keys {', '.join(keys)}" if keys else "")
    if "minimum" in node:
        desc += f" >= {node['minimum']}"
    if "exclusiveMinimum" in node:
        desc += f" > {node['exclusiveMinimum']}"
    if "exclusiveMinimum" in node and "minimum" in node:  # a def's minimum, tightened
        desc = desc.replace(f" >= {node['minimum']}", "")
    if "maximum" in node:
        desc += f" <= {node['maximum']}"
    if "exclusiveMaximum" in node:
        desc += f" < {node['exclusiveMaximum']}"
    if "pattern" in node:
        desc += f" matching {node['pattern']}"
    if LIMIT_KEYWORD in node and desc.startswith(("number", "integer")):
        desc += ", " + _limit_text(node[LIMIT_KEYWORD])
    return desc


def _list_text(node: dict[str, Any]) -> str:
    """What a list key takes: its length, uniqueness and items."""
    desc = "a list"
    if node.get("minItems"):
        desc += f" of at least {node['minItems']} item(s)"
    if node.get("uniqueItems"):
        desc += ", each value once"
    items = node.get("items")
    if isinstance(items, dict) and items:
        desc += f", each {_allowed(_deref(schema(), items))}"
    return desc


def _repeated(values: list[Any]) -> Any:
    """The first value of ``values`` that an earlier one equals (JSON equality: 1 == 1.0,
    but True is not 1)."""
    for i, v in enumerate(values):
        for w in values[:i]:
            if v == w and isinstance(v, bool) == isinstance(w, bool):
                return v
    return None


def _list_message(error: jsonschema.ValidationError) -> str | None:
    """A list that is too short or repeats a value (in any branch of a oneOf): say so."""
    path = list(error.absolute_path)
    for e in _leaves(error):
        if list(e.absolute_path) != path or not isinstance(e.instance, list):
            continue
        if e.validator == "minItems":
            return (f"config key {_dotted(path)}: {e.instance!r} needs at least "
                    f"{e.validator_value} item(s)")
        if e.validator == "uniqueItems":
            return (f"config key {_dotted(path)}: {e.instance!r} must list each value once "
                    f"({_repeated(e.instance)!r} is repeated)")
    return None


def _leaves(error: jsonschema.ValidationError) -> Iterator[jsonschema.ValidationError]:
    """Every error under ``error`` (oneOf/anyOf branches), itself included."""
    yield error
    for sub in error.context or []:
        yield from _leaves(sub)


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        section = _dotted(error.absolute_path)
        prefix = f"{section}." if error.absolute_path else ""
        return (
            f"unknown config key {', '.join(prefix + k for k in extra)}; "
            f"allowed keys under {section}: {', '.join(allowed)}"
        )
    # A value over a bound (in any branch of a oneOf): say which bound and why.
    limit = next((e for e in _leaves(error) if e.validator == LIMIT_KEYWORD), None)
    if limit is not None:
        return f"config key {_dotted(limit.absolute_path)}: {limit.message}"
    key = _dotted(error.absolute_path)
    allowed = _allowed(_subschema(list(error.absolute_path)))
    offending = error.instance
    # For a list that fails, name the first bad item rather than the whole list.
    deepest = max(error.context or [], key=lambda e: len(e.absolute_path), default=None)
    if deepest is not None and len(deepest.absolute_path) > len(error.absolute_path):
        offending = deepest.instance
        key = _dotted(deepest.absolute_path)
    else:
        listed = _list_message(error)
        if listed is not None:
            return f"{listed}; allowed: {allowed}"
    if isinstance(offending, float) and not math.isfinite(offending):
        allowed += " (NaN and infinity are never allowed)"
    return f"config key {key}: {offending!r} is not allowed; allowed: {allowed}"


def _with_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Fill schema defaults into the top level and each section (sections are one level deep)."""
    out = copy.deepcopy(dict(cfg))
    root = schema()
    for key, node in root["properties"].items():
        if key not in out and "default" in node:
            out[key] = copy.deepcopy(node["default"])
        if isinstance(out.get(key), dict):
            for sub, subnode in node.get("properties", {}).items():
                if sub not in out[key] and "default" in subnode:
                    out[key][sub] = copy.deepcopy(subnode["default"])
    return out


def validate(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Return the config with defaults filled in, or raise ConfigError naming every bad key."""
    allow_large = cfg.get(ALLOW_LARGE) is True
    validator = _validator(allow_large)
    errors = sorted(validator.iter_errors(dict(cfg)), key=lambda e: list(map(str, e.path)))
    if errors:
        lines = []
        for err in errors:
            # oneOf errors: report against the whole alternative, not each branch.
            msg = _message(err)
            if msg not in lines:
                lines.append(msg)
        raise ConfigError("invalid bpttbench config:\n  " + "\n  ".join(lines))
    out = _with_defaults(cfg)
    if not allow_large:
        _check_cell_memory(out)
    _check_claims(out)
    precision_fields(out)  # autocast needs a float32 model: fail before any job runs
    return out


def _check_claims(cfg: Mapping[str, Any]) -> None:
    """The claims' checks across keys (warm-up against length, calibration against test
    data; bpttbench.claims.checks), here so that they fail before any job runs."""
    from .claims.checks import config_problems

    problems = config_problems(cfg.get("claims"), schema())
    if problems:
        raise ConfigError("invalid bpttbench config:\n  " + "\n  ".join(
            f"config key {p}" for p in problems))


def cell_memory_gib(cfg: Mapping[str, Any]) -> float:
    """Rough upper estimate of the memory of the largest gradient-flow cell, in GiB:
    T * batch * H * CELL_VECTORS_PER_STEP * bytes of the dtype."""
    gf = cfg["gradient_flow"]
    return (max(as_list(gf["seq_len"])) * gf["batch"] * max(as_list(gf["hidden"]))
            * CELL_VECTORS_PER_STEP * DTYPE_BYTES[cfg["dtype"]] / 2**30)


def _check_cell_memory(cfg: Mapping[str, Any]) -> None:
    gib = cell_memory_gib(cfg)
    if gib > CELL_MEMORY_LIMIT_GIB:
        raise ConfigError(
            "invalid bpttbench config:\n  config keys gradient_flow.seq_len x gradient_flow.batch "
            f"x gradient_flow.hidden: the largest cell needs about {gib:.0f} GiB (memory: BPTT "
            f"keeps ~{CELL_VECTORS_PER_STEP} vectors of H numbers per step and sequence), above "
            f"the limit {CELL_MEMORY_LIMIT_GIB:g} GiB; use smaller sizes, or set {ALLOW_LARGE}: "
            "true to lift the limit")


DEFAULT_CONFIG = "config/config.yaml"


def load(path: str | Path | None = None, *, json_text: str | None = None,
         overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The one config loader: a YAML file (``path``, default ``config/config.yaml``) or the
    JSON text a pipeline job is given, with ``overrides`` (top-level keys, or a section's
    keys under the section name) applied, validated with every default filled in."""
    if json_text is not None:
        where = "--config-json"
        try:
            raw = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json is not valid JSON: line {exc.lineno}, column "
                              f"{exc.colno}: {exc.msg}; it takes the config as one JSON "
                              "object") from None
    else:
        path = Path(path or DEFAULT_CONFIG)
        raw = read_config_file(path)
        raw = {} if raw is None else raw
        where = f"config file {path}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a config must be a mapping of keys, not a "
                          f"{type(raw).__name__}; {WHAT_A_CONFIG_IS}")
    raw = dict(raw)
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping):
            raw[key] = {**(raw.get(key) or {}), **value}
        else:
            raw[key] = value
    try:
        return validate(raw)
    except ConfigError as exc:
        if json_text is None:
            raise
        raise ConfigError(f"--config-json: {exc}") from None  # name the option


def config_hash(cfg: Mapping[str, Any]) -> str:
    """A short stable hash of a (validated) config: sha256 of its canonical JSON."""
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


@dataclass(frozen=True)
class CellSpec:
    """Everything that defines one gradient-flow cell of the sweep."""

    model: str
    init: str
    hidden: int
    seq_len: int
    weight_scale: float
    seed: int
    input_size: int
    input_scale: float
    bias_scale: float
    batch: int
    lyapunov_k: int
    qr_every: int
    device: str
    dtype: str
    allow_tf32: bool
    deterministic: bool
    jacobian_backend: str
    precision: str = "none"  # autocast dtype (float16 | bfloat16) or none
    loss_scale: float | str = 1.0  # S, or "dynamic"
    warmup_forward: int = 10
    warmup_align: int = 10
    bptt_method: str = "auto"  # auto | autograd | jacobian_chain (bpttbench.gradient_flow.bptt_deltas)
    autograd_reference_every: int = 10  # chain cells where autograd also runs: 1 in N

    @property
    def cell_id(self) -> str:
        """A file-name-safe, human-readable id; unique within a sweep."""
        return (
            f"{self.model}-{self.init}-h{self.hidden}-T{self.seq_len}"
            f"-s{self.weight_scale:g}-seed{self.seed}"
        )

    @property
    def block_id(self) -> str:
        """Cells of one model, init and hidden size run in one job (one torch start-up)."""
        return f"{self.model}-{self.init}-h{self.hidden}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)



def gradient_flow_cells(cfg: Mapping[str, Any]) -> Iterator[CellSpec]:
    """Expand the gradient_flow section into the cells of the sweep (lists sweep, scalars fix)."""
    gf = cfg["gradient_flow"]
    grid = itertools.product(
        as_list(gf["models"]),
        as_list(gf["init"]),
        as_list(gf["hidden"]),
        as_list(gf["seq_len"]),
        [float(s) for s in as_list(gf["weight_scale"])],
        as_list(gf["seeds"]),
    )
    for model, init, hidden, seq_len, scale, seed in grid:
        yield CellSpec(
            model=model,
            init=init,
            hidden=int(hidden),
            seq_len=int(seq_len),
            weight_scale=scale,
            seed=int(seed),
            input_size=int(gf["input_size"]),
            input_scale=float(gf["input_scale"]),
            bias_scale=float(gf["bias_scale"]),
            batch=int(gf["batch"]),
            lyapunov_k=int(gf["lyapunov_k"]),
            qr_every=int(gf["qr_every"]),
            device=cfg["device"],
            dtype=cfg["dtype"],
            allow_tf32=bool(cfg["allow_tf32"]),
            deterministic=bool(cfg["deterministic"]),
            jacobian_backend=cfg["jacobian_backend"],
            **precision_fields(cfg),
            warmup_forward=int(gf["warmup_forward"]),
            warmup_align=int(gf["warmup_align"]),
            bptt_method=gf.get("bptt_method", "auto"),
            autograd_reference_every=int(gf.get("autograd_reference_every", 10)),
        )


def precision_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """CellSpec's precision and loss_scale from the top-level keys (defaults: none, 1)."""
    prec = cfg.get("precision") or {}
    mode = prec.get("mode", "none")
    if mode == "autocast" and cfg.get("dtype", "float32") != "float32":
        raise ConfigError(f"config key precision.mode: autocast runs a float32 model under "
                          f"torch.autocast, but dtype is {cfg.get('dtype')!r}; allowed: dtype "
                          f"float32 with autocast, or precision.mode none")
    scale = cfg.get("loss_scale", 1.0)
    return {"precision": prec.get("dtype", "bfloat16") if mode == "autocast" else "none",
            "loss_scale": scale if scale == "dynamic" else float(scale)}


def cells_by_id(cfg: Mapping[str, Any]) -> dict[str, CellSpec]:
    cells: dict[str, CellSpec] = {}
    for cell in gradient_flow_cells(cfg):
        if cell.cell_id in cells:
            raise ConfigError(f"two cells share the id {cell.cell_id}: weight_scale values too close")
        cells[cell.cell_id] = cell
    return cells


def blocks_by_id(cfg: Mapping[str, Any]) -> dict[str, list[CellSpec]]:
    """The sweep grouped into jobs: block id -> its cells, in sweep order."""
    blocks: dict[str, list[CellSpec]] = {}
    for cell in cells_by_id(cfg).values():
        blocks.setdefault(cell.block_id, []).append(cell)
    return blocks


def block_to_json(cells: list[CellSpec]) -> str:
    return json.dumps([asdict(c) for c in cells], sort_keys=True)
