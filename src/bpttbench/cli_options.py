"""The options every stage's commands share, declared once: where the config comes from,
where the output goes, which result set a job computes into, and torch's thread count.

``add_*`` put an option on a verb's parser; ``load_config``, ``check_hw_tag`` and
``set_threads`` read them back. Nothing here imports torch at module level.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any


def add_stage(subparsers: argparse._SubParsersAction, name: str, help: str,
              description: str | None = None,
              list_jobs: tuple[str, Callable[[argparse.Namespace], int]] | None = None
              ) -> argparse._SubParsersAction:
    """Add stage ``name`` to the top-level parser; returns the subparsers its verbs go in.

    ``list_jobs`` = (help, command): the stage's ``list`` verb (its jobs for a config), the
    first verb of the protocol every job stage follows (list, run a job, collect, figures).
    """
    stage = subparsers.add_parser(name, help=help, description=description or help)
    verbs = stage.add_subparsers(dest="verb", required=True, metavar="<verb>")
    if list_jobs is not None:
        p = verbs.add_parser("list", help=list_jobs[0])
        add_config(p)
        p.set_defaults(func=list_jobs[1])
    return verbs


def add_config(p: argparse.ArgumentParser, json: bool = True, required: bool = False) -> None:
    """``--config FILE`` (by hand; default config/config.yaml), or ``--config-json TEXT`` (the
    pipeline passes the part of the config a job reads)."""
    if not json:
        p.add_argument("--config", "--configfile", dest="config", required=required,
                       help="config YAML file (default: config/config.yaml)")
        return
    g = p.add_mutually_exclusive_group(required=required)
    # --configfile: Snakemake's spelling, which users carry over (and issue 13's plan command)
    g.add_argument("--config", "--configfile", dest="config",
                   help="config YAML file (default: config/config.yaml)")
    g.add_argument("--config-json", help="the config as JSON (the pipeline passes it)")


def add_out(p: argparse.ArgumentParser, what: str, required: bool = True) -> None:
    p.add_argument("--out", required=required, help=what)


def add_figures(p: argparse.ArgumentParser, tables: str) -> None:
    """A figures verb: ``--tables`` (what it reads), ``--out`` (the figures folder), names."""
    p.add_argument("--tables", required=True, help=tables)
    add_out(p, "the figures folder")
    p.add_argument("names", nargs="*", help="figure names (default: all)")


def add_hw_tag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hw-tag", help="result set the job computes into; must match this machine")
    p.add_argument("--hw-tag-is-explicit", action="store_true",
                   help="the tag was set in the config, so it need not match the machine")


def add_threads(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument("--threads", type=int, default=default, help="torch CPU threads")


def load_config(args: argparse.Namespace, overrides: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
    """The validated config of a command (``--config-json`` or ``--config``)."""
    from .config import load

    return load(getattr(args, "config", None), json_text=getattr(args, "config_json", None),
                overrides=overrides)


def check_hw_tag(args: argparse.Namespace, device: str) -> None:
    """Refuse to compute into another machine's result set (``--hw-tag`` given, not explicit).

    ``device`` is the config's device (auto, cpu or cuda); torch resolves it here.
    """
    if getattr(args, "hw_tag", None):
        from .hardware import check_result_set_tag, resolve_device

        check_result_set_tag(args.hw_tag, resolve_device(device), args.hw_tag_is_explicit)


def set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))
