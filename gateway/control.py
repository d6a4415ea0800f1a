"""Bridges from the gateway to the control plane, through the deployments services: waking
a deployment scaled to zero, and reporting what this process sees — requests in flight and
the last request per deployment (for the autoscaler) and per-minute traffic (for the
deployment page).

Each report also says how many requests this process has on each replica (so a draining
replica stops only once no gateway has any left on it) and refreshes the spend gauges of
the organizations seen since the last one.

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
import os
import socket
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime

from django.conf import settings
from django.db import InterfaceError, OperationalError

from deployments.models import ITL_BUCKETS_MS, LATENCY_BUCKETS_MS, TTFT_BUCKETS_MS
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


def report_replicas(gateway: str, in_flight: dict[int, int]) -> None:
    from deployments.services import replica_load_report

    replica_load_report(gateway=gateway, in_flight=in_flight)


def spend_of(organization_ids: list[int]) -> dict[str, tuple[int, int]]:
    from billing.services import spend_status
    from portal.models import Organization

    out = {}
    for org in Organization.objects.filter(pk__in=organization_ids):
        status = spend_status(org)
        out[org.slug] = (status["spent_cents"], status["limit_cents"] or 0)
    return out


def record_traffic(deployment_id: int, minute: int, row: dict) -> None:
    from deployments.services import traffic_record

    traffic_record(
        deployment_id=deployment_id,
        minute=datetime.fromtimestamp(minute, UTC),
        requests=row["requests"],
        errors=row["errors"],
        tokens=row["tokens"],
        latency_buckets=row["buckets"],
        ttft_buckets=row["ttft"],
        itl_buckets=row["itl"],
        per_replica=row["replicas"],
    )


def bucket(bounds: list, ms: float) -> int:
    return next((i for i, b in enumerate(bounds) if ms <= b), len(bounds))


def _counts(bounds: list) -> list[int]:
    return [0] * (len(bounds) + 1)


def _empty_row() -> dict:
    return {
        "requests": 0,
        "errors": 0,
        "tokens": 0,
        "buckets": _counts(LATENCY_BUCKETS_MS),
        "ttft": _counts(TTFT_BUCKETS_MS),
        "itl": _counts(ITL_BUCKETS_MS),
        "replicas": {},
    }


def _add(into: list[int], row: list[int]) -> list[int]:
    return [a + b for a, b in zip(into, row, strict=True)]


class Load:
    """This process's view of each deployment, between two reports."""

    def __init__(self, metrics=None):
        self.metrics = metrics
        # Who is reporting: one name per gateway process, unique across hosts and restarts.
        self.gateway = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.in_flight: dict[int, int] = defaultdict(int)
        self.requests: dict[int, int] = defaultdict(int)
        self.traffic: dict[tuple[int, int], dict] = {}  # (deployment id, minute) -> counts
        self.replicas: dict[int, int] = defaultdict(int)  # replica id -> in flight
        self.organizations: set[int] = set()

    def observe(
        self,
        deployment_id: int,
        status: int,
        tokens: int,
        seconds: float,
        *,
        replica_id: int | None = None,
        ttft: float | None = None,
        itl: float | None = None,
    ) -> None:
        minute = int(time.time() // 60) * 60
        row = self.traffic.setdefault((deployment_id, minute), _empty_row())
        row["requests"] += 1
        row["errors"] += status >= 500
        row["tokens"] += tokens
        row["buckets"][bucket(LATENCY_BUCKETS_MS, seconds * 1000)] += 1
        per = None
        if replica_id is not None:
            per = row["replicas"].setdefault(
                str(replica_id),
                {
                    "requests": 0,
                    "tokens": 0,
                    "ttft": _counts(TTFT_BUCKETS_MS),
                    "itl": _counts(ITL_BUCKETS_MS),
                },
            )
            per["requests"] += 1
            per["tokens"] += tokens
        for key, value, bounds in (("ttft", ttft, TTFT_BUCKETS_MS), ("itl", itl, ITL_BUCKETS_MS)):
            if value is None:
                continue
            i = bucket(bounds, value * 1000)
            row[key][i] += 1
            if per is not None:
                per[key][i] += 1

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
        await self._report_replicas()
        await self._report_spend()
        for deployment_id in set(self.requests) | {k for k, v in self.in_flight.items() if v}:
            seen = self.requests.pop(deployment_id, 0)
            try:
                await db(report_load)(deployment_id, self.in_flight[deployment_id], seen)
            except Exception as exc:
                if self._failed("load", deployment_id, exc):
                    self.requests[deployment_id] += seen

    async def _report_replicas(self) -> None:
        if not self.replicas:
            return
        counts = dict(self.replicas)
        try:
            await db(report_replicas)(self.gateway, counts)
        except Exception as exc:
            log.warning("could not report in-flight requests per replica (%s)", exc)
            return
        # A replica reported at zero needs no further reports until it gets a request.
        for replica_id, n in counts.items():
            if n == 0 and self.replicas.get(replica_id) == 0:
                del self.replicas[replica_id]

    async def _report_spend(self) -> None:
        if self.metrics is None or not self.organizations:
            return
        seen, self.organizations = list(self.organizations), set()
        try:
            spend = await db(spend_of)(seen)
        except Exception as exc:
            log.warning("could not read spend for the gauges (%s)", exc)
            return
        for slug, (spent, limit) in spend.items():
            self.metrics.spend.labels(slug).set(spent)
            self.metrics.spend_limit.labels(slug).set(limit)

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
        for k in ("buckets", "ttft", "itl"):
            into[k] = _add(into[k], row[k])
        for replica_id, per in row["replicas"].items():
            if (mine := into["replicas"].get(replica_id)) is None:
                into["replicas"][replica_id] = per
                continue
            mine["requests"] += per["requests"]
            mine["tokens"] += per["tokens"]
            mine["ttft"] = _add(mine["ttft"], per["ttft"])
            mine["itl"] = _add(mine["itl"], per["itl"])
