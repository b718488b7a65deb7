"""The ``bpttbench`` command line: ``bpttbench <stage> <verb> [options]``.

Every pipeline step is one verb of one stage; Snakemake rules only wire files to them, and
each can be run by hand. Each stage module exposes ``register(subparsers)``, which adds its
stage parser and the verbs under it, with the shared options of ``cli_options``. Stage
modules are imported only when their stage is named, so ``bpttbench --help`` (and any
torch-free verb) imports no torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: stage -> (module whose ``register`` adds it, one line of help)
STAGES: dict[str, tuple[str, str]] = {
    "gradient-flow": ("bpttbench.gradient_flow.cli",
                      "the gradient-flow sweep: list, cell, block, collect, figures"),
    "claims": ("bpttbench.claims.cli",
               "the claims measured against their predictions: list, run, collect, figures, all"),
    "long-range": ("bpttbench.long_range.cli",
                   "the long-range training benchmark: list, run, train, collect, figures"),
    "bench": ("bpttbench.bench.cli",
              "performance of the Jacobian engine: list, peak, op, collect, figures, run"),
    "compare": ("bpttbench.compare", "compare two result sets"),
    "validation": ("bpttbench.validation", "every CUDA kernel against the float64 reference"),
    "plan": ("bpttbench.planning.cli", "the config, the machine's tag, the jobs: validate, tag, "
             "jobs, estimate"),
    "gpus": ("bpttbench.gpus", "the GPUs of this machine for local runs: list, run"),
    "report": ("bpttbench.cli", "a result set's manifest and HTML report: manifest, build"),
}


def _cmd_manifest(args: argparse.Namespace) -> int:
    from .io import write_json
    from .manifest import write_manifest_from

    write_json(args.out, write_manifest_from(args.config_json, args.hw_tag, args.summary,
                                             repo=args.repo))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    out = build_report(args.result_dir, args.out or f"{args.result_dir}/report.html",
                       captions_dir=args.captions)
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """The ``report`` stage: a result set's manifest.json and report.html."""
    from .cli_options import add_out, add_stage

    sub = add_stage(subparsers, "report", STAGES["report"][1])

    p = sub.add_parser("manifest", help="write manifest.json of a result set")
    p.add_argument("--config-json", required=True, help="the config the set records")
    p.add_argument("--hw-tag", required=True, help="the result set's tag")
    add_out(p, "manifest.json")
    p.add_argument("--repo", default=".")
    p.add_argument("--summary", required=True, help="the result set's tables/summary.csv")
    p.set_defaults(func=_cmd_manifest)

    p = sub.add_parser("build", help="write the self-contained HTML report of a result set")
    p.add_argument("result_dir")
    add_out(p, "report.html (default: <result_dir>/report.html)", required=False)
    p.add_argument("--captions", default=None,
                   help="folder of the <figure>.rst captions (default: the repository's "
                   "workflow/report, wherever the command runs from)")
    p.set_defaults(func=_cmd_report)


def _command(argv: Sequence[str]) -> str | None:
    """The stage (or old command) named by ``argv``, if any: its first non-option word."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in STAGES else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the verbs of the stage ``argv`` names (every stage if ``argv`` is
    None; none, only their one-line help, for ``bpttbench --help``)."""
    parser = argparse.ArgumentParser(prog="bpttbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    named = _command(argv) if argv is not None else None
    wanted = list(STAGES) if argv is None else (
        [named] if named else [])
    for stage, (module, help_text) in STAGES.items():
        if stage in wanted:
            importlib.import_module(module).register(sub)
        else:  # listed for --help; its verbs are added when it is named
            sub.add_parser(stage, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plan"] and len(argv) > 1 and argv[1].startswith("--") \
            and argv[1] not in ("-h", "--help"):
        argv.insert(1, "estimate")  # `bpttbench plan --configfile F ...`: the documented form
    args = build_parser(argv).parse_args(argv)
    if not hasattr(args, "func"):  # a stage named without a verb
        build_parser(argv).parse_args([args.command, "--help"])
        return 2
    from .cli_options import check_out

    try:
        # A result that cannot be written is refused before the work, not after it.
        check_out(getattr(args, "out", None), getattr(args, "out_kind", "any"))
        return args.func(args)
    except (ValueError, OSError) as exc:
        # Bad input, or a file that cannot be read or written: one clear line, no traceback.
        where = " ".join(w for w in (args.command, getattr(args, "verb", None)) if w)
        print(f"bpttbench {where}: error: {_describe(exc)}", file=sys.stderr)
        return 2


def _describe(exc: BaseException) -> str:
    """An OSError's reason and file(s) (its str is "[Errno 17] File exists: 'x'")."""
    if isinstance(exc, OSError) and exc.strerror:
        files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{files}: {exc.strerror}" if files else exc.strerror
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
