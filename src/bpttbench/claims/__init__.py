"""The claims stage: every claim of the seed texts and of the theory, as a measurement.

Each claim is one small module with ``run(section, context) -> ClaimResult`` (rows of
claims.csv with measured, predicted, tolerance and verdict, plus the curves of its
figure), registered below by id. One pipeline job per claim writes a JSON record;
``claims collect`` turns the records into ``tables/claims.csv`` and
``tables/claim_curves.parquet``; ``claims figures`` draws ``figures/claim_<id>.png`` and
``figures/claims_overview.png`` from those tables alone (no recomputation).

This module holds the registry (the command line: ``claims.cli``); it imports no torch, so
that the workflow plans the claim jobs without it.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..contract import FILE


@dataclass(frozen=True)
class ClaimSpec:
    claim: str  # id, also the figure name claim_<id>.png
    module: str  # bpttbench.claims.<module>
    section: str  # sub-section of the claims: config
    title: str


CLAIMS: dict[str, ClaimSpec] = {
    c.claim: c
    for c in (
        ClaimSpec("1_depth", "depth", "depth",
                  "The unrolled network is as deep as the sequence"),
        ClaimSpec("2_tied_untied", "tied_untied", "tied_untied",
                  "The same factor repeated is less stable than independent factors"),
        ClaimSpec("3_orthogonal", "orthogonal", "orthogonal",
                  "Orthogonal linear RNN: every singular value of the k-step product is s^k"),
        ClaimSpec("4_pascanu", "pascanu", "pascanu",
                  "Pascanu et al. (2013): ||dh_T/dh_t|| <= lambda_1^(T-t), lambda_1 > 1 is "
                  "necessary for explosion"),
        ClaimSpec("5_mean_field", "mean_field", "mean_field",
                  "Mean-field theory: rate 0.5 ln chi_1 and the critical sigma_w"),
        ClaimSpec("6_float32", "float32", "float32",
                  "Exploding gradients overflow float32; log scale and clipping"),
        ClaimSpec("7_gating", "gating", "gating", "Gating keeps gradients alive: LSTM and GRU"),
        ClaimSpec("8_precision", "precision", "precision",
                  "float16/bfloat16: gradients underflow to 0 and overflow to inf at predicted "
                  "lags; loss scaling shifts them"),
    )
}
CLAIM_IDS: tuple[str, ...] = tuple(CLAIMS)
OVERVIEW = "claims_overview"
TABLE = FILE["claims"]
CURVES = FILE["claim_curves"]


def figure_names(claims: Sequence[str] | None = None) -> list[str]:
    """Figure names (figures/<name>.png) of the stage: the overview first."""
    return [OVERVIEW] + [f"claim_{c}" for c in (claims or CLAIM_IDS)]


def check_claim(claim: str) -> ClaimSpec:
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}; allowed: {', '.join(CLAIM_IDS)}")
    return CLAIMS[claim]


def job_config(cfg: Mapping[str, Any], claim: str) -> str:
    """The part of a config one claim depends on, as JSON (a pipeline job's parameter).

    Only the top-level keys the claims use and the claim's own sub-section go in, so that
    editing another stage or another claim does not rerun this one.
    """
    from .settings import claims_section

    spec = check_claim(claim)
    sec = claims_section(cfg)
    if claim not in sec["run"]:
        raise ValueError(f"claim {claim} is not in claims.run of the config; claims: "
                         f"{', '.join(sec['run'])}")
    out = {k: cfg[k] for k in ("hardware_tag", "device", "jacobian_backend") if k in cfg}
    out["claims"] = {k: sec[k] for k in ("dtype", "z", "seeds", spec.section)}
    return json.dumps(out, sort_keys=True)


def run_claim(claim: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Run one claim's experiment for a config; returns its JSON-ready record.

    A bad config value raises ValueError. Any other failure of the experiment is
    recorded as a failing row (claim_id ``<n>.error``), so the other claims go on.
    """
    import importlib

    import torch

    from ..records import Clock, finish_record
    from .common import row
    from .settings import Context, claims_section

    spec = check_claim(claim)
    sec = claims_section(cfg)
    ctx = Context.from_config(cfg)
    clock = Clock()
    record: dict[str, Any] = {
        "claim": claim, "title": spec.title, "settings": sec[spec.section],
        "seeds": list(ctx.seeds), "z": ctx.z, "device": ctx.device,
        "dtype": str(ctx.dtype).removeprefix("torch."), "started_at": clock.started_at,
    }
    module = importlib.import_module(f"{__name__}.{spec.module}")
    try:
        result = module.run(sec[spec.section], ctx)
        rows, curves = result.rows, result.curves.records
    except ValueError:
        raise
    except Exception as exc:  # a broken experiment is a failing claim, not a lost stage
        traceback.print_exc()
        rows = [row(f"{claim.split('_')[0]}.error", f"the experiment of claim {claim} failed",
                    float("nan"), float("nan"), float("nan"),
                    note=f"{type(exc).__name__}: {exc} (see the job log)")]
        curves = []
        record["error"] = f"{type(exc).__name__}: {exc}"
    record.update(rows=rows, curves=curves, torch=torch.__version__)
    return finish_record(record, None, clock, cpu=True)


def collect(records: Sequence[Mapping[str, Any]]):
    """(claims table, curves table) as DataFrames from claim records, in registry order."""
    import pandas as pd

    from .common import ROW_COLUMNS

    order = {c: i for i, c in enumerate(CLAIM_IDS)}
    records = sorted(records, key=lambda r: order.get(r["claim"], len(order)))
    rows, curves = [], []
    for rec in records:
        rows += [{**r, "claim": rec["claim"]} for r in rec["rows"]]
        curves += [{"claim": rec["claim"], **c} for c in rec["curves"]]
    table = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    table["n"] = table["n"].astype("Int64")
    table["passed"] = table["passed"].astype(bool)
    curve_cols = ["claim", "panel", "group", "kind", "x", "y", "y_err"]
    return table, pd.DataFrame(curves, columns=curve_cols)
