"""Scaling on load: the gateway's load reports and traffic counts, waking a deployment
scaled to zero, and the autoscaler.

Owns: ``DeploymentLoad`` and ``TrafficMinute`` rows, and every desired-state change the
platform makes on its own (as opposed to a user's, in ``lifecycle.py``).

Invariants:
* The autoscaler and a wake promise capacity through ``reserve_gpus`` like a user's scale
  up: quota, past-due accounts and the hard spend limit hold for them too.
* A wake locks the deployment row and acts only when it is still at zero, so many requests
  arriving at once wake it once.
* Traffic counts of several gateway processes add up; none overwrites another's.
"""

import math

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from deployments.models import (
    Deployment,
    DeploymentLoad,
    DeploymentStatus,
    TrafficMinute,
)
from deployments.services.events import enqueue_reconcile, event
from deployments.services.lifecycle import reserve_gpus


def load_report(*, deployment_id: int, in_flight: float, requests: int, at=None) -> None:
    """The gateway's view of a deployment (called every few seconds per deployment)."""
    at = at or timezone.now()
    values = {"in_flight": in_flight}
    if requests:
        values["last_request_at"] = at
    DeploymentLoad.objects.update_or_create(deployment_id=deployment_id, defaults=values)


@transaction.atomic
def deployment_wake(*, deployment_id: int, at=None) -> bool:
    """A request came for a deployment scaled to zero: bring one replica back."""
    at = at or timezone.now()
    d = (
        Deployment.objects.select_for_update()
        .filter(pk=deployment_id, deleted_at__isnull=True)
        .first()
    )
    if d is None or d.desired_replicas > 0:
        return False
    target = max(d.min_replicas, 1)
    reserve_gpus(d.organization, d.gpu_type, gpus=target * d.gpus_per_replica)
    Deployment.objects.filter(pk=d.pk).update(
        desired_replicas=target,
        failure_count=0,
        next_attempt_at=None,
        status=DeploymentStatus.PENDING,
    )
    DeploymentLoad.objects.update_or_create(
        deployment_id=d.pk, defaults={"wake_requested_at": at, "last_request_at": at}
    )
    event(d, "autoscaled", f"woken by a request: scaled 0 → {target}")
    enqueue_reconcile(d.pk)
    return True


def autoscale(*, now=None) -> int:
    """Adjust every autoscaled deployment to its load: in-flight requests per replica
    against its target, between min and max (quota permitting); and put idle ones to
    sleep. Every decision is an event."""
    now = now or timezone.now()
    changed = 0
    for d in (
        Deployment.objects.filter(deleted_at__isnull=True)
        .exclude(autoscale_target__isnull=True, scale_to_zero_after_s__isnull=True)
        .select_related("organization", "gpu_type")
    ):
        load = DeploymentLoad.objects.filter(deployment=d).first()
        current = d.desired_replicas
        wanted = current
        reason = ""
        idle_for = (
            (now - load.last_request_at).total_seconds() if load and load.last_request_at else None
        )
        if (
            d.scale_to_zero_after_s
            and current > 0
            and idle_for is not None
            and idle_for >= d.scale_to_zero_after_s
        ):
            wanted, reason = 0, f"no requests for {int(idle_for)} s"
        elif d.autoscale_target and current > 0 and load is not None:
            need = math.ceil(load.in_flight / d.autoscale_target) if load.in_flight else 1
            wanted = min(max(need, max(d.min_replicas, 1)), d.max_replicas)
            reason = (
                f"{load.in_flight:g} requests in flight, target {d.autoscale_target} per replica"
            )
        if wanted == current:
            continue
        try:
            with transaction.atomic():
                if wanted > current:
                    reserve_gpus(
                        d.organization,
                        d.gpu_type,
                        gpus=wanted * d.gpus_per_replica,
                        holding=current * d.gpus_per_replica,
                    )
                Deployment.objects.filter(pk=d.pk).update(desired_replicas=wanted)
                event(d, "autoscaled", f"scaled {current} → {wanted} ({reason})")
                enqueue_reconcile(d.pk)
        except ValidationError as exc:
            event(d, "autoscale_blocked", f"wanted {wanted} replicas: {' '.join(exc.messages)}")
            continue
        changed += 1
    return changed


def traffic_record(
    *,
    deployment_id: int,
    minute,
    requests: int,
    errors: int,
    tokens: int,
    latency_buckets: list[int],
) -> None:
    """Add one gateway process's counts for a minute (several processes add up)."""
    for _ in range(3):
        with transaction.atomic():
            row = (
                TrafficMinute.objects.select_for_update()
                .filter(deployment_id=deployment_id, minute=minute)
                .first()
            )
            if row is None:
                try:
                    with transaction.atomic():
                        TrafficMinute.objects.create(
                            deployment_id=deployment_id,
                            minute=minute,
                            requests=requests,
                            errors=errors,
                            tokens=tokens,
                            latency_buckets=latency_buckets,
                        )
                    return
                except IntegrityError:
                    continue  # another process created it first: add to it
            row.requests += requests
            row.errors += errors
            row.tokens += tokens
            merged = row.latency_buckets or [0] * len(latency_buckets)
            row.latency_buckets = [a + b for a, b in zip(merged, latency_buckets, strict=False)]
            row.save(update_fields=["requests", "errors", "tokens", "latency_buckets"])
            return
