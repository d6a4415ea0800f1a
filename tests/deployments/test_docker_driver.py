"""The `docker` driver against the real Docker engine, running the real llama.cpp image."""

import json
import os
from pathlib import Path

import pytest

from deployments.engines import DEMO_MODEL_REF
from deployments.models import Deployment, DeploymentStatus, Node, Replica
from tests.deployments.conftest import chat, reconcile_until
from tests.gateway import conftest as gateway_fixtures

pytestmark = pytest.mark.django_db(transaction=True)
# Bounds on waiting, not on speed: on the vfs storage driver creating a container copies the
# whole image, which takes minutes when the Docker host is busy.
START_WAIT_S = 360
gateway = gateway_fixtures.gateway  # the real gateway, served by uvicorn


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
        timeout=START_WAIT_S,
        what="the worker to bring the docker deployment to running",
    )
    [replica] = api.get(f"/api/v1/deployments/{pk}").json()["replicas"]
    assert replica["url"] is None  # where it listens is not the tenant's business
    container = docker_client.containers.get(f"gantry-r{replica['id']}")
    assert container.status == "running"
    assert container.labels["gantry.deployment"] == str(pk)
    assert container.labels["gantry.org"] == "alpha"
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    assert chat(Replica.objects.get(pk=replica["id"]).url)["usage"]["completion_tokens"] > 0
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
    reconcile_until(d, lambda d: d.status == "running", timeout=START_WAIT_S, what="running")
    first = d.replicas.get(status="running")
    docker_client.containers.get(first.handle).kill()
    reconcile_until(
        d,
        lambda d: (
            d.status == "running"
            and d.replicas.filter(status="running").exclude(pk=first.pk).exists()
        ),
        timeout=START_WAIT_S,
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
    # An operator allowed an image that was never loaded on the host.
    docker_pool.allowed_images = ["gantry/does-not-exist:0"]
    docker_pool.save()
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


def test_vllm_deployment_runs_on_the_image_entrypoint_and_answers_through_the_gateway(
    docker_client, docker_pool, org_a, api_client_for, gateway, settings
):
    """vLLM's path end to end on a machine without a GPU: the stand-in image has vLLM's
    ENTRYPOINT (`vllm serve`), its flags and its OpenAI answers (tests/engines/standin)."""
    import openai

    from deployments.engine_auth import engine_api_key
    from deployments.services import deployment_create
    from tests.engines import build_vllm_standin

    image = build_vllm_standin(docker_client)
    # Images are the operator's choice: this pool's operator runs the stand-in.
    docker_pool.allowed_images = [image]
    docker_pool.save(update_fields=["allowed_images"])
    # A model folder as a build from an upload leaves it in the weights cache.
    folder = Path(settings.GANTRY_MODEL_DIRS[0]) / "cache" / "upload-7"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"max_position_embeddings": 4096}')
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder.parent / "other-orgs-model").mkdir(exist_ok=True)
    d = deployment_create(
        organization=org_a,
        user=None,
        name="vllm-chat",
        model_ref="acme/tiny-chat",
        engine="vllm",
        image=image,
        gpu_type="cpu",
        regions=["docker-local"],
        engine_args=["--max-num-seqs", "4"],
    )
    # What the builder records for a vLLM build of an uploaded folder: the folder itself.
    Deployment.objects.filter(pk=d.pk).update(model_ref=str(folder))
    reconcile_until(d, lambda d: d.status == "running", timeout=START_WAIT_S, what="running")
    r = d.replicas.get(status="running")
    container = docker_client.containers.get(r.handle)
    # The image's own entrypoint runs; Gantry gives it only arguments, the model first.
    assert container.attrs["Config"]["Entrypoint"] == ["vllm", "serve"]
    port = container.labels["gantry.port"]
    expected = [
        "/models/upload-7",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--max-num-seqs",
        "4",
        "--served-model-name",
        "vllm-chat",
    ]
    assert container.attrs["Config"]["Cmd"] == expected
    logged = container.logs().decode()
    assert "STANDIN argv=" + json.dumps(["serve", *expected]) in logged
    # Only the replica's own folder is in the container, read-only; the key is in its
    # environment, not its argv.
    [mount] = container.attrs["Mounts"]
    assert (mount["Source"], mount["Destination"], mount["RW"]) == (
        str(folder),
        "/models/upload-7",
        False,
    )
    assert f"VLLM_API_KEY={engine_api_key(r.pk)}" in container.attrs["Config"]["Env"]
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_client_for(org_a).raw_key)
    answer = client.chat.completions.create(
        model="vllm-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert answer.model == "vllm-chat" and answer.usage.completion_tokens == 5
    streamed = list(
        client.chat.completions.create(
            model="vllm-chat",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=3,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "w0 w1 w2"
