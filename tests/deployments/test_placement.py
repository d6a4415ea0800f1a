import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, transaction

from deployments.engines import DEMO_MODEL_REF
from deployments.models import Deployment, DeploymentStatus, Node, Replica
from deployments.placement import (
    Unschedulable,
    _place_portable,
    live_replica_gpus_by_node,
    place_replica,
)
from deployments.services import deployment_create, deployment_reconcile
from tests.conftest import owner_of
from tests.deployments.conftest import make_pool, make_region


def _deployment(org, name, gpu="h200-141gb", gpus=1, regions=("us-east", "eu-west"), **kw):
    return deployment_create(
        organization=org,
        user=owner_of(org),
        name=name,
        model_ref="Qwen/Qwen2.5-7B-Instruct",
        engine="vllm",
        gpu_type=gpu,
        gpus_per_replica=gpus,
        regions=list(regions),
        **kw,
    )


@pytest.fixture
def two_regions(db):
    us = make_region("us-east", "US East", 39.0, -77.5)
    eu = make_region("eu-west", "EU West", 53.3, -6.3)
    return {
        "us": make_pool(us, "h200-a", "h200-141gb", [("n1", 1), ("n2", 1)], driver="kubernetes"),
        "eu": make_pool(eu, "h200-b", "h200-141gb", [("n1", 8)], driver="kubernetes"),
    }


def test_places_in_the_first_preferred_region_with_room(org_a, two_regions):
    d = _deployment(org_a, "pref", regions=("eu-west", "us-east"))
    with transaction.atomic():
        replica = place_replica(deployment=d, ordinal=0)
    assert replica.region.code == "eu-west" and replica.gpus == 1
    assert Node.objects.get(pk=replica.node_id).gpus_allocated == 1


def test_nothing_fits_says_why_in_words(org_a, two_regions):
    two_regions["eu"].nodes.update(gpus_allocated=8)
    d = _deployment(org_a, "big", gpus=2)
    with pytest.raises(Unschedulable) as exc, transaction.atomic():
        place_replica(deployment=d, ordinal=0)
    assert exc.value.reason == (
        "needs 2×H200 141GB on one node; us-east has 2 free, at most 1 on one node, "
        "eu-west has none free"
    )
    assert not Replica.objects.exists()
    assert sum(Node.objects.values_list("gpus_allocated", flat=True)) == 8


def test_reconcile_leaves_an_unschedulable_deployment_pending_with_the_reason(org_a, two_regions):
    d = _deployment(org_a, "huge", gpus=4, regions=("us-east",))
    deployment_reconcile(deployment_id=d.pk)
    d.refresh_from_db()
    assert d.status == DeploymentStatus.PENDING
    assert (
        d.status_reason
        == "needs 4×H200 141GB on one node; us-east has 2 free, at most 1 on one node"
    )
    assert d.events.filter(kind="pending", message=d.status_reason).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "place_replica", [place_replica, _place_portable], ids=["native", "portable"]
)
def test_concurrent_placers_never_over_allocate(place_replica, org_a, two_regions):
    """24 threads race for 10 GPUs (two 1-GPU nodes and one 8-GPU node), through the
    database's native path (one statement on PostgreSQL) and the portable ORM path."""
    deployments = [
        _deployment(org_a, f"race-{i}", regions=("us-east", "eu-west")) for i in range(24)
    ]
    barrier = threading.Barrier(8)

    def place(d):
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=10)
        try:
            with transaction.atomic():
                place_replica(deployment=d, ordinal=0)
            return True
        except Unschedulable:
            return False
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        placed = list(pool.map(place, deployments))
    assert sum(placed) == 10
    nodes = list(Node.objects.all())
    assert all(n.gpus_allocated <= n.gpus_total for n in nodes)
    assert {n.pk: n.gpus_allocated for n in nodes if n.gpus_allocated} == (
        live_replica_gpus_by_node()
    )


@pytest.mark.django_db(transaction=True)
def test_20_concurrent_creates_on_room_for_4_place_exactly_4(org_a, local_pool, api_client_for):
    """Twenty API creates at once, each reconciled at once, against a 4-slot pool."""
    api = api_client_for(org_a)

    def create_and_reconcile(i):
        try:
            response = api.post(
                "/api/v1/deployments",
                {
                    "name": f"burst-{i}",
                    "model_ref": DEMO_MODEL_REF,
                    "gpu_type": "cpu",
                    "regions": ["local"],
                },
                format="json",
            )
            assert response.status_code == 201, response.content
            deployment_reconcile(deployment_id=response.json()["id"])
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create_and_reconcile, range(20)))

    # Passes that lost a lease race try again, as the worker's follow-ups would.
    for d in Deployment.objects.all():
        deployment_reconcile(deployment_id=d.pk)
    node = Node.objects.get()
    placed = Replica.objects.filter(status__in=["pending", "starting", "running"])
    assert placed.count() == 4 and node.gpus_allocated == 4
    assert placed.values("deployment").distinct().count() == 4
    waiting = Deployment.objects.filter(status=DeploymentStatus.PENDING)
    assert waiting.count() == 16
    assert {d.status_reason for d in waiting} == {
        "needs 1×CPU slot on one node; local has none free"
    }
