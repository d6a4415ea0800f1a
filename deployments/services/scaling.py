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
    AutoscaleMetric,
    Deployment,
    DeploymentLoad,
    DeploymentStatus,
    Replica,
    ReplicaStatus,
    TrafficMinute,
)
from deployments.selectors import ttft_recent
from deployments.services.events import enqueue_reconcile, event
from deployments.services.lifecycle import reserve_gpus

# Fewer streamed answers than this over the window say nothing about a p95.
TTFT_MIN_SAMPLES = 5


def load_report(*, deployment_id: int, in_flight: float, requests: int, at=None) -> None:
    """The gateway's view of a deployment (called every few seconds per deployment)."""
    at = at or timezone.now()
    values = {"in_flight": in_flight}
    if requests:
        values["last_request_at"] = at
    DeploymentLoad.objects.update_or_create(deployment_id=deployment_id, defaults=values)


@transaction.atomic
def deployment_wake(*, deployment_id: int, at=None) -> bool:
    """A request came for a deployment the autoscaler put to sleep: bring it back."""
    at = at or timezone.now()
    d = (
        Deployment.objects.select_for_update()
        .filter(pk=deployment_id, deleted_at__isnull=True)
        .first()
    )
    # Only a deployment the autoscaler put to sleep is woken: one a person stopped stays
    # stopped, whoever holds a key to it.
    if d is None or d.desired_replicas > 0 or not d.asleep:
        return False
    target = max(d.min_replicas, 1)
    reserve_gpus(d.organization, d.gpu_type, gpus=target * d.gpus_per_replica)
    Deployment.objects.filter(pk=d.pk).update(
        desired_replicas=target,
        asleep=False,
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


def _signal(d: Deployment, load: DeploymentLoad | None, current: int, now) -> tuple[int, str]:
    """Replicas the deployment's autoscale metric asks for (before min/max), and why; -1
    when the signal is missing (no figures yet: change nothing)."""
    target = d.autoscale_target or 1
    metric = d.autoscale_metric
    if metric == AutoscaleMetric.IN_FLIGHT:
        if load is None:
            return -1, ""
        need = math.ceil(load.in_flight / target) if load.in_flight else 1
        return need, f"{load.in_flight:g} requests in flight, target {target} per replica"
    if metric in (AutoscaleMetric.QUEUE_DEPTH, AutoscaleMetric.KV_CACHE):
        field = "queue_depth" if metric == AutoscaleMetric.QUEUE_DEPTH else "kv_cache_usage"
        values = [
            v
            for v in Replica.objects.filter(
                deployment=d, status=ReplicaStatus.RUNNING, signals_at__isnull=False
            ).values_list(field, flat=True)
            if v is not None
        ]
        if not values:
            return -1, ""
        mean = sum(values) / len(values)
        if metric == AutoscaleMetric.KV_CACHE:
            mean *= 100
            what = f"KV cache {mean:.0f}% used per replica, target {target}%"
        else:
            what = f"{mean:g} requests queued per replica, target {target}"
        return math.ceil(current * mean / target - 1e-9), what
    # TTFT p95 against the SLO, over the last minutes the gateways reported.
    ttft = ttft_recent(deployment=d, now=now)
    if ttft["count"] < TTFT_MIN_SAMPLES or ttft["p95_ms"] is None:
        return -1, ""
    p95 = ttft["p95_ms"]
    what = f"TTFT p95 {p95:g} ms, SLO {target} ms"
    if p95 > target:
        return max(current + 1, math.ceil(current * p95 / target)), what
    if p95 < target / 2:
        return current - 1, what
    return current, what


def _stabilised(d: Deployment, load: DeploymentLoad, current: int, need: int, now) -> int:
    """Record this recommendation; the replicas every recommendation over the window
    agrees on: scaling up, the lowest of those in the scale-up window; scaling down, the
    highest of those in the scale-down window."""
    t = now.timestamp()
    keep = max(d.scale_up_window_s, d.scale_down_window_s)
    recs = [(at, n) for at, n in (load.recommendations or []) if at > t - keep and at <= t]
    recs.append((t, need))
    DeploymentLoad.objects.filter(pk=load.pk).update(recommendations=recs)
    if need > current:
        return min(n for at, n in recs if at > t - d.scale_up_window_s or at == t)
    if need < current:
        return max(n for at, n in recs if at > t - d.scale_down_window_s or at == t)
    return current


def autoscale(*, now=None) -> int:
    """Adjust every autoscaled deployment to its load: its metric (requests in flight,
    engine queue depth or KV-cache use per replica against its target, or TTFT p95
    against its SLO), stabilised over its windows, between min and max (quota
    permitting); and put idle ones to sleep. Every decision is an event."""
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
        elif d.autoscale_target and current > 0:
            need, reason = _signal(d, load, current, now)
            if need < 0:
                continue
            need = min(max(need, max(d.min_replicas, 1)), d.max_replicas)
            if load is None:
                load, _ = DeploymentLoad.objects.get_or_create(deployment=d)
            wanted = _stabilised(d, load, current, need, now)
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
                Deployment.objects.filter(pk=d.pk).update(
                    desired_replicas=wanted, asleep=wanted == 0
                )
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
    ttft_buckets: list[int] | None = None,
    itl_buckets: list[int] | None = None,
    per_replica: dict | None = None,
) -> None:
    """Add one gateway process's counts for a minute (several processes add up)."""
    ttft_buckets, itl_buckets, per_replica = (
        ttft_buckets or [],
        itl_buckets or [],
        per_replica or {},
    )
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
                            ttft_buckets=ttft_buckets,
                            itl_buckets=itl_buckets,
                            per_replica=per_replica,
                        )
                    return
                except IntegrityError:
                    continue  # another process created it first: add to it
            row.requests += requests
            row.errors += errors
            row.tokens += tokens
            row.latency_buckets = _add_counts(row.latency_buckets, latency_buckets)
            row.ttft_buckets = _add_counts(row.ttft_buckets, ttft_buckets)
            row.itl_buckets = _add_counts(row.itl_buckets, itl_buckets)
            merged = dict(row.per_replica or {})
            for replica_id, per in per_replica.items():
                mine = merged.setdefault(replica_id, {"requests": 0, "tokens": 0})
                mine["requests"] = mine.get("requests", 0) + per.get("requests", 0)
                mine["tokens"] = mine.get("tokens", 0) + per.get("tokens", 0)
                for k in ("ttft", "itl"):
                    mine[k] = _add_counts(mine.get(k), per.get(k) or [])
            row.per_replica = merged
            row.save(
                update_fields=[
                    "requests",
                    "errors",
                    "tokens",
                    "latency_buckets",
                    "ttft_buckets",
                    "itl_buckets",
                    "per_replica",
                ]
            )
            return


def _add_counts(into: list[int] | None, more: list[int]) -> list[int]:
    into = list(into or [])
    if len(into) < len(more):
        into += [0] * (len(more) - len(into))
    return [a + (more[i] if i < len(more) else 0) for i, a in enumerate(into)]
