"""Bridges from the gateway to the control plane, through the deployments services: waking
a deployment scaled to zero, and reporting what this process sees — requests in flight and
the last request per deployment (for the autoscaler) and per-minute traffic (for the
deployment page).

Reports are sent every GATEWAY_LOAD_REPORT_S seconds by one background task. A report that
fails is logged and never stops the loop or the serving. Counts that could not be sent
because the database was unreachable are kept and sent with the next report;
`traffic_record` writes in one transaction, so such a failure wrote nothing of them. Any
other error (a deployment deleted meanwhile) is not worth retrying: logged and dropped —
these are display and autoscaling figures, never billing (that is `metering`).
"""

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime

from django.conf import settings
from django.db import InterfaceError, OperationalError

from deployments.models import LATENCY_BUCKETS_MS
from gateway.db import db

log = logging.getLogger("gateway.control")

UNREACHABLE = (OperationalError, InterfaceError)
# Traffic older than this is past what the deployment page shows: not worth keeping.
KEEP_UNSENT_S = 3600


def wake(deployment_id: int) -> None:
    from django.core.exceptions import ValidationError

    from deployments.services import deployment_wake

    with contextlib.suppress(ValidationError):  # over quota: it stays asleep, 503 says so
        deployment_wake(deployment_id=deployment_id)


def report_load(deployment_id: int, in_flight: int, requests: int) -> None:
    from deployments.services import load_report

    load_report(deployment_id=deployment_id, in_flight=float(in_flight), requests=requests)


def record_traffic(deployment_id: int, minute: int, row: dict) -> None:
    from deployments.services import traffic_record

    traffic_record(
        deployment_id=deployment_id,
        minute=datetime.fromtimestamp(minute, UTC),
        requests=row["requests"],
        errors=row["errors"],
        tokens=row["tokens"],
        latency_buckets=row["buckets"],
    )


def _empty_row() -> dict:
    return {"requests": 0, "errors": 0, "tokens": 0, "buckets": [0] * (len(LATENCY_BUCKETS_MS) + 1)}


class Load:
    """This process's view of each deployment, between two reports."""

    def __init__(self):
        self.in_flight: dict[int, int] = defaultdict(int)
        self.requests: dict[int, int] = defaultdict(int)
        self.traffic: dict[tuple[int, int], dict] = {}  # (deployment id, minute) -> counts

    def observe(self, deployment_id: int, status: int, tokens: int, seconds: float) -> None:
        minute = int(time.time() // 60) * 60
        row = self.traffic.setdefault((deployment_id, minute), _empty_row())
        row["requests"] += 1
        row["errors"] += status >= 500
        row["tokens"] += tokens
        ms = seconds * 1000
        row["buckets"][
            next((i for i, b in enumerate(LATENCY_BUCKETS_MS) if ms <= b), len(LATENCY_BUCKETS_MS))
        ] += 1

    async def run(self) -> None:
        while True:
            await asyncio.sleep(getattr(settings, "GATEWAY_LOAD_REPORT_S", 5.0))
            await self.report()

    async def report(self) -> None:
        # Swap the table out first: requests finishing during the awaits below count
        # towards the next report, not into rows already being sent.
        pending, self.traffic = self.traffic, {}
        for (deployment_id, minute), row in pending.items():
            try:
                await db(record_traffic)(deployment_id, minute, row)
            except Exception as exc:
                if self._failed("traffic", deployment_id, exc):
                    self._keep_traffic(deployment_id, minute, row)
        for deployment_id in set(self.requests) | {k for k, v in self.in_flight.items() if v}:
            seen = self.requests.pop(deployment_id, 0)
            try:
                await db(report_load)(deployment_id, self.in_flight[deployment_id], seen)
            except Exception as exc:
                if self._failed("load", deployment_id, exc):
                    self.requests[deployment_id] += seen

    def _failed(self, what: str, deployment_id: int, exc: Exception) -> bool:
        """Log a failed report; True when its counts should be sent again."""
        retry = isinstance(exc, UNREACHABLE)
        log.warning(
            "could not report %s of deployment %s (%s: %s)%s",
            what,
            deployment_id,
            type(exc).__name__,
            exc,
            "; kept for the next report" if retry else "",
        )
        return retry

    def _keep_traffic(self, deployment_id: int, minute: int, row: dict) -> None:
        if time.time() - minute > KEEP_UNSENT_S:
            return
        into = self.traffic.setdefault((deployment_id, minute), _empty_row())
        for k in ("requests", "errors", "tokens"):
            into[k] += row[k]
        into["buckets"] = [a + b for a, b in zip(into["buckets"], row["buckets"], strict=True)]
