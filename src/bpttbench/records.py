"""The run record every job writes, opened and closed one way.

A record (one gradient-flow cell, one long-range run, one claim) starts with its id, its spec
and ``started_at``; a failure inside it is data (``status: error`` and the message, the
traceback in the job log); it is closed with ``finished_at``, ``wall_s`` (and ``cpu_s`` where
asked) and its summary. No torch.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Clock:
    """When a record was opened: wall and CPU clocks, and the ISO start time."""

    started_at: str = field(default_factory=now_iso)
    t0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.process_time)


def record_error(record: dict[str, Any], summary: dict[str, Any], exc: Exception) -> None:
    """A failed cell or run is data: status error, the message kept, the traceback logged."""
    summary["status"] = "error"
    record["error"] = f"{type(exc).__name__}: {exc}"
    traceback.print_exc()


def finish_record(record: dict[str, Any], summary: dict[str, Any] | None, t0: float | Clock,
                  cpu: bool = False) -> dict[str, Any]:
    """Attach the summary (if any), the end time and the wall time since ``t0`` (a
    perf_counter reading or a :class:`Clock`; ``cpu``: also the CPU seconds, from a Clock)."""
    if summary is not None:
        record["summary"] = summary
    wall0 = t0.t0 if isinstance(t0, Clock) else t0
    if cpu:
        if not isinstance(t0, Clock):
            raise ValueError("finish_record(cpu=True) needs the Clock the record was opened with")
        record["cpu_s"] = time.process_time() - t0.cpu0
    record["finished_at"] = now_iso()
    record["wall_s"] = time.perf_counter() - wall0
    return record
