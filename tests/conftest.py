"""Shared fixtures. Tests use the real services; a missing one skips only outside CI."""

import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from portal.models import Membership, Organization, Role
from portal.services import api_key_create, organization_create

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Every process this session starts (workers, servers, `make run`, and through them the
# engines and containers) inherits this marker, so the session can tell exactly which
# ones are its own (other sessions run on the same machine at the same time).
SESSION_INSTANCE = "/".join(
    filter(None, [os.environ.get("GANTRY_INSTANCE"), f"pytest-{uuid.uuid4().hex[:12]}"])
)
os.environ["GANTRY_INSTANCE"] = SESSION_INSTANCE


@pytest.hookimpl(trylast=True)  # after pytest-django's own reordering
def pytest_collection_modifyitems(config, items):
    """Browser tests last: their session-long event loop must not overlap other tests."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


def need(available: bool, what: str) -> None:
    """Skip when a real service is missing — but under CI a missing service is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI but is not available", pytrace=False)
    pytest.skip(f"{what} is not available (outside CI, so skipping)")


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_url() -> str:
    return os.environ.get("REDIS_URL") or os.environ.get(
        "CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"
    )


def redis_available() -> bool:
    url = urlparse(redis_url())
    return url.scheme.startswith("redis") and port_open(
        url.hostname or "127.0.0.1", url.port or 6379
    )


def _remove_session_containers() -> list[str]:
    """Remove this session's containers (and only those); say which they were."""
    sock = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not sock.startswith("unix://") or not Path(sock.removeprefix("unix://")).exists():
        return []
    import docker

    from deployments.drivers.docker import INSTANCE_LABEL

    client = docker.DockerClient(base_url=sock)
    removed = []
    try:
        for c in client.containers.list(all=True, filters={"label": INSTANCE_LABEL}):
            owner = c.labels[INSTANCE_LABEL]
            if owner == SESSION_INSTANCE or owner.startswith(SESSION_INSTANCE + "/"):
                removed.append(f"container {c.name} ({c.status})")
                c.remove(force=True)
    finally:
        client.close()
    return removed


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind():
    """When the session ends, none of the processes or containers it started may still
    run. Whatever did is reported as a failure, then stopped."""
    yield
    from deployments.drivers.local import instance_processes, terminate

    pids = instance_processes(SESSION_INSTANCE, nested=True)
    processes = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        # The program and its first arguments only: an engine's later ones hold its key.
        processes.append(f"{pid}: {' '.join(argv[:4])[:200]}")
    terminate(pids)
    containers = _remove_session_containers()
    assert not processes and not containers, (
        "left running at the end of the test session (now stopped):\n"
        + "\n".join(processes + containers)
    )


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Hashing strength is Django's concern, not ours; the default costs ~0.1 s a user.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    # Throttle counters (sign-up, API rates) live in the cache; one test's must not count
    # against the next.
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _reference_data(request):
    """Reference rows a data migration provides (flushed by transactional tests)."""
    if request.node.get_closest_marker("django_db") or {"db", "transactional_db"} & set(
        request.fixturenames
    ):
        from billing.gpu_rates import ensure_default_rates
        from billing.plans import ensure_default_plan
        from deployments.gpu_types import ensure_gpu_types

        request.getfixturevalue("django_db_blocker")
        with request.getfixturevalue("django_db_blocker").unblock():
            ensure_gpu_types()
            ensure_default_rates()  # the GPU-hour prices (the rate table is the one price)
            ensure_default_plan()


@pytest.fixture
def make_user(db):
    counter = {"n": 0}

    def make(username: str | None = None, **extra):
        counter["n"] += 1
        username = username or f"user{counter['n']}"
        extra.setdefault("email", f"{username}@example.com")
        return get_user_model().objects.create_user(
            username=username, password="a-long-test-pass-42", **extra
        )

    return make


@pytest.fixture
def make_org(db, make_user):
    def make(slug: str, owner=None) -> Organization:
        owner = owner or make_user(f"{slug}-owner")
        return organization_create(name=slug.title(), slug=slug, owner=owner)

    return make


@pytest.fixture
def add_member(db):
    def add(org: Organization, user, role: str = Role.MEMBER) -> Membership:
        return Membership.objects.create(organization=org, user=user, role=role)

    return add


def owner_of(org: Organization):
    return org.memberships.get(role=Role.OWNER).user


@pytest.fixture
def org_a(make_org):
    return make_org("alpha")


@pytest.fixture
def org_b(make_org):
    return make_org("bravo")


@pytest.fixture
def web_client(client):
    """A browser-like client signed in as a given user, inside a given organization."""

    def sign_in(user, org: Organization | None = None):
        client.force_login(user)
        if org is not None:
            session = client.session
            session["gantry_org_id"] = org.pk
            session.save()
        return client

    return sign_in


@pytest.fixture
def api_client_for(db):
    """An API client that sends a fresh API key of ``org`` minted for ``user``."""

    def make(org: Organization, user=None) -> APIClient:
        user = user or owner_of(org)
        _key, raw = api_key_create(organization=org, user=user, name="test")
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        api.raw_key = raw
        return api

    return make


# --- A real Celery worker -------------------------------------------------------------


def database_url_for_subprocess() -> str:
    """The URL of the database this test is using (the test database), for a child."""
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] or ""
    if s["PASSWORD"]:
        auth += f":{s['PASSWORD']}"
    host = s["HOST"] or "127.0.0.1"
    return f"postgres://{auth}@{host}:{s['PORT'] or 5432}/{s['NAME']}"


def _reset_celery_routing(app) -> None:
    for attr in ("queues", "default_queue", "router"):
        app.amqp.__dict__.pop(attr, None)


@pytest.fixture
def celery_worker(transactional_db, tmp_path):
    """Start a real `celery worker` process on the configured broker, on a queue of its
    own (so no other worker steals the test's tasks), pointed at the test database.

    Under CI the broker is Redis; the embedded default's filesystem broker works too.
    """
    import subprocess
    import sys
    import time
    import uuid
    from pathlib import Path

    from portal.celery import app

    broker = app.conf.broker_url
    if IN_CI:
        assert broker.startswith("redis://"), f"CI must run the worker on Redis, not {broker}"
    if broker.startswith("redis"):
        need(redis_available(), "Redis (the Celery broker)")
    queue = f"test-{uuid.uuid4().hex[:10]}"
    old_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    _reset_celery_routing(app)
    mail_dir = tmp_path / "mail"
    log_path = tmp_path / "worker.log"
    from django.conf import settings as dj_settings

    env = {
        **os.environ,
        "RUNTIME_DIR": str(dj_settings.RUNTIME_DIR),
        "HF_ENDPOINT": dj_settings.HF_ENDPOINT,
        "REGISTRY_URL": dj_settings.REGISTRY_URL,
        "GANTRY_MODEL_DIRS": ",".join(dj_settings.GANTRY_MODEL_DIRS),
        "SECRET_KEY": dj_settings.SECRET_KEY,
        "DATABASE_URL": database_url_for_subprocess(),
        "CELERY_BROKER_URL": broker,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "EMAIL_URL": f"filemail:///{mail_dir}",
    }
    root = Path(__file__).resolve().parents[1]
    log = open(log_path, "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "--pool",
            "solo",
            "--queues",
            queue,
            "--loglevel",
            "INFO",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"{queue}@%h",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    class Worker:
        pass

    worker = Worker()
    worker.proc, worker.queue, worker.mail_dir, worker.log_path = proc, queue, mail_dir, log_path

    def wait_for(predicate, timeout: float = 60, what: str = "the worker") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; log:\n{log_path.read_text()}")

    worker.wait_for = wait_for
    wait_for(lambda: "ready." in log_path.read_text(), what="the worker to start")
    try:
        yield worker
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        app.conf.task_default_queue = old_queue
        _reset_celery_routing(app)
