"""Atomic file writes, and reads of intermediate files that survive corruption.

Writes go to a temporary file in the same folder, then rename: a reader (or an interrupted
pipeline) never sees a half-written table or figure. An intermediate file (a cell checkpoint,
a block record) that is unreadable all the same (a crashed network file system, a disk that
filled up, a hand edit) is moved aside to ``<name>.corrupt`` with a warning that names it, and
what it held is recomputed: never fatal for a checkpoint, a clear error naming the file for a
block record (a Snakemake output, recomputed by the next run). docs/reproducibility.md
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Test hook for a full disk: "N" or "N:GLOB" makes the N-th atomic write of this process
#: (counting only paths that match GLOB) fail with ENOSPC, its temporary file cut short.
FAULT_ENOSPC_ENV = "BPTTBENCH_FAULT_ENOSPC"
#: When set, run_checkpointed appends one line per item ("computed|reused|corrupt KEY PID")
#: to this file: what an interruption cost, counted across processes.
CELL_LEDGER_ENV = "BPTTBENCH_CELL_LEDGER"
CORRUPT_SUFFIX = ".corrupt"
#: What reading a damaged file raises: JSONDecodeError and pyarrow's ArrowInvalid are
#: ValueErrors, a cut UTF-8 sequence is a UnicodeDecodeError (a ValueError too), an I/O
#: error of the file system an OSError (but not a missing or forbidden file: see try_read).
UNREADABLE = (ValueError, EOFError, OSError)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
_writes_seen = 0


def _inject_enospc(path: Path, tmp: Path) -> None:
    """Fail this write like a full disk when FAULT_ENOSPC_ENV says so (fault tests)."""
    global _writes_seen
    spec = os.environ.get(FAULT_ENOSPC_ENV)
    if not spec:
        return
    count, _, pattern = spec.partition(":")
    if pattern and not fnmatch.fnmatch(str(path), pattern):
        return
    _writes_seen += 1
    if _writes_seen == int(count):
        with open(tmp, "r+b") as fh:  # a full disk leaves the file cut short
            fh.truncate(os.path.getsize(tmp) // 2)
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {FAULT_ENOSPC_ENV})",
                      str(path))


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _inject_enospc(path, Path(tmp))
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
    """The JSON content of ``path``; ValueError naming the file (and the line and column)
    when it is not UTF-8 JSON (truncated, damaged)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: byte {exc.start} is not UTF-8") from None


def read_json_object(path: str | Path) -> dict[str, Any]:
    """``read_json`` of a file that must hold one JSON object (a manifest, a record)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found a {type(data).__name__}")
    return data


# --- unreadable intermediates: move aside, warn, recompute ---------------------------------


class UnreadableFile(ValueError):
    """Intermediate files that could not be read; each has been moved aside."""

    def __init__(self, moved: dict[Path, tuple[Path, str]],
                 what: str = "rerun to recompute it"):
        self.moved = moved
        names = "; ".join(f"{src} (moved aside to {dst.name}: {why})"
                          for src, (dst, why) in moved.items())
        super().__init__(f"{len(moved)} unreadable intermediate file(s): {names}. "
                         f"Nothing was built from them; {what}.")


def quarantine(path: str | Path, cause: object) -> Path:
    """Move an unreadable ``path`` aside to ``<path>.corrupt`` (``.corrupt.N`` if taken)
    and warn on stderr, naming both; the caller recomputes what it held."""
    path = Path(path)
    target, n = path.with_name(path.name + CORRUPT_SUFFIX), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}{CORRUPT_SUFFIX}.{n}"), n + 1
    os.replace(path, target)
    print(f"warning: {path} is unreadable ({cause}); moved aside to {target}; "
          "what it held is recomputed", file=sys.stderr, flush=True)
    return target


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def try_read(path: str | Path, reader: Callable[[Path], Any] = read_json,
             check: Callable[[Any], bool] | None = None) -> tuple[Any, tuple[Path, str] | None]:
    """Read ``path``; if it is unreadable (or fails ``check``), move it aside.

    Returns (data, None), or (None, (moved_to, reason)). A missing file raises
    FileNotFoundError: missing is not corrupt.
    """
    path = Path(path)
    try:
        data = reader(path)
        if check is None or check(data):
            return data, None
        reason = "unexpected content"
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except UNREADABLE as exc:
        reason = _describe(exc)
    if path.stat().st_size == 0:
        reason = f"empty file; {reason}"
    return None, (quarantine(path, reason), reason)


def read_intermediates(paths: Iterable[str | Path], reader: Callable[[Path], Any] = read_json,
                       check: Callable[[Any], bool] | None = None,
                       what: str = "rerun the pipeline (snakemake --rerun-incomplete) to "
                                   "recompute them") -> list[Any]:
    """Read every file; if any is unreadable, move each bad one aside and raise
    UnreadableFile naming them all, so that a single rerun recomputes all of them."""
    out, moved = [], {}
    for p in paths:
        data, bad = try_read(p, reader, check)
        if bad is None:
            out.append(data)
        else:
            moved[Path(p)] = bad
    if moved:
        raise UnreadableFile(moved, what)
    return out


def is_record(data: Any) -> bool:
    """A cell/run record, or a block's list of them: dicts that carry a summary."""
    items = data if isinstance(data, list) else [data]
    return all(isinstance(r, dict) and isinstance(r.get("summary"), dict) for r in items)


def _is_checkpoint(data: Any) -> bool:
    return isinstance(data, dict) and is_record(data)


def _ledger(event: str, key: str) -> None:
    path = os.environ.get(CELL_LEDGER_ENV)
    if path:  # one short O_APPEND write: lines from parallel jobs do not interleave
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {key} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def run_checkpointed(items: Iterable[Any], key: Callable[[Any], str], spec: Callable[[Any], Any],
                     run: Callable[[Any], dict[str, Any]], checkpoint_dir: Path | None,
                     report: Callable[[Any, dict[str, Any]], None] | None = None
                     ) -> list[dict[str, Any]]:
    """Run ``run(item)`` for each item, keeping each record in ``checkpoint_dir/<key>.json``.

    After an interruption, a rerun reuses every checkpoint whose recorded ``spec`` equals
    the item's, so no finished item is computed twice; a checkpoint that cannot be read
    (truncated, empty) is moved aside with a warning and its item recomputed. The folder is
    removed by the step that builds the tables (remove_checkpoints).
    """
    records = []
    for item in items:
        path = checkpoint_dir / f"{key(item)}.json" if checkpoint_dir else None
        if path is not None and path.exists():
            done, bad = try_read(path, check=_is_checkpoint)
            if bad is not None:
                _ledger("corrupt", key(item))
            elif done.get("spec") == spec(item):
                _ledger("reused", key(item))
                records.append(done)
                continue
        record = run(item)
        _ledger("computed", key(item))  # finished, whether or not its checkpoint gets written
        if path is not None:
            write_json(path, record)
        if report is not None:
            report(item, record)
        records.append(record)
    return records


def checkpoint_dir(record_path: str | Path) -> Path:
    """Where the job that writes ``record_path`` keeps its finished items: ``<stem>.partial/``."""
    record_path = Path(record_path)
    return record_path.with_name(record_path.stem + ".partial")


def remove_checkpoints(record_paths: Iterable[str | Path]) -> None:
    """Drop the checkpoints of these records once the tables built from them are written.

    Not earlier, when the record is written: a job whose Snakemake was killed may finish
    unseen, and the rerun of that (incomplete) job then reuses every item instead of
    recomputing them.
    """
    for p in record_paths:
        shutil.rmtree(checkpoint_dir(p), ignore_errors=True)


# --- one pipeline per result set -----------------------------------------------------------

_held_locks: dict[str, int] = {}


def hold_result_lock(result_dir: str | Path) -> None:
    """Hold an exclusive lock on ``result_dir`` for the rest of this process, or raise.

    flock(2) on the folder itself: it follows the folder (also when another working directory
    reaches it through a link), needs no lock file, and is released by the kernel when the
    process ends, however it ends, so a killed pipeline never leaves a stale lock.
    """
    result_dir = Path(result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(result_dir)
    if key in _held_locks:
        return
    fd = os.open(result_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(
            f"{result_dir} is locked: another pipeline is writing this result set (possibly "
            f"from another working directory; real path {key}). Wait for it to finish, or stop "
            "it; the lock goes away with the process that holds it.") from None
    _held_locks[key] = fd
