"""Atomic file writes: write to a temporary file in the same folder, then rename.

A reader (or an interrupted pipeline) never sees a half-written table or figure.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_with(path: str | Path, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    # NaN/Infinity are kept (Python's json reads them back): they are measurements.
    return write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def run_checkpointed(items: Iterable[Any], key: Callable[[Any], str], spec: Callable[[Any], Any],
                     run: Callable[[Any], dict[str, Any]], checkpoint_dir: Path | None,
                     report: Callable[[Any, dict[str, Any]], None] | None = None
                     ) -> list[dict[str, Any]]:
    """Run ``run(item)`` for each item, keeping each record in ``checkpoint_dir/<key>.json``.

    After an interruption, a rerun reuses every checkpoint whose recorded ``spec`` equals
    the item's, so no finished item is computed twice; the caller removes the folder once
    the whole job's output is written.
    """
    records = []
    for item in items:
        path = checkpoint_dir / f"{key(item)}.json" if checkpoint_dir else None
        if path is not None and path.exists():
            done = read_json(path)
            if done.get("spec") == spec(item):
                records.append(done)
                continue
        record = run(item)
        if path is not None:
            write_json(path, record)
        if report is not None:
            report(item, record)
        records.append(record)
    return records
