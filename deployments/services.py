"""Deployments: create, scale, stop, delete — and the reconciler that makes it so.

A deployment is desired state; replicas are actual state. ``deployment_reconcile``
compares them and acts through the pool's driver. It is idempotent and safe to kill at
any point:

* GPUs are held in the same transaction that writes the replica row, so a crash never
  leaves a hold without a row (nor a row without its hold).
* A runtime is named after its replica row, so a start that died before recording its
  handle is adopted on the next pass instead of started twice.
* A lease on the deployment row keeps two reconcilers apart; a lease whose holder died
  on this host is taken over at once, elsewhere after it expires.
* Runtimes the drivers report but no live replica owns are orphans and are stopped.
"""

import logging
import os
import re
import socket
import threading
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from billing import services as billing
from deployments.drivers import DriverError, DriverUnavailable, ReplicaSpec, driver_for
from deployments.engines import model_file, weights_progress
from deployments.models import (
    ACTIVE_REPLICA_STATUSES,
    LIVE_REPLICA_STATUSES,
    Deployment,
    DeploymentEvent,
    DeploymentStatus,
    Engine,
    GpuPool,
    GpuType,
    Node,
    Region,
    Replica,
    ReplicaStatus,
)
from deployments.placement import Unschedulable, place_replica
from deployments.validation import runtime_check
from portal.models import Organization

log = logging.getLogger(__name__)

MAX_REPLICAS = 64
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def event(deployment: Deployment, kind: str, message: str, replica: Replica | None = None):
    log.info("deployment %s %s: %s", deployment.pk, kind, message)
    return DeploymentEvent.objects.create(
        deployment=deployment, replica=replica, kind=kind, message=message
    )


def _enqueue_reconcile(deployment_id: int) -> None:
    from deployments.tasks import reconcile_deployment

    transaction.on_commit(lambda: reconcile_deployment.delay(deployment_id))


# --- Desired state --------------------------------------------------------------------


def _validate_int(errors: dict, name: str, value, low: int, high: int) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        errors[name] = f"Give a whole number from {low} to {high}."
        return None
    if not low <= number <= high:
        errors[name] = f"Must be from {low} to {high}; got {number}."
        return None
    return number


@transaction.atomic
def deployment_create(
    *,
    organization: Organization,
    user,
    name: str,
    model_ref: str,
    gpu_type: str,
    regions: list[str],
    engine: str = Engine.LLAMACPP,
    image: str = "",
    engine_args: list[str] | None = None,
    gpus_per_replica: int = 1,
    min_replicas: int = 1,
    max_replicas: int = 1,
    replicas: int | None = None,
    source: str = "",
    autoscale_target: int | None = None,
    scale_to_zero_after_s: int | None = None,
) -> Deployment:
    errors: dict[str, str] = {}
    if autoscale_target is not None:
        autoscale_target = _validate_int(errors, "autoscale_target", autoscale_target, 1, 10_000)
    if scale_to_zero_after_s is not None:
        scale_to_zero_after_s = _validate_int(
            errors, "scale_to_zero_after_s", scale_to_zero_after_s, 60, 30 * 86400
        )
    name = (name or "").strip().lower()
    if not NAME_RE.match(name):
        errors["name"] = "Use 1–63 lowercase letters, digits or hyphens (not at the ends)."
    elif Deployment.objects.filter(
        organization=organization, name=name, deleted_at__isnull=True
    ).exists():
        errors["name"] = f"{organization.slug} already has a deployment named {name!r}."
    if engine not in Engine.values:
        errors["engine"] = f"Choose one of: {', '.join(Engine.values)}."
    gpu = GpuType.objects.filter(code=gpu_type).first()
    if gpu is None:
        known = ", ".join(GpuType.objects.values_list("code", flat=True))
        errors["gpu_type"] = f"Unknown GPU type {gpu_type!r}; choose one of: {known}."
    gpus = _validate_int(errors, "gpus_per_replica", gpus_per_replica, 1, 64)
    if gpu is not None and gpus is not None:
        biggest = (
            Node.objects.filter(pool__gpu_type=gpu, pool__enabled=True)
            .order_by("-gpus_total")
            .values_list("gpus_total", flat=True)
            .first()
        ) or 0
        if gpus > biggest:
            errors["gpus_per_replica"] = (
                f"{gpus}×{gpu.name} is more than any node has (the largest has {biggest})."
            )
    low = _validate_int(errors, "min_replicas", min_replicas, 0, MAX_REPLICAS)
    high = _validate_int(errors, "max_replicas", max_replicas, 1, MAX_REPLICAS)
    if low is not None and high is not None and low > high:
        errors["min_replicas"] = f"min_replicas ({low}) must not exceed max_replicas ({high})."
    if not isinstance(regions, list | tuple) or not regions:
        errors["regions"] = "Give at least one region code, in preference order."
    else:
        regions = [str(r).strip() for r in regions]
        known = set(Region.objects.filter(enabled=True).values_list("code", flat=True))
        unknown = [r for r in regions if r not in known]
        if unknown:
            errors["regions"] = (
                f"Unknown region {unknown[0]!r}; choose from: {', '.join(sorted(known))}."
            )
        elif len(set(regions)) != len(regions):
            errors["regions"] = "Name each region once."
    # Flags, image and model: only what the schema, the pools and the organization allow.
    runtime, runtime_errors = runtime_check(
        organization=organization,
        engine=engine,
        image=image,
        model_ref=model_ref,
        engine_args=engine_args,
        gpu_type=gpu,
        regions=regions if "regions" not in errors else [],
    )
    errors.update(runtime_errors)
    desired = None
    if low is not None and high is not None and "min_replicas" not in errors:
        desired = max(low, 1) if replicas is None else replicas
        if replicas is not None:
            desired = _validate_int(errors, "replicas", replicas, low, high)
    if errors:
        raise ValidationError(errors)
    # Capacity is promised here: check the organization's quotas under its lock.
    quota = reserve_gpus(organization, gpu, gpus=desired * gpus)
    billing.quota_check_deployments(
        quota,
        current=Deployment.objects.filter(
            organization=organization, deleted_at__isnull=True
        ).count(),
    )
    deployment = Deployment.objects.create(
        organization=organization,
        name=name,
        engine=engine,
        image=runtime["image"],
        model_ref=runtime["model_ref"],
        engine_args=runtime["engine_args"],
        gpu_type=gpu,
        gpus_per_replica=gpus,
        min_replicas=low,
        max_replicas=high,
        desired_replicas=desired,
        regions=list(regions),
        source=source,
        autoscale_target=autoscale_target,
        scale_to_zero_after_s=scale_to_zero_after_s,
        created_by=user,
    )
    event(
        deployment,
        "created",
        f"created by {getattr(user, 'username', 'system')}: {desired}×{gpus} {gpu.name} "
        f"per replica, regions {', '.join(regions)}",
    )
    _enqueue_reconcile(deployment.pk)
    return deployment


@transaction.atomic
def deployment_scale(*, deployment: Deployment, replicas) -> Deployment:
    d = Deployment.objects.select_for_update().get(pk=deployment.pk)
    if d.deleted_at is not None:
        raise ValidationError({"replicas": "This deployment is being deleted."})
    try:
        replicas = int(replicas)
    except (TypeError, ValueError):
        raise ValidationError({"replicas": "Give a whole number."}) from None
    if replicas != 0 and not d.min_replicas <= replicas <= d.max_replicas:
        raise ValidationError(
            {
                "replicas": f"Choose 0 (stop) or from {max(d.min_replicas, 1)} to "
                f"{d.max_replicas}; got {replicas}."
            }
        )
    before = d.desired_replicas
    if replicas > before:
        reserve_gpus(
            d.organization,
            d.gpu_type,
            gpus=replicas * d.gpus_per_replica,
            holding=before * d.gpus_per_replica,
        )
    Deployment.objects.filter(pk=d.pk).update(
        desired_replicas=replicas,
        failure_count=0,
        next_attempt_at=None,
        status=(
            DeploymentStatus.PENDING
            if replicas and d.status in {DeploymentStatus.FAILED, DeploymentStatus.STOPPED}
            else d.status
        ),
        updated_at=timezone.now(),
    )
    if replicas < before:
        # Fewer replicas: stop them now, so GPUs are free before the caller answers.
        transaction.on_commit(lambda: deployment_settle(deployment=d))
    if replicas == 0:
        event(d, "stopped", f"stop requested (was {before} replicas)")
    else:
        event(d, "scaled", f"scaled {before} → {replicas}")
    _enqueue_reconcile(d.pk)
    d.refresh_from_db()
    return d


def reserve_gpus(organization, gpu_type: GpuType, *, gpus: int, holding: int = 0):
    """The one check before any capacity is promised (create, scale up, wake, autoscale):
    under the organization's quota lock, the account may take capacity and `gpus` of
    this type fit the quota, counting what the organization already asks for except
    `holding` (what the deployment being changed asks for now). Call inside the
    transaction that records the promise. Returns the locked quota."""
    quota = billing.quota_lock(organization)
    billing.capacity_allowed(organization, quota)
    billing.quota_check_gpus(
        quota,
        gpu_type=gpu_type.code,
        gpu_label=gpu_type.name,
        committed=committed_gpus(organization, gpu_type.code) - holding,
        extra=gpus,
    )
    return quota


def committed_gpus(organization, gpu_type: str) -> int:
    """GPUs of a type the organization's deployments ask for (desired, not yet deleted)."""
    total = Deployment.objects.filter(
        organization=organization, gpu_type__code=gpu_type, deleted_at__isnull=True
    ).aggregate(g=Sum(F("desired_replicas") * F("gpus_per_replica")))["g"]
    return total or 0


def deployment_stop(*, deployment: Deployment) -> Deployment:
    return deployment_scale(deployment=deployment, replicas=0)


def deployment_start(*, deployment: Deployment) -> Deployment:
    return deployment_scale(deployment=deployment, replicas=max(deployment.min_replicas, 1))


@transaction.atomic
def deployment_delete(*, deployment: Deployment) -> None:
    d = Deployment.objects.select_for_update().get(pk=deployment.pk)
    if d.deleted_at is not None:
        return
    Deployment.objects.filter(pk=d.pk).update(
        deleted_at=timezone.now(), desired_replicas=0, status=DeploymentStatus.DELETING
    )
    event(d, "deleting", "delete requested; stopping replicas and releasing GPUs")
    transaction.on_commit(lambda: deployment_settle(deployment=d))
    _enqueue_reconcile(d.pk)


def deployment_settle(*, deployment: Deployment) -> None:
    """Run a reconcile pass now (scale-down and delete call it after their commit), so
    that GPUs are released before the answer goes out. The worker finishes whatever this
    cannot."""
    try:
        deployment_reconcile(deployment_id=deployment.pk)
    except DriverUnavailable as exc:
        log.warning("deployment %s: driver unavailable during settle: %s", deployment.pk, exc)


# --- The reconciler -------------------------------------------------------------------

LEASE = timedelta(seconds=120)


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _holder_dead(owner: str) -> bool:
    try:
        host, pid, _thread = owner.rsplit(":", 2)
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


def _acquire_lease(deployment_id: int) -> str | None:
    me, now = _me(), timezone.now()
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=me)
    if Deployment.objects.filter(free, pk=deployment_id).update(
        lease_owner=me, lease_until=now + LEASE
    ):
        return me
    holder = Deployment.objects.filter(pk=deployment_id).values_list("lease_owner", flat=True)
    holder = holder.first()
    if (
        holder
        and _holder_dead(holder)
        and Deployment.objects.filter(pk=deployment_id, lease_owner=holder).update(
            lease_owner=me, lease_until=now + LEASE
        )
    ):
        log.warning("deployment %s: took over the lease of dead %s", deployment_id, holder)
        return me
    return None


def _release_lease(deployment_id: int, me: str) -> None:
    Deployment.objects.filter(pk=deployment_id, lease_owner=me).update(
        lease_owner="", lease_until=None
    )


@dataclass
class ReconcileResult:
    busy: bool = False
    status: str = ""
    requeue_in: float | None = None
    actions: list[str] = field(default_factory=list)


def _probe(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=3) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def _spec(d: Deployment, r: Replica) -> ReplicaSpec:
    return ReplicaSpec(
        replica_id=r.pk,
        deployment_id=d.pk,
        organization=d.organization.slug,
        deployment_name=d.name,
        engine=d.engine,
        image=d.image,
        model_ref=d.model_ref,
        engine_args=tuple(d.engine_args or ()),
        gpus=r.gpus,
        gpu_type=d.gpu_type.code,
        node_name=r.node.name,
        node_address=r.node.address,
        node_config=dict(r.node.config or {}),
    )


def release_replica_gpus(replica_id: int) -> int:
    """Give a replica's GPUs back to its node, once. Returns how many were released."""
    with transaction.atomic():
        r = Replica.objects.select_for_update().filter(pk=replica_id).first()
        if r is None or r.gpus == 0:
            return 0
        released = r.gpus
        Node.objects.filter(pk=r.node_id).update(gpus_allocated=F("gpus_allocated") - released)
        Replica.objects.filter(pk=r.pk).update(gpus=0)
        return released


def _backoff_seconds(failures: int) -> int:
    return min(2 ** max(failures - 1, 0), settings.REPLICA_MAX_BACKOFF_S)


class _Pass:
    """One reconcile pass over one deployment (holding its lease)."""

    def __init__(self, deployment_id: int):
        self.d = Deployment.objects.select_related("gpu_type", "organization").get(pk=deployment_id)
        self.now = timezone.now()
        self.drivers: dict[int, object] = {}
        self.result = ReconcileResult()
        self.unschedulable = ""
        self.unavailable = ""

    def driver(self, pool: GpuPool):
        if pool.pk not in self.drivers:
            self.drivers[pool.pk] = driver_for(pool)
        return self.drivers[pool.pk]

    def live(self) -> list[Replica]:
        return list(
            self.d.replicas.filter(status__in=LIVE_REPLICA_STATUSES).select_related(
                "pool__region", "node", "region"
            )
        )

    def requeue(self, seconds: float) -> None:
        current = self.result.requeue_in
        self.result.requeue_in = seconds if current is None else min(current, seconds)

    # --- metering -------------------------------------------------------------------

    def meter(self, r: Replica, end, final: bool = False) -> None:
        """GPU time from ready to `end` into the usage ledger, in minute windows keyed by
        replica and window: a repeated pass (or one killed half-way) never counts twice."""
        start = r.metered_until or r.ready_at
        if start is None or end <= start:
            return
        covered = billing.meter_gpu_time(
            organization_id=self.d.organization_id,
            source=f"replica-{r.pk}",
            deployment_id=self.d.pk,
            deployment_name=self.d.name,
            region=r.region.code,
            gpu_type=self.d.gpu_type.code,
            gpus=max(r.gpus, self.d.gpus_per_replica),
            start=start,
            end=end,
            final=final,
        )
        if covered > start:
            Replica.objects.filter(pk=r.pk).update(metered_until=covered)
            r.metered_until = covered

    # --- replica transitions ----------------------------------------------------------

    def stop(self, r: Replica, why: str) -> None:
        Replica.objects.filter(pk=r.pk).update(status=ReplicaStatus.STOPPING)
        if r.handle:
            self.driver(r.pool).stop(r.handle)
        self.meter(r, timezone.now(), final=True)
        release_replica_gpus(r.pk)
        Replica.objects.filter(pk=r.pk).update(
            status=ReplicaStatus.STOPPED, stopped_at=timezone.now(), exit_reason=why
        )
        event(
            self.d,
            "replica_stopped",
            f"stopped replica {r.ordinal + 1} ({why}); "
            f"released {r.gpus} GPU(s) on {r.pool}/{r.node.name}",
            r,
        )

    def fail(self, r: Replica, why: str) -> None:
        self.meter(r, timezone.now(), final=True)
        if r.handle:
            try:
                self.driver(r.pool).stop(r.handle)  # make sure nothing half-alive lingers
            except DriverError as exc:
                log.warning("replica %s: cleanup after failure failed: %s", r.pk, exc)
        release_replica_gpus(r.pk)
        Replica.objects.filter(pk=r.pk).update(
            status=ReplicaStatus.FAILED, stopped_at=timezone.now(), exit_reason=why[:2000]
        )
        failures = self.d.failure_count + 1
        wait = _backoff_seconds(failures)
        self.d.failure_count = failures
        self.d.next_attempt_at = timezone.now() + timedelta(seconds=wait)
        Deployment.objects.filter(pk=self.d.pk).update(
            failure_count=failures, next_attempt_at=self.d.next_attempt_at
        )
        tail = "" if failures >= settings.REPLICA_MAX_FAILURES else f"; replacing it in {wait} s"
        event(self.d, "replica_failed", f"replica {r.ordinal + 1} failed: {why}{tail}", r)
        self.requeue(wait)

    # --- the pass -------------------------------------------------------------------

    def observe(self) -> None:
        for r in self.live():
            if r.status == ReplicaStatus.STOPPING:
                self.stop(r, r.exit_reason or "stop requested")
                continue
            if r.status == ReplicaStatus.PENDING:
                continue
            status = self.driver(r.pool).status(r.handle)
            if status.state != "running":
                self.fail(r, status.detail or status.state)
                continue
            healthy = _probe(r.url)
            if r.status == ReplicaStatus.STARTING:
                if healthy:
                    now = timezone.now()
                    Replica.objects.filter(pk=r.pk).update(
                        status=ReplicaStatus.RUNNING, ready_at=now, health_failures=0
                    )
                    took = (now - r.started_at).total_seconds() if r.started_at else 0
                    event(
                        self.d,
                        "replica_ready",
                        f"replica {r.ordinal + 1} health check passed in {took:.1f} s",
                        r,
                    )
                    if self.d.failure_count:
                        self.d.failure_count = 0
                        Deployment.objects.filter(pk=self.d.pk).update(
                            failure_count=0, next_attempt_at=None
                        )
                elif r.started_at and (self.now - r.started_at).total_seconds() > (
                    settings.REPLICA_STARTUP_TIMEOUT_S
                ):
                    self.fail(r, f"not healthy within {settings.REPLICA_STARTUP_TIMEOUT_S} s")
                else:
                    self.requeue(1)
            elif healthy:
                self.meter(r, self.now)
                if r.health_failures:
                    Replica.objects.filter(pk=r.pk).update(health_failures=0)
            else:
                failures = r.health_failures + 1
                Replica.objects.filter(pk=r.pk).update(health_failures=failures)
                if failures >= settings.REPLICA_HEALTH_FAILURES:
                    self.fail(r, f"failed {failures} health checks in a row")
                else:
                    self.requeue(2)

    def converge(self) -> None:
        d = self.d
        target = 0 if d.deleted_at else d.desired_replicas
        active = [r for r in self.live() if r.status in ACTIVE_REPLICA_STATUSES]
        if len(active) > target:
            # Stop the least useful first: not yet running, then the highest slots.
            order = sorted(active, key=lambda r: (r.status == ReplicaStatus.RUNNING, -r.ordinal))
            why = "deployment deleted" if d.deleted_at else f"scaled to {target}"
            for r in order[: len(active) - target]:
                self.stop(r, why)
            return
        missing = target - len(active)
        if missing <= 0:
            return
        if d.failure_count >= settings.REPLICA_MAX_FAILURES:
            return
        if d.next_attempt_at and self.now < d.next_attempt_at:
            self.requeue((d.next_attempt_at - self.now).total_seconds())
            return
        waiting = self.weights_wait()
        if waiting:
            self.unschedulable = waiting
            self.requeue(2)
            return
        used = {r.ordinal for r in active}
        slots = [i for i in range(target + len(used)) if i not in used][:missing]
        if d.status not in {DeploymentStatus.RUNNING, DeploymentStatus.DEGRADED}:
            Deployment.objects.filter(pk=d.pk).update(status=DeploymentStatus.PLACING)
            d.status = DeploymentStatus.PLACING
        for ordinal in slots:
            try:
                r = self.place_within_quota(ordinal)
            except Unschedulable as exc:
                self.unschedulable = exc.reason
                self.requeue(settings.RECONCILE_INTERVAL_S)
                break
            except IntegrityError:
                continue  # another pass filled this slot in the meantime
            verb = "replacing a failed replica: placed" if d.failure_count else "placed"
            event(
                d,
                "replica_placed",
                f"{verb} replica {ordinal + 1} on {r.pool}/{r.node.name} "
                f"({r.gpus}×{d.gpu_type.name})",
                r,
            )

    def weights_wait(self) -> str:
        """Why replicas must wait for their model files, or "" when they need not."""
        if self.d.engine != "llama.cpp" or self.d.model_ref.startswith("demo:"):
            return ""
        path = model_file(self.d.model_ref)
        if path.is_file():
            return ""
        progress = weights_progress(path)
        if progress is None:
            return f"the model file {path.name} is missing"
        if progress.get("status") == "failed":
            return f"fetching the model weights failed: {progress.get('error', '')}".strip()
        done, total = progress.get("bytes_done", 0), progress.get("bytes_total", 0)
        pct = f"{100 * done // total}%, " if total else ""
        return f"waiting for the model weights ({pct}{done:,} of {total:,} bytes)"

    def place_within_quota(self, ordinal: int) -> Replica:
        """Place one replica; where the organization has per-region GPU limits, only in
        regions still under them, deciding under the organization's quota lock."""
        d = self.d
        from billing.models import GpuQuota

        if (
            not GpuQuota.objects.filter(
                quota__organization_id=d.organization_id, gpu_type=d.gpu_type.code
            )
            .exclude(region="")
            .exists()
        ):
            return place_replica(deployment=d, ordinal=ordinal)
        with transaction.atomic():
            quota = billing.quota_lock(d.organization)
            used = dict(
                Replica.objects.filter(
                    deployment__organization_id=d.organization_id,
                    status__in=LIVE_REPLICA_STATUSES,
                    pool__gpu_type=d.gpu_type,
                )
                .values("region__code")
                .annotate(g=Sum("gpus"))
                .values_list("region__code", "g")
            )
            allowed = billing.regions_within_quota(
                quota,
                gpu_type=d.gpu_type.code,
                regions=list(d.regions),
                gpus=d.gpus_per_replica,
                used_by_region=used,
            )
            if not allowed:
                raise Unschedulable(
                    f"the organization's GPU quota is used up in {', '.join(d.regions)}"
                )
            original = d.regions
            d.regions = allowed
            try:
                return place_replica(deployment=d, ordinal=ordinal)
            finally:
                d.regions = original

    def start_pending(self) -> None:
        for r in self.live():
            if r.status != ReplicaStatus.PENDING:
                continue
            try:
                started = self.driver(r.pool).start(_spec(self.d, r))
            except DriverUnavailable as exc:
                self.unavailable = str(exc)
                self.requeue(5)
                continue
            except DriverError as exc:
                self.fail(r, str(exc))
                continue
            Replica.objects.filter(pk=r.pk).update(
                status=ReplicaStatus.STARTING,
                handle=started.handle,
                url=started.url,
                started_at=timezone.now(),
            )
            event(
                self.d,
                "replica_started",
                f"started replica {r.ordinal + 1} as {started.handle} at {started.url}",
                r,
            )
            self.requeue(1)

    def summarize(self) -> None:
        d = self.d
        live = self.live()
        running = sum(r.status == ReplicaStatus.RUNNING for r in live)
        starting = sum(r.status in (ReplicaStatus.PENDING, ReplicaStatus.STARTING) for r in live)
        target = 0 if d.deleted_at else d.desired_replicas
        reason = ""
        if d.deleted_at:
            status = DeploymentStatus.DELETING if live else DeploymentStatus.DELETED
        elif target == 0:
            status = DeploymentStatus.STOPPED
            reason = f"stopping {len(live)} replica(s)" if live else ""
        elif running >= target:
            status = DeploymentStatus.RUNNING
        elif d.failure_count >= settings.REPLICA_MAX_FAILURES and not starting:
            status = DeploymentStatus.FAILED
            last = d.replicas.filter(status=ReplicaStatus.FAILED).order_by("-stopped_at").first()
            reason = (
                f"replicas failed {d.failure_count} times in a row; last: "
                f"{last.exit_reason if last else 'unknown'}. Scale or start to retry."
            )
        elif self.unschedulable and not running and not starting:
            status, reason = DeploymentStatus.PENDING, self.unschedulable
        elif self.unschedulable:
            status = DeploymentStatus.DEGRADED
            reason = f"{running} of {target} running; {self.unschedulable}"
        elif starting:
            status = DeploymentStatus.STARTING
            reason = f"{running} of {target} ready"
        elif running:
            status = DeploymentStatus.DEGRADED
            reason = f"{running} of {target} running; replacing failed replicas"
        else:
            status = DeploymentStatus.STARTING
            reason = "waiting to replace a failed replica"
        if self.unavailable:
            reason = f"{reason}; pool unreachable: {self.unavailable}".lstrip("; ")
        if (status, reason) != (d.status, d.status_reason):
            Deployment.objects.filter(pk=d.pk).update(status=status, status_reason=reason)
            if status in {
                DeploymentStatus.RUNNING,
                DeploymentStatus.FAILED,
                DeploymentStatus.DELETED,
                DeploymentStatus.STOPPED,
            } or (status == DeploymentStatus.PENDING and reason != d.status_reason):
                default = {
                    DeploymentStatus.RUNNING: f"all {running} replica(s) running",
                    DeploymentStatus.STOPPED: "stopped; all replicas stopped, GPUs released",
                    DeploymentStatus.DELETED: "deleted; all replicas stopped, GPUs released",
                }.get(status, "")
                event(d, status, reason or default)
        at_rest = {
            DeploymentStatus.STOPPED,
            DeploymentStatus.DELETED,
            DeploymentStatus.FAILED,
            DeploymentStatus.RUNNING,
        }
        if status in at_rest and not starting:
            self.result.requeue_in = None  # the periodic sweep keeps watching its health
        elif self.result.requeue_in is None:
            self.requeue(settings.RECONCILE_INTERVAL_S)
        self.result.status = status


def deployment_reconcile(*, deployment_id: int) -> ReconcileResult:
    """Bring one deployment's replicas to its desired state (one pass)."""
    me = _acquire_lease(deployment_id)
    if me is None:
        return ReconcileResult(busy=True)  # the holder's pass follows up itself
    try:
        p = _Pass(deployment_id)
        p.observe()
        p.converge()
        p.start_pending()
        p.summarize()
        return p.result
    finally:
        _release_lease(deployment_id, me)


def deployments_needing_reconcile() -> list[int]:
    """Deployments the periodic sweep should look at: everything not at rest."""
    at_rest = Q(status=DeploymentStatus.DELETED) | Q(
        status__in=[DeploymentStatus.STOPPED, DeploymentStatus.FAILED],
    ) & ~Q(replicas__status__in=LIVE_REPLICA_STATUSES)
    return list(Deployment.objects.exclude(at_rest).values_list("pk", flat=True).distinct())


# --- Pools ----------------------------------------------------------------------------


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
    if not replica.handle:
        return ""
    try:
        return driver_for(replica.pool).logs(replica.handle, tail=max(1, min(tail, 2000)))
    except DriverError as exc:
        return f"(logs unavailable: {exc})"


def local_pools_shutdown(*, why: str = "Gantry on this machine shut down") -> int:
    """Stop every replica the local driver runs on this machine, releasing its GPUs.
    Desired state is kept, so the next start brings the replicas back."""
    stopped = 0
    for pool in GpuPool.objects.filter(driver="local"):
        driver = driver_for(pool)
        live = (
            Replica.objects.filter(pool=pool, status__in=LIVE_REPLICA_STATUSES)
            .select_related("deployment", "node", "region")
            .order_by("pk")
        )
        for r in live:
            if r.handle:
                driver.stop(r.handle)
            _Pass(r.deployment_id).meter(r, timezone.now(), final=True)
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
    from billing.models import BillingAccount, Quota

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
                _enqueue_reconcile(d.pk)
            stopped += 1
    return stopped


def gpu_prices_refresh() -> int:
    """Copy the rate in force of each GPU type from billing's rate table into the GPU-type
    table, which placement and the marketplace read (one source of prices: the rates)."""
    changed = 0
    now = timezone.now()
    for gpu in GpuType.objects.all():
        cents = billing.gpu_rate_cents(gpu.code, now)
        if cents and cents != gpu.price_per_hour_cents:
            GpuType.objects.filter(pk=gpu.pk).update(price_per_hour_cents=cents)
            changed += 1
    return changed


# --- Autoscaling ----------------------------------------------------------------------


def load_report(*, deployment_id: int, in_flight: float, requests: int, at=None) -> None:
    """The gateway's view of a deployment (called every few seconds per deployment)."""
    from deployments.models import DeploymentLoad

    at = at or timezone.now()
    values = {"in_flight": in_flight}
    if requests:
        values["last_request_at"] = at
    DeploymentLoad.objects.update_or_create(deployment_id=deployment_id, defaults=values)


@transaction.atomic
def deployment_wake(*, deployment_id: int, at=None) -> bool:
    """A request came for a deployment scaled to zero: bring one replica back."""
    from deployments.models import DeploymentLoad

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
    _enqueue_reconcile(d.pk)
    return True


def autoscale(*, now=None) -> int:
    """Adjust every autoscaled deployment to its load: in-flight requests per replica
    against its target, between min and max (quota permitting); and put idle ones to
    sleep. Every decision is an event."""
    import math

    from deployments.models import DeploymentLoad

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
                _enqueue_reconcile(d.pk)
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
    from deployments.models import TrafficMinute

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
