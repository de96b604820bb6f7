"""One reaper pass over every kind of run: expired leases of queued runs (app.services.queue) and
external runs whose client stopped reporting (app.services.external). Workers call it between packs
and on a timer; the server calls it at start and every SWEEPLAB_REAP_SECONDS, since a server used
only for tracking scripts has no worker."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from app.config import Settings
from app.services.external import reap_stale_external
from app.services.queue import ReapResult, reap_expired


@dataclass
class ReapSummary:
    queue: ReapResult
    external_failed: list[int] = field(default_factory=list)
    external_cancelled: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        q = self.queue
        return bool(q.requeued or q.failed or q.cancelled or self.external_failed or self.external_cancelled)


def reap_all(engine: Engine, settings: Settings) -> ReapSummary:
    """Requeue, fail or cancel every run whose holder stopped answering."""
    queue = reap_expired(engine)
    stale = reap_stale_external(engine, settings.external_stale_seconds)
    return ReapSummary(queue=queue, external_failed=stale.failed, external_cancelled=stale.cancelled)
