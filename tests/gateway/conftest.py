import socket
import threading
import time

import pytest
import uvicorn

from tests.deployments.conftest import local_pool  # noqa: F401 - shared fixture


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gateway(transactional_db):
    """The real gateway app served by uvicorn on a port of its own, in this process (so it
    reads the test database), started and stopped cleanly (its lifespan flushes usage)."""
    from gateway.app import create_app

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
