import time

import pytest

from deployments.engines import BENCH_MODEL_REF
from deployments.models import Deployment, DeploymentStatus
from deployments.services import deployment_create
from lab.models import Benchmark
from tests.conftest import owner_of
from tests.deployments import conftest as deployments_fixtures
from tests.deployments.conftest import reconcile_until
from tests.gateway import conftest as gateway_fixtures

# Shared fixtures: the engines' run folders (isolated per session), a local CPU pool, and
# the real gateway served by uvicorn in this process.
_isolated_var = deployments_fixtures._isolated_var
replica_var = deployments_fixtures.replica_var
local_pool = deployments_fixtures.local_pool
gateway = gateway_fixtures.gateway

# Small enough for a busy CPU, big enough to be measured: 24 words in, 16 tokens out.
SMALL_WORKLOAD = {"input_tokens": 24, "output_tokens": 16, "requests_per_point": 4}


@pytest.fixture
def bench_deployment(org_a, local_pool):
    """The bench model (~120M parameters, random weights) on a real llama.cpp server."""
    d = deployment_create(
        organization=org_a,
        user=owner_of(org_a),
        name="bench",
        model_ref=BENCH_MODEL_REF,
        gpu_type="cpu",
        regions=["local"],
        engine_args=["--n_ctx", "1024"],
    )
    reconcile_until(d, lambda d: d.status == "running", timeout=180, what="running")
    return d


@pytest.fixture
def paper_deployment(org_a, local_pool):
    """A deployment marked running without an engine: for inputs refused before any run."""
    d = deployment_create(
        organization=org_a,
        user=owner_of(org_a),
        name="paper",
        model_ref=BENCH_MODEL_REF,
        gpu_type="cpu",
        regions=["local"],
        engine_args=["--n_ctx", "1024"],
    )
    Deployment.objects.filter(pk=d.pk).update(status=DeploymentStatus.RUNNING)
    d.refresh_from_db()
    return d


@pytest.fixture
def lab_worker(gateway, monkeypatch, request):
    """A real Celery worker that reaches the in-process gateway (GATEWAY_URL)."""
    url = gateway.base_url.removesuffix("/v1")
    monkeypatch.setenv("GATEWAY_URL", url)
    request.getfixturevalue("settings").GATEWAY_URL = url
    return request.getfixturevalue("celery_worker")


def wait_benchmark(pk: int, predicate, timeout: float = 240) -> Benchmark:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = Benchmark.objects.get(pk=pk)
        if predicate(b):
            return b
        time.sleep(0.3)
    b = Benchmark.objects.get(pk=pk)
    raise AssertionError(f"benchmark {pk}: {b.status} {b.phase}\n{b.log}\n{b.error}")
