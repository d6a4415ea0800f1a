"""The real services CI promises are really there (and really used)."""

import json
import os
import urllib.request

from django.db import connection

from tests.conftest import IN_CI, need, port_open, redis_available


def test_ci_runs_on_postgresql(db):
    if IN_CI:
        assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute("select 1")
        assert cursor.fetchone() == (1,)


def test_redis_answers():
    need(redis_available(), "Redis")
    import redis

    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    assert client.ping() is True


def test_docker_engine_answers():
    sock = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    path = sock.removeprefix("unix://")
    need(os.path.exists(path), f"a Docker engine at {sock}")
    import http.client
    import socket

    class UnixHTTPConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(path)

    conn = UnixHTTPConnection("docker")
    conn.request("GET", "/version")
    version = json.loads(conn.getresponse().read())
    assert version["ApiVersion"]


def test_registry_answers():
    registry = os.environ.get("REGISTRY_URL", "127.0.0.1:5000")
    host, _, port = registry.partition(":")
    need(port_open(host, int(port or 5000)), f"a Docker registry at {registry}")
    with urllib.request.urlopen(f"http://{registry}/v2/", timeout=5) as response:
        assert response.status == 200
