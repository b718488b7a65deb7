"""The ``claims:`` config section, with every nested default filled in, and the run context.

The schema (``schemas/config.schema.yaml``, section ``claims``) is the single source of
keys, ranges and defaults; :func:`bpttbench.config.validate` checks a config against it
and fills the first level, this module fills the per-claim sub-sections.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import schema
from ..config import validate as validate_config
from .checks import fill_defaults

if TYPE_CHECKING:  # the section is read by the planning layer, which never imports torch
    import torch


#: the dtypes a claim experiment runs in (the schema's claims.dtype)
CLAIM_DTYPES: tuple[str, ...] = ("float32", "float64")


def fill_claims(claims: Mapping[str, Any] | None) -> dict[str, Any]:
    """A claims section (not validated here) with every nested default filled in."""
    return fill_defaults(schema()["properties"]["claims"], claims, schema())


def claims_section(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The claims section of a config (validated, every default filled in)."""
    cfg = validate_config(cfg)
    return fill_claims(cfg.get("claims"))


@dataclass(frozen=True)
class Context:
    """What every claim experiment needs besides its own sub-section."""

    device: str
    dtype: torch.dtype
    jacobian_backend: str
    z: float
    seeds: tuple[int, ...]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Context:
        from ..hardware import resolve_device
        from ..precision import torch_dtype

        cfg = validate_config(cfg)
        sec = claims_section(cfg)
        return cls(
            device=resolve_device(cfg["device"]),
            dtype=torch_dtype(sec["dtype"], CLAIM_DTYPES),
            jacobian_backend=cfg["jacobian_backend"],
            z=float(sec["z"]),
            seeds=tuple(int(s) for s in sec["seeds"]),
        )
