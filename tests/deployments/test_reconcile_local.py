"""The reconciler with the `local` driver: real llama.cpp engine processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from deployments.drivers import driver_for
from deployments.engines import DEMO_MODEL_REF
from deployments.models import Deployment, DeploymentStatus, Node, Replica
from deployments.placement import live_replica_gpus_by_node
from deployments.services import deployment_create, deployment_reconcile, pool_check
from tests.conftest import database_url_for_subprocess, owner_of
from tests.deployments.conftest import chat, pid_alive, reconcile_until

ROOT = Path(__file__).resolve().parents[2]
LIVE = ["pending", "starting", "running", "stopping"]


def _pid(replica: Replica) -> int:
    meta = Path(settings.RUNTIME_DIR) / str(replica.pool_id) / replica.handle
    return json.loads((meta / "meta.json").read_text())["pid"]


def _assert_books_balance() -> None:
    held = {n.pk: n.gpus_allocated for n in Node.objects.all() if n.gpus_allocated}
    assert held == live_replica_gpus_by_node()


def _demo(org, name="chat", **kw):
    kw.setdefault("engine_args", ["--n_ctx", "256"])
    return deployment_create(
        organization=org,
        user=owner_of(org),
        name=name,
        model_ref=DEMO_MODEL_REF,
        gpu_type="cpu",
        regions=["local"],
        **kw,
    )


@pytest.mark.django_db(transaction=True)
def test_create_run_complete_delete_with_the_real_worker(
    celery_worker, org_a, local_pool, api_client_for
):
    api = api_client_for(org_a)
    created = api.post(
        "/api/v1/deployments",
        {
            "name": "e2e-local",
            "model_ref": DEMO_MODEL_REF,
            "gpu_type": "cpu",
            "regions": ["local"],
            "engine_args": ["--n_ctx", "256"],
        },
        format="json",
    )
    assert created.status_code == 201
    pk = created.json()["id"]
    # Nothing but the worker moves it: create enqueues on commit, follow-ups do the rest.
    celery_worker.wait_for(
        lambda: Deployment.objects.get(pk=pk).status == "running",
        timeout=120,
        what="the worker to bring the deployment to running",
    )
    body = api.get(f"/api/v1/deployments/{pk}").json()
    assert body["status"] == "running" and body["endpoint"].endswith("/v1")
    [replica] = body["replicas"]
    assert replica["region"] == "local" and replica["pool"] == "cpu"
    answer = chat(Replica.objects.get(pk=replica["id"]).url)
    assert answer["usage"]["completion_tokens"] > 0 and answer["choices"][0]["message"]
    kinds = [e["kind"] for e in api.get(f"/api/v1/deployments/{pk}/events").json()["results"]]
    assert {"created", "replica_placed", "replica_started", "replica_ready"} <= set(kinds)
    logs = api.get(f"/api/v1/deployments/{pk}/replicas/{replica['id']}/logs").json()
    assert "llama" in logs["log"].lower() or "uvicorn" in logs["log"].lower()

    pid = _pid(Replica.objects.get(pk=replica["id"]))
    with open(f"/proc/{pid}/environ", "rb") as f:
        engine_env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    assert engine_env[b"GANTRY_REPLICA"] == f"gantry-r{replica['id']}".encode()
    assert not {b"SECRET_KEY", b"DATABASE_URL", b"CELERY_BROKER_URL"} & engine_env.keys()
    assert api.delete(f"/api/v1/deployments/{pk}").status_code == 204
    # Released at once: the delete answered after the stop.
    assert Node.objects.get().gpus_allocated == 0
    assert not pid_alive(pid)
    assert Deployment.objects.get(pk=pk).status == DeploymentStatus.DELETED
    assert api.get(f"/api/v1/deployments/{pk}").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_scale_one_to_three_to_zero(org_a, local_pool, api_client_for, settings):
    # Replicas drain before they stop (tests/gateway/test_drain.py); no gateway sends them
    # anything here, so no grace is needed for requests that might be on their way.
    settings.REPLICA_DRAIN_GRACE_S = 0
    api = api_client_for(org_a)
    d = _demo(org_a, max_replicas=3)
    reconcile_until(d, lambda d: d.status == "running", what="1 running")
    assert (
        api.post(f"/api/v1/deployments/{d.pk}/scale", {"replicas": 3}, format="json").status_code
        == 200
    )
    reconcile_until(
        d,
        lambda d: d.status == "running" and d.replicas.filter(status="running").count() == 3,
        what="3 running",
    )
    replicas = list(d.replicas.filter(status="running"))
    assert sorted(r.ordinal for r in replicas) == [0, 1, 2]
    assert len({r.url for r in replicas}) == 3 and all(chat(r.url)["usage"] for r in replicas)
    assert Node.objects.get().gpus_allocated == 3
    _assert_books_balance()
    pids = [_pid(r) for r in replicas]
    response = api.post(f"/api/v1/deployments/{d.pk}/scale", {"replicas": 0}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "stopped"
    assert Node.objects.get().gpus_allocated == 0
    assert not any(pid_alive(p) for p in pids)
    assert not d.replicas.filter(status__in=LIVE).exists()


@pytest.mark.django_db(transaction=True)
def test_killed_replica_is_detected_and_replaced(org_a, local_pool):
    d = _demo(org_a)
    reconcile_until(d, lambda d: d.status == "running", what="running")
    first = d.replicas.get(status="running")
    os.kill(_pid(first), signal.SIGKILL)
    reconcile_until(
        d,
        lambda d: (
            d.status == "running"
            and d.replicas.filter(status="running").exclude(pk=first.pk).exists()
        ),
        what="a replacement",
    )
    first.refresh_from_db()
    assert first.status == "failed" and first.gpus == 0
    messages = list(d.events.order_by("at", "id").values_list("message", flat=True))
    assert any(m.startswith("replica 1 failed: process exited") for m in messages), messages
    assert any(m.startswith("replacing a failed replica: placed replica 1") for m in messages)
    assert Node.objects.get().gpus_allocated == 1
    _assert_books_balance()


@pytest.mark.django_db(transaction=True)
def test_a_replica_that_cannot_start_backs_off_then_fails_with_the_reason(
    org_a, local_pool, settings
):
    settings.REPLICA_MAX_FAILURES = 2
    settings.REPLICA_MAX_BACKOFF_S = 1
    d = _demo(org_a)
    # An argument the engine refuses at start (no tenant can write one: the flag schema
    # refuses it; a row from before the schema could hold one).
    Deployment.objects.filter(pk=d.pk).update(engine_args=["--n_ctx", "not-a-number"])
    reconcile_until(d, lambda d: d.status == "failed", timeout=60, what="failed")
    assert d.failure_count == 2
    assert "replicas failed 2 times in a row" in d.status_reason
    assert "Scale or start to retry" in d.status_reason
    assert Node.objects.get().gpus_allocated == 0
    assert d.events.filter(kind="replica_failed", message__contains="replacing it in").exists()


KILL_POINTS = ["placed", "started", "random"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_reconciler_killed_mid_way_leaves_no_duplicate_and_no_leak(kill_at, org_a, local_pool):
    d = _demo(org_a, name=f"kill-{kill_at}")
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocess(),
        "RUNTIME_DIR": str(settings.RUNTIME_DIR),
        "GANTRY_MODEL_DIRS": ",".join(settings.GANTRY_MODEL_DIRS),
        "SECRET_KEY": settings.SECRET_KEY,
    }
    code = (
        f"from deployments.services import deployment_reconcile\n"
        f"deployment_reconcile(deployment_id={d.pk})\n"
        f"import time; time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            replica = d.replicas.first()
            if kill_at == "placed" and replica is not None:
                break
            if (
                kill_at == "started"
                and replica is not None
                and (
                    Path(settings.RUNTIME_DIR)
                    / str(local_pool.pk)
                    / f"gantry-r{replica.pk}"
                    / "pid"
                ).exists()
            ):
                break
            if kill_at == "random" and replica is not None:
                time.sleep(0.01 * (os.getpid() % 7))
                break
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert d.replicas.exists(), "the killed pass never got to placing"
    # Another worker picks the deployment up (the beat sweep would): same end state.
    reconcile_until(d, lambda d: d.status == "running", what="running after the kill")
    deployment_reconcile(deployment_id=d.pk)  # and running it twice changes nothing
    assert d.replicas.filter(status__in=LIVE).count() == 1
    assert Node.objects.get().gpus_allocated == 1
    _assert_books_balance()
    pool_check(pool=local_pool)  # whatever the killed pass started and lost, goes
    runtimes = driver_for(local_pool).list()
    assert [rt.replica_id for rt in runtimes] == [d.replicas.get(status="running").pk]


@pytest.mark.django_db(transaction=True)
def test_celery_worker_killed_mid_reconcile_leaves_no_duplicate_and_no_leak(
    celery_worker, org_a, local_pool
):
    d = _demo(org_a, name="kill-worker")  # enqueued on commit; the worker starts on it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not d.replicas.exists():
        time.sleep(0.002)
    celery_worker.proc.send_signal(signal.SIGKILL)  # mid-pass: placed, maybe started
    celery_worker.proc.wait()
    assert d.replicas.exists()
    reconcile_until(d, lambda d: d.status == "running", what="running after the kill")
    deployment_reconcile(deployment_id=d.pk)
    assert d.replicas.filter(status__in=LIVE).count() == 1
    assert Node.objects.get().gpus_allocated == 1
    _assert_books_balance()
    pool_check(pool=local_pool)
    assert [rt.replica_id for rt in driver_for(local_pool).list()] == [
        d.replicas.get(status="running").pk
    ]


@pytest.mark.django_db(transaction=True)
def test_orphan_runtime_is_stopped_by_the_pool_check(org_a, local_pool):
    d = _demo(org_a)
    reconcile_until(d, lambda d: d.status == "running", what="running")
    replica = d.replicas.get(status="running")
    pid = _pid(replica)
    # The database forgets the replica (say, restored from an older backup).
    Replica.objects.filter(pk=replica.pk).update(status="stopped", gpus=0)
    Node.objects.update(gpus_allocated=0)
    pool_check(pool=local_pool)
    assert not pid_alive(pid)
    assert d.events.filter(kind="orphan_removed", message__contains=replica.handle).exists()
