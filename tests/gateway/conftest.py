import socket
import threading
import time

import pytest
import uvicorn
from django.db.models import Sum

from billing.models import UsageRecord
from deployments.engines import DEMO_MODEL_REF
from deployments.services import deployment_create
from tests.conftest import owner_of
from tests.deployments import conftest as deployments_fixtures
from tests.deployments.conftest import reconcile_until

# Shared fixtures (the engines' run folders, isolated per session; a local pool).
_isolated_var = deployments_fixtures._isolated_var
replica_var = deployments_fixtures.replica_var
local_pool = deployments_fixtures.local_pool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gateway(transactional_db, settings):
    """The real gateway app served by uvicorn on a port of its own, in this process (so it
    reads the test database), started and stopped cleanly (its lifespan flushes usage)."""
    from gateway.app import create_app

    settings.GATEWAY_LOAD_REPORT_S = 0.2
    port = free_port()
    app = create_app()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            proxy_headers=False,  # as in the Procfile: the gateway judges forwarded headers
        )
    )
    server.gateway = app.state.gateway  # what the app holds, for tests to look into
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    server.base_url = f"http://127.0.0.1:{port}/v1"
    yield server
    server.should_exit = True
    thread.join(timeout=20)


@pytest.fixture
def gateway_processes(transactional_db, tmp_path, settings):
    """Two real gateway processes (uvicorn) sharing Redis, on the test database."""
    import os
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from tests.conftest import database_url_for_subprocess, need, redis_available, redis_url

    need(redis_available(), "Redis (shared gateway counters)")
    import redis

    # Prefix homes of an earlier session's deployments (their ids repeat in a fresh test
    # database) would decide where this session's prefixes go.
    shared = redis.Redis.from_url(redis_url())
    for key in shared.scan_iter("gantry:prefix:*"):
        shared.delete(key)
    shared.close()
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocess(),
        "GATEWAY_REDIS_URL": redis_url(),
        "SECRET_KEY": settings.SECRET_KEY,
    }
    procs, urls = [], []
    for i in range(2):
        port = free_port()
        log = open(tmp_path / f"gateway-{i}.log", "w")  # noqa: SIM115
        procs.append(
            (
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "gateway.asgi:app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                        "--no-proxy-headers",
                    ],
                    cwd=root,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
    yield urls
    for proc, log in procs:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture
def running(org_a, local_pool):
    d = deployment_create(
        organization=org_a,
        user=owner_of(org_a),
        name="chat",
        model_ref=DEMO_MODEL_REF,
        gpu_type="cpu",
        regions=["local"],
        engine_args=["--n_ctx", "512"],
    )
    reconcile_until(d, lambda d: d.status == "running", what="running")
    return d


def tokens(deployment, kind):
    return (
        UsageRecord.objects.filter(deployment_id=deployment.pk, kind=kind).aggregate(
            q=Sum("quantity")
        )["q"]
        or 0
    )


def wait_for(predicate, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def upstream_route(org_a, local_pool):
    """A deployment whose running replica is an engine that reports usage in streams."""
    from deployments.models import Deployment, GpuType, Node, Region, Replica
    from tests.gateway.upstream import start_upstream

    server, thread = start_upstream()
    d = Deployment.objects.create(
        organization=org_a,
        name="streamer",
        model_ref="x/y",
        engine="vllm",
        gpu_type=GpuType.objects.get(code="cpu"),
        regions=["local"],
        status="running",
    )
    Replica.objects.create(
        deployment=d,
        ordinal=0,
        region=Region.objects.get(code="local"),
        pool=local_pool,
        node=Node.objects.get(pool=local_pool),
        gpus=0,
        status="running",
        url=server.url,
        handle="external",
    )
    d.upstream = server  # what reached the engine: server.received
    yield d
    server.should_exit = True
    thread.join(timeout=10)
