"""Pool housekeeping: pool health, orphan runtimes, replica logs, the local-pool shutdown
and the monthly spend-limit stop.

Owns: what runs beside the reconciler on beat or at shutdown, across deployments.

Invariants:
* A runtime is only stopped as an orphan after a second look finds no live replica row for
  it: a start may have recorded its replica between the driver's list and the stop.
* The local shutdown meters each replica before releasing its GPUs, and keeps desired state,
  so the next start brings the replicas back.
"""

import logging

from django.db import transaction
from django.utils import timezone

from billing import services as billing
from billing.models import BillingAccount, Quota
from deployments.drivers import DriverError, DriverUnavailable, driver_for
from deployments.engine_auth import engine_api_key
from deployments.models import (
    LIVE_REPLICA_STATUSES,
    Deployment,
    GpuPool,
    Replica,
    ReplicaStatus,
)
from deployments.services.events import enqueue_reconcile, event
from deployments.services.metering import release_replica_gpus, replica_meter

log = logging.getLogger("deployments.services")


def pool_check(*, pool: GpuPool) -> GpuPool:
    """Ping the pool's backend and stop runtimes no live replica owns (orphans)."""
    driver = driver_for(pool)
    try:
        driver.ping()
        runtimes = driver.list()
    except DriverUnavailable as exc:
        GpuPool.objects.filter(pk=pool.pk).update(
            healthy=False, health_message=str(exc)[:300], checked_at=timezone.now()
        )
        pool.refresh_from_db()
        return pool
    GpuPool.objects.filter(pk=pool.pk).update(
        healthy=True, health_message="", checked_at=timezone.now()
    )
    known = set(
        Replica.objects.filter(
            pk__in=[rt.replica_id for rt in runtimes], status__in=LIVE_REPLICA_STATUSES
        ).values_list("pk", flat=True)
    )
    for rt in runtimes:
        if rt.replica_id in known:
            continue
        # A replica row that is not live — or none at all — yet a runtime runs: stop it.
        # Re-check just before stopping: a start may have recorded it a moment ago.
        if Replica.objects.filter(pk=rt.replica_id, status__in=LIVE_REPLICA_STATUSES).exists():
            continue
        driver.stop(rt.handle)
        replica = Replica.objects.select_related("deployment").filter(pk=rt.replica_id).first()
        if replica is not None:
            event(
                replica.deployment,
                "orphan_removed",
                f"stopped orphan runtime {rt.handle} that no live replica owns",
                replica,
            )
        log.warning("pool %s: stopped orphan runtime %s", pool, rt.handle)
    pool.refresh_from_db()
    return pool


def replica_logs(*, replica: Replica, tail: int = 200) -> str:
    """The engine's log tail, as its organization may read it: without the address the
    engine listens on (engines print it when they start) or its key."""
    if not replica.handle:
        return ""
    try:
        text = driver_for(replica.pool).logs(replica.handle, tail=max(1, min(tail, 2000)))
    except DriverError as exc:
        text = f"(logs unavailable: {exc})"
    text = text.replace(engine_api_key(replica.pk), "[engine key]")
    if replica.url:
        text = text.replace(replica.url.split("://", 1)[-1], "[replica address]")
    return text


def local_pools_shutdown(*, why: str = "Gantry on this machine shut down") -> int:
    """Stop every replica the local driver runs on this machine, releasing its GPUs.
    Desired state is kept, so the next start brings the replicas back."""
    stopped = 0
    for pool in GpuPool.objects.filter(driver="local"):
        driver = driver_for(pool)
        live = (
            Replica.objects.filter(pool=pool, status__in=LIVE_REPLICA_STATUSES)
            .select_related("deployment__gpu_type", "node", "region")
            .order_by("pk")
        )
        for r in live:
            if r.handle:
                driver.stop(r.handle)
            replica_meter(r, timezone.now(), final=True)
            release_replica_gpus(r.pk)
            Replica.objects.filter(pk=r.pk).update(
                status=ReplicaStatus.STOPPED, stopped_at=timezone.now(), exit_reason=why
            )
            event(r.deployment, "replica_stopped", f"stopped replica {r.ordinal + 1} ({why})", r)
            stopped += 1
        for rt in driver.list():  # anything else still running there
            driver.stop(rt.handle)
    return stopped


def spend_limits_enforce() -> int:
    """Scale to zero the running deployments of organizations past their hard monthly
    spend limit that chose "stop" (the others only have new capacity refused)."""
    stopped = 0
    orgs = Quota.objects.filter(monthly_spend_limit_cents__isnull=False).values_list(
        "organization_id", flat=True
    )
    for account in BillingAccount.objects.filter(
        organization_id__in=list(orgs), over_limit=BillingAccount.OverLimit.STOP
    ).select_related("organization"):
        state = billing.spend_status(account.organization)
        if not state["hard"]:
            continue
        for d in Deployment.objects.filter(
            organization=account.organization, deleted_at__isnull=True, desired_replicas__gt=0
        ):
            with transaction.atomic():
                before = d.desired_replicas
                Deployment.objects.filter(pk=d.pk).update(desired_replicas=0)
                event(
                    d,
                    "spend_limit",
                    (
                        f"monthly spend limit reached (${state['spent_cents'] / 100:,.2f} of "
                        f"${state['limit_cents'] / 100:,.2f}): scaled {before} → 0"
                    ),
                )
                enqueue_reconcile(d.pk)
            stopped += 1
    return stopped
