"""Control-plane latency: from the API accepting a deployment to the driver's start call.

A real Celery worker (Redis broker when one answers on 127.0.0.1:6379, else the embedded
filesystem broker) reconciles deployments created through the REST API; the local
driver records when its start call came in. Side by side in the same run:

* queued    — the product path: API → commit → on_commit enqueue → worker → reconcile
              → placement → driver.start.
* in-process — the floor: the same reconcile called directly after the API answer, no
              queue and no worker (what the queue adds is the difference).

Each deployment is deleted after its measurement, so engines never pile up.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _setup import ROOT, django_on_postgres, percentile

SAMPLES = int(os.environ.get("BENCH_SAMPLES", "20"))


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


def main():
    tmp = Path(tempfile.mkdtemp(prefix="gantry-bench-"))
    os.environ["VAR_DIR"] = str(tmp)
    os.environ["ALLOWED_HOSTS"] = "testserver,127.0.0.1"
    os.environ["CELERY_TASK_DEFAULT_QUEUE"] = f"bench-{os.getpid()}"
    broker = "redis://127.0.0.1:6379/0" if redis_up() else "filesystem://"
    os.environ["CELERY_BROKER_URL"] = broker
    db_url = django_on_postgres()

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    from deployments.engines import DEMO_MODEL_REF
    from deployments.gpu_types import ensure_gpu_types
    from deployments.models import Deployment, GpuPool, GpuType, Node, Region, Replica
    from deployments.services import deployment_reconcile
    from portal.models import Organization
    from portal.services import api_key_create, organization_create

    Deployment.objects.all().delete()
    Node.objects.all().delete()
    GpuPool.objects.all().delete()
    Region.objects.all().delete()
    ensure_gpu_types()
    region = Region.objects.create(code="local", name="This machine")
    pool = GpuPool.objects.create(
        region=region, name="cpu", driver="local", gpu_type=GpuType.objects.get(code="cpu")
    )
    Node.objects.create(pool=pool, name="localhost", gpus_total=4)
    user, _ = get_user_model().objects.get_or_create(username="bench-cp")
    org = Organization.objects.filter(slug="bench-cp").first() or organization_create(
        name="bench-cp", slug="bench-cp", owner=user
    )
    _key, raw = api_key_create(organization=org, user=user, name="bench")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    env = {**os.environ, "DATABASE_URL": db_url}
    log = open(tmp / "worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "--loglevel",
            "WARNING",
            "--concurrency",
            "2",
            "--queues",
            os.environ["CELERY_TASK_DEFAULT_QUEUE"],
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    time.sleep(4)

    def requested_at(replica: Replica) -> float:
        meta = Path(settings.RUNTIME_DIR) / str(pool.pk) / replica.runtime_name / "meta.json"
        return json.loads(meta.read_text())["requested_at"]

    def one(i: int, queued: bool) -> float:
        accepted = time.time()
        response = api.post(
            "/api/v1/deployments",
            {
                "name": f"cp-{'q' if queued else 'p'}-{i}",
                "model_ref": DEMO_MODEL_REF,
                "gpu_type": "cpu",
                "regions": ["local"],
                "engine_args": ["--n_ctx", "128"],
            },
            format="json",
        )
        assert response.status_code == 201, (response.status_code, response.content[:300])
        pk = response.json()["id"]
        if not queued:
            deployment_reconcile(deployment_id=pk)
        deadline = time.time() + 30
        while time.time() < deadline:
            replica = Replica.objects.filter(deployment_id=pk).exclude(handle="").first()
            meta_ok = replica is not None
            if meta_ok:
                try:
                    took = requested_at(replica) - accepted
                    break
                except (FileNotFoundError, KeyError, json.JSONDecodeError):
                    pass
            time.sleep(0.002)
        else:
            raise SystemExit(f"no start call within 30 s; see {tmp / 'worker.log'}")
        api.delete(f"/api/v1/deployments/{pk}")
        return took * 1000

    try:
        # In-process first: the worker is idle; then queued. One warm-up each.
        one(-1, queued=False)
        floor = [one(i, queued=False) for i in range(SAMPLES)]
        one(-2, queued=True)
        queued = [one(i, queued=True) for i in range(SAMPLES)]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()

    print(
        f"broker: {broker.split(':')[0]}; {SAMPLES} deployments per variant, "
        "API accept → driver start call"
    )
    print(f"{'variant':<12}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for name, values in (("in-process", floor), ("queued", queued)):
        print(
            f"{name:<12}{percentile(values, 50):>9.1f}{percentile(values, 95):>9.1f}"
            f"{max(values):>9.1f}"
        )
    print(f"queue and worker add {percentile(queued, 50) - percentile(floor, 50):.1f} ms at p50")
    print(
        f"RESULT p50_ms={percentile(queued, 50):.1f} p95_ms={percentile(queued, 95):.1f} "
        f"inprocess_p50_ms={percentile(floor, 50):.1f} "
        f"inprocess_p95_ms={percentile(floor, 95):.1f}"
    )


if __name__ == "__main__":
    main()
