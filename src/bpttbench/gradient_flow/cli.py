"""``bpttbench gradient-flow cell|block|collect|figures``: the stage's jobs, also by hand."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli_options import add_config, add_figures, add_hw_tag, add_out, add_stage, load_config
from ..contract import FILE
from ..planning.shapes import MODELS

TABLE_FILES = {t: FILE[t] for t in ("gradient_flow", "summary", "lyapunov", "chain_spectrum")}


def _cmd_list(args: argparse.Namespace) -> int:
    from ..config import blocks_by_id

    for block, cells in blocks_by_id(load_config(args)).items():
        print(block)
        for c in cells:
            print(f"  {c.cell_id}")
    return 0


def _cmd_cell(args: argparse.Namespace) -> int:
    from ..config import cells_by_id
    from ..io import write_json
    from .cells import run_cell

    cells = cells_by_id(load_config(args))
    if args.cell_id not in cells:
        raise ValueError(f"cell {args.cell_id!r} is not in {args.config or 'the config'}; its "
                         f"cells are: {', '.join(list(cells)[:4])}, ... ({len(cells)} in all)")
    spec = cells[args.cell_id]
    if args.peak_memory:
        from ..peak_memory import describe, peak_memory, reset_peak_memory

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
    from ..blockrun import run_block_job
    from ..io import write_json
    from ..jobspec import block_from_json
    from .cells import run_block

    def write(records: list, out: Path) -> None:
        if out.suffix == ".json":  # the records as they are (by hand; tests)
            write_json(out, records)
        else:  # a folder of Parquet tables (the pipeline)
            from .blocks import write_block

            write_block(records, out)

    run_block_job(args, block_from_json(args.spec), "cells",
                  lambda cells, checkpoints: run_block(cells, checkpoints, lags=args.lags), write)
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from ..io import remove_checkpoints
    from ..tables import collect_cells, write_columns_doc, write_table

    out = Path(args.out)
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
    for name, file in TABLE_FILES.items():
        kwargs = {"csv_twin": False} if name == "chain_spectrum" else {}
        write_table(tables[name], out / file, name, **kwargs)
    write_columns_doc(out / "COLUMNS.md")
    remove_checkpoints(args.cells)
    counts = tables["summary"]["status"].value_counts().to_dict()
    print(f"collected {len(args.cells)} cells into {out}: status {counts}")
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    from ..figures import draw
    from .figures import GRADIENT_FLOW_FIGURES

    tables = Path(args.tables)
    draw(GRADIENT_FLOW_FIGURES, args.names, {t: tables / f for t, f in TABLE_FILES.items()},
         Path(args.out))
    return 0


def _cmd_launches(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..hardware import resolve_device
    from ..tables import write_table
    from .launches import measure_models

    if args.hidden < 1 or args.batch < 1:
        raise SystemExit(f"--hidden {args.hidden} and --batch {args.batch} must be >= 1")
    device = resolve_device(args.device)
    rows = measure_models(args.models, device, args.hidden, args.batch)
    print(f"wrote {write_table(pd.DataFrame(rows), args.out, 'launch_counts')}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = add_stage(subparsers, "gradient-flow", "the gradient-flow sweep: cells, blocks, "
                    "tables, figures", __doc__.splitlines()[0],
                    list_jobs=("the jobs (blocks) of a config and their cells", _cmd_list))

    p = sub.add_parser("cell", help="measure one cell of a config, print its summary")
    p.add_argument("cell_id")
    add_config(p)
    add_out(p, "the cell's record (JSON)")
    p.add_argument("--peak-memory", action="store_true",
                   help="record peak memory in the record's peak_memory (GPU: torch peak and "
                        "CuPy pool; always: the process's max RSS)")
    p.set_defaults(func=_cmd_cell)

    p = sub.add_parser("block", help="measure a block of cells (one pipeline job)")
    p.add_argument("--spec", required=True, help="the cells as a JSON list (the pipeline passes it)")
    add_hw_tag(p)
    add_out(p, "a folder for the block's Parquet tables, or a .json file of its records",
            kind="any")
    p.add_argument("--lags", choices=("log", "full"), default="full",
                   help="lags kept in the per-lag tables (the pipeline passes gradient_flow.lags)")
    p.set_defaults(func=_cmd_block)

    p = sub.add_parser("collect", help="gather blocks (or cell records) into the contract tables")
    add_out(p, "the tables folder", kind="folder")
    p.add_argument("cells", nargs="+", help="block folders, or cell/block record JSON files")
    p.set_defaults(func=_cmd_collect)

    p = sub.add_parser("launches", help="measure kernel launches and host reads per time step "
                       "of a cell, beside the cost model's (scripts/gpu-check.sh runs it)")
    add_out(p, "the launch_counts CSV")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda when present")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.set_defaults(func=_cmd_launches)

    p = sub.add_parser("figures", help="draw the gradient-flow figures from the tables")
    add_figures(p, "the tables folder")
    p.set_defaults(func=_cmd_figures)
