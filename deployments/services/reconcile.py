"""The reconciler: one pass that brings a deployment's replicas to its desired state.

Owns: observing replicas (driver status, health probe), stopping surplus ones, placing and
starting missing ones, replacing failed ones with backoff, and the deployment's status and
reason.

Invariants (it is idempotent and safe to kill at any point):
* GPUs are held in the same transaction that writes the replica row (placement), so a crash
  never leaves a hold without a row (nor a row without its hold).
* A runtime is named after its replica row, so a start that died before recording its
  handle is adopted on the next pass instead of started twice.
* A lease on the deployment row (services.lease) keeps two reconcilers apart; a lease whose
  holder died on this host is taken over at once, elsewhere after it expires.
* A replica is metered before its GPUs are released, so the ledger always has the time the
  GPUs were held.
* Engines are probed with their replica's own key (deployments.engine_auth), the way the
  gateway calls them, and the timeline never says where a replica listens.
"""

import logging
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing import services as billing
from billing.models import GpuQuota
from deployments.drivers import DriverError, DriverUnavailable, ReplicaSpec, driver_for
from deployments.engine_auth import engine_auth_headers
from deployments.engines import model_file, weights_progress
from deployments.models import (
    ACTIVE_REPLICA_STATUSES,
    LIVE_REPLICA_STATUSES,
    Deployment,
    DeploymentStatus,
    GpuPool,
    Replica,
    ReplicaStatus,
)
from deployments.placement import Unschedulable, place_replica
from deployments.selectors import region_gpu_usage
from deployments.services.events import event
from deployments.services.lease import lease_acquire, lease_release
from deployments.services.metering import release_replica_gpus, replica_meter
from deployments.services.signals import drain_state, replica_drain, replicas_undrain
from deployments.services.weights import engine_hub_token, weights_model_path, weights_wait

log = logging.getLogger("deployments.services")


@dataclass
class ReconcileResult:
    busy: bool = False
    status: str = ""
    requeue_in: float | None = None
    actions: list[str] = field(default_factory=list)


def _probe(url: str, replica_id: int, engine: str = "") -> bool:
    # With the replica's key, as the gateway calls it (engines refuse callers without it).
    # The URL is the driver's own (http://<node address>:<port>), never a tenant's.
    # llama.cpp's Python server serves every authenticated route, /v1/models too, under
    # its model lock, and a request waiting on that lock cuts the stream being generated
    # short: its probe is the schema page, which takes no lock (the model is loaded
    # before the server listens).
    path = "/openapi.json" if engine == "llama.cpp" else "/v1/models"
    request = urllib.request.Request(f"{url}{path}", headers=engine_auth_headers(replica_id))  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=3) as response:  # noqa: S310
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
        # Hub weights load from the replica's own region's cache.
        model_ref=weights_model_path(d, r.region_id) or d.model_ref,
        engine_args=tuple(d.engine_args or ()),
        gpus=r.gpus,
        gpu_type=d.gpu_type.code,
        node_name=r.node.name,
        node_address=r.node.address,
        node_config=dict(r.node.config or {}),
        gpu_indices=tuple(r.gpu_indices or ()),
        hub_token=engine_hub_token(d),
    )


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
        self.fetching = ("", "")  # the weights' state and progress while they are fetched

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

    def meter(self, r: Replica, end, final: bool = False) -> None:
        replica_meter(r, end, deployment=self.d, final=final)

    # --- replica transitions ----------------------------------------------------------

    def stop(self, r: Replica, why: str) -> None:
        # STOPPING first: if this pass dies before the end, the next one finishes the stop
        # (observe() picks STOPPING replicas up) instead of seeing a running replica.
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
            if r.status == ReplicaStatus.DRAINING:
                done, how = drain_state(r, now=self.now)
                if done or self.d.deleted_at:
                    self.stop(r, f"{r.exit_reason or 'scaled down'}; {how or 'deleted'}")
                else:
                    self.meter(r, self.now)
                    self.requeue(2)
                continue
            if r.status == ReplicaStatus.PENDING:
                continue
            status = self.driver(r.pool).status(r.handle)
            if status.state != "running":
                self.fail(r, status.detail or status.state)
                continue
            healthy = _probe(r.url, r.pk, self.d.engine)
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
        live = self.live()
        active = [r for r in live if r.status in ACTIVE_REPLICA_STATUSES]
        if len(active) > target:
            # Stop the least useful first: not yet running, then the highest slots. A
            # running one drains first (its requests in flight finish), unless deleted.
            order = sorted(active, key=lambda r: (r.status == ReplicaStatus.RUNNING, -r.ordinal))
            why = "deployment deleted" if d.deleted_at else f"scaled to {target}"
            for r in order[: len(active) - target]:
                reason = why
                if r.status == ReplicaStatus.RUNNING and not d.deleted_at:
                    replica_drain(d, r, why)
                    done, how = drain_state(r, now=timezone.now())
                    if not done:  # observe() stops it once drained
                        self.requeue(2)
                        continue
                    reason = f"{why}; {how}"
                self.stop(r, reason)
            return
        missing = target - len(active)
        if missing <= 0:
            return
        # Scaled back up while replicas drain: take them back first, they are warm.
        missing -= replicas_undrain(d, live, missing)
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
        used = {r.ordinal for r in live}
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
        self.fetching = weights_wait(self.d)
        if self.fetching[0] or self.d.weights_id:
            return self.fetching[1]
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
            used = region_gpu_usage(organization_id=d.organization_id, gpu_type=d.gpu_type.code)
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
                # Not where it listens: tenants read the timeline.
                f"started replica {r.ordinal + 1} as {started.handle}",
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
        elif self.fetching[0] and not running and not starting:
            failed = self.fetching[0] == "failed"
            status = DeploymentStatus.FAILED if failed else DeploymentStatus.FETCHING
            reason = self.fetching[1]
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
        draining = any(r.status == ReplicaStatus.DRAINING for r in live)
        if status in at_rest and not starting and not draining:
            self.result.requeue_in = None  # the periodic sweep keeps watching its health
        elif self.result.requeue_in is None:
            self.requeue(settings.RECONCILE_INTERVAL_S)
        self.result.status = status


def deployment_reconcile(*, deployment_id: int) -> ReconcileResult:
    """Bring one deployment's replicas to its desired state (one pass)."""
    me = lease_acquire(deployment_id)
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
        lease_release(deployment_id, me)


def deployments_needing_reconcile() -> list[int]:
    """Deployments the periodic sweep should look at: everything not at rest."""
    at_rest = Q(status=DeploymentStatus.DELETED) | Q(
        status__in=[DeploymentStatus.STOPPED, DeploymentStatus.FAILED],
    ) & ~Q(replicas__status__in=LIVE_REPLICA_STATUSES)
    return list(Deployment.objects.exclude(at_rest).values_list("pk", flat=True).distinct())
