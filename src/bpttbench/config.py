"""Load and validate a bpttbench config once, into typed objects.

The JSON schema (``schemas/config.schema.yaml``, also ``workflow/schemas/``) is the
single source of truth for keys, types, ranges and defaults. Errors are reported
with the dotted key and the allowed values, before any job runs.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_RESOURCE = "schemas/config.schema.yaml"


class ConfigError(ValueError):
    """A config key has a value the schema does not allow."""


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
        while "$ref" in node:
            node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        return node

    node = root
    for part in path:
        node = deref(node)
        if isinstance(part, int):
            arrays = [deref(n) for n in node.get("oneOf", [node]) if deref(n).get("type") == "array"]
            node = arrays[0]["items"] if arrays else {}
        else:
            node = node.get("properties", {}).get(part, {})
    return deref(node)


def _allowed(node: dict[str, Any]) -> str:
    """A human description of what a schema node accepts."""
    node = dict(node)
    if "enum" in node:
        return "one of " + ", ".join(map(str, node["enum"]))
    if "oneOf" in node:
        root = schema()
        parts = []
        for alt in node["oneOf"]:
            while "$ref" in alt:
                alt = root["$defs"][alt["$ref"].rsplit("/", 1)[-1]]
            if alt.get("type") == "array":
                item = alt["items"]
                while "$ref" in item:
                    item = root["$defs"][item["$ref"].rsplit("/", 1)[-1]]
                parts.append(f"a non-empty list of ({_allowed(item)})")
            else:
                parts.append(_allowed(alt))
        return " or ".join(parts)
    desc = node.get("type", "value")
    if "minimum" in node:
        desc += f" >= {node['minimum']}"
    if "exclusiveMinimum" in node:
        desc += f" > {node['exclusiveMinimum']}"
    if "pattern" in node:
        desc += f" matching {node['pattern']}"
    return desc


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
    key = _dotted(error.absolute_path)
    allowed = _allowed(_subschema(list(error.absolute_path)))
    offending = error.instance
    # For a list that fails, name the first bad item rather than the whole list.
    deepest = max(error.context or [], key=lambda e: len(e.absolute_path), default=None)
    if deepest is not None and len(deepest.absolute_path) > len(error.absolute_path):
        offending = deepest.instance
        key = _dotted(deepest.absolute_path)
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
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(dict(cfg)), key=lambda e: list(map(str, e.path)))
    if errors:
        lines = []
        for err in errors:
            # oneOf errors: report against the whole alternative, not each branch.
            msg = _message(err)
            if msg not in lines:
                lines.append(msg)
        raise ConfigError("invalid bpttbench config:\n  " + "\n  ".join(lines))
    return _with_defaults(cfg)


def load(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    with open(path) as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(raw).__name__}")
    return validate(raw)


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
    warmup_forward: int = 10
    warmup_align: int = 10

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

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        return cls(**json.loads(text))


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
            warmup_forward=int(gf["warmup_forward"]),
            warmup_align=int(gf["warmup_align"]),
        )


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


def block_from_json(text: str) -> list[CellSpec]:
    return [CellSpec(**d) for d in json.loads(text)]
