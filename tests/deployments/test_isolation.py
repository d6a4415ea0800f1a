"""Tenant isolation on the nodes: engines answer only the platform, replicas hold exactly
the GPUs placement gave them, and containers run locked down. Real PostgreSQL, the real
llama.cpp engine (local and in Docker), the real gateway."""

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.db import connection

from deployments.drivers.base import DriverError, ReplicaSpec
from deployments.drivers.launch import engine_launch
from deployments.engine_auth import engine_api_key, engine_auth_headers
from deployments.engines import DEMO_MODEL_REF, model_file
from deployments.models import Deployment, GpuType, Replica
from deployments.placement import place_replica
from deployments.services import deployment_create, release_replica_gpus
from tests.conftest import owner_of
from tests.deployments.conftest import make_pool, make_region, reconcile_until
from tests.gateway import conftest as gateway_fixtures

pytestmark = pytest.mark.django_db(transaction=True)
gateway = gateway_fixtures.gateway  # the real gateway, served by uvicorn


def _get(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


# --- GPU indices ------------------------------------------------------------------------


@pytest.fixture
def gpu_pool(db):
    return make_pool(make_region("gpu-east"), "h100", "h100-80gb", [("n1", 8)])


def _gpu_deployment(org, name: str, gpus: int) -> Deployment:
    return Deployment.objects.create(
        organization=org,
        name=name,
        engine="vllm",
        model_ref="acme/tiny",
        gpu_type=GpuType.objects.get(code="h100-80gb"),
        gpus_per_replica=gpus,
        regions=["gpu-east"],
    )


def test_two_replicas_on_one_8_gpu_node_get_disjoint_indices(gpu_pool, org_a, org_b):
    a = place_replica(deployment=_gpu_deployment(org_a, "a", 3), ordinal=0)
    b = place_replica(deployment=_gpu_deployment(org_b, "b", 4), ordinal=0)
    assert a.gpu_indices == [0, 1, 2] and b.gpu_indices == [3, 4, 5, 6]
    assert Replica.objects.get(pk=b.pk).gpu_indices == [3, 4, 5, 6]  # recorded, not only held
    # Only one GPU is left: a replica wanting two does not fit, and nothing is half-written.
    with pytest.raises(Exception, match="needs 2"):
        place_replica(deployment=_gpu_deployment(org_a, "c", 2), ordinal=0)
    assert Replica.objects.count() == 2


def test_released_indices_are_given_out_again(gpu_pool, org_a):
    first = place_replica(deployment=_gpu_deployment(org_a, "a", 3), ordinal=0)
    place_replica(deployment=_gpu_deployment(org_a, "b", 2), ordinal=0)
    assert release_replica_gpus(first.pk) == 3
    Replica.objects.filter(pk=first.pk).update(status="stopped")
    again = place_replica(deployment=_gpu_deployment(org_a, "c", 4), ordinal=0)
    # 0-2 are free again, 3-4 are still b's.
    assert again.gpu_indices == [0, 1, 2, 5]


def test_concurrent_placers_never_share_an_index(gpu_pool, org_a):
    deployments = [_gpu_deployment(org_a, f"d{i}", 1) for i in range(8)]
    barrier, placed, errors = threading.Barrier(8), [], []

    def place(d):
        try:
            barrier.wait()
            placed.append(place_replica(deployment=d, ordinal=0).gpu_indices)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=place, args=(d,)) for d in deployments]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(i for indices in placed for i in indices) == list(range(8))


# --- The engine's key and where it listens -------------------------------------------


def _spec(**kw) -> ReplicaSpec:
    base = {
        "replica_id": 7,
        "deployment_id": 1,
        "organization": "alpha",
        "deployment_name": "chat",
        "engine": "llama.cpp",
        "image": "",
        "model_ref": "/m/x.gguf",
        "engine_args": ("--n_ctx", "256"),
        "gpus": 1,
        "gpu_type": "cpu",
        "node_name": "n1",
        "node_address": "10.0.0.5",
    }
    return ReplicaSpec(**{**base, **kw})


@pytest.mark.parametrize(
    "args",
    [
        ("--hos=0.0.0.0",),
        ("--host", "0.0.0.0"),
        ("--HOST=0.0.0.0",),
        ("--po", "80"),
        ("--api_key", "mine"),
        ("--model-a", "other"),
        ("--config_file=/etc/passwd",),
    ],
)
def test_no_tenant_flag_can_change_where_an_engine_listens_or_its_key(args):
    with pytest.raises(DriverError, match="is set by Gantry"):
        engine_launch(_spec(engine_args=args), model_path="/m/x.gguf", host="10.0.0.5", port=1)


def test_the_key_goes_in_the_environment_where_the_engine_reads_it_there():
    for engine, env in (("llama.cpp", "API_KEY"), ("vllm", "VLLM_API_KEY")):
        launch = engine_launch(_spec(engine=engine), model_path="/m", host="10.0.0.5", port=1)
        assert launch.env == {env: engine_api_key(7)}
        assert engine_api_key(7) not in launch.argv
        assert launch.argv[launch.argv.index("--host") + 1] == "10.0.0.5"
    sglang = engine_launch(_spec(engine="sglang"), model_path="/m", host="10.0.0.5", port=1)
    assert sglang.argv[-2:] == ["--api-key", engine_api_key(7)]  # SGLang reads argv only
    assert engine_api_key(7) != engine_api_key(8)


def test_the_container_command_fits_the_image_entrypoint():
    from deployments.drivers.launch import container_command

    vllm = engine_launch(_spec(engine="vllm"), model_path="/models/m", host="10.0.0.5", port=9)
    tail = ["--host", "10.0.0.5", "--port", "9", "--n_ctx", "256", "--served-model-name", "chat"]
    # vLLM's own image: `vllm serve` takes the model first, positionally.
    assert container_command(vllm, "vllm", ["vllm", "serve"]) == ["/models/m", *tail]
    assert container_command(vllm, "vllm", ["/usr/local/bin/vllm", "serve"])[0] == "/models/m"
    # Older images run the module: only the arguments after it.
    module = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert container_command(vllm, "vllm", module) == ["--model", "/models/m", *tail]
    # No entrypoint, or a wrapper that runs its arguments (NVIDIA's, under SGLang): all of it.
    sglang = engine_launch(_spec(engine="sglang"), model_path="/models/m", host="h", port=9)
    wrapper = ["/opt/nvidia/nvidia_entrypoint.sh"]
    assert container_command(sglang, "sglang", wrapper) == sglang.argv
    assert sglang.argv[:3] == ["python3", "-m", "sglang.launch_server"]
    assert container_command(sglang, "sglang", None) == sglang.argv


@pytest.fixture
def running_local(org_a, local_pool):
    d = deployment_create(
        organization=org_a,
        user=owner_of(org_a),
        name="private",
        model_ref=DEMO_MODEL_REF,
        gpu_type="cpu",
        regions=["local"],
        engine_args=["--n_ctx", "256"],
    )
    reconcile_until(d, lambda d: d.status == "running", what="running")
    return d


def test_engine_answers_only_with_its_key_and_the_gateway_holds_it(
    running_local, gateway, org_a, api_client_for
):
    import openai

    r = running_local.replicas.get(status="running")
    key = engine_api_key(r.pk)
    assert r.url.startswith("http://127.0.0.1:")
    assert _get(f"{r.url}/v1/models") == 401
    assert _get(f"{r.url}/v1/models", {"Authorization": "Bearer gk_guess"}) == 401
    assert (
        _get(f"{r.url}/v1/models", {"Authorization": f"Bearer {engine_api_key(r.pk + 1)}"}) == 401
    )
    assert _get(f"{r.url}/v1/models", engine_auth_headers(r.pk)) == 200
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_client_for(org_a).raw_key)
    answer = client.chat.completions.create(
        model="private", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.usage.completion_tokens > 0
    assert answer.model == "private"  # the name it serves, not the file it loaded
    # Not on the engine's command line (ps shows that to everyone on the node).
    cmdline = Path(f"/proc/{_meta(r)['pid']}/cmdline").read_bytes().decode()
    assert key not in cmdline and "--host\x00127.0.0.1" in cmdline
    # Nor in what a tenant can read: events, logs, the API.
    api = api_client_for(org_a)
    events = json.dumps(api.get(f"/api/v1/deployments/{running_local.pk}/events").json())
    logs = api.get(f"/api/v1/deployments/{running_local.pk}/replicas/{r.pk}/logs").json()["log"]
    detail = json.dumps(api.get(f"/api/v1/deployments/{running_local.pk}").json())
    for text in (events, logs, detail):
        assert key not in text
        assert r.url.split("//")[1] not in text
    assert "Uvicorn running on http://[replica address]" in logs


def _meta(r: Replica) -> dict:
    from django.conf import settings

    folder = Path(settings.RUNTIME_DIR) / str(r.pool_id) / r.handle
    return json.loads((folder / "meta.json").read_text())


def test_tenants_see_no_replica_url_staff_do(running_local, org_a, api_client_for, web_client):
    r = running_local.replicas.get(status="running")
    [shown] = (
        api_client_for(org_a).get(f"/api/v1/deployments/{running_local.pk}").json()["replicas"]
    )
    assert shown["id"] == r.pk and shown["url"] is None
    owner = owner_of(org_a)
    page = web_client(owner, org_a).get(f"/deployments/{running_local.pk}/")
    assert page.status_code == 200 and r.url not in page.content.decode()
    assert r.url.split("//")[1] not in page.content.decode()
    owner.is_staff = True
    owner.save(update_fields=["is_staff"])
    assert (
        r.url in web_client(owner, org_a).get(f"/deployments/{running_local.pk}/").content.decode()
    )


def test_the_local_driver_hands_a_cpu_replica_no_gpus(running_local):
    r = running_local.replicas.get(status="running")
    environ = Path(f"/proc/{_meta(r)['pid']}/environ").read_bytes().split(b"\0")
    assert b"CUDA_VISIBLE_DEVICES=" in environ


# --- Docker: the container as the engine sees it ----------------------------------------


def test_docker_device_requests_carry_exactly_the_placed_indices(
    docker_client, distinct_replica_ids, org_a, org_b
):
    from django.conf import settings

    from deployments.drivers.docker import DockerDriver
    from tests.engines import build_vllm_standin

    image = build_vllm_standin(docker_client)
    pool = make_pool(
        make_region("docker-gpu"),
        "h100-docker",
        "h100-80gb",
        [("gpuhost", 8)],
        driver="docker",
        config={"docker_url": settings.DOCKER_HOST, "port_range": [31100, 31199]},
    )
    pool.allowed_images = [image]  # the operator's choice of image for this pool
    pool.save(update_fields=["allowed_images"])
    node = pool.nodes.get()
    node.config = {"gpu_ids": [f"GPU-{i:02d}" for i in range(8)]}
    node.save()
    specs = []
    for org, name, gpus in ((org_a, "a", 3), (org_b, "b", 2)):
        d = _gpu_deployment(org, name, gpus)
        Deployment.objects.filter(pk=d.pk).update(regions=["docker-gpu"], image=image)
        d.refresh_from_db()
        r = place_replica(deployment=d, ordinal=0)
        specs.append(
            ReplicaSpec(
                replica_id=r.pk,
                deployment_id=d.pk,
                organization=org.slug,
                deployment_name=d.name,
                engine="vllm",
                image=image,
                model_ref="acme/tiny",
                engine_args=(),
                gpus=gpus,
                gpu_type="h100-80gb",
                node_name=node.name,
                node_address=node.address,
                node_config=node.config,
                gpu_indices=tuple(r.gpu_indices),
            )
        )
    driver = DockerDriver(pool)
    try:
        # Created, not started: this machine has no NVIDIA runtime to start them with.
        requests = [driver.create(spec).attrs["HostConfig"]["DeviceRequests"] for spec in specs]
    finally:
        for spec in specs:
            driver.stop(spec.name)
    assert [r[0]["DeviceIDs"] for r in requests] == [
        ["GPU-00", "GPU-01", "GPU-02"],
        ["GPU-03", "GPU-04"],
    ]
    assert all(r[0]["Driver"] == "nvidia" and r[0]["Count"] == 0 for r in requests)


def test_docker_replica_is_locked_down_and_answers_only_with_its_key(
    docker_client, docker_pool, org_a
):
    d = deployment_create(
        organization=org_a,
        user=None,
        name="locked",
        model_ref=DEMO_MODEL_REF,
        gpu_type="cpu",
        regions=["docker-local"],
        engine_args=["--n_ctx", "256"],
    )
    reconcile_until(d, lambda d: d.status == "running", timeout=360, what="running")
    r = d.replicas.get(status="running")
    attrs = docker_client.containers.get(r.handle).attrs
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == "65534:65534"
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert host["Memory"] == 16 * 1024**3 and host["PidsLimit"] == 1024
    # Only the replica's own model file, read-only: not the folder of everyone's models.
    [mount] = attrs["Mounts"]
    assert mount["Source"] == str(model_file(DEMO_MODEL_REF))
    assert mount["Destination"] == f"/models/{model_file(DEMO_MODEL_REF).name}"
    assert mount["RW"] is False
    assert engine_api_key(r.pk) not in json.dumps(attrs["Args"])
    assert attrs["Args"][attrs["Args"].index("--host") + 1] == "127.0.0.1"
    assert _get(f"{r.url}/v1/models") == 401
    assert _get(f"{r.url}/v1/models", engine_auth_headers(r.pk)) == 200
