"""The cell specs a gradient-flow job is given (``--spec``, JSON): every key checked against
the schema of the config key it comes from before any cell runs, so that a spec written by
hand fails naming the key and the allowed values (bpttbench.long_range.spec checks a
long-range job's run specs with :func:`check_value` too)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import MISSING, fields
from typing import Any

from .config import CellSpec, ConfigError, _allowed, _deref, _subschema, _validator, schema

#: CellSpec field -> the config key whose schema it follows (a sweep key: its scalar form).
CELL_FIELD_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("gradient_flow", "models"), "seed": ("gradient_flow", "seeds"),
    **{k: ("gradient_flow", k) for k in (
        "init", "hidden", "seq_len", "weight_scale", "input_size", "input_scale", "bias_scale",
        "batch", "lyapunov_k", "qr_every", "warmup_forward", "warmup_align", "bptt_method",
        "autograd_reference_every")},
    **{k: (k,) for k in ("device", "dtype", "allow_tf32", "deterministic", "jacobian_backend",
                         "loss_scale")},
    "precision": ("precision", "dtype"),  # the autocast dtype, or "none"
}


def _scalar_node(path: tuple[str, ...]) -> dict[str, Any]:
    """The schema of one value of config key ``path`` (a sweep list's items, not the list)."""
    node = _subschema(list(path))
    alts = [_deref(schema(), a) for a in node.get("oneOf", [])]
    if alts:
        scalars = [a for a in alts if a.get("type") != "array"]
        node = scalars[0] if len(scalars) == 1 else {"oneOf": scalars}
    return node


def check_value(value: Any, path: tuple[str, ...], name: str) -> None:
    """Raise ConfigError naming ``name`` and the allowed values when ``value`` is not one
    value of config key ``path`` (soft upper bounds lifted, as under allow_large)."""
    node = _scalar_node(path)
    if path == ("precision", "dtype"):
        node = {"enum": ["none", *node["enum"]]}
    if not _validator(True).evolve(schema=node).is_valid(value):
        raise ConfigError(f"{name}: {value!r} is not allowed; allowed: {_allowed(node)}")


def check_spec_keys(data: Any, spec_type: type, key_of: Callable[[str], tuple[str, ...]],
                    where: str, what: str, unset: Collection[str] = ()) -> None:
    """Check the JSON object a job is given for one ``spec_type`` (a dataclass): an object,
    no unknown and no missing key, every value one of its config key's (``key_of(field)``;
    None in a field of ``unset`` means "not set" and is not checked). ConfigError names
    ``where``, the key and the allowed values."""
    names = [f.name for f in fields(spec_type)]
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a {what} is a JSON object of the keys "
                          f"{', '.join(names)}; got {type(data).__name__}")
    unknown = sorted(set(data) - set(names))
    missing = [f.name for f in fields(spec_type) if f.name not in data
               and f.default is MISSING and f.default_factory is MISSING]
    if unknown or missing:
        raise ConfigError(
            f"{where}: " + "; ".join(
                ([f"unknown key(s) {', '.join(map(str, unknown))}"] if unknown else [])
                + ([f"missing key(s) {', '.join(missing)}"] if missing else []))
            + f"; a {what} has the keys {', '.join(names)}")
    for key, value in data.items():
        if not (value is None and key in unset):
            check_value(value, key_of(key), f"{where}: key {key}")


def cell_spec_from_dict(data: Any, where: str) -> CellSpec:
    """A CellSpec from the JSON object a job is given, every field checked against the
    schema of its config key: ConfigError names ``where``, the key and the allowed values."""
    check_spec_keys(data, CellSpec, CELL_FIELD_KEYS.__getitem__, where, "cell spec")
    if data.get("precision", "none") != "none" and data["dtype"] != "float32":
        raise ConfigError(f"{where}: key precision: autocast ({data['precision']}) runs a "
                          f"float32 model, but dtype is {data['dtype']!r}; allowed: dtype "
                          "float32 with an autocast precision, or precision none")
    return CellSpec(**data)


def json_list(text: str, where: str, items: str) -> list[Any]:
    """The JSON list a block job is given (ConfigError naming ``where`` and what it takes,
    a list of ``items``, when it is not valid JSON or not a list)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg}; it takes a JSON list of {items}") from None
    if not isinstance(data, list):
        raise ConfigError(f"{where}: a block is a JSON list of {items}, got "
                          f"{type(data).__name__}")
    return data


def block_from_json(text: str, where: str = "--spec") -> list[CellSpec]:
    """The cells of a block job from its JSON list of cell specs, each checked."""
    return [cell_spec_from_dict(d, f"{where} cell {i}")
            for i, d in enumerate(json_list(text, where, "cell specs"))]
