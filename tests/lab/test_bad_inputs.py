"""Every tenant-controlled input of a benchmark, attacked: refused with a 400 naming the
field (404 for another organization's deployment), and nothing queued."""

import pytest

from lab.models import Benchmark

URL = "/api/v1/benchmarks"


def post(api, deployment, **body):
    return api.post(URL, {"deployment": deployment.pk, **body}, format="json")


def test_other_orgs_deployment_is_404_and_nothing_queued(api_client_for, org_b, paper_deployment):
    r = post(api_client_for(org_b), paper_deployment)
    assert r.status_code == 404
    assert not Benchmark.objects.exists()


@pytest.mark.parametrize(
    "body, field",
    [
        ({"target": "replicas"}, "target"),
        ({"target": "gate"}, "target"),
        ({"workload": {"kind": "synth"}}, "workload.kind"),
        ({"workload": {"input_tokens": "128"}}, "workload.input_tokens"),
        ({"workload": {"input_tokens": True}}, "workload.input_tokens"),
        ({"workload": {"input_tokens": 0}}, "workload.input_tokens"),
        ({"workload": {"input_tokens": 10**12}}, "workload.input_tokens"),
        ({"workload": {"requests_per_point": 10**9}}, "workload.requests_per_point"),
        ({"workload": {"input_spread": 5}}, "workload.input_spread"),
        ({"workload": {"input_tok": 12}}, "workload.input_tok"),
        ({"workload": "fast"}, "workload"),
        ({"workload": {"kind": "jsonl"}}, "workload.prompts"),
        ({"workload": {"kind": "jsonl", "prompts": "not json\n"}}, "workload.prompts"),
        ({"workload": {"kind": "jsonl", "prompts": [{"prompt": ""}]}}, "workload.prompts[0]"),
        ({"workload": {"kind": "shared_prefix"}}, "workload.prefix_tokens"),
        ({"workload": {"turns": 3}}, "workload.turns"),
        ({"load": {"kind": "concurrency", "concurrency": []}}, "load.concurrency"),
        ({"load": {"concurrency": [1, "2"]}}, "load.concurrency[1]"),
        ({"load": {"concurrency": [10**6]}}, "load.concurrency[0]"),
        ({"load": {"concurrency": list(range(1, 40))}}, "load.concurrency"),
        ({"load": {"kind": "rate", "rates": [0]}}, "load.rates[0]"),
        ({"load": {"kind": "rate", "rates": [float("1e9")]}}, "load.rates[0]"),
        ({"load": {"kind": "poisson"}}, "load.kind"),
        ({"slo": {"ttft_p95_ms": "500ms"}}, "slo.ttft_p95_ms"),
        ({"slo": {"ttft_p95_s": 0.5}}, "slo.ttft_p95_s"),
        ({"slo": {"ttft_p95": 500}}, "slo.ttft_p95"),
        ({"slo": {"e2e_p95_ms": -1}}, "slo.e2e_p95_ms"),
        ({"slo": {"itl_p95_ms": 1e12}}, "slo.itl_p95_ms"),
        ({"slo": {"error_rate": 5}}, "slo.error_rate"),
        ({"slo": {"error_rate": "1%"}}, "slo.error_rate"),
        ({"load": {"kind": "slo_search"}, "slo": {}}, "slo"),
    ],
)
def test_bad_input_is_400_naming_the_field_and_nothing_queued(
    api_client_for, org_a, paper_deployment, body, field
):
    r = post(api_client_for(org_a), paper_deployment, **body)
    assert r.status_code == 400, r.content
    assert field in r.json(), r.json()
    assert not Benchmark.objects.exists()


def test_workload_that_cannot_fit_the_context_is_refused(api_client_for, org_a, paper_deployment):
    r = post(
        api_client_for(org_a),
        paper_deployment,
        workload={"input_tokens": 1000, "output_tokens": 100},
    )
    assert r.status_code == 400
    message = r.json()["workload"][0]
    assert "1,100" in message and "1,024" in message
    # Spread counts: 900 in + 100 out fits, but not at +20%.
    r = post(
        api_client_for(org_a),
        paper_deployment,
        workload={"input_tokens": 800, "input_spread": 0.2, "output_tokens": 100},
    )
    assert r.status_code == 400 and "workload" in r.json()
    assert not Benchmark.objects.exists()


@pytest.mark.parametrize("deployment", ["1", "abc", -1, 0, 2**70, None, [1]])
def test_deployment_must_be_an_id(api_client_for, org_a, deployment):
    r = api_client_for(org_a).post(URL, {"deployment": deployment}, format="json")
    assert r.status_code in (400, 404)
    if r.status_code == 400:
        assert "deployment" in r.json()
    assert not Benchmark.objects.exists()


def test_deployment_not_running_is_refused(api_client_for, org_a, paper_deployment):
    paper_deployment.status = "starting"
    paper_deployment.save(update_fields=["status"])
    r = post(api_client_for(org_a), paper_deployment)
    assert r.status_code == 400 and "deployment" in r.json()
    assert not Benchmark.objects.exists()


def test_other_orgs_benchmark_is_404(api_client_for, org_a, org_b, paper_deployment):
    from lab.services import benchmark_create
    from tests.conftest import owner_of

    with pytest.MonkeyPatch.context() as m:
        m.setattr("lab.tasks.run_benchmark.delay", lambda pk: None)
        b = benchmark_create(
            organization=org_a, user=owner_of(org_a), deployment_id=paper_deployment.pk
        )
    other = api_client_for(org_b)
    assert other.get(f"{URL}/{b.pk}").status_code == 404
    assert other.post(f"{URL}/{b.pk}/cancel").status_code == 404
    assert other.get(URL).json()["count"] == 0
    b.refresh_from_db()
    assert not b.cancel_requested
