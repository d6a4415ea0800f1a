from django.db.models import Count, Prefetch, Q, QuerySet, Sum

from deployments.models import (
    LIVE_REPLICA_STATUSES,
    Deployment,
    DeploymentEvent,
    DeploymentStatus,
    GpuPool,
    Region,
    Replica,
)
from portal.models import Organization


def live_replicas() -> Prefetch:
    return Prefetch(
        "replicas",
        queryset=Replica.objects.filter(status__in=LIVE_REPLICA_STATUSES)
        .select_related("region", "pool", "node")
        .order_by("ordinal"),
        to_attr="live_replicas",
    )


def deployment_list(*, org: Organization) -> QuerySet[Deployment]:
    return (
        Deployment.objects.filter(organization=org)
        .exclude(status=DeploymentStatus.DELETED)
        .select_related("gpu_type")
        .prefetch_related(live_replicas())
        .order_by("-created_at")
    )


def deployment_events(*, deployment: Deployment) -> QuerySet[DeploymentEvent]:
    return deployment.events.select_related("replica").order_by("-at", "-id")


def replica_history(*, deployment: Deployment, limit: int = 20) -> list[Replica]:
    return list(
        deployment.replicas.exclude(status__in=LIVE_REPLICA_STATUSES)
        .select_related("region", "pool", "node")
        .order_by("-created_at")[:limit]
    )


def region_list() -> QuerySet[Region]:
    pools = GpuPool.objects.select_related("gpu_type").annotate(
        gpus_total=Sum("nodes__gpus_total"),
        gpus_allocated=Sum("nodes__gpus_allocated"),
        node_count=Count("nodes"),
    )
    return (
        Region.objects.filter(enabled=True)
        .prefetch_related(Prefetch("pools", queryset=pools.order_by("name")))
        .order_by("code")
    )


def endpoint_of(deployment: Deployment) -> str | None:
    """Where clients reach the model: a running replica's OpenAI base URL."""
    replicas = getattr(deployment, "live_replicas", None)
    if replicas is None:
        replicas = list(deployment.replicas.filter(status="running").order_by("ordinal"))
    for r in replicas:
        if r.status == "running" and r.url:
            return f"{r.url}/v1"
    return None


def org_gpu_usage(*, org: Organization) -> dict:
    return Replica.objects.filter(
        deployment__organization=org, status__in=LIVE_REPLICA_STATUSES
    ).aggregate(gpus=Sum("gpus"), replicas=Count("id", filter=Q(gpus__gt=0)))
