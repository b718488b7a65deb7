"""Checks across keys of the claims: config section that the schema cannot express (a
warm-up against a length, calibration data against test data). One copy, torch-free:
:func:`bpttbench.config.validate` runs them for every claim in ``claims.run`` (so that
``plan validate`` and ``snakemake -n`` refuse such a config before any job), and each
claim's ``run`` calls :func:`check_section` on the sub-section it is given.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _warmup(name: str, sec: Mapping[str, Any], warm: str = "warmup",
            length: str = "seq_len") -> list[str]:
    """A fit over lags warm..T-warm needs at least 4 lags."""
    if 2 * sec[warm] + 4 > sec[length]:
        return [f"claims.{name}.{warm}={sec[warm]} leaves fewer than 4 lags of "
                f"{length}={sec[length]} (warm-up at both ends); lower {warm} or raise {length}"]
    return []


def _depth(sec: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    return _warmup("depth", sec)


def _tied_untied(sec: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    if sec["fit_from"] * 2 > sec["steps"]:
        return [f"claims.tied_untied.fit_from={sec['fit_from']} must be at most half of "
                f"steps={sec['steps']} so that the log-log fit spans a factor of 2 in k"]
    return []


def _pascanu(sec: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    if not sec["warmup"] < sec["seq_len"]:
        return [f"claims.pascanu.warmup={sec['warmup']} must be below seq_len="
                f"{sec['seq_len']}: the exponents are fitted on the lags after it"]
    return []


def _mean_field(sec: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    out = _warmup("mean_field", sec)
    hiddens = sorted(int(h) for h in _as_list(sec["hidden"]))
    cal_h = sorted(int(h) for h in _as_list(sec["calibration_hidden"]))
    cal_seeds = [int(s) for s in _as_list(sec["calibration_seeds"])]
    if set(cal_seeds) & set(seeds) or set(cal_h) & set(hiddens):
        out.append("claims.mean_field.calibration_seeds and calibration_hidden must not "
                   f"overlap claims.seeds {list(seeds)} and hidden {hiddens}: the "
                   "finite-size correction is calibrated on other data than it is tested on")
    if len(cal_h) == 1:
        out.append("claims.mean_field.calibration_hidden needs two or more sizes (a line in "
                   "1/H), or [] for the linear Gaussian correction -1/(2H)")
    return out


def memory_time(forget_bias: float) -> float:
    """The LSTM cell's memory time at forget-gate bias b: 1 / (1 - sigmoid(b)) steps."""
    return 1.0 / (1.0 - 1.0 / (1.0 + math.exp(-forget_bias)))


def _gating(sec: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    out = _warmup("gating", sec)
    fbs = [float(b) for b in _as_list(sec["forget_bias"])]
    f_steps, f_warm = int(sec["forget_bias_seq_len"]), int(sec["forget_bias_warmup"])
    memory = memory_time(max(fbs))
    if f_steps - 2 * f_warm < 4 * memory:
        out.append(
            f"claims.gating.forget_bias_seq_len={f_steps} with forget_bias_warmup={f_warm} "
            f"leaves {f_steps - 2 * f_warm} lags, fewer than 4 memory times (4 x {memory:.0f}) "
            f"of the largest forget bias {max(fbs):g}: the exponent would be a finite-length "
            "artefact; raise forget_bias_seq_len")
    return out


#: claims sub-section -> its cross-key check (problems as sentences, [] when fine)
SECTION_CHECKS: dict[str, Callable[[Mapping[str, Any], Sequence[int]], list[str]]] = {
    "depth": _depth, "tied_untied": _tied_untied, "pascanu": _pascanu,
    "mean_field": _mean_field, "gating": _gating,
}


def section_problems(section: str, sec: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    check = SECTION_CHECKS.get(section)
    return check(sec, seeds) if check else []


def check_section(section: str, sec: Mapping[str, Any], seeds: Sequence[int]) -> None:
    """Raise ValueError naming every cross-key problem of one claim's sub-section."""
    problems = section_problems(section, sec, seeds)
    if problems:
        raise ValueError("; ".join(problems))


def claim_section(claim: str) -> str:
    """The sub-section of a claim id: ``1_depth`` -> ``depth`` (as in bpttbench.claims.CLAIMS;
    spelled out here so that config, which runs these checks, imports no claim module)."""
    return claim.split("_", 1)[1]


def fill_defaults(node: Mapping[str, Any], value: Any, root: Mapping[str, Any]) -> Any:
    """``value`` with the defaults of schema ``node`` (of the schema ``root``) filled in,
    recursively for objects (the claims section nests its sub-sections)."""
    if value is None and "default" in node:  # a default next to a $ref wins over the target's
        value = copy.deepcopy(node["default"])
    while "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    if value is None and "default" in node:
        value = copy.deepcopy(node["default"])
    if isinstance(value, dict) and "properties" in node:
        out = dict(value)
        for key, sub in node["properties"].items():
            filled = fill_defaults(sub, out.get(key), root)
            if filled is not None:
                out[key] = filled
        return out
    return value


def config_problems(claims: Mapping[str, Any] | None, root: Mapping[str, Any]) -> list[str]:
    """The cross-key problems of a (valid) claims section, its defaults filled in from the
    config schema ``root``, for the claims it runs (``claims.run``): the sub-sections of
    other claims are never used."""
    claims = fill_defaults(root["properties"]["claims"], claims, root)
    seeds = [int(s) for s in _as_list(claims["seeds"])]
    out: list[str] = []
    for claim in claims["run"]:
        section = claim_section(claim)
        out += section_problems(section, claims[section], seeds)
    return out
