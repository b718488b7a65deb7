"""The ``bpttbench`` command line: every pipeline step is one subcommand.

Snakemake rules only wire files to these subcommands; each can also be run by hand.
Stage modules (claims, long_range, bench, compare) add their own subcommands through a
``register(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path

STAGE_MODULES = ("claims", "long_range", "bench", "compare", "validation", "plan", "gpus")


def _cmd_validate(args: argparse.Namespace) -> int:
    from .config import cells_by_id, load

    cfg = load(args.config)
    print(f"{args.config}: valid; {len(cells_by_id(cfg))} gradient-flow cells")
    return 0


def _cmd_tag(args: argparse.Namespace) -> int:
    from .config import load
    from .hardware import hardware_tag

    print(hardware_tag(load(args.config) if args.config else {}))
    return 0


def _cmd_cell(args: argparse.Namespace) -> int:
    from .cells import run_cell
    from .config import cells_by_id, load
    from .io import write_json

    cells = cells_by_id(load(args.config))
    if args.cell_id not in cells:
        raise ValueError(f"cell {args.cell_id!r} is not in {args.config}; its cells are: "
                         f"{', '.join(list(cells)[:4])}, ... ({len(cells)} in all)")
    spec = cells[args.cell_id]
    if args.peak_memory:
        from .peak_memory import describe, peak_memory, reset_peak_memory

        reset_peak_memory("cuda")  # a no-op without a GPU
    record = run_cell(spec)
    if args.peak_memory:  # on the device the cell resolved to (run_cell records it)
        record["peak_memory"] = peak_memory(record.get("device", "cpu"))
    write_json(args.out, record)
    print(json.dumps(record["summary"], indent=1, default=str))
    print(f"cell {spec.cell_id}: status {record['summary']['status']}, "
          f"wall {record['wall_s']:.2f} s on {record.get('device', spec.device)}")
    if args.peak_memory:
        print(f"peak memory: {describe(record['peak_memory'])}")
    return 0


def _cmd_block(args: argparse.Namespace) -> int:
    from .cells import run_block
    from .config import block_from_json
    from .hardware import check_result_set_tag
    from .io import checkpoint_dir, write_json

    cells = block_from_json(args.spec)
    if not cells:
        raise ValueError("--spec holds no cells")
    if args.hw_tag:
        check_result_set_tag(args.hw_tag, cells[0].device, args.hw_tag_is_explicit)
    out = Path(args.out)
    checkpoints = checkpoint_dir(out)  # kept until collect: see io.remove_checkpoints
    print(f"block {cells[0].block_id}: {len(cells)} cells", flush=True)
    records = run_block(cells, checkpoints, lags=args.lags)
    if out.suffix == ".json":  # the records as they are (by hand; tests)
        write_json(out, records)
    else:  # a folder of Parquet tables (the pipeline; bpttbench.blocks)
        from .blocks import write_block

        write_block(records, out)
    statuses = [r["summary"]["status"] for r in records]
    print(f"block done: {', '.join(f'{s}={statuses.count(s)}' for s in sorted(set(statuses)))}")
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from .contract import FILE
    from .io import remove_checkpoints
    from .tables import collect_cells, write_columns_doc, write_table

    out = Path(args.out_dir)
    if args.cells and all(Path(c).is_dir() for c in args.cells):  # block folders: streamed
        from .collect import collect_blocks

        summary = collect_blocks(args.cells, out)
        write_columns_doc(out / "COLUMNS.md")
        remove_checkpoints(args.cells)
        counts = summary["status"].value_counts().to_dict() if len(summary) else {}
        print(f"collected {len(summary)} cells of {len(args.cells)} blocks into {out}: "
              f"status {counts}")
        return 0
    tables = collect_cells(args.cells)
    for name in ("gradient_flow", "summary", "lyapunov", "chain_spectrum"):
        write_table(tables[name], out / FILE[name], name)
    write_columns_doc(out / "COLUMNS.md")
    remove_checkpoints(args.cells)
    counts = tables["summary"]["status"].value_counts().to_dict()
    print(f"collected {len(args.cells)} cells into {out}: status {counts}")
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    from . import contract
    from .figures import GRADIENT_FLOW_FIGURES, save
    from .tables import read_table

    tables_dir, out = Path(args.tables), Path(args.out_dir)
    files = contract.FILE
    cache = {}
    for name in args.names or list(GRADIENT_FLOW_FIGURES):
        table, plot = GRADIENT_FLOW_FIGURES[name]
        if table not in cache:
            cache[table] = read_table(tables_dir / files[table])
        print(f"figure {name}", flush=True)
        save(plot(cache[table]), out / f"{name}.png")
    return 0


def _cmd_manifest(args: argparse.Namespace) -> int:
    from .io import write_json
    from .manifest import write_manifest_from

    write_json(args.out, write_manifest_from(args.config_json, args.hw_tag, args.summary,
                                             repo=args.repo))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    out = build_report(args.result_dir, args.out or Path(args.result_dir) / "report.html",
                       captions_dir=args.captions)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bpttbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate-config", help="check a config file against the schema")
    p.add_argument("config")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("hardware-tag", help="print the result-set tag of this machine")
    p.add_argument("--config")
    p.set_defaults(func=_cmd_tag)

    p = sub.add_parser("cell", help="measure one gradient-flow cell of a config, print its summary")
    p.add_argument("cell_id")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--out", required=True)
    p.add_argument("--peak-memory", action="store_true",
                   help="record peak memory in the record's peak_memory (GPU: torch peak and "
                        "CuPy pool; always: the process's max RSS)")
    p.set_defaults(func=_cmd_cell)

    p = sub.add_parser("block", help="measure a block of cells (one pipeline job) into a JSON file")
    p.add_argument("--spec", required=True, help="the cells as a JSON list (the pipeline passes it)")
    p.add_argument("--hw-tag", help="result set the cells are for; must match this machine")
    p.add_argument("--hw-tag-is-explicit", action="store_true",
                   help="the tag was set in the config, so it need not match the machine")
    p.add_argument("--out", required=True,
                   help="a folder for the block's Parquet tables, or a .json file of its records")
    p.add_argument("--lags", choices=("log", "full"), default="full",
                   help="lags kept in the per-lag tables (the pipeline passes gradient_flow.lags)")
    p.set_defaults(func=_cmd_block)

    p = sub.add_parser("collect", help="gather cell records into the contract tables")
    p.add_argument("--out-dir", required=True)
    p.add_argument("cells", nargs="+")
    p.set_defaults(func=_cmd_collect)

    p = sub.add_parser("figures", help="draw the gradient-flow figures from the tables")
    p.add_argument("--tables", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("names", nargs="*")
    p.set_defaults(func=_cmd_figures)

    p = sub.add_parser("manifest", help="write manifest.json of a result set")
    p.add_argument("--config-json", required=True)
    p.add_argument("--hw-tag", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--repo", default=".")
    p.add_argument("--summary", required=True, help="the result set's tables/summary.csv")
    p.set_defaults(func=_cmd_manifest)

    p = sub.add_parser("report", help="write the self-contained HTML report of a result set")
    p.add_argument("result_dir")
    p.add_argument("--out")
    p.add_argument("--captions", default="workflow/report")
    p.set_defaults(func=_cmd_report)

    for name in STAGE_MODULES:
        if importlib.util.find_spec(f"bpttbench.{name}") is not None:
            register = getattr(importlib.import_module(f"bpttbench.{name}"), "register", None)
            if register is not None:  # a stage module adds its subcommands itself
                register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input: one clear line, no traceback.
        print(f"bpttbench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
