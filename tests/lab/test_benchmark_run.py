"""Benchmarks run for real: the API queues, a Celery worker measures the bench model on a
real llama.cpp server, through the real gateway or straight to the replica."""

import pytest

from billing.models import UsageRecord
from lab.models import Benchmark
from lab.services import benchmark_create, benchmark_run
from tests.conftest import owner_of
from tests.gateway.conftest import wait_for
from tests.lab.conftest import SMALL_WORKLOAD, wait_benchmark

URL = "/api/v1/benchmarks"
PERCENTILES = {"p50", "p95", "p99"}


def test_benchmark_through_the_gateway_by_api_and_worker(
    api_client_for, org_a, bench_deployment, lab_worker
):
    api = api_client_for(org_a)
    r = api.post(
        URL,
        {
            "deployment": bench_deployment.pk,
            "target": "gateway",
            "workload": SMALL_WORKLOAD,
            "load": {"kind": "concurrency", "concurrency": [1, 2]},
            "slo": {"ttft_p95_ms": 60_000, "error_rate": 0.0},
        },
        format="json",
    )
    assert r.status_code == 201, r.content
    assert set(r.json()) == {"id", "status"} and r.json()["status"] == "queued"
    pk = r.json()["id"]
    wait_benchmark(pk, lambda b: b.is_finished)

    body = api.get(f"{URL}/{pk}").json()
    assert body["status"] == "succeeded", body
    assert body["progress"] == 1.0
    assert [p["concurrency"] for p in body["points"]] == [1, 2]
    for p in body["points"]:
        assert p["requests"] == 4 and p["errors"] == 0 and p["error_rate"] == 0
        assert p["requests_per_s"] > 0 and p["output_tokens_per_s"] > 0
        for metric in ("ttft_ms", "itl_ms", "e2e_ms"):
            assert set(p[metric]) == PERCENTILES
            assert 0 < p[metric]["p50"] <= p[metric]["p95"] <= p[metric]["p99"]
        assert p["ttft_ms"]["p50"] < p["e2e_ms"]["p50"]
        # Random weights never mean to stop: each answer runs to max_tokens (16).
        assert p["output_tokens"] >= 4 * 14
        assert p["goodput"] == p["requests_per_s"] and p["meets_slo"]
        # The CPU slot's rate, over the measured tokens.
        assert p["cost_per_1m_output_tokens"] > 0
    assert body["seed"] == body["workload"]["seed"]
    assert "warm-up" in body["log_tail"] and "c=2" in body["log_tail"]

    # The run's traffic went through a key minted for it: metered like any client's,
    # and revoked once the run ended.
    bench = Benchmark.objects.select_related("api_key").get(pk=pk)
    assert bench.api_key is not None and bench.api_key.revoked_at is not None
    assert wait_for(
        lambda: UsageRecord.objects.filter(
            deployment_id=bench_deployment.pk, kind="output_tokens"
        ).exists(),
        timeout=30,
    )


# The run writes its progress from worker threads (each with its own connection): the rows
# must be committed for them to see.
@pytest.mark.django_db(transaction=True)
def test_benchmark_straight_to_the_replica_records_its_seed(org_a, bench_deployment, monkeypatch):
    monkeypatch.setattr("lab.tasks.run_benchmark.delay", lambda pk: None)
    b = benchmark_create(
        organization=org_a,
        user=owner_of(org_a),
        deployment_id=bench_deployment.pk,
        target="replica",
        workload={**SMALL_WORKLOAD, "kind": "multi_turn", "turns": 2, "seed": 1234},
        load={"kind": "concurrency", "concurrency": [2]},
    )
    assert b.seed == 1234 and b.workload["seed"] == 1234
    b = benchmark_run(benchmark_id=b.pk)
    assert b.status == "succeeded", (b.error, b.log)
    assert b.replica is not None and b.replica.deployment_id == bench_deployment.pk
    assert b.api_key is None  # straight to the engine, with its own key
    [p] = b.points
    # Two turns each: 4 conversations, 8 requests.
    assert p["requests"] == 8 and p["errors"] == 0
    # A second delivery of the task finds the run finished and leaves it as it is.
    again = benchmark_run(benchmark_id=b.pk)
    assert again.points == b.points and again.finished_at == b.finished_at


def test_cancel_stops_a_running_benchmark_and_keeps_its_points(
    api_client_for, org_a, bench_deployment, lab_worker
):
    api = api_client_for(org_a)
    r = api.post(
        URL,
        {
            "deployment": bench_deployment.pk,
            "workload": {**SMALL_WORKLOAD, "requests_per_point": 2000, "warmup_requests": 0},
            "load": {"concurrency": [1, 2, 4]},
        },
        format="json",
    )
    pk = r.json()["id"]
    wait_benchmark(pk, lambda b: b.status == "running" and "point 1/3" in b.log, timeout=120)
    r = api.post(f"{URL}/{pk}/cancel")
    assert r.status_code == 200 and r.json()["phase"] in {"cancelling", "cancelled"}
    b = wait_benchmark(pk, lambda b: b.is_finished, timeout=120)
    assert b.status == "cancelled"
    assert "cancelled" in b.log
    assert b.api_key.revoked_at is not None
    # Cancelling again changes nothing.
    assert api.post(f"{URL}/{pk}/cancel").json()["status"] == "cancelled"


@pytest.mark.django_db
def test_cancel_before_the_worker_starts_leaves_nothing_to_run(
    org_a, paper_deployment, monkeypatch
):
    from lab.services import benchmark_cancel

    monkeypatch.setattr("lab.tasks.run_benchmark.delay", lambda pk: None)
    b = benchmark_create(
        organization=org_a, user=owner_of(org_a), deployment_id=paper_deployment.pk
    )
    b = benchmark_cancel(benchmark=b)
    assert b.status == "cancelled"
    # The task, delivered late, does nothing.
    assert benchmark_run(benchmark_id=b.pk).status == "cancelled"
    assert Benchmark.objects.get(pk=b.pk).started_at is None


@pytest.mark.django_db
def test_a_run_whose_worker_died_is_failed_when_its_task_comes_back(
    org_a, paper_deployment, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    monkeypatch.setattr("lab.tasks.run_benchmark.delay", lambda pk: None)
    b = benchmark_create(
        organization=org_a, user=owner_of(org_a), deployment_id=paper_deployment.pk
    )
    # Claimed by a worker that beat a moment ago: still alive, left alone.
    Benchmark.objects.filter(pk=b.pk).update(status="running", updated_at=timezone.now())
    assert benchmark_run(benchmark_id=b.pk).status == "running"
    # Three minutes without a beat: its worker is gone.
    Benchmark.objects.filter(pk=b.pk).update(updated_at=timezone.now() - timedelta(minutes=3))
    b = benchmark_run(benchmark_id=b.pk)
    assert b.status == "failed" and "worker running it stopped" in b.error
