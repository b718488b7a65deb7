"""The options every stage's commands share, declared once: where the config comes from,
where the output goes, which result set a job computes into, and torch's thread count.

``add_*`` put an option on a verb's parser; ``load_config``, ``check_hw_tag`` and
``set_threads`` read them back. Nothing here imports torch at module level.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: What ``--out`` names: a file, a folder, or either (a block's tables folder or .json file).
OUT_KINDS = ("file", "folder", "any")
#: The most torch threads ``--threads`` takes (the schema's threads limit: more than the
#: machine's cores only adds contention).
MAX_THREADS = 1024


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


def add_out(p: argparse.ArgumentParser, what: str, required: bool = True,
            kind: str = "file") -> None:
    """``--out``: a ``kind`` of OUT_KINDS; ``check_out`` (cli.main, before the command
    runs) refuses a path the result could not be written to, so no work is lost."""
    assert kind in OUT_KINDS, kind
    p.add_argument("--out", required=required, help=what)
    p.set_defaults(out_kind=kind)


class OutPathError(ValueError):
    """``--out`` names a path the command's result cannot be written to."""


def check_out(path: str | Path | None, kind: str = "file") -> None:
    """Raise OutPathError, before any work, when the result cannot be written to ``path``:
    a file path that is a folder, a folder path that is a file, a folder that cannot be
    made (a file in its way) or that is not writable. Nothing is created here: the atomic
    writes make the folders."""
    if path is None:
        return
    p = Path(path)
    if kind == "file" and p.is_dir():
        raise OutPathError(f"--out {p} is a folder; it takes the path of a file to write")
    if kind == "folder" and p.exists() and not p.is_dir():
        raise OutPathError(f"--out {p} is a file; it takes the path of a folder to write into")
    folder = p if kind == "folder" or p.is_dir() else p.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutPathError(f"--out {p}: cannot make the folder {folder}, because {existing} "
                           "is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutPathError(f"--out {p}: the folder {existing} is not writable")


def add_figures(p: argparse.ArgumentParser, tables: str) -> None:
    """A figures verb: ``--tables`` (what it reads), ``--out`` (the figures folder), names."""
    p.add_argument("--tables", required=True, help=tables)
    add_out(p, "the figures folder", kind="folder")
    p.add_argument("names", nargs="*", help="figure names (default: all)")


def add_hw_tag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hw-tag", help="result set the job computes into; must match this machine")
    p.add_argument("--hw-tag-is-explicit", action="store_true",
                   help="the tag was set in the config, so it need not match the machine")


def threads_count(text: str) -> int:
    """argparse type of ``--threads``: an integer 0..MAX_THREADS (0: torch's default)."""
    allowed = f"allowed: an integer from 0 (torch's default) to {MAX_THREADS}"
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; {allowed}") from None
    if not 0 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{n} is out of range; {allowed}")
    return n


def add_threads(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument("--threads", type=threads_count, default=default,
                   help=f"torch CPU threads, 0..{MAX_THREADS} (0: torch's default)")


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
