"""Placement: filter the nodes a replica may go to, score them, and hold GPUs atomically.

The chosen node is locked (SKIP LOCKED, so placers spread over nodes instead of queueing
for one) and its GPUs are held with a conditional UPDATE ("add n where allocated + n <=
total"): under any number of concurrent placers a node is never over-allocated. A CHECK
constraint backs it up.

Which of the node's GPUs a replica gets (its device indices) is decided in the same
transaction, while the node's row is still locked by the hold: every placer that could
pick the same node waits for that lock, and reads the indices already taken only after
it has it (a new statement, so a fresh snapshot under READ COMMITTED). Two live replicas
on one node therefore never share an index.
"""

import json

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, F, IntegerField, Sum, Value, When

from deployments.artifacts import organization_artifacts, pool_runs_image
from deployments.models import (
    LIVE_REPLICA_STATUSES,
    Deployment,
    GpuPool,
    Node,
    Region,
    Replica,
    ReplicaStatus,
)


class Unschedulable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _deployment_image(deployment: Deployment) -> str:
    return deployment.image or settings.GANTRY_ENGINE_IMAGES.get(deployment.engine, "")


def image_pool_ids(deployment: Deployment) -> list[int]:
    """The pools of the deployment's regions and GPU type whose image allow-list lets
    them run its image (an organization's own build runs where pools allow builds)."""
    image = _deployment_image(deployment)
    pools = list(
        GpuPool.objects.filter(
            region__code__in=deployment.regions, gpu_type_id=deployment.gpu_type_id
        ).only("pk", "allowed_images", "runs_org_builds")
    )
    if all(image in p.effective_images() for p in pools):
        return [p.pk for p in pools]
    own = organization_artifacts(deployment.organization).images if deployment.image else set()
    return [p.pk for p in pools if pool_runs_image(p, image, own)]


def _candidates(deployment: Deployment, pool_ids: list[int]):
    n = deployment.gpus_per_replica
    rank = Case(
        *[
            When(pool__region__code=code, then=Value(i))
            for i, code in enumerate(deployment.regions)
        ],
        output_field=IntegerField(),
    )
    return (
        Node.objects.filter(
            pool__region__code__in=deployment.regions,
            pool__region__enabled=True,
            pool__gpu_type_id=deployment.gpu_type_id,
            pool_id__in=pool_ids,
            pool__enabled=True,
            pool__healthy=True,
            healthy=True,
            gpus_allocated__lte=F("gpus_total") - n,
        )
        .annotate(rank=rank, free=F("gpus_total") - F("gpus_allocated"))
        # Preferred region first, then the node with the most room (spreads load and keeps
        # big holes for big replicas elsewhere). Price does not rank pools: a GPU-hour of a
        # type costs the same in every pool (one price, billing's rate table).
        .order_by("rank", "-free", "pk")
        .values_list("pk", "pool_id", "pool__region_id")
    )


def place_replica(*, deployment: Deployment, ordinal: int) -> Replica:
    """Hold GPUs on the best node and record the replica there, atomically: if the replica
    row cannot be written (say a concurrent pass filled the slot: IntegrityError), the
    hold is undone with it. On PostgreSQL the hold is one statement and the indices a
    second, in one transaction; elsewhere the ORM does the same steps.

    Concurrent placers do not queue behind one another for the same "best" node: each
    takes the best node nobody else is deciding on right now (FOR UPDATE SKIP LOCKED).
    Only when every fitting node is being decided on does a placer wait for one.
    """
    pool_ids = image_pool_ids(deployment)
    if connection.vendor == "postgresql":
        return _place_postgres(deployment=deployment, ordinal=ordinal, pool_ids=pool_ids)
    return _place_portable(deployment=deployment, ordinal=ordinal, pool_ids=pool_ids)


# One statement on PostgreSQL: choose and lock the node, hold its GPUs, write the
# replica (its GPU indices follow in _INDICES_SQL). Same filter and order as
# _candidates(); the ORM version below is the reference (and what SQLite runs), and the
# tests run both on PostgreSQL.
_PLACE_SQL = """
WITH pools AS (
    SELECT p.id, p.region_id,
           array_position(%(regions)s::text[], r.code::text) AS rank
    FROM deployments_gpupool p
    JOIN deployments_region r ON r.id = p.region_id
    WHERE r.code = ANY(%(regions)s::text[]) AND r.enabled AND p.gpu_type_id = %(gpu_type)s
      AND p.id = ANY(%(pools)s::bigint[]) AND p.enabled AND p.healthy
), best AS (
    -- The most preferred region's pools that have room at all: only their nodes are
    -- ranked below.
    SELECT rank FROM pools
    WHERE EXISTS (
        SELECT 1 FROM deployments_node n
        WHERE n.pool_id = pools.id AND n.healthy AND n.gpus_allocated <= n.gpus_total - %(n)s
    )
    ORDER BY rank
    LIMIT 1
), pick AS (
    SELECT n.id, n.pool_id, pools.region_id
    FROM deployments_node n
    JOIN pools ON pools.id = n.pool_id
    JOIN best ON best.rank = pools.rank
    WHERE n.healthy AND n.gpus_allocated <= n.gpus_total - %(n)s
    ORDER BY n.gpus_total - n.gpus_allocated DESC, n.id
    LIMIT 1
    FOR UPDATE OF n {skip}
), held AS (
    UPDATE deployments_node n SET gpus_allocated = n.gpus_allocated + %(n)s
    FROM pick
    WHERE n.id = pick.id AND n.gpus_allocated <= n.gpus_total - %(n)s
    RETURNING n.id AS node_id, pick.pool_id, pick.region_id
)
INSERT INTO deployments_replica
    (deployment_id, ordinal, region_id, pool_id, node_id, gpus, gpu_indices, status, handle,
     url, health_failures, exit_reason, created_at)
SELECT %(deployment)s, %(ordinal)s, region_id, pool_id, node_id, %(n)s, '[]', 'pending', '',
       '', 0, '', now()
FROM held
RETURNING id, region_id, pool_id, node_id, created_at
"""


# The n lowest device indices of the node that no other live replica holds, written on
# the new replica: _free_indices() below in one statement.
_INDICES_SQL = """
UPDATE deployments_replica SET gpu_indices = (
    SELECT COALESCE(jsonb_agg(i ORDER BY i), '[]'::jsonb) FROM (
        SELECT i FROM deployments_node n, generate_series(0, n.gpus_total - 1) AS i
        WHERE n.id = %(node)s AND NOT EXISTS (
            SELECT 1 FROM deployments_replica o
            WHERE o.node_id = %(node)s AND o.id <> %(id)s AND o.gpus > 0
              AND o.status IN ('pending', 'starting', 'running', 'stopping')
              AND o.gpu_indices @> to_jsonb(i)
        )
        ORDER BY i
        LIMIT %(n)s
    ) free
)
WHERE id = %(id)s
RETURNING gpu_indices
"""


def _short_of_indices(node_id: int, free: int, n: int) -> str:
    # The count said there was room but the indices disagree: replicas placed before
    # indices were recorded hold some without saying which. Refuse rather than share.
    return f"node {node_id} has {free} unassigned GPU indices, needs {n}"


def _free_indices(node_id: int, n: int, exclude: int | None = None) -> list[int]:
    """The ``n`` lowest device indices of the node that no live replica holds. Call it only
    while this transaction holds the node's row lock (see the module's docstring)."""
    total = Node.objects.filter(pk=node_id).values_list("gpus_total", flat=True).get()
    taken = set()
    for held in (
        Replica.objects.filter(node_id=node_id, status__in=LIVE_REPLICA_STATUSES, gpus__gt=0)
        .exclude(pk=exclude)
        .values_list("gpu_indices", flat=True)
    ):
        taken.update(i for i in held or () if isinstance(i, int))
    free = [i for i in range(total) if i not in taken]
    if len(free) < n:
        raise Unschedulable(_short_of_indices(node_id, len(free), n))
    return free[:n]


# Atomic: the replica row is written by the first statement and its GPU indices by the
# second; a node whose indices disagree with its count must leave neither behind.
@transaction.atomic
def _place_postgres(
    *, deployment: Deployment, ordinal: int, pool_ids: list[int] | None = None
) -> Replica:
    n = deployment.gpus_per_replica
    if pool_ids is None:
        pool_ids = image_pool_ids(deployment)
    params = {
        "regions": list(deployment.regions),
        "pools": pool_ids,
        "gpu_type": deployment.gpu_type_id,
        "n": n,
        "deployment": deployment.pk,
        "ordinal": ordinal,
    }
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        # Django turns prepared statements off for its client-side-binding cursors; they
        # are unaffected by this, and only statements asked with prepare=True get one.
        raw.prepare_threshold = 2**31 - 1
    for skip in ("SKIP LOCKED", ""):
        # A server-side prepared statement on this connection (Django's own cursors bind
        # on the client and re-plan every time): planning was a third of the cost.
        with psycopg.Cursor(raw) as cursor:
            cursor.execute(_PLACE_SQL.format(skip=skip), params, prepare=True)
            row = cursor.fetchone()
        if row is not None:
            pk, region_id, pool_id, node_id, created_at = row
            # Still inside the transaction that holds the node's row lock (see above).
            with psycopg.Cursor(raw) as cursor:
                cursor.execute(_INDICES_SQL, {"node": node_id, "id": pk, "n": n}, prepare=True)
                indices = cursor.fetchone()[0]
            if isinstance(indices, str):  # Django's connection leaves jsonb undecoded
                indices = json.loads(indices)
            if len(indices) < n:
                raise Unschedulable(_short_of_indices(node_id, len(indices), n))
            replica = Replica(
                pk=pk,
                deployment=deployment,
                ordinal=ordinal,
                region_id=region_id,
                pool_id=pool_id,
                node_id=node_id,
                gpus=n,
                gpu_indices=indices,
                status=ReplicaStatus.PENDING,
                created_at=created_at,
            )
            replica._state.adding = False
            return replica
    # Either nothing fits, or the preferred group filled up while this placer waited:
    # the portable path looks again from scratch (and explains when nothing fits).
    return _place_portable(deployment=deployment, ordinal=ordinal, pool_ids=pool_ids)


@transaction.atomic
def _place_portable(
    *, deployment: Deployment, ordinal: int, pool_ids: list[int] | None = None
) -> Replica:
    n = deployment.gpus_per_replica
    if pool_ids is None:
        pool_ids = image_pool_ids(deployment)
    for skip_locked in (True, False):
        # SQLite has no row locks (its writers are serialized whole); the clause is a no-op.
        row = (
            _candidates(deployment, pool_ids)
            .select_for_update(skip_locked=skip_locked, of=("self",))
            .first()
        )
        if row is None and skip_locked:
            continue  # nothing free, or all of it locked: look again, waiting this time
        if row is None:
            break
        node_id, pool_id, region_id = row
        # The row is locked and was re-checked under the lock; the condition stays as a
        # second guard (and is what protects databases without row locks).
        held = Node.objects.filter(pk=node_id, gpus_allocated__lte=F("gpus_total") - n).update(
            gpus_allocated=F("gpus_allocated") + n
        )
        if held:
            return Replica.objects.create(
                deployment=deployment,
                ordinal=ordinal,
                region_id=region_id,
                pool_id=pool_id,
                node_id=node_id,
                gpus=n,
                gpu_indices=_free_indices(node_id, n),
                status=ReplicaStatus.PENDING,
            )
    raise Unschedulable(explain_unschedulable(deployment, pool_ids=pool_ids))


def explain_unschedulable(deployment: Deployment, *, pool_ids: list[int] | None = None) -> str:
    """Why no node fits, in words: "needs 2×H200 on one node; us-east has 1 free, …"."""
    n, gpu = deployment.gpus_per_replica, deployment.gpu_type
    if pool_ids is None:
        pool_ids = image_pool_ids(deployment)
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
        usable = [p for p in usable if p.pk in pool_ids]
        if not usable:
            parts.append(f"{code}'s {gpu.name} pools do not run {_deployment_image(deployment)}")
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
