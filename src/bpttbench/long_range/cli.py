"""``bpttbench long-range-*`` subcommands: the stage's pipeline steps, also usable by hand."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_block(args: argparse.Namespace) -> int:
    import torch

    from ..hardware import check_result_set_tag
    from ..io import checkpoint_dir, write_json
    from .train import run_block, runs_from_json

    runs = runs_from_json(args.spec)
    if not runs:
        raise ValueError("--spec holds no runs")
    if args.hw_tag:
        check_result_set_tag(args.hw_tag, runs[0].device, args.hw_tag_is_explicit)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    checkpoints = checkpoint_dir(out)  # kept until collect: see io.remove_checkpoints
    print(f"block {runs[0].block_id}: {len(runs)} runs, {args.threads} thread(s)", flush=True)
    records = run_block(runs, checkpoints)
    write_json(out, records)
    solved = sum(bool(r["summary"].get("solved")) for r in records)
    statuses = [r["summary"]["status"] for r in records]
    print(f"block done: {solved}/{len(records)} solved; status "
          f"{', '.join(f'{s}={statuses.count(s)}' for s in sorted(set(statuses)))}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import json

    import torch

    from ..config import load
    from ..io import write_json
    from .sweep import long_range_runs
    from .train import train_run

    runs = {r.run_id: r for r in long_range_runs(load(args.config))}
    if args.run_id not in runs:
        raise ValueError(f"run {args.run_id!r} is not in {args.config}; its runs are: "
                         f"{', '.join(list(runs)[:4])}, ... ({len(runs)} in all)")
    torch.set_num_threads(args.threads)
    record = train_run(runs[args.run_id])
    if args.out:
        write_json(args.out, record)
    print(json.dumps(record["summary"], indent=1, default=str))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from ..config import load
    from .sweep import long_range_blocks

    for block, runs in long_range_blocks(load(args.config)).items():
        print(block)
        for r in runs:
            print(f"  {r.run_id}")
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from ..contract import FILE
    from ..io import remove_checkpoints
    from ..tables import read_records, write_table
    from .tables import collect

    out = Path(args.out_dir)
    tables = collect(read_records(args.records))
    for name in ("long_range", "long_range_trace", "long_range_summary", "long_range_precision"):
        write_table(tables[name], out / FILE[name], name)
    remove_checkpoints(args.records)
    runs = tables["long_range"]
    print(f"collected {len(runs)} runs into {out}: {int(runs['solved'].sum())} solved; "
          f"status {runs['status'].value_counts().to_dict()}")
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    from ..contract import FILE
    from ..figures import save
    from ..tables import read_table
    from .figures import LONG_RANGE_FIGURES

    tables_dir, out = Path(args.tables), Path(args.out_dir)
    files = {t: tables_dir / FILE[t] for t in ("long_range", "long_range_trace",
                                               "long_range_summary")}
    files["summary"] = Path(args.horizon_summary or tables_dir / FILE["summary"])
    unknown = [n for n in args.names if n not in LONG_RANGE_FIGURES]
    if unknown:
        raise ValueError(f"unknown figure {', '.join(unknown)}; allowed: "
                         f"{', '.join(LONG_RANGE_FIGURES)}")
    cache = {}
    for name in args.names or list(LONG_RANGE_FIGURES):
        needs, plot = LONG_RANGE_FIGURES[name]
        for t in needs:
            if t not in cache:
                if not files[t].exists():
                    raise FileNotFoundError(f"figure {name} needs {files[t]}, which is missing")
                cache[t] = read_table(files[t])
        print(f"figure {name}", flush=True)
        save(plot(*(cache[t] for t in needs)), out / f"{name}.png")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("long-range-block",
                              help="train a block of long-range runs (one pipeline job) into JSON")
    p.add_argument("--spec", required=True, help="the runs as a JSON list (the pipeline passes it)")
    p.add_argument("--hw-tag", help="result set the runs are for; must match this machine")
    p.add_argument("--hw-tag-is-explicit", action="store_true",
                   help="the tag was set in the config, so it need not match the machine")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_block)

    p = subparsers.add_parser("long-range-run", help="train one long-range run of a config")
    p.add_argument("run_id", help="e.g. adding-lstm-T50-clipnone-seed0 (see long-range-list)")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the run record (JSON) here")
    p.set_defaults(func=_cmd_run)

    p = subparsers.add_parser("long-range-list", help="list the jobs and runs of a config")
    p.add_argument("--config", default="config/config.yaml")
    p.set_defaults(func=_cmd_list)

    p = subparsers.add_parser("long-range-collect",
                              help="gather long-range run records into the stage's tables")
    p.add_argument("--out-dir", required=True)
    p.add_argument("records", nargs="+")
    p.set_defaults(func=_cmd_collect)

    p = subparsers.add_parser("long-range-figures", help="draw the long-range figures")
    p.add_argument("--tables", required=True, help="folder with the long_range tables")
    p.add_argument("--horizon-summary",
                   help="summary.csv of the gradient-flow sweep (default: <tables>/summary.csv)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("names", nargs="*")
    p.set_defaults(func=_cmd_figures)
