"""The run status catalogue: how each `RunStatus` is shown and what it means for the pages.

`RunStatus` is the enum the database (app/models.py re-exports it for its check constraint), the queue
and the client (sweeplab/ never imports SQLAlchemy, so this module is stdlib only) use; the
catalogue adds what the pages need, in one place (STYLE.md, "One vocabulary"): the order of a
progress bar's parts, the label, the colours, whether the status is final, whether "Retry failed"
queues it again, and what a chart waiting on runs in that status says. The server hands
`catalogue_json()` to every page; templates and JS read it and spell no status themselves.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class RunStatus(enum.StrEnum):
    """The only place a status is spelled (app/models.py re-exports it for the tables' check constraint)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"  # stopped early by an adaptive sweep (final; migration 0003 allows it)


class ExternalEnding(enum.StrEnum):
    """The final statuses a client gives its external run (POST /api/runs/{id}/finish); a RunStatus each."""

    SUCCEEDED = RunStatus.SUCCEEDED.value
    FAILED = RunStatus.FAILED.value
    CANCELLED = RunStatus.CANCELLED.value


@dataclass(frozen=True)
class StatusInfo:
    status: RunStatus
    final: bool  # the run will not change again unless a user retries it
    bar: str  # colour of its part of a progress bar
    text: str  # colour of its name in tables
    done: bool = False  # counts as a finished replicate (its final metrics are the sweep's results)
    retryable: bool = False  # "Retry failed" queues runs in this status again
    waiting: str = ""  # what a chart with nothing to draw yet waits for while runs are in this status
    name: str = ""  # how the pages name it, when not by its value

    @property
    def label(self) -> str:
        return self.name or self.status.value


# Progress-bar order: the finished-well part first, the not-yet-started part last.
CATALOGUE: tuple[StatusInfo, ...] = (
    StatusInfo(RunStatus.SUCCEEDED, final=True, bar="#16a34a", text="#15803d", done=True),
    StatusInfo(RunStatus.RUNNING, final=False, bar="#2563eb", text="#1d4ed8", waiting="waiting for the first epoch"),
    StatusInfo(RunStatus.FAILED, final=True, bar="#dc2626", text="#b91c1c", retryable=True),
    StatusInfo(RunStatus.CANCELLED, final=True, bar="#9ca3af", text="#6b7280", retryable=True),
    StatusInfo(RunStatus.PRUNED, final=True, bar="#f59e0b", text="#b45309", retryable=True),  # resumes
    StatusInfo(RunStatus.QUEUED, final=False, bar="#e5e7eb", text="#6b7280", waiting="waiting for a worker"),
)
BY_STATUS: dict[str, StatusInfo] = {s.status.value: s for s in CATALOGUE}
assert set(BY_STATUS) == {s.value for s in RunStatus}, "every RunStatus needs its entry here"

FINAL: frozenset[RunStatus] = frozenset(s.status for s in CATALOGUE if s.final)
RETRYABLE: tuple[RunStatus, ...] = tuple(s.status for s in CATALOGUE if s.retryable)


def is_final(status: str) -> bool:
    """Whether a run in STATUS is over (nothing to cancel, no stream to follow)."""
    return BY_STATUS[status].final


def label(status: str) -> str:
    """How the pages name STATUS."""
    return BY_STATUS[status].label


def can_cancel(counts: Mapping[str, int]) -> bool:
    """Whether a sweep with these status counts has runs a cancel would stop."""
    return any(n and not BY_STATUS[s].final for s, n in counts.items() if s in BY_STATUS)


def can_retry(counts: Mapping[str, int]) -> bool:
    """Whether "Retry failed" would queue any run again."""
    return any(n and BY_STATUS[s].retryable for s, n in counts.items() if s in BY_STATUS)


def catalogue_json() -> list[dict[str, Any]]:
    """The catalogue as the pages read it, in progress-bar order."""
    return [{"value": s.status.value, "label": s.label, "final": s.final, "done": s.done,
             "retryable": s.retryable, "bar": s.bar, "text": s.text, "waiting": s.waiting} for s in CATALOGUE]
