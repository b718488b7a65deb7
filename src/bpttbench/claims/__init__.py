"""The claims stage: every claim of the seed texts and of the theory, as a measurement.

Each claim is one small module with ``run(section, context) -> ClaimResult`` (rows of
claims.csv with measured, predicted, tolerance and verdict, plus the curves of its
figure), registered below by id. One pipeline job per claim writes a JSON record;
``claims-collect`` turns the records into ``tables/claims.csv`` and
``tables/claim_curves.parquet``; ``claims-figures`` draws ``figures/claim_<id>.png`` and
``figures/claims_overview.png`` from those tables alone (no recomputation).

This module only holds the registry and the command line; it imports no torch, so that
``bpttbench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
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

    from .common import row
    from .settings import Context, claims_section

    spec = check_claim(claim)
    sec = claims_section(cfg)
    ctx = Context.from_config(cfg)
    started, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    cpu0 = time.process_time()
    record: dict[str, Any] = {
        "claim": claim, "title": spec.title, "settings": sec[spec.section],
        "seeds": list(ctx.seeds), "z": ctx.z, "device": ctx.device,
        "dtype": str(ctx.dtype).removeprefix("torch."), "started_at": started,
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
    record.update(rows=rows, curves=curves, wall_s=time.perf_counter() - t0,
                  cpu_s=time.process_time() - cpu0,
                  torch=torch.__version__,
                  finished_at=datetime.now(UTC).isoformat(timespec="seconds"))
    return record


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


# ----------------------------------------------------------------------------------------
# command line


def _load_cfg(args: argparse.Namespace) -> dict[str, Any]:
    from ..config import load, validate

    if args.config_json:
        return validate(json.loads(args.config_json))
    return load(args.config)


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


def _check_tag(args: argparse.Namespace, cfg: Mapping[str, Any]) -> None:
    if args.hw_tag:
        from ..hardware import check_result_set_tag, resolve_device

        check_result_set_tag(args.hw_tag, resolve_device(cfg["device"]), args.hw_tag_is_explicit)


def _cmd_claim_run(args: argparse.Namespace) -> int:
    from ..io import write_json

    cfg = _load_cfg(args)
    check_claim(args.claim)
    _check_tag(args, cfg)
    _set_threads(args.threads)
    print(f"claim {args.claim}: {CLAIMS[args.claim].title}", flush=True)
    record = run_claim(args.claim, cfg)
    write_json(args.out, record)
    for r in record["rows"]:
        print(f"  {'PASS' if r['passed'] else 'FAIL'} {r['claim_id']}: measured {r['measured']:.6g}"
              f" predicted {r['predicted']:.6g} tolerance {r['tolerance']:.3g}")
    print(f"claim {args.claim} done in {record['wall_s']:.1f} s ({record['cpu_s']:.1f} s CPU)")
    return 0


def write_tables(records: Sequence[Mapping[str, Any]], out_table: str | Path,
                 out_curves: str | Path) -> tuple[Any, Any]:
    from ..tables import write_table

    table, curves = collect(records)
    write_table(table, out_table, "claims")
    write_table(curves, out_curves, "claim_curves")
    return table, curves


def _cmd_collect(args: argparse.Namespace) -> int:
    from ..io import read_intermediates

    # An unreadable record is moved aside and named in the error: no table from partial input.
    records = read_intermediates(args.records, check=lambda r: isinstance(r, dict) and "rows" in r)
    table, _ = write_tables(records, args.out_table, args.curves)
    from .common import headline

    print(f"{headline(table)} -> {args.out_table}")
    return 0


def draw_figures(tables_dir: str | Path, figures_dir: str | Path,
                 names: Sequence[str] | None = None) -> list[Path]:
    from ..figures import save
    from ..tables import read_table
    from .figures import claim_figure, overview_figure

    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    table = read_table(tables_dir / TABLE)
    curves = read_table(tables_dir / CURVES)
    wanted = list(names) if names else figure_names(
        [c for c in CLAIM_IDS if c in set(table["claim"])])
    out = []
    for name in wanted:
        if name == OVERVIEW:
            fig = overview_figure(table)
        else:
            claim = name.removeprefix("claim_")
            check_claim(claim)
            fig = claim_figure(claim, CLAIMS[claim].title, table[table["claim"] == claim],
                               curves[curves["claim"] == claim])
        out.append(save(fig, figures_dir / f"{name}.png"))
        print(f"figure {name}", flush=True)
    return out


def _cmd_figures(args: argparse.Namespace) -> int:
    draw_figures(args.tables, args.figures_dir, args.names)
    return 0


def _cmd_all(args: argparse.Namespace) -> int:
    """Every claim of the config in one process, then the tables and figures."""
    cfg = _load_cfg(args)
    _check_tag(args, cfg)
    _set_threads(args.threads)
    from .settings import claims_section

    claims = args.only or claims_section(cfg)["run"]
    if not claims:
        raise ValueError("no claims to run: claims.run is [] in the config and no --only given")
    records = []
    for claim in claims:
        check_claim(claim)
        print(f"claim {claim}: {CLAIMS[claim].title}", flush=True)
        records.append(run_claim(claim, cfg))
    table, _ = write_tables(records, args.out_table,
                            args.curves or Path(args.out_table).with_name(CURVES))
    draw_figures(Path(args.out_table).parent, args.figures_dir)
    from .common import headline

    print(headline(table))
    return 0


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config-json", help="the whole (validated) config as JSON (the pipeline)")
    g.add_argument("--config", help="a config YAML file (by hand)")
    p.add_argument("--hw-tag", help="result set the claims are for; must match this machine")
    p.add_argument("--hw-tag-is-explicit", action="store_true",
                   help="the tag was set in the config, so it need not match the machine")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("claim-run", help="run one claim's experiment into a JSON record")
    p.add_argument("claim", help=f"one of {', '.join(CLAIM_IDS)}")
    _config_args(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_claim_run)

    p = subparsers.add_parser("claims-collect",
                              help="claim records -> tables/claims.csv and claim_curves.parquet")
    p.add_argument("--out-table", required=True, help="claims.csv")
    p.add_argument("--curves", required=True, help="claim_curves.parquet")
    p.add_argument("records", nargs="+")
    p.set_defaults(func=_cmd_collect)

    p = subparsers.add_parser("claims-figures",
                              help="draw claim_<id>.png and claims_overview.png from the tables")
    p.add_argument("--tables", required=True, help="folder holding claims.csv, claim_curves.parquet")
    p.add_argument("--figures-dir", required=True)
    p.add_argument("names", nargs="*", help="figure names (default: all)")
    p.set_defaults(func=_cmd_figures)

    p = subparsers.add_parser("claims", help="run every claim of a config, write table and figures")
    _config_args(p)
    p.add_argument("--out-table", required=True, help="claims.csv (claim_curves.parquet beside it)")
    p.add_argument("--curves", help="claim_curves.parquet (default: next to --out-table)")
    p.add_argument("--figures-dir", required=True)
    p.add_argument("--only", nargs="+", metavar="CLAIM", help="run only these claims")
    p.set_defaults(func=_cmd_all)
