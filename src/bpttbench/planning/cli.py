"""``bpttbench plan validate|tag|jobs|estimate``: the config, this machine's result-set tag,
every stage's jobs, and their estimated time and memory. Only ``estimate`` imports torch
(the cost model measures this machine)."""

from __future__ import annotations

import argparse

from ..cli_options import add_config, add_stage, load_config


def _cmd_validate(args: argparse.Namespace) -> int:
    from ..config import cells_by_id, load

    cfg = load(args.config_file)
    print(f"{args.config_file}: valid; {len(cells_by_id(cfg))} gradient-flow cells")
    return 0


def _cmd_tag(args: argparse.Namespace) -> int:
    from .hardware import hardware_tag

    print(hardware_tag(load_config(args) if args.config else {}))
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    from .jobs import Plan

    plan = Plan(load_config(args))
    stages = {"gradient-flow": list(plan.blocks), "claims": plan.claims,
              "long-range": list(plan.long_range), "bench": list(plan.bench_parts)}
    for stage, jobs in stages.items():
        print(f"{stage}: {len(jobs)} job(s)")
        for job in jobs:
            print(f"  {job}")
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    from ..plan import cmd_estimate

    return cmd_estimate(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = add_stage(subparsers, "plan", "check a config, name this machine's result set, list "
                    "and estimate the jobs", __doc__.splitlines()[0])

    p = sub.add_parser("validate", help="check a config file against the schema")
    p.add_argument("config_file", metavar="CONFIG")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("tag", help="print the result-set tag of this machine (no torch)")
    add_config(p, json=False)
    p.set_defaults(func=_cmd_tag)

    p = sub.add_parser("jobs", help="every stage's jobs of a config (no torch)")
    add_config(p, json=False)
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser("estimate", help="estimate each job's time and peak memory for a machine")
    add_config(p, json=False)
    p.add_argument("--machine", default="this",
                   help="this (measured now), or a calibrated target: h100, h200")
    p.add_argument("--gpus", type=int, default=1, help="GPUs (or parallel job lanes on a CPU)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_cmd_estimate)
