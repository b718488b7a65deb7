"""``bpttbench claims list|run|collect|figures|all``: the stage's jobs, also by hand.

``run`` measures one claim into a JSON record (one pipeline job); ``collect`` turns the
records into ``tables/claims.csv`` and ``tables/claim_curves.parquet``; ``figures`` draws
``figures/claim_<id>.png`` and ``figures/claims_overview.png`` from those tables alone;
``all`` does every claim of a config in one process.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cli_options import (
    add_config,
    add_figures,
    add_hw_tag,
    add_out,
    add_stage,
    add_threads,
    load_config,
    set_threads,
)
from . import CLAIM_IDS, CLAIMS, CURVES, OVERVIEW, TABLE, check_claim, collect, figure_names


def _check_tag(args: argparse.Namespace, cfg: Mapping[str, Any]) -> None:
    from ..cli_options import check_hw_tag

    check_hw_tag(args, cfg["device"])


def _cmd_list(args: argparse.Namespace) -> int:
    from .settings import claims_section

    for claim in claims_section(load_config(args))["run"]:
        print(f"{claim}: {CLAIMS[claim].title}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ..io import write_json
    from . import run_claim

    cfg = load_config(args)
    check_claim(args.claim)
    _check_tag(args, cfg)
    set_threads(args.threads)
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
    from .common import headline

    # An unreadable record is moved aside and named in the error: no table from partial input.
    records = read_intermediates(args.records, check=lambda r: isinstance(r, dict) and "rows" in r)
    table, _ = write_tables(records, args.out, args.curves or Path(args.out).with_name(CURVES))
    print(f"{headline(table)} -> {args.out}")
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
    draw_figures(args.tables, args.out, args.names)
    return 0


def _cmd_all(args: argparse.Namespace) -> int:
    """Every claim of the config in one process, then the tables and figures."""
    from . import run_claim
    from .common import headline
    from .settings import claims_section

    cfg = load_config(args)
    _check_tag(args, cfg)
    set_threads(args.threads)
    claims = args.only or claims_section(cfg)["run"]
    if not claims:
        raise ValueError("no claims to run: claims.run is [] in the config and no --only given")
    records = []
    for claim in claims:
        check_claim(claim)
        print(f"claim {claim}: {CLAIMS[claim].title}", flush=True)
        records.append(run_claim(claim, cfg))
    table, _ = write_tables(records, args.out,
                            args.curves or Path(args.out).with_name(CURVES))
    draw_figures(Path(args.out).parent, args.figures)
    print(headline(table))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = add_stage(subparsers, "claims", "the claims of the seed texts and the theory, each "
                    "measured against its prediction", __doc__.splitlines()[0],
                    list_jobs=("the claims (jobs) of a config", _cmd_list))

    p = sub.add_parser("run", help="run one claim's experiment into a JSON record")
    p.add_argument("claim", help=f"one of {', '.join(CLAIM_IDS)}")
    add_config(p)
    add_hw_tag(p)
    add_threads(p)
    add_out(p, "the claim's record (JSON)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("collect", help="claim records -> tables/claims.csv and claim_curves.parquet")
    add_out(p, "claims.csv")
    p.add_argument("--curves", help="claim_curves.parquet (default: next to --out)")
    p.add_argument("records", nargs="+")
    p.set_defaults(func=_cmd_collect)

    p = sub.add_parser("figures", help="draw claim_<id>.png and claims_overview.png from the tables")
    add_figures(p, "folder holding claims.csv, claim_curves.parquet")
    p.set_defaults(func=_cmd_figures)

    p = sub.add_parser("all", help="run every claim of a config, write table and figures")
    add_config(p)
    add_hw_tag(p)
    add_threads(p)
    add_out(p, "claims.csv (claim_curves.parquet beside it)")
    p.add_argument("--curves", help="claim_curves.parquet (default: next to --out)")
    p.add_argument("--figures", required=True, help="the figures folder")
    p.add_argument("--only", nargs="+", metavar="CLAIM", help="run only these claims")
    p.set_defaults(func=_cmd_all)
