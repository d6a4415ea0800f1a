"""The `docker` driver against the real Docker engine, running the real llama.cpp image."""

import os

import pytest

from deployments.engines import DEMO_MODEL_REF
from deployments.models import Deployment, DeploymentStatus, Node, Replica
from tests.deployments.conftest import chat, reconcile_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_create_run_complete_delete_on_docker_with_the_real_worker(
    celery_worker, docker_client, docker_pool, org_a, api_client_for
):
    api = api_client_for(org_a)
    created = api.post(
        "/api/v1/deployments",
        {
            "name": "e2e-docker",
            "model_ref": DEMO_MODEL_REF,
            "gpu_type": "cpu",
            "regions": ["docker-local"],
            "engine_args": ["--n_ctx", "256"],
        },
        format="json",
    )
    assert created.status_code == 201
    pk = created.json()["id"]
    celery_worker.wait_for(
        lambda: Deployment.objects.get(pk=pk).status == "running",
        timeout=180,
        what="the worker to bring the docker deployment to running",
    )
    [replica] = api.get(f"/api/v1/deployments/{pk}").json()["replicas"]
    container = docker_client.containers.get(f"gantry-r{replica['id']}")
    assert container.status == "running"
    assert container.labels["gantry.deployment"] == str(pk)
    assert container.labels["gantry.org"] == "alpha"
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    assert chat(replica["url"])["usage"]["completion_tokens"] > 0
    assert (
        "Uvicorn running"
        in api.get(f"/api/v1/deployments/{pk}/replicas/{replica['id']}/logs").json()["log"]
    )

    assert api.delete(f"/api/v1/deployments/{pk}").status_code == 204
    mine = f"gantry.instance={os.environ['GANTRY_INSTANCE']}"  # not other sessions'
    assert not docker_client.containers.list(all=True, filters={"label": mine})
    assert Node.objects.get(pool=docker_pool).gpus_allocated == 0
    assert Deployment.objects.get(pk=pk).status == DeploymentStatus.DELETED


def test_killed_container_is_detected_and_replaced(docker_client, docker_pool, org_a):
    from deployments.services import deployment_create

    d = deployment_create(
        organization=org_a,
        user=None,
        name="heal",
        model_ref=DEMO_MODEL_REF,
        gpu_type="cpu",
        regions=["docker-local"],
        engine_args=["--n_ctx", "256"],
    )
    reconcile_until(d, lambda d: d.status == "running", timeout=120, what="running")
    first = d.replicas.get(status="running")
    docker_client.containers.get(first.handle).kill()
    reconcile_until(
        d,
        lambda d: (
            d.status == "running"
            and d.replicas.filter(status="running").exclude(pk=first.pk).exists()
        ),
        timeout=120,
        what="a replacement container",
    )
    first.refresh_from_db()
    assert first.status == "failed" and "container exited with code 137" in first.exit_reason
    new = d.replicas.get(status="running")
    assert chat(new.url)["usage"]["prompt_tokens"] > 0
    with pytest.raises(Exception, match="No such container"):
        docker_client.containers.get(first.handle)  # the dead one was cleaned up
    assert d.events.filter(kind="replica_failed", message__contains="code 137").exists()
    assert Node.objects.get(pool=docker_pool).gpus_allocated == 1
    assert Replica.objects.filter(status="running").count() == 1


def test_missing_image_fails_the_replica_with_a_clear_reason(docker_pool, org_a, settings):
    from deployments.services import deployment_create

    settings.REPLICA_MAX_FAILURES = 1
    d = deployment_create(
        organization=org_a,
        user=None,
        name="noimg",
        model_ref=DEMO_MODEL_REF,
        gpu_type="cpu",
        regions=["docker-local"],
        image="gantry/does-not-exist:0",
    )
    reconcile_until(d, lambda d: d.status == "failed", timeout=60, what="failed")
    assert "image gantry/does-not-exist:0 is not on the Docker host" in d.status_reason
    assert Node.objects.get(pool=docker_pool).gpus_allocated == 0
