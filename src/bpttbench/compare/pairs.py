"""The files of a comparison and the Snakemake pair helpers (stdlib only: the workflow
imports this module to build its DAG)."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import contract

PAIR_SEP = "__vs__"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

#: The files a comparison writes, by role (all in one folder per pair), from the contract.
OUTPUT_FILES: dict[str, str] = {
    "agreement": contract.FILE["compare_agreement"],
    "timing_ratio": contract.FILE["compare_timing_ratio"],
    "caveats": contract.FILE["compare_caveats"],
    "figure": contract.figure("agreement").file,
    **contract.STAGES["compare"].PAGES,
}


class ResultSetError(ValueError):
    """A folder is not a result set, or two result sets cannot be compared."""


def result_set_input_files(folder: str | Path) -> list[str]:
    """The existing files of a result set that a comparison reads (for Snakemake inputs):
    the manifest and every table file (each is checked against the contract)."""
    p = Path(folder)
    files = [p / "manifest.json"]
    tables = p / "tables"
    if tables.is_dir():
        files += [f for f in sorted(tables.iterdir())
                  if f.suffix in (".csv", ".parquet") and not f.name.startswith(".")]
    return [str(f) for f in files]


def pair_name(a: str | Path, b: str | Path) -> str:
    return f"{Path(a).name}{PAIR_SEP}{Path(b).name}"


def compare_pairs(folders: Sequence[str], key: str = "compare") -> dict[str, tuple[str, str]]:
    """All pairs of a list of result-set folders: pair name -> (folder A, folder B).

    Raises ValueError (naming ``key``) for one folder, duplicates, or names that are not
    usable as folder names.
    """
    norm = [os.path.normpath(str(f)) for f in folders]
    if len(norm) == 1:
        raise ValueError(f"config key {key}: needs two or more result-set folders to compare "
                         f"pairwise, got only {norm[0]!r}")
    seen: dict[str, str] = {}
    for f in norm:
        name = Path(f).name
        if not NAME_PATTERN.match(name):
            raise ValueError(f"config key {key}: {f!r} does not end in a result-set name "
                             f"(allowed: letters, digits, '.', '_', '-')")
        if PAIR_SEP in name:
            raise ValueError(f"config key {key}: {f!r}: a result-set name may not contain "
                             f"{PAIR_SEP!r}")
        if name in seen:
            raise ValueError(f"config key {key}: {seen[name]!r} and {f!r} have the same name "
                             f"{name!r}; the comparison folders would collide")
        seen[name] = f
    return {pair_name(a, b): (a, b) for a, b in itertools.combinations(norm, 2)}


def pair_folders(pair: str, pairs: Mapping[str, tuple[str, str]]) -> tuple[str, str]:
    """(A, B) of a pair name: from ``pairs`` (the config's list), else results/<A>, results/<B>."""
    if pair in pairs:
        return pairs[pair]
    if PAIR_SEP not in pair:
        raise ValueError(f"{pair!r} is not a pair name <A>{PAIR_SEP}<B>")
    a, b = pair.split(PAIR_SEP, 1)
    return f"results/{a}", f"results/{b}"


def pair_input_files(pair: str, pairs: Mapping[str, tuple[str, str]], this_set: str,
                     this_set_files: Sequence[str]) -> list[str]:
    """The Snakemake inputs of one comparison.

    This machine's set (``this_set``) gives ``this_set_files``, which the pipeline builds
    when missing. Any other set must exist already; its files are given as absolute paths,
    which no rule's output pattern matches, so Snakemake tracks their times but never plans
    a job that would recompute (or overwrite) another machine's set.
    """
    files: list[str] = []
    for folder in pair_folders(pair, pairs):
        if os.path.normpath(folder) == os.path.normpath(this_set):
            files += list(this_set_files)
            continue
        if not os.path.isfile(os.path.join(folder, "manifest.json")):
            raise ResultSetError(
                f"compare: {folder} is not a result set (no manifest.json). Only this "
                f"machine's set {this_set} can be computed by the pipeline; other sets must "
                "exist already.")
        files += [os.path.abspath(f) for f in result_set_input_files(folder)]
    return files


def default_out(a: str | Path, b: str | Path) -> Path:
    """results/compare/<A>__vs__<B>, next to A's folder."""
    return Path(a).parent / "compare" / pair_name(a, b)

