"""Reads about deployments, replicas and GPUs. The one place GPU figures are computed:
committed GPUs (what quotas count organization-wide) and per-region GPU use (what
per-region quotas count); services, quotas pages and the API call these."""

from datetime import timedelta

from django.conf import settings
from django.db.models import Count, F, Prefetch, Q, QuerySet, Sum
from django.utils import timezone

from billing.plans import quota_get_or_create
from billing.selectors import month_spend_cents
from deployments.models import (
    ITL_BUCKETS_MS,
    LATENCY_BUCKETS_MS,
    LIVE_REPLICA_STATUSES,
    TTFT_BUCKETS_MS,
    Deployment,
    DeploymentEvent,
    DeploymentStatus,
    GpuPool,
    Region,
    Replica,
    TrafficMinute,
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
        .select_related("gpu_type", "weights__region")
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
    """Where clients reach the model once a replica runs: the gateway's OpenAI base URL
    (the deployment's name is the `model`)."""
    replicas = getattr(deployment, "live_replicas", None)
    if replicas is None:
        replicas = list(deployment.replicas.filter(status="running"))
    if any(r.status == "running" and r.url for r in replicas):
        return f"{settings.GATEWAY_URL}/v1"
    return None


def org_gpu_usage(*, org: Organization) -> dict:
    return Replica.objects.filter(
        deployment__organization=org, status__in=LIVE_REPLICA_STATUSES
    ).aggregate(gpus=Sum("gpus"), replicas=Count("id", filter=Q(gpus__gt=0)))


def committed_gpus(organization: Organization, gpu_type: str) -> int:
    """GPUs of a type the organization's deployments ask for (desired, not yet deleted):
    what its organization-wide GPU quota counts."""
    total = Deployment.objects.filter(
        organization=organization, gpu_type__code=gpu_type, deleted_at__isnull=True
    ).aggregate(g=Sum(F("desired_replicas") * F("gpus_per_replica")))["g"]
    return total or 0


def region_gpu_usage(*, organization_id: int, gpu_type: str) -> dict[str, int]:
    """GPUs of a type the organization's live replicas hold, per region code: what its
    per-region GPU quotas count."""
    return dict(
        Replica.objects.filter(
            deployment__organization_id=organization_id,
            status__in=LIVE_REPLICA_STATUSES,
            pool__gpu_type__code=gpu_type,
        )
        .values("region__code")
        .annotate(g=Sum("gpus"))
        .values_list("region__code", "g")
    )


def quota_usage(*, org: Organization) -> list[dict]:
    """Each limit of the organization's quota next to what it uses."""
    quota = quota_get_or_create(org)
    live = Deployment.objects.filter(organization=org, deleted_at__isnull=True)
    rows = [
        {
            "name": "deployments",
            "region": "",
            "gpu_type": "",
            "limit": quota.max_deployments,
            "used": live.count(),
        }
    ]
    for limit in quota.gpu_limits.all().order_by("gpu_type", "region"):
        if limit.region:
            by_region = region_gpu_usage(organization_id=org.pk, gpu_type=limit.gpu_type)
            used = by_region.get(limit.region) or 0
        else:
            used = committed_gpus(org, limit.gpu_type)
        rows.append(
            {
                "name": "gpus",
                "region": limit.region,
                "gpu_type": limit.gpu_type,
                "limit": limit.max_gpus,
                "used": used,
            }
        )
    rows.append(
        {
            "name": "monthly_spend_cents",
            "region": "",
            "gpu_type": "",
            "limit": quota.monthly_spend_limit_cents,
            "used": month_spend_cents(org),
        }
    )
    return rows


def bucket_quantile(bounds: list, counts: list[int], q: float):
    """The upper bound (ms) of the bucket holding quantile `q`; None without counts or
    past the last bound."""
    total = sum(counts)
    if not total:
        return None
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= q * total:
            return bounds[i] if i < len(bounds) else None
    return None


def _sum_counts(rows) -> list[int]:
    out: list[int] = []
    for counts in rows:
        counts = counts or []
        if len(out) < len(counts):
            out += [0] * (len(counts) - len(out))
        for i, n in enumerate(counts):
            out[i] += n
    return out


def _latency(ttft: list[int], itl: list[int]) -> dict:
    return {
        "ttft_p50_ms": bucket_quantile(TTFT_BUCKETS_MS, ttft, 0.5),
        "ttft_p95_ms": bucket_quantile(TTFT_BUCKETS_MS, ttft, 0.95),
        "itl_p50_ms": bucket_quantile(ITL_BUCKETS_MS, itl, 0.5),
        "itl_p95_ms": bucket_quantile(ITL_BUCKETS_MS, itl, 0.95),
    }


def ttft_recent(*, deployment: Deployment, now=None, minutes: int = 2) -> dict:
    """TTFT p95 and how many answers it is over, for the last few minutes (the autoscaler's
    SLO signal)."""
    now = now or timezone.now()
    rows = TrafficMinute.objects.filter(
        deployment=deployment, minute__gte=now - timedelta(minutes=minutes), minute__lte=now
    ).values_list("ttft_buckets", flat=True)
    counts = _sum_counts(rows)
    return {"count": sum(counts), "p95_ms": bucket_quantile(TTFT_BUCKETS_MS, counts, 0.95)}


def traffic_summary(*, deployment: Deployment, minutes: int = 60) -> dict:
    """Requests/s, p50/p95 latency, TTFT and inter-token latency and tokens/s over the last
    hour, from the gateway; the same per replica."""
    since = timezone.now() - timedelta(minutes=minutes)
    rows = list(
        TrafficMinute.objects.filter(deployment=deployment, minute__gte=since).order_by("minute")
    )
    buckets = _sum_counts(r.latency_buckets for r in rows)
    seconds = minutes * 60
    per: dict[str, dict] = {}
    for r in rows:
        for replica_id, p in (r.per_replica or {}).items():
            into = per.setdefault(replica_id, {"requests": 0, "tokens": 0, "ttft": [], "itl": []})
            into["requests"] += p.get("requests", 0)
            into["tokens"] += p.get("tokens", 0)
            into["ttft"] = _sum_counts([into["ttft"], p.get("ttft")])
            into["itl"] = _sum_counts([into["itl"], p.get("itl")])
    replicas = [
        {
            "replica": int(replica_id),
            "requests": p["requests"],
            "requests_per_s": round(p["requests"] / seconds, 3),
            "tokens_per_s": round(p["tokens"] / seconds, 2),
            **_latency(p["ttft"], p["itl"]),
        }
        for replica_id, p in sorted(per.items(), key=lambda kv: int(kv[0]))
    ]
    requests = sum(r.requests for r in rows)
    return {
        "requests": requests,
        "errors": sum(r.errors for r in rows),
        "requests_per_s": round(requests / seconds, 3),
        "tokens_per_s": round(sum(r.tokens for r in rows) / seconds, 2),
        "p50_ms": bucket_quantile(LATENCY_BUCKETS_MS, buckets, 0.5),
        "p95_ms": bucket_quantile(LATENCY_BUCKETS_MS, buckets, 0.95),
        **_latency(
            _sum_counts(r.ttft_buckets for r in rows), _sum_counts(r.itl_buckets for r in rows)
        ),
        "replicas": replicas,
        "series": [[int(r.minute.timestamp()), r.requests] for r in rows],
    }


PLAYABLE = {
    DeploymentStatus.PENDING,
    DeploymentStatus.PLACING,
    DeploymentStatus.STARTING,
    DeploymentStatus.RUNNING,
    DeploymentStatus.DEGRADED,
}


def playable(deployment: Deployment) -> bool:
    """Whether the playground is offered: the deployment serves, is coming up, or sleeps
    (the first request wakes it). A stopped or failed one has nothing to talk to."""
    return deployment.status in PLAYABLE or deployment.asleep


def playground_deployments(*, org: Organization, source_prefix: str = "") -> list[Deployment]:
    """The organization's deployments the playground can talk to (those from one catalog
    model when `source_prefix` is e.g. "catalog:qwen3-8b/")."""
    rows = Deployment.objects.filter(organization=org).exclude(status=DeploymentStatus.DELETED)
    if source_prefix:
        rows = rows.filter(source__startswith=source_prefix)
    return [d for d in rows.order_by("name") if playable(d)]
