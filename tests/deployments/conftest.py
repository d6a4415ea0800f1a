import json
import os
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from deployments.models import Driver, GpuPool, GpuType, Node, Region
from deployments.services import deployment_reconcile
from tests.conftest import need


@pytest.fixture(scope="session")
def replica_var(tmp_path_factory) -> Path:
    """Runtime and model folders of this test session's own, so replica state never mixes
    with a developer's `make run` (or an earlier run whose ids the database reuses)."""
    return tmp_path_factory.mktemp("var")


def stop_session_engines() -> None:
    """Stop the engines this test session started (and only those: other sessions share
    the machine), wherever their runtime folder is."""
    from deployments.drivers.local import instance_processes, terminate

    terminate(instance_processes(os.environ["GANTRY_INSTANCE"], engines_only=True))


@pytest.fixture(autouse=True)
def _isolated_var(settings, replica_var):
    settings.RUNTIME_DIR = replica_var / "replicas"
    settings.GANTRY_MODEL_DIRS = [str(replica_var / "models")]
    yield
    # Whatever a test started, nothing outlives it.
    stop_session_engines()


def make_region(code: str, name: str = "", lat: float = 0.0, lon: float = 0.0) -> Region:
    return Region.objects.create(code=code, name=name or code, latitude=lat, longitude=lon)


def make_pool(
    region: Region,
    name: str,
    gpu: str,
    nodes: list[tuple[str, int]],
    driver: str = Driver.LOCAL,
    config: dict | None = None,
    **extra,
) -> GpuPool:
    pool = GpuPool.objects.create(
        region=region,
        name=name,
        driver=driver,
        gpu_type=GpuType.objects.get(code=gpu),
        config=config or {},
        **extra,
    )
    for node_name, gpus in nodes:
        Node.objects.create(pool=pool, name=node_name, gpus_total=gpus, address="127.0.0.1")
    return pool


@pytest.fixture
def local_pool(db):
    """This machine as a region: a CPU pool run by the local driver, 4 slots."""
    return make_pool(make_region("local", "This machine"), "cpu", "cpu", [("localhost", 4)])


def reconcile_until(deployment, predicate, timeout: float = 90, what: str = "") -> None:
    """Run real reconcile passes (as the worker would) until ``predicate(deployment)``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment_reconcile(deployment_id=deployment.pk)
        deployment.refresh_from_db()
        if predicate(deployment):
            return
        time.sleep(0.3)
    events = "\n".join(str(e) for e in deployment.events.order_by("at", "id"))
    raise AssertionError(
        f"timed out waiting for {what or predicate}: status {deployment.status} "
        f"({deployment.status_reason})\n{events}"
    )


def chat(url: str, text: str = "hello", max_tokens: int = 8) -> dict:
    """A chat completion straight from a replica, sent as the platform sends it: with that
    replica's own key (engines answer nobody else)."""
    import urllib.request

    from deployments.engine_auth import engine_auth_headers
    from deployments.models import Replica

    replica_id = (
        Replica.objects.filter(url=url, status="running").values_list("pk", flat=True).first()
    )
    assert replica_id, f"no running replica at {url}"

    # The demo model's weights are random: keep it from ending at once on the end token.
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
            "logit_bias": {"2": -100},
        }
    ).encode()
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", **engine_auth_headers(replica_id)},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False


@pytest.fixture
def docker_client():
    sock = django_settings.DOCKER_HOST
    need(
        sock.startswith("unix://") and os.path.exists(sock.removeprefix("unix://")),
        f"a Docker engine at {sock}",
    )
    import docker

    # A busy host (vfs copies whole images) can take minutes to answer.
    client = docker.DockerClient(base_url=sock, timeout=300)
    image = django_settings.GANTRY_ENGINE_IMAGES["llama.cpp"]
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        need(False, f"the engine image {image} (scripts/build-engine-images.sh builds it)")
    yield client
    # Only this session's containers: other sessions share the Docker engine.
    mine = f"gantry.instance={os.environ['GANTRY_INSTANCE']}"
    for c in client.containers.list(all=True, filters={"label": ["gantry.replica", mine]}):
        c.remove(force=True)
    client.close()


@pytest.fixture
def distinct_replica_ids(db):
    """Container names are the replicas' (gantry-r<id>), and other test sessions may use the
    same Docker engine with ids of their own database: start this test's ids at a random
    point far from theirs, so names never collide."""
    import secrets

    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('deployments_replica', 'id'), %s)",
                [10_000_000 + secrets.randbelow(2_000_000_000)],
            )


@pytest.fixture
def docker_pool(docker_client, distinct_replica_ids, db):
    region = make_region("docker-local", "Docker on this machine")
    return make_pool(
        region,
        "cpu-docker",
        "cpu",
        [("dockerhost", 2)],
        driver="docker",
        config={"docker_url": django_settings.DOCKER_HOST, "port_range": [31000, 31099]},
    )
