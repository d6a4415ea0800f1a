import time

import openai
import pytest

from deployments.engines import DEMO_MODEL_REF
from deployments.services import deployment_create
from tests.conftest import owner_of
from tests.deployments.conftest import reconcile_until
from tests.gateway.conftest import tokens, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_openai_client_chat_and_completions_are_served_and_metered(
    gateway, running, org_a, api_client_for
):
    key = api_client_for(org_a).raw_key
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key)
    assert [m.id for m in client.models.list()] == ["chat"]
    answer = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=6,
        logit_bias={"2": -100},  # random weights: keep it from stopping at once
    )
    assert answer.choices[0].message.content is not None
    usage = answer.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    text = client.completions.create(
        model="chat", prompt="Once upon", max_tokens=4, logit_bias={"2": -100}
    )
    assert text.usage.completion_tokens > 0
    expected_in = usage.prompt_tokens + text.usage.prompt_tokens
    expected_out = usage.completion_tokens + text.usage.completion_tokens
    assert wait_for(lambda: tokens(running, "input_tokens") == expected_in)
    assert tokens(running, "output_tokens") == expected_out  # exactly what the engine said


def test_llama_cpp_streams_pass_through_chunk_by_chunk(gateway, running, org_a, api_client_for):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_client_for(org_a).raw_key)
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "tell me"}], max_tokens=8, stream=True
    )
    chunks = list(stream)
    assert len(chunks) > 2 and chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_streams_meter_exactly_the_usage_the_engine_reports_even_if_the_client_aborts(
    gateway, upstream_route, org_a, api_client_for
):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_client_for(org_a).raw_key)
    stream = client.chat.completions.create(
        model="streamer", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Gantry routes this stream."
    )
    assert chunks[-1].usage.completion_tokens == 5  # asked for by the gateway
    assert wait_for(lambda: tokens(upstream_route, "output_tokens") == 5)
    assert tokens(upstream_route, "input_tokens") == 3
    # The client reads one chunk and walks away: the engine still reports, and it counts.
    aborted = client.chat.completions.create(
        model="streamer", messages=[{"role": "user", "content": "four five"}], stream=True
    )
    next(iter(aborted))
    aborted.close()
    assert wait_for(lambda: tokens(upstream_route, "output_tokens") == 10)
    assert tokens(upstream_route, "input_tokens") == 5


def test_errors_use_openai_shapes(gateway, running, org_a, org_b, api_client_for):
    bad = openai.OpenAI(base_url=gateway.base_url, api_key="gk_not-a-real-key-000000000000")
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    other = openai.OpenAI(base_url=gateway.base_url, api_key=api_client_for(org_b).raw_key)
    with pytest.raises(openai.NotFoundError) as exc:
        other.chat.completions.create(
            model="chat", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
        )
    assert exc.value.body["code"] == "model_not_found"
    assert other.models.list().data == []


def test_metrics_are_exposed_in_prometheus_format(
    gateway, running, org_a, api_client_for, settings
):
    import urllib.request

    settings.GATEWAY_METRICS_TOKEN = "scrape-token-for-tests"
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_client_for(org_a).raw_key)
    client.chat.completions.create(
        model="chat", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
    )
    scrape = urllib.request.Request(
        gateway.base_url.replace("/v1", "/metrics"),
        headers={"Authorization": "Bearer scrape-token-for-tests"},
    )
    text = urllib.request.urlopen(scrape).read().decode()
    assert 'gantry_gateway_requests_total{model="chat",status="200"} 1.0' in text
    assert "gantry_gateway_time_to_first_token_seconds_bucket" in text


def _post(url, key, model="streamer"):
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, {}, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def test_rate_and_spend_limits_hold_exactly_across_two_gateway_processes(
    gateway_processes, upstream_route, org_a, org_b, api_client_for
):
    from django.utils import timezone

    from billing.models import Quota, UsageRecord
    from billing.services import usage_ingest
    from portal.models import ApiKey
    from portal.tokens import api_key_digest

    if 60 - time.time() % 60 < 5:  # keep the whole burst inside one minute window
        time.sleep(60 - time.time() % 60 + 0.5)
    raw = api_client_for(org_a).raw_key
    ApiKey.objects.filter(digest=api_key_digest(raw)).update(requests_per_minute=5)
    results = [_post(gateway_processes[i % 2], raw) for i in range(8)]
    assert [status for status, _, _ in results].count(200) == 5
    refused = [r for r in results if r[0] == 429]
    assert len(refused) == 3
    assert all(int(h.get("Retry-After")) >= 1 for _, h, _ in refused)
    assert refused[0][2]["error"]["code"] == "rate_limit_exceeded"

    # Another organization over its hard spend limit gets 429 from either process.
    Quota.objects.create(organization=org_b, monthly_spend_limit_cents=100)
    now = timezone.now()
    usage_ingest(
        [
            UsageRecord(
                organization=org_b,
                kind="gpu_seconds",
                quantity=1,
                amount_micros=100 * 10_000,
                window_start=now,
                window_end=now,
                idempotency_key="spent-b",
            )
        ]
    )
    b_key = api_client_for(org_b).raw_key
    for url in gateway_processes:
        status, headers, body = _post(url, b_key)
        assert status == 429 and body["error"]["code"] == "spend_limit"
        assert headers.get("Retry-After")


def test_nearest_region_first_and_failover_to_the_next_region(
    gateway, org_a, api_client_for, settings
):
    """Two regions, one engine in each; the client's region (named by a trusted proxy)
    picks its engine, and when that engine dies mid-test the gateway answers from the
    other region instead."""
    import json as _json
    import os
    import signal
    import urllib.request
    from pathlib import Path

    from deployments.models import Region
    from tests.deployments.conftest import make_pool

    settings.GATEWAY_TRUSTED_PROXIES = "127.0.0.1/32"

    eu = Region.objects.create(code="eu-west", name="Dublin", latitude=53.3, longitude=-6.3)
    us = Region.objects.create(code="us-east", name="Virginia", latitude=39.0, longitude=-77.5)
    make_pool(eu, "cpu", "cpu", [("eu1", 1)])
    make_pool(us, "cpu", "cpu", [("us1", 1)])
    d = deployment_create(
        organization=org_a,
        user=owner_of(org_a),
        name="global",
        model_ref=DEMO_MODEL_REF,
        gpu_type="cpu",
        regions=["eu-west", "us-east"],
        min_replicas=2,
        max_replicas=2,
        engine_args=["--n_ctx", "256"],
    )
    reconcile_until(
        d,
        lambda d: d.replicas.filter(status="running").count() == 2,
        what="one replica in each region",
    )
    key = api_client_for(org_a).raw_key

    def ask(region):
        body = _json.dumps(
            {
                "model": "global",
                "max_tokens": 2,
                "logit_bias": {"2": -100},
                "messages": [{"role": "user", "content": "hi"}],
            }
        ).encode()
        req = urllib.request.Request(
            f"{gateway.base_url}/chat/completions",
            data=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {key}",
                "X-Gantry-Region": region,
            },
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.headers["x-gantry-region"], _json.loads(r.read())

    assert ask("us-east")[0] == "us-east"
    assert ask("eu-west")[0] == "eu-west"
    us_replica = d.replicas.get(status="running", region=us)
    meta = Path(settings.RUNTIME_DIR) / str(us_replica.pool_id) / us_replica.handle / "meta.json"
    os.killpg(_json.loads(meta.read_text())["pid"], signal.SIGKILL)
    time.sleep(0.5)
    region, answer = ask("us-east")  # the nearest engine is gone: served from Dublin
    assert region == "eu-west" and answer["usage"]["completion_tokens"] > 0


def test_the_deployment_page_shows_the_traffic_the_gateway_served(
    gateway, running, org_a, api_client_for, web_client
):
    from django.urls import reverse

    from deployments.models import TrafficMinute

    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_client_for(org_a).raw_key)
    for _ in range(3):
        client.chat.completions.create(
            model="chat",
            max_tokens=2,
            logit_bias={"2": -100},
            messages=[{"role": "user", "content": "hi"}],
        )
    assert wait_for(
        lambda: (
            sum(TrafficMinute.objects.filter(deployment=running).values_list("requests", flat=True))
            == 3
        )
    )
    page = (
        web_client(owner_of(org_a), org_a)
        .get(reverse("deployments:detail", args=[running.pk]))
        .content.decode()
    )
    assert "requests/s (3 in all)" in page and "p95 latency" in page and "ms</p>" in page
