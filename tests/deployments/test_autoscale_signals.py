"""Scaling on engine signals (queue depth, KV-cache use, a TTFT p95 SLO) with stabilisation
windows, and draining a replica before it stops."""

import http.server
import threading
from datetime import timedelta

import httpx2 as httpx
import pytest
from django.utils import timezone
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from deployments.engine_auth import engine_api_key
from deployments.engines import DEMO_MODEL_REF
from deployments.models import (
    Deployment,
    DeploymentLoad,
    GpuType,
    Node,
    Region,
    Replica,
    TrafficMinute,
)
from deployments.services import (
    autoscale,
    deployment_create,
    deployment_scale,
    engine_signals_scrape,
)
from deployments.services.signals import parse_engine_metrics
from tests.conftest import owner_of
from tests.deployments.conftest import reconcile_until

pytestmark = pytest.mark.django_db(transaction=True)


def engine_metrics(**gauges: float) -> bytes:
    """An engine's /metrics page in the Prometheus text format, as vLLM and SGLang write
    it (made with the same client library they use)."""
    registry = CollectorRegistry()
    for name, value in gauges.items():
        gauge = Gauge(name.replace("__", ":"), "engine gauge", ["model_name"], registry=registry)
        gauge.labels("m").set(value)
    return generate_latest(registry)


@pytest.fixture
def metrics_server():
    """A local server answering /metrics with whatever the test puts in `page`, and only
    with the replica's key (engines answer nobody but the platform)."""
    state = {"page": b"", "key": "", "seen": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state["seen"].append(self.path)
            if self.headers.get("Authorization") != f"Bearer {state['key']}":
                self.send_response(401)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(state["page"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _deployment(org, pool, *, engine="vllm", url="", **kw):
    d = Deployment.objects.create(
        organization=org,
        name="signals",
        model_ref="x/y",
        engine=engine,
        gpu_type=GpuType.objects.get(code="cpu"),
        regions=["local"],
        status="running",
        min_replicas=1,
        max_replicas=4,
        desired_replicas=1,
        **kw,
    )
    r = Replica.objects.create(
        deployment=d,
        ordinal=0,
        region=Region.objects.get(code="local"),
        pool=pool,
        node=Node.objects.get(pool=pool),
        gpus=0,
        status="running",
        url=url,
        handle="external",
    )
    return d, r


def test_the_engine_gauges_are_read_from_vllm_and_sglang_metrics():
    vllm = engine_metrics(vllm__num_requests_waiting=3, vllm__kv_cache_usage_perc=0.5)
    assert parse_engine_metrics(vllm.decode()) == {"queue_depth": 3.0, "kv_cache_usage": 0.5}
    old = engine_metrics(vllm__gpu_cache_usage_perc=0.25)
    assert parse_engine_metrics(old.decode()) == {"kv_cache_usage": 0.25}
    sglang = engine_metrics(sglang__num_queue_reqs=7, sglang__token_usage=0.9)
    assert parse_engine_metrics(sglang.decode()) == {"queue_depth": 7.0, "kv_cache_usage": 0.9}
    assert parse_engine_metrics("# nothing of ours\nother_metric 1\n") == {}


def test_queue_depth_scraped_from_the_engine_scales_the_deployment_up(
    org_a, local_pool, metrics_server
):
    d, r = _deployment(
        org_a,
        local_pool,
        url=metrics_server["url"],
        autoscale_target=2,
        autoscale_metric="queue_depth",
    )
    metrics_server["key"] = engine_api_key(r.pk)
    metrics_server["page"] = engine_metrics(
        vllm__num_requests_waiting=6, vllm__kv_cache_usage_perc=0.4
    )
    assert engine_signals_scrape() == 1
    r.refresh_from_db()
    assert (r.queue_depth, r.kv_cache_usage) == (6.0, 0.4)
    assert autoscale() == 1
    d.refresh_from_db()
    assert d.desired_replicas == 3  # 6 queued on 1 replica, 2 per replica
    assert d.events.filter(
        kind="autoscaled", message="scaled 1 → 3 (6 requests queued per replica, target 2)"
    ).exists()


def test_a_wrong_key_or_a_dead_engine_gives_no_signal_and_no_scaling(
    org_a, local_pool, metrics_server
):
    _d, r = _deployment(
        org_a,
        local_pool,
        url=metrics_server["url"],
        autoscale_target=2,
        autoscale_metric="queue_depth",
    )
    metrics_server["key"] = "someone-else"
    metrics_server["page"] = engine_metrics(vllm__num_requests_waiting=50)
    assert engine_signals_scrape() == 0
    assert autoscale() == 0
    # Old figures are dropped, not acted on.
    Replica.objects.filter(pk=r.pk).update(
        queue_depth=50, signals_at=timezone.now() - timedelta(minutes=10)
    )
    engine_signals_scrape()
    r.refresh_from_db()
    assert r.queue_depth is None
    assert autoscale() == 0


def test_kv_cache_use_from_sglang_scales_up(org_a, local_pool, metrics_server):
    d, r = _deployment(
        org_a,
        local_pool,
        engine="sglang",
        url=metrics_server["url"],
        autoscale_target=60,
        autoscale_metric="kv_cache",
    )
    metrics_server["key"] = engine_api_key(r.pk)
    metrics_server["page"] = engine_metrics(sglang__token_usage=0.9, sglang__num_queue_reqs=0)
    assert engine_signals_scrape() == 1
    assert autoscale() == 1
    d.refresh_from_db()
    assert d.desired_replicas == 2
    assert d.events.filter(message__contains="KV cache 90% used per replica, target 60%").exists()


def _ttft_minute(d, at, p95_bucket: int, n: int = 20):
    from deployments.models import TTFT_BUCKETS_MS

    counts = [0] * (len(TTFT_BUCKETS_MS) + 1)
    counts[TTFT_BUCKETS_MS.index(p95_bucket)] = n
    TrafficMinute.objects.update_or_create(
        deployment=d,
        minute=at.replace(second=0, microsecond=0),
        defaults={"requests": n, "ttft_buckets": counts, "latency_buckets": []},
    )


def test_a_ttft_slo_scales_up_when_missed_and_down_slowly_when_met(org_a, local_pool):
    d, _ = _deployment(
        org_a,
        local_pool,
        autoscale_target=1000,
        autoscale_metric="ttft_p95",
        scale_down_window_s=60,
    )
    now = timezone.now()
    _ttft_minute(d, now, 2500)
    assert autoscale(now=now) == 1
    d.refresh_from_db()
    assert d.desired_replicas == 3  # p95 2.5× the SLO
    assert d.events.filter(message__contains="TTFT p95 2500 ms, SLO 1000 ms").exists()
    TrafficMinute.objects.filter(deployment=d).delete()
    _ttft_minute(d, now, 200)  # well under the SLO now
    assert autoscale(now=now + timedelta(seconds=30)) == 0  # not for long enough
    assert autoscale(now=now + timedelta(seconds=61)) == 1
    d.refresh_from_db()
    assert d.desired_replicas == 2  # one step at a time


def test_too_few_answers_say_nothing_about_a_p95(org_a, local_pool):
    d, _ = _deployment(org_a, local_pool, autoscale_target=1000, autoscale_metric="ttft_p95")
    _ttft_minute(d, timezone.now(), 5000, n=2)
    assert autoscale() == 0


def test_load_that_comes_and_goes_does_not_make_the_replicas_flap(org_a, local_pool):
    d, _ = _deployment(org_a, local_pool, autoscale_target=2, scale_down_window_s=60)
    t0 = timezone.now()
    load = DeploymentLoad.objects.create(deployment=d, in_flight=6, last_request_at=t0)
    assert autoscale(now=t0) == 1  # up at once
    counts = []
    for s, in_flight in ((15, 0), (30, 6), (45, 0), (59, 0)):
        DeploymentLoad.objects.filter(pk=load.pk).update(in_flight=in_flight)
        autoscale(now=t0 + timedelta(seconds=s))
        d.refresh_from_db()
        counts.append(d.desired_replicas)
    assert counts == [3, 3, 3, 3]
    autoscale(now=t0 + timedelta(seconds=100))  # quiet for the whole window
    d.refresh_from_db()
    assert d.desired_replicas == 1


def test_a_scale_up_window_waits_for_the_load_to_last(org_a, local_pool):
    d, _ = _deployment(org_a, local_pool, autoscale_target=2, scale_up_window_s=30)
    t0 = timezone.now()
    load = DeploymentLoad.objects.create(deployment=d, in_flight=1, last_request_at=t0)
    autoscale(now=t0)
    DeploymentLoad.objects.filter(pk=load.pk).update(in_flight=6)
    assert autoscale(now=t0 + timedelta(seconds=10)) == 0  # a spike, maybe
    assert autoscale(now=t0 + timedelta(seconds=41)) == 1  # it lasted
    d.refresh_from_db()
    assert d.desired_replicas == 3


# --- Draining, end to end on llama.cpp ----------------------------------------------------


def _stream(base: str, key: str, out: list, i: int) -> None:
    text, done, finish = "", False, None
    try:
        with httpx.stream(
            "POST",
            f"{base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "model": "drain",
                "stream": True,
                "max_tokens": 300,
                "logit_bias": {"2": -100},  # random weights: keep it off the end token
                "messages": [{"role": "user", "content": f"request {i}"}],
            },
            timeout=300,
        ) as answer:
            import json

            for line in answer.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    for choice in event.get("choices", []):
                        text += (choice.get("delta") or {}).get("content") or ""
                        finish = choice.get("finish_reason") or finish
            out.append((i, answer.status_code, done, finish, len(text)))
    except Exception as exc:
        out.append((i, repr(exc), False, None, len(text)))


def test_scale_down_drains_a_replica_and_drops_no_request_in_flight(
    org_a, local_pool, gateway, api_client_for, settings
):
    from tests.gateway.conftest import wait_for

    settings.REPLICA_DRAIN_GRACE_S = 1.0
    d = deployment_create(
        organization=org_a,
        user=owner_of(org_a),
        name="drain",
        model_ref=DEMO_MODEL_REF,
        gpu_type="cpu",
        regions=["local"],
        engine_args=["--n_ctx", "512"],
        min_replicas=1,
        max_replicas=2,
        replicas=2,
    )
    reconcile_until(
        d, lambda d: d.replicas.filter(status="running").count() == 2, what="2 replicas"
    )
    leaving = d.replicas.get(status="running", ordinal=1)
    key = api_client_for(org_a).raw_key
    base = gateway.base_url.removesuffix("/v1")
    results: list = []
    threads = [threading.Thread(target=_stream, args=(base, key, results, i)) for i in range(4)]
    for t in threads:
        t.start()
    gw = gateway.gateway
    assert wait_for(lambda: gw.router.in_flight[leaving.pk] > 0, timeout=60)
    deployment_scale(deployment=d, replicas=1)
    reconcile_until(
        d,
        lambda d: d.replicas.filter(pk=leaving.pk, status="draining").exists(),
        what="draining",
    )
    # Draining: routes no longer list it, and it is still serving what it had.
    assert gw.router.in_flight[leaving.pk] > 0
    reconcile_until(
        d,
        lambda d: d.replicas.filter(pk=leaving.pk, status="stopped").exists(),
        timeout=240,
        what="the drained replica stopped",
    )
    for t in threads:
        t.join(timeout=240)
    assert sorted(r[0] for r in results) == [0, 1, 2, 3]
    for i, status, done, finish, chars in results:
        assert (status, done, finish) == (200, True, "length"), (i, status, done, finish)
        assert chars > 0
    assert gw.router.in_flight[leaving.pk] == 0
    leaving.refresh_from_db()
    assert "drained in" in leaving.exit_reason
    assert d.events.filter(kind="replica_draining", replica=leaving).exists()
    assert d.replicas.filter(status="running").count() == 1
