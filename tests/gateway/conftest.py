import socket
import threading
import time

import pytest
import uvicorn

from tests.deployments.conftest import (  # noqa: F401 - shared fixtures
    _isolated_var,
    local_pool,
    replica_var,
)


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
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
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
