"""Source → inspect → build (real Docker engine) → push (real registry) → deploy (docker
driver) → a real chat completion → delete, driven by the real Celery worker."""

import json
import os
import urllib.request

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from builder.images import build_run
from builder.models import Build, WeightsCache
from deployments.models import Deployment, Node
from tests.builder.conftest import gguf_build
from tests.conftest import need, port_open
from tests.deployments.conftest import chat, reconcile_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def registry(settings):
    url = os.environ.get("REGISTRY_URL", "127.0.0.1:5000")
    host, _, port = url.partition(":")
    need(port_open(host, int(port or 5000)), f"a Docker registry at {url}")
    settings.REGISTRY_URL = url
    return url


def _wait_build(celery_worker, build_id):
    celery_worker.wait_for(
        lambda: Build.objects.get(pk=build_id).status in {"succeeded", "failed"},
        timeout=300,
        what="the build to finish",
    )
    celery_worker.wait_for(
        lambda: WeightsCache.objects.filter(status="ready").exists(),
        timeout=120,
        what="the weights to be cached",
    )
    return Build.objects.get(pk=build_id)


def _deploy_chat_delete(api, source: dict):
    """Deploy by `model` (slug) or `build` (id), chat with it, delete it."""
    response = api.post(
        "/api/v1/deployments", source | {"regions": ["docker-local"]}, format="json"
    )
    assert response.status_code == 201, response.content
    d = Deployment.objects.get(pk=response.json()["id"])
    reconcile_until(d, lambda d: d.status == "running", timeout=120, what="running")
    replica = d.replicas.get(status="running")
    assert chat(replica.url)["usage"]["completion_tokens"] > 0
    assert api.delete(f"/api/v1/deployments/{d.pk}").status_code == 204
    assert Node.objects.get().gpus_allocated == 0
    return d


def test_gguf_upload_builds_pushes_and_deploys(
    registry, celery_worker, docker_client, docker_pool, org_a, api_client_for, demo_gguf
):
    api = api_client_for(org_a)
    upload = api.post(
        "/api/v1/uploads",
        {"files": [SimpleUploadedFile("tiny.gguf", demo_gguf.read_bytes())]},
        format="multipart",
    )
    assert upload.status_code == 201
    response = api.post(
        "/api/v1/builds",
        {
            "name": "my-tiny",
            "source": {"kind": "upload", "upload": upload.json()["id"]},
            "engine": "llama.cpp",
            "options": {"n_threads": 2},
            "env": {"LOG_LEVEL": "info"},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["status"] == "queued"
    build = _wait_build(celery_worker, response.json()["id"])
    assert build.status == "succeeded", build.log
    assert build.image == f"{registry}/alpha/my-tiny:upload-{upload.json()['id']}"
    assert build.digest.startswith("sha256:")
    # Pushed for real: the registry serves the manifest under that tag.
    repo, _, tag = build.image.partition("/")[2].rpartition(":")
    with urllib.request.urlopen(f"http://{registry}/v2/{repo}/manifests/{tag}") as r:
        assert r.status == 200
    body = api.get(f"/api/v1/builds/{build.pk}").json()
    assert body["model"] == "my-tiny" and body["weights"]["status"] == "ready"
    assert "(no layer changed)" in build.log
    d = _deploy_chat_delete(api, {"build": build.pk})  # by the build's id, as the contract says
    assert d.source == f"build:{build.pk}" and d.image == build.image


def test_hub_gguf_repo_builds_and_deploys(
    registry, hub, celery_worker, docker_client, docker_pool, org_a, api_client_for, demo_gguf
):
    hub.add_model("acme/tiny-gguf", license="mit")
    hub.add_files(
        "acme/tiny-gguf",
        {"tiny-f32.gguf": demo_gguf.read_bytes()},
        gguf={"total": 108_000, "architecture": "llama", "context_length": 512},
    )
    api = api_client_for(org_a)
    response = api.post(
        "/api/v1/builds",
        {
            "name": "hub-tiny",
            "source": {"kind": "huggingface", "repo_id": "acme/tiny-gguf"},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    build = _wait_build(celery_worker, response.json()["id"])
    assert build.status == "succeeded", build.log
    cache = WeightsCache.objects.get(key=f"acme/tiny-gguf@{build.resolved_revision}")
    assert cache.bytes_done == cache.bytes_total == demo_gguf.stat().st_size
    _deploy_chat_delete(api, {"model": "hub-tiny"})  # by the catalog entry it registered


def test_a_failing_build_keeps_its_log_and_says_why(
    settings, org_a, docker_client, demo_gguf, local_pool
):

    settings.GANTRY_ENGINE_IMAGES = {
        **settings.GANTRY_ENGINE_IMAGES,
        "llama.cpp": "gantry/no-such-base:0",
    }
    build = gguf_build(org_a, demo_gguf, "broken")
    build = build_run(build_id=build.pk)
    assert build.status == "failed" and build.phase == "failed"
    assert "gantry/no-such-base" in build.error
    assert "FROM gantry/no-such-base:0" in build.log and "BUILD FAILED" in build.log
    assert build.catalog_model is None


def test_rebuilding_an_unchanged_spec_reuses_the_cache(org_a, docker_client, demo_gguf, local_pool):

    build = gguf_build(org_a, demo_gguf, "again")
    first = build_run(build_id=build.pk)
    second = build_run(build_id=build.pk)
    assert first.status == second.status == "succeeded"
    # The same spec makes the very same image: nothing is rebuilt or copied.
    assert first.spec_hash == second.spec_hash and first.digest == second.digest
    base = docker_client.images.get("gantry/llamacpp:0.3.36")
    image = docker_client.images.get(second.image)
    assert image.attrs["RootFS"]["Layers"] == base.attrs["RootFS"]["Layers"]
    assert image.attrs["Size"] == base.attrs["Size"]
    labels = image.attrs["Config"]["Labels"]
    assert labels["io.gantry.spec-hash"] == second.spec_hash
    assert json.loads(labels["io.gantry.spec"])["engine"] == "llama.cpp"
    assert "GANTRY_ENGINE=llama.cpp" in image.attrs["Config"]["Env"]


def test_a_config_only_change_makes_a_new_image_over_the_same_layers(
    org_a, docker_client, demo_gguf, local_pool
):
    from builder.services import build_configure

    build = gguf_build(org_a, demo_gguf, "reconf")
    build_configure(build=build, engine="llama.cpp", env={"MODE": "a"})
    first = build_run(build_id=build.pk)
    build_configure(build=first, engine="llama.cpp", env={"MODE": "b"})
    second = build_run(build_id=build.pk)
    assert first.status == second.status == "succeeded", second.log
    assert first.digest != second.digest and first.spec_hash != second.spec_hash
    env = docker_client.images.get(second.image).attrs["Config"]["Env"]
    assert "MODE=b" in env and "MODE=a" not in env
    base = docker_client.images.get("gantry/llamacpp:0.3.36").attrs
    # The base's own variables (PATH…) are kept beneath the build's.
    assert set(base["Config"]["Env"]) <= set(env)
