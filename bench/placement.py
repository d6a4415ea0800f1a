"""Placement throughput and decision time on PostgreSQL.

Inventory: 5 regions × 400 nodes × 8 GPUs (2,000 nodes, 16,000 GPUs). 8 placer processes
(as Celery workers would be) run at once, each placing replicas of 1, 2, 4 or 8 GPUs with
1–3 preferred regions, 3,000 placements in all. Side by side in the same run:

* gantry   — deployments.placement.place_replica: one prepared statement that picks the
             best node nobody else is deciding on (FOR UPDATE SKIP LOCKED), holds its
             GPUs with a conditional UPDATE and writes the replica.
* baseline — the common pessimistic way: lock every candidate node (SELECT … FOR
             UPDATE), choose in Python, update, insert, commit.

Both are checked afterwards: a node whose allocation exceeds its size, or differs from
the replicas that hold it, counts as an over-allocation.
"""

import random
import statistics
import time

from _setup import django_on_postgres, percentile

REGIONS = 5
NODES_PER_REGION = 400
GPUS_PER_NODE = 8
PLACERS = 8
TARGET = 3000  # placements per variant (about 9,000 of the 16,000 GPUs)


def build_inventory():
    from django.contrib.auth import get_user_model

    from deployments.gpu_types import ensure_gpu_types
    from deployments.models import Deployment, GpuPool, GpuType, Node, Region
    from portal.models import Organization

    Deployment.objects.all().delete()
    Node.objects.all().delete()
    GpuPool.objects.all().delete()
    Region.objects.all().delete()
    ensure_gpu_types()
    h100 = GpuType.objects.get(code="h100-80gb")
    org, _ = Organization.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    get_user_model().objects.get_or_create(username="bench")
    codes = [f"region-{i}" for i in range(REGIONS)]
    nodes = []
    for code in codes:
        region = Region.objects.create(code=code, name=code)
        for p in range(2):
            pool = GpuPool.objects.create(
                region=region, name=f"h100-{p}", driver="kubernetes", gpu_type=h100
            )
            nodes += [
                Node(pool=pool, name=f"n{i}", gpus_total=GPUS_PER_NODE)
                for i in range(NODES_PER_REGION // 2)
            ]
    Node.objects.bulk_create(nodes, batch_size=1000)
    rng = random.Random(7)
    deployments = [
        Deployment(
            organization=org,
            name=f"d{i}",
            model_ref="bench/model",
            engine="vllm",
            gpu_type=h100,
            gpus_per_replica=rng.choice([1, 1, 2, 4, 8]),
            max_replicas=64,
            desired_replicas=0,
            regions=rng.sample(codes, rng.randint(1, 3)),
        )
        for i in range(400)
    ]
    Deployment.objects.bulk_create(deployments, batch_size=500)
    return list(Deployment.objects.select_related("gpu_type").order_by("pk"))


def reset():
    from deployments.models import Node, Replica

    Replica.objects.all().delete()
    Node.objects.update(gpus_allocated=0)


def baseline_place(deployment, ordinal):
    """Lock all candidates, pick the best in Python (what a first version often does)."""
    from django.db.models import F

    from deployments.models import Node, Replica
    from deployments.placement import Unschedulable

    n = deployment.gpus_per_replica
    rank = {code: i for i, code in enumerate(deployment.regions)}
    nodes = list(
        Node.objects.select_for_update()
        .filter(
            pool__region__code__in=deployment.regions,
            pool__gpu_type=deployment.gpu_type,
            healthy=True,
            pool__healthy=True,
            pool__enabled=True,
        )
        .select_related("pool__region")
        .order_by("pk")
    )
    fitting = [x for x in nodes if x.gpus_total - x.gpus_allocated >= n]
    if not fitting:
        raise Unschedulable("full")
    best = min(
        fitting, key=lambda x: (rank[x.pool.region.code], -(x.gpus_total - x.gpus_allocated), x.pk)
    )
    Node.objects.filter(pk=best.pk).update(gpus_allocated=F("gpus_allocated") + n)
    return Replica.objects.create(
        deployment=deployment,
        ordinal=ordinal,
        region_id=best.pool.region_id,
        pool_id=best.pool_id,
        node_id=best.pk,
        gpus=n,
        status="pending",
    )


def _placer(variant: str, deployments, jobs, out) -> None:
    """One placer process: takes (deployment index, ordinal) jobs until told to stop."""
    from django.db import connection, transaction

    from deployments.placement import Unschedulable, place_replica

    connection.close()  # never share the parent's connection across fork
    timings, unschedulable = [], 0
    while (job := jobs.get()) is not None:
        d = deployments[job[0]]
        start = time.perf_counter()
        try:
            if variant == "gantry":
                place_replica(deployment=d, ordinal=job[1])  # atomic on its own
            else:
                with transaction.atomic():
                    baseline_place(d, job[1])
        except Unschedulable:
            unschedulable += 1
        timings.append(time.perf_counter() - start)
    connection.close()
    out.put((timings, unschedulable))


def run(variant: str, deployments) -> dict:
    import multiprocessing as mp

    from django.db import connection

    reset()
    connection.close()
    ctx = mp.get_context("fork")  # placers are processes, as Celery workers are
    jobs, out = ctx.Queue(), ctx.Queue()
    ordinals: dict[int, int] = {}
    for i in range(TARGET):
        index = i % len(deployments)
        ordinals[index] = ordinals.get(index, -1) + 1
        jobs.put((index, ordinals[index]))
    for _ in range(PLACERS):
        jobs.put(None)
    procs = [
        ctx.Process(target=_placer, args=(variant, deployments, jobs, out)) for _ in range(PLACERS)
    ]
    started = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    wall = time.perf_counter() - started
    for p in procs:
        p.join()
    timings = [t for r in results for t in r[0]]
    return {
        "placements": len(timings),
        "unschedulable": sum(r[1] for r in results),
        "per_s": len(timings) / wall,
        "p50_ms": percentile(timings, 50) * 1000,
        "p99_ms": percentile(timings, 99) * 1000,
        "mean_ms": statistics.mean(timings) * 1000,
        "over": over_allocations(),
    }


def over_allocations() -> int:
    from deployments.models import Node
    from deployments.placement import live_replica_gpus_by_node

    held = live_replica_gpus_by_node()
    return sum(
        1
        for node in Node.objects.all()
        if node.gpus_allocated > node.gpus_total or node.gpus_allocated != held.get(node.pk, 0)
    )


def main():
    django_on_postgres()
    deployments = build_inventory()
    from deployments.models import Node

    print(
        f"inventory: {Node.objects.count()} nodes, "
        f"{sum(Node.objects.values_list('gpus_total', flat=True))} GPUs, {REGIONS} regions; "
        f"{PLACERS} concurrent placers, {TARGET} placements per variant"
    )
    results = {variant: run(variant, deployments) for variant in ("baseline", "gantry")}
    print(
        f"{'variant':<10}{'placed/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}"
        f"{'unsched':>9}{'over-alloc':>12}"
    )
    for name, r in results.items():
        print(
            f"{name:<10}{r['per_s']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['mean_ms']:>9.2f}{r['unschedulable']:>9}{r['over']:>12}"
        )
    g, b = results["gantry"], results["baseline"]
    print(f"gantry vs baseline: {g['per_s'] / b['per_s']:.2f}× placements/s")
    reset()
    print(
        f"RESULT placements_per_s={g['per_s']:.0f} p99_ms={g['p99_ms']:.2f} "
        f"over_allocations={g['over']} baseline_placements_per_s={b['per_s']:.0f} "
        f"baseline_p99_ms={b['p99_ms']:.2f} baseline_over_allocations={b['over']}"
    )


if __name__ == "__main__":
    main()
