"""``bpttbench long-range list|run|train|collect|figures``: the stage's jobs, also by hand."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def _cmd_block(args: argparse.Namespace) -> int:
    from ..blockrun import run_block_job
    from .train import run_block, runs_from_json

    records = run_block_job(args, runs_from_json(args.spec), "runs", run_block)
    solved = sum(bool(r["summary"].get("solved")) for r in records)
    print(f"{solved}/{len(records)} solved")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    from ..io import write_json
    from .sweep import long_range_runs
    from .train import train_run

    runs = {r.run_id: r for r in long_range_runs(load_config(args))}
    if args.run_id not in runs:
        raise ValueError(f"run {args.run_id!r} is not in {args.config or 'the config'}; its runs "
                         f"are: {', '.join(list(runs)[:4])}, ... ({len(runs)} in all)")
    set_threads(args.threads)
    record = train_run(runs[args.run_id])
    if args.out:
        write_json(args.out, record)
    print(json.dumps(record["summary"], indent=1, default=str))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .sweep import long_range_blocks

    for block, runs in long_range_blocks(load_config(args)).items():
        print(block)
        for r in runs:
            print(f"  {r.run_id}")
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from ..contract import FILE
    from ..io import remove_checkpoints
    from ..tables import read_records, write_table
    from .tables import collect

    out = Path(args.out)
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
    from ..figures import draw
    from .figures import LONG_RANGE_FIGURES

    tables = Path(args.tables)
    files = {t: tables / FILE[t] for t in ("long_range", "long_range_trace",
                                           "long_range_summary")}
    files["summary"] = Path(args.horizon_summary or tables / FILE["summary"])
    draw(LONG_RANGE_FIGURES, args.names, files, Path(args.out))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = add_stage(subparsers, "long-range", "the long-range training benchmark: runs, "
                    "tables, figures", __doc__.splitlines()[0],
                    list_jobs=("the jobs (blocks) of a config and their runs", _cmd_list))

    p = sub.add_parser("run", help="train a block of runs (one pipeline job) into JSON")
    p.add_argument("--spec", required=True, help="the runs as a JSON list (the pipeline passes it)")
    add_hw_tag(p)
    add_threads(p, default=1)
    add_out(p, "the block's run records (JSON)")
    p.set_defaults(func=_cmd_block)

    p = sub.add_parser("train", help="train one run of a config, print its summary")
    p.add_argument("run_id", help="e.g. adding-lstm-T50-clipnone-seed0 (see long-range list)")
    add_config(p)
    add_threads(p, default=1)
    add_out(p, "write the run record (JSON) here", required=False)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("collect", help="gather long-range run records into the stage's tables")
    add_out(p, "the tables folder", kind="folder")
    p.add_argument("records", nargs="+")
    p.set_defaults(func=_cmd_collect)

    p = sub.add_parser("figures", help="draw the long-range figures")
    add_figures(p, "folder with the long_range tables")
    p.add_argument("--horizon-summary",
                   help="summary.csv of the gradient-flow sweep (default: <tables>/summary.csv)")
    p.set_defaults(func=_cmd_figures)
