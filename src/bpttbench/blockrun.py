"""The one block runner: what a pipeline job of a stage does with its block of items.

A gradient-flow block (cells) and a long-range block (training runs) are run the same way:
check that the job computes into this machine's result set, set torch's threads, run every
item with its record checkpointed beside the output (``<out>.partial/``, kept until the
stage's collect step so that a rerun loses nothing), write the records, and log the
statuses.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cli_options import check_hw_tag, set_threads
from .io import checkpoint_dir, write_json


def run_block_job(args: argparse.Namespace, items: Sequence[Any], noun: str,
                  run: Callable[[list[Any], Path], list[dict[str, Any]]],
                  write: Callable[[list[dict[str, Any]], Path], Any] | None = None
                  ) -> list[dict[str, Any]]:
    """Run ``items`` (each with ``device`` and ``block_id``) as one job into ``args.out``.

    ``run(items, checkpoints)`` computes the records; ``write(records, out)`` stores them
    (default: one JSON file).
    """
    if not items:
        raise ValueError(f"--spec holds no {noun}")
    check_hw_tag(args, items[0].device)
    threads = getattr(args, "threads", None)
    set_threads(threads)
    out = Path(args.out)
    print(f"block {items[0].block_id}: {len(items)} {noun}"
          + (f", {threads} thread(s)" if threads else ""), flush=True)
    records = run(list(items), checkpoint_dir(out))
    (write or (lambda recs, path: write_json(path, recs)))(records, out)
    statuses = [r["summary"]["status"] for r in records]
    print(f"block done: {', '.join(f'{s}={statuses.count(s)}' for s in sorted(set(statuses)))}")
    return records
