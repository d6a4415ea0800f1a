"""Desired state: create, scale, stop, start and delete deployments.

Owns: validating what a user asks for, promising capacity (``reserve_gpus``) and recording
the new desired state; the reconciler (``reconcile.py``) then makes it so.

Invariants:
* Capacity is promised only under the organization's quota lock (``reserve_gpus``), in the
  transaction that records the promise: two concurrent requests can never together pass a
  quota that each alone fits.
* Every change is one transaction with its event; the reconcile it needs is queued after
  the commit.
* Scale-down and delete release GPUs before the caller gets its answer (``deployment_settle``
  after the commit); the worker finishes what that pass could not.
"""

import logging
import re

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing import services as billing
from deployments.drivers import DriverUnavailable
from deployments.models import (
    Deployment,
    DeploymentStatus,
    Engine,
    GpuType,
    Node,
    Region,
)
from deployments.selectors import committed_gpus
from deployments.services.events import enqueue_reconcile, event
from deployments.services.reconcile import deployment_reconcile
from deployments.services.weights import deployment_weights_attach, hub_ref_parse
from deployments.validation import runtime_check
from portal.models import Organization

log = logging.getLogger("deployments.services")

MAX_REPLICAS = 64
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


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
        enabled = set(Region.objects.filter(enabled=True).values_list("code", flat=True))
        unknown = [r for r in regions if r not in enabled]
        if unknown:
            errors["regions"] = (
                f"Unknown region {unknown[0]!r}; choose from: {', '.join(sorted(enabled))}."
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
    # With no errors every value above was set; this narrows the types for the checker.
    if gpu is None or gpus is None or low is None or high is None or desired is None:
        raise ValidationError({"__all__": "The deployment could not be validated."})
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
    weights = hub_ref_parse(deployment.model_ref)
    if weights:
        deployment_weights_attach(deployment=deployment, weights=weights)
    enqueue_reconcile(deployment.pk)
    return deployment


@transaction.atomic
def deployment_scale(*, deployment: Deployment, replicas) -> Deployment:
    # The row lock orders this against a concurrent scale, wake, autoscale or delete of the
    # same deployment: `before` below is then the value this change really replaces.
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
        asleep=False,  # a person's choice: stopped stays stopped, started is awake
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
    enqueue_reconcile(d.pk)
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


def deployment_stop(*, deployment: Deployment) -> Deployment:
    return deployment_scale(deployment=deployment, replicas=0)


def deployment_start(*, deployment: Deployment) -> Deployment:
    return deployment_scale(deployment=deployment, replicas=max(deployment.min_replicas, 1))


@transaction.atomic
def deployment_delete(*, deployment: Deployment) -> None:
    # Locked so a second delete (a double click, a retried API call) sees deleted_at and
    # does nothing: one "deleting" event, one settle.
    d = Deployment.objects.select_for_update().get(pk=deployment.pk)
    if d.deleted_at is not None:
        return
    Deployment.objects.filter(pk=d.pk).update(
        deleted_at=timezone.now(), desired_replicas=0, status=DeploymentStatus.DELETING
    )
    event(d, "deleting", "delete requested; stopping replicas and releasing GPUs")
    transaction.on_commit(lambda: deployment_settle(deployment=d))
    enqueue_reconcile(d.pk)


def deployment_settle(*, deployment: Deployment) -> None:
    """Run a reconcile pass now (scale-down and delete call it after their commit), so
    that GPUs are released before the answer goes out. The worker finishes whatever this
    cannot."""
    try:
        deployment_reconcile(deployment_id=deployment.pk)
    except DriverUnavailable as exc:
        log.warning("deployment %s: driver unavailable during settle: %s", deployment.pk, exc)
