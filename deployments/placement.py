"""Placement: filter the nodes a replica may go to, score them, and hold GPUs atomically.

Holding GPUs is one conditional UPDATE per attempt ("add n where allocated + n <= total"),
so under any number of concurrent placers a node is never over-allocated: the database
re-checks the condition under the row lock. A CHECK constraint backs it up.
"""

from django.db.models import Case, F, IntegerField, Sum, Value, When
from django.db.models.functions import Coalesce

from deployments.models import (
    LIVE_REPLICA_STATUSES,
    Deployment,
    GpuPool,
    Node,
    Region,
    Replica,
    ReplicaStatus,
)

# Candidates fetched per attempt. Losing a race on one node moves on to the next.
CANDIDATES = 12


class Unschedulable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _candidates(deployment: Deployment, exclude: set[int]):
    n = deployment.gpus_per_replica
    rank = Case(
        *[
            When(pool__region__code=code, then=Value(i))
            for i, code in enumerate(deployment.regions)
        ],
        output_field=IntegerField(),
    )
    price = Coalesce("pool__price_per_hour_cents", "pool__gpu_type__price_per_hour_cents")
    return (
        Node.objects.filter(
            pool__region__code__in=deployment.regions,
            pool__region__enabled=True,
            pool__gpu_type_id=deployment.gpu_type_id,
            pool__enabled=True,
            pool__healthy=True,
            healthy=True,
            gpus_allocated__lte=F("gpus_total") - n,
        )
        .exclude(pk__in=exclude)
        .annotate(rank=rank, price=price, free=F("gpus_total") - F("gpus_allocated"))
        # Preferred region first, then the cheaper pool, then the node with the most
        # room (spreads load and keeps big holes for big replicas elsewhere).
        .order_by("rank", "price", "-free", "pk")
        .values_list("pk", "pool_id", "pool__region_id")[:CANDIDATES]
    )


def place_replica(*, deployment: Deployment, ordinal: int) -> Replica:
    """Hold GPUs on the best node and record the replica there. Call inside a transaction:
    if the replica row cannot be written, the hold rolls back with it."""
    n = deployment.gpus_per_replica
    tried: set[int] = set()
    while True:
        candidates = list(_candidates(deployment, tried))
        if not candidates:
            raise Unschedulable(explain_unschedulable(deployment))
        for node_id, pool_id, region_id in candidates:
            tried.add(node_id)
            held = Node.objects.filter(
                pk=node_id, healthy=True, gpus_allocated__lte=F("gpus_total") - n
            ).update(gpus_allocated=F("gpus_allocated") + n)
            if held:
                return Replica.objects.create(
                    deployment=deployment,
                    ordinal=ordinal,
                    region_id=region_id,
                    pool_id=pool_id,
                    node_id=node_id,
                    gpus=n,
                    status=ReplicaStatus.PENDING,
                )


def explain_unschedulable(deployment: Deployment) -> str:
    """Why no node fits, in words: "needs 2×H200 on one node; us-east has 1 free, …"."""
    n, gpu = deployment.gpus_per_replica, deployment.gpu_type
    regions = {r.code: r for r in Region.objects.filter(code__in=deployment.regions)}
    parts = []
    for code in deployment.regions:
        region = regions.get(code)
        if region is None or not region.enabled:
            parts.append(f"{code} is not available")
            continue
        pools = list(GpuPool.objects.filter(region=region, gpu_type=gpu))
        if not pools:
            parts.append(f"{code} has no {gpu.name} pool")
            continue
        usable = [p for p in pools if p.enabled and p.healthy]
        if not usable:
            parts.append(f"{code}'s {gpu.name} pool is unhealthy or disabled")
            continue
        nodes = Node.objects.filter(pool__in=usable, healthy=True)
        free = [node.gpus_free for node in nodes]
        best, total = max(free, default=0), sum(free)
        if total == 0:
            parts.append(f"{code} has none free")
        elif best == total:
            parts.append(f"{code} has {best} free")
        else:
            parts.append(f"{code} has {total} free, at most {best} on one node")
    unit = "CPU slot" if gpu.is_cpu else gpu.name
    return f"needs {n}×{unit} on one node; " + ", ".join(parts)


def capacity_by_region_and_type() -> list[dict]:
    """Total, allocated and free GPUs per region and GPU type (one query)."""
    rows = (
        Node.objects.filter(pool__enabled=True)
        .values("pool__region__code", "pool__region__name", "pool__gpu_type__name")
        .annotate(total=Sum("gpus_total"), allocated=Sum("gpus_allocated"))
        .order_by("pool__region__code", "pool__gpu_type__name")
    )
    return [
        {
            "region": r["pool__region__code"],
            "region_name": r["pool__region__name"],
            "gpu_type": r["pool__gpu_type__name"],
            "total": r["total"] or 0,
            "allocated": r["allocated"] or 0,
            "free": (r["total"] or 0) - (r["allocated"] or 0),
        }
        for r in rows
    ]


def live_replica_gpus_by_node() -> dict[int, int]:
    """GPUs held by live replicas per node — what ``gpus_allocated`` must equal."""
    return dict(
        Replica.objects.filter(status__in=LIVE_REPLICA_STATUSES)
        .values("node_id")
        .annotate(g=Sum("gpus"))
        .values_list("node_id", "g")
    )
