"""Scaling on engine signals (queue depth, KV-cache use, a TTFT p95 SLO) with stabilisation
windows. Draining on scale-down, end to end: tests/gateway/test_drain.py."""

import http.server
import threading
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from deployments.engine_auth import engine_api_key
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
    engine_signals_scrape,
)
from deployments.services.signals import parse_engine_metrics

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
