"""The benchmark pages: the form queues through the same service as the API, bad input
re-renders with the field named, the detail page draws its charts and polls until done."""

import pytest
from django.urls import reverse

from lab.models import Benchmark
from tests.conftest import owner_of

POINT = {
    "concurrency": 1,
    "rate": None,
    "requests": 4,
    "errors": 0,
    "duration_s": 2.0,
    "requests_per_s": 2.0,
    "output_tokens": 64,
    "output_tokens_per_s": 32.0,
    "output_tokens_per_s_per_user": 32.0,
    "ttft_ms": {"p50": 100.0, "p95": 150.0, "p99": 160.0},
    "itl_ms": {"p50": 20.0, "p95": 25.0, "p99": 30.0},
    "e2e_ms": {"p50": 400.0, "p95": 500.0, "p99": 520.0},
    "error_rate": 0.0,
    "goodput": 2.0,
    "meets_slo": True,
    "seed": 1,
    "cost_per_1m_output_tokens": 0.43,
    "error_samples": [],
}


@pytest.fixture
def queued(monkeypatch):
    sent = []
    monkeypatch.setattr("lab.tasks.run_benchmark.delay", sent.append)
    return sent


def test_form_queues_a_benchmark(
    web_client, org_a, paper_deployment, queued, django_capture_on_commit_callbacks
):
    client = web_client(owner_of(org_a), org_a)
    page = client.get(reverse("lab:benchmark_new"))
    assert page.status_code == 200 and b"paper" in page.content
    with django_capture_on_commit_callbacks(execute=True):
        r = client.post(
            reverse("lab:benchmark_new"),
            {
                "deployment": paper_deployment.pk,
                "target": "replica",
                "workload_kind": "synthetic",
                "input_tokens": "64",
                "output_tokens": "16",
                "load_kind": "concurrency",
                "concurrency": "1, 2 4",
                "ttft_p95_ms": "500",
                "seed": "42",
            },
        )
    b = Benchmark.objects.get()
    assert r.status_code == 302 and r["Location"] == reverse("lab:benchmark", args=[b.pk])
    assert b.load["concurrency"] == [1, 2, 4] and b.slo["ttft_p95_ms"] == 500.0
    assert b.seed == 42 and b.target == "replica"
    assert queued == [b.pk]


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("ttft_p95_ms", "0.5s", "slo.ttft_p95_ms"),
        ("concurrency", "1,two", "load.concurrency"),
        ("input_tokens", "999999999", "workload.input_tokens"),
        ("deployment", "x", "deployment"),
    ],
)
def test_form_bad_input_rerenders_with_the_field_named(
    web_client, org_a, paper_deployment, queued, field, value, named
):
    client = web_client(owner_of(org_a), org_a)
    data = {"deployment": paper_deployment.pk, "workload_kind": "synthetic", field: value}
    r = client.post(reverse("lab:benchmark_new"), data)
    assert r.status_code == 400
    assert named.encode() in r.content
    assert not Benchmark.objects.exists() and not queued


def test_jsonl_upload_becomes_the_workload(web_client, org_a, paper_deployment, queued):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = web_client(owner_of(org_a), org_a)
    jsonl = (
        b'{"prompt": "hello there", "max_tokens": 8}\n'
        b'{"messages": [{"role": "user", "content": "hi"}]}\n'
    )
    r = client.post(
        reverse("lab:benchmark_new"),
        {
            "deployment": paper_deployment.pk,
            "workload_kind": "jsonl",
            "prompts": SimpleUploadedFile("p.jsonl", jsonl),
        },
    )
    assert r.status_code == 302, r.content
    assert len(Benchmark.objects.get().workload["prompts"]) == 2


def test_detail_page_draws_charts_and_stops_polling_when_done(
    web_client, org_a, org_b, paper_deployment, queued, django_assert_max_num_queries
):
    from lab.services import benchmark_create

    b = benchmark_create(
        organization=org_a, user=owner_of(org_a), deployment_id=paper_deployment.pk
    )
    client = web_client(owner_of(org_a), org_a)
    url = reverse("lab:benchmark", args=[b.pk])
    live = client.get(url, HTTP_HX_REQUEST="true")
    assert live.status_code == 200 and b'hx-trigger="every 2s"' in live.content

    Benchmark.objects.filter(pk=b.pk).update(
        status="succeeded", progress=1.0, points=[POINT, {**POINT, "concurrency": 2}]
    )
    page = client.get(url)
    assert page.content.count(b"<svg") == 4 and b"Output tokens/s" in page.content
    assert b"0.4300" in page.content  # $ per million output tokens
    done = client.get(url, HTTP_HX_REQUEST="true")
    assert done.status_code == 286 and b"hx-trigger" not in done.content

    with django_assert_max_num_queries(12):
        listing = client.get(reverse("lab:benchmarks"))
    assert listing.status_code == 200 and f"/lab/benchmarks/{b.pk}/".encode() in listing.content
    # Another organization's member sees none of it.
    other = web_client(owner_of(org_b), org_b)
    assert other.get(url).status_code == 404
    assert other.post(reverse("lab:benchmark_cancel", args=[b.pk])).status_code == 404


def test_api_list_is_paginated_and_scoped(
    api_client_for, org_a, paper_deployment, queued, django_assert_max_num_queries
):
    from lab.services import benchmark_create

    for _ in range(3):
        benchmark_create(
            organization=org_a, user=owner_of(org_a), deployment_id=paper_deployment.pk
        )
    api = api_client_for(org_a)
    with django_assert_max_num_queries(8):
        body = api.get("/api/v1/benchmarks").json()
    assert body["count"] == 3 and len(body["results"]) == 3


def test_cancel_button_cancels_a_queued_benchmark(web_client, org_a, paper_deployment, queued):
    from lab.services import benchmark_create

    b = benchmark_create(
        organization=org_a, user=owner_of(org_a), deployment_id=paper_deployment.pk
    )
    client = web_client(owner_of(org_a), org_a)
    assert (
        b'data-testid="bench-cancel"' in client.get(reverse("lab:benchmark", args=[b.pk])).content
    )
    r = client.post(reverse("lab:benchmark_cancel", args=[b.pk]))
    assert r.status_code == 302
    b.refresh_from_db()
    assert b.status == "cancelled"
    assert b'data-testid="bench-cancel"' not in client.get(r["Location"]).content
