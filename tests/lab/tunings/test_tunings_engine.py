"""Tunings on the real llama.cpp engine: each trial a real deployment on the local pool,
measured, torn down. Also the cancellation and failure paths: GPUs always come back."""

import pytest

from deployments.models import Deployment, Node, Replica
from lab.models import Benchmark, TrialState, Tuning
from lab.tuning_run import tuning_run
from tests.lab.tunings.conftest import tuning_body

LIVE = ["pending", "starting", "running", "stopping"]


def _nothing_held(tuning: Tuning) -> None:
    names = [f"tune-{tuning.pk}-{t.number}" for t in tuning.trials.all()]
    deployments = Deployment.objects.filter(name__in=names)
    assert deployments.count() == len(names)
    assert all(d.deleted_at is not None for d in deployments)
    assert not Replica.objects.filter(deployment__in=deployments, status__in=LIVE).exists()
    assert sum(Node.objects.values_list("gpus_allocated", flat=True)) == 0


def _create(api, monkeypatch, **over) -> Tuning:
    monkeypatch.setattr("lab.tasks.run_tuning.delay", lambda *_a: None)
    r = api.post("/api/v1/tunings", tuning_body(**over), format="json")
    assert r.status_code == 201, r.content
    return Tuning.objects.get(pk=r.json()["id"])


@pytest.mark.django_db(transaction=True)
def test_a_small_real_tuning_measures_each_trial_and_releases_its_gpus(
    catalog, local_pool, org_a, api_client_for, monkeypatch
):
    api = api_client_for(org_a)
    tuning = _create(api, monkeypatch)
    tuning_run(tuning_id=tuning.pk)
    body = api.get(f"/api/v1/tunings/{tuning.pk}").json()
    assert body["status"] == "succeeded", body["log_tail"]
    assert len(body["trials"]) == 2 and "budget spent" in body["stop_reason"]
    assert {t["state"] for t in body["trials"]} <= {"complete", "pruned"}, body["log_tail"]
    first = body["trials"][0]
    assert (
        first["points"][0]["output_tokens_per_s"] > 0 and first["points"][0]["ttft_ms"]["p95"] > 0
    )
    assert first["points"][0]["cost_per_1m_output_tokens"] > 0  # from the CPU slot's rate
    assert body["best"] is not None and body["pareto"]
    # Each trial ran the flags it was given, on a real deployment, and was recorded as a
    # benchmark of that deployment (the provenance a publish cites).
    for t in body["trials"]:
        d = Deployment.objects.get(pk=t["deployment"])
        assert d.engine_args[-len(t["launch"]) :] == t["launch"]
        assert Benchmark.objects.get(pk=t["benchmark"]).deployment_id == d.pk
    _nothing_held(tuning)
    # Running it again changes nothing: it is finished.
    tuning_run(tuning_id=tuning.pk)
    assert Tuning.objects.get(pk=tuning.pk).trials.count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_failed_trial_tears_its_deployment_down(
    catalog, local_pool, org_a, api_client_for, monkeypatch
):
    def broken(**_kw):
        raise RuntimeError("load generator crashed")

    monkeypatch.setattr("lab.tuning_run.measure", broken)
    tuning = _create(api_client_for(org_a), monkeypatch, budget={"trials": 1})
    tuning_run(tuning_id=tuning.pk)
    tuning.refresh_from_db()
    [trial] = tuning.trials.all()
    assert trial.state == TrialState.FAILED and "load generator crashed" in trial.note
    assert tuning.status == "failed" and tuning.best_trial is None
    _nothing_held(tuning)


@pytest.mark.django_db(transaction=True)
def test_cancel_mid_trial_with_the_real_worker_tears_down_and_releases(
    celery_worker, catalog, local_pool, org_a, api_client_for
):
    api = api_client_for(org_a)
    body = tuning_body(
        budget={"trials": 3},
        workload={"input_tokens": 16, "output_tokens": 16, "requests_per_point": 400},
    )
    pk = api.post("/api/v1/tunings", body, format="json").json()["id"]

    def measuring() -> bool:
        t = Tuning.objects.get(pk=pk)
        return "measuring" in t.log

    celery_worker.wait_for(measuring, timeout=180, what="the first trial to be measured")
    r = api.post(f"/api/v1/tunings/{pk}/cancel", {}, format="json")
    assert r.status_code == 200
    celery_worker.wait_for(
        lambda: Tuning.objects.get(pk=pk).status == "cancelled",
        timeout=120,
        what="the tuning to stop",
    )
    tuning = Tuning.objects.get(pk=pk)
    [trial] = tuning.trials.all()
    assert trial.state == TrialState.CANCELLED
    _nothing_held(tuning)
