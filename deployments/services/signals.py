"""Engine signals and draining: what the engines say of their own load, and what the
gateways have in flight on each replica.

Owns: ``Replica.queue_depth`` / ``kv_cache_usage`` / ``signals_at`` (scraped from the
engines' Prometheus metrics, where they have them: vLLM, SGLang — llama.cpp's Python server
has none, so its replicas are judged by what the gateway sees) and ``ReplicaLoad`` rows
(one per gateway process and replica).

Invariants:
* A draining replica gets no new requests (routes list running replicas only) and stops
  once every gateway that reported lately has nothing in flight on it — never before the
  grace (REPLICA_DRAIN_GRACE_S: longer than a gateway keeps a route table plus two load
  reports, so a request sent on a table read just before the drain has been reported), and
  at the latest after REPLICA_DRAIN_TIMEOUT_S.
* A scrape that fails leaves the last figures; they are dropped once older than three
  scrape intervals, so the autoscaler never acts on a stale queue.
"""

import logging
import urllib.request
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from deployments.engine_auth import engine_auth_headers
from deployments.models import Deployment, Replica, ReplicaLoad, ReplicaStatus
from deployments.services.events import event

log = logging.getLogger("deployments.signals")

# Engines' gauges, by what they mean to the autoscaler. vLLM renamed its KV-cache gauge
# (gpu_cache_usage_perc, then kv_cache_usage_perc); both are 0..1, as SGLang's token_usage.
QUEUE_GAUGES = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
KV_GAUGES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
SCRAPE_TIMEOUT_S = 3.0
MAX_METRICS_BYTES = 4 * 1024 * 1024


def parse_engine_metrics(text: str) -> dict[str, float]:
    """``queue_depth`` and ``kv_cache_usage`` from an engine's Prometheus text, summed over
    its label sets (one per model or rank); a gauge the engine does not have is absent."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        name = family.name
        kind = (
            "queue_depth" if name in QUEUE_GAUGES else "kv_cache_usage" if name in KV_GAUGES else ""
        )
        if not kind or kind in found:
            continue
        values = [s.value for s in family.samples if s.name == name]
        if values:
            found[kind] = max(values) if kind == "kv_cache_usage" else sum(values)
    return found


def _fetch(url: str, replica_id: int) -> str:
    # Replica URLs are written by drivers (http://host:port), never by tenants.
    headers = engine_auth_headers(replica_id)
    request = urllib.request.Request(f"{url}/metrics", headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=SCRAPE_TIMEOUT_S) as answer:  # noqa: S310
        return answer.read(MAX_METRICS_BYTES).decode("utf-8", "replace")


def engine_signals_scrape(*, now=None) -> int:
    """Read the queue and KV-cache gauges of every running replica whose engine has them;
    the number of replicas read."""
    now = now or timezone.now()
    # Reports of gateway processes long gone (restarts name themselves anew).
    ReplicaLoad.objects.filter(updated_at__lt=now - timedelta(hours=1)).delete()
    stale = now - timedelta(seconds=3 * settings.ENGINE_SIGNALS_INTERVAL_S)
    Replica.objects.filter(signals_at__lt=stale).update(
        queue_depth=None, kv_cache_usage=None, signals_at=None
    )
    read = 0
    for r in Replica.objects.filter(
        status=ReplicaStatus.RUNNING, deployment__engine__in=["vllm", "sglang"]
    ).exclude(url=""):
        try:
            found = parse_engine_metrics(_fetch(r.url, r.pk))
        except Exception as exc:  # an engine down or garbled: the reconciler's concern
            log.info("replica %s: no metrics (%s: %s)", r.pk, type(exc).__name__, exc)
            continue
        if not found:
            continue
        Replica.objects.filter(pk=r.pk).update(
            queue_depth=found.get("queue_depth"),
            kv_cache_usage=found.get("kv_cache_usage"),
            signals_at=now,
        )
        read += 1
    return read


def replica_load_report(*, gateway: str, in_flight: dict[int, int], at=None) -> None:
    """One gateway process's requests in flight per replica (called with each report)."""
    at = at or timezone.now()
    known = set(Replica.objects.filter(pk__in=list(in_flight)).values_list("pk", flat=True))
    for replica_id, n in in_flight.items():
        if replica_id not in known:
            continue  # the replica was deleted meanwhile
        for _ in range(2):
            try:
                with transaction.atomic():
                    ReplicaLoad.objects.update_or_create(
                        replica_id=replica_id,
                        gateway=gateway[:64],
                        defaults={"in_flight": max(n, 0), "updated_at": at},
                    )
                break
            except IntegrityError:
                continue  # created by a concurrent report of the same gateway: update it


def drain_state(replica: Replica, *, now=None) -> tuple[bool, str]:
    """Whether a draining replica may stop now, and why (for the timeline)."""
    now = now or timezone.now()
    started = replica.drain_started_at or now
    waited = (now - started).total_seconds()
    if waited >= settings.REPLICA_DRAIN_TIMEOUT_S:
        return True, f"drain timed out after {int(waited)} s"
    if waited < settings.REPLICA_DRAIN_GRACE_S:
        return False, ""
    fresh = now - timedelta(seconds=max(3 * settings.GATEWAY_LOAD_REPORT_S, 30))
    busy = sum(
        ReplicaLoad.objects.filter(replica=replica, updated_at__gte=fresh).values_list(
            "in_flight", flat=True
        )
    )
    if busy:
        return False, ""
    return True, f"drained in {waited:.0f} s"


def replica_drain(d: Deployment, r: Replica, why: str) -> None:
    """No new requests for `r` from now on; the reconciler stops it once drained."""
    Replica.objects.filter(pk=r.pk, status=ReplicaStatus.RUNNING).update(
        status=ReplicaStatus.DRAINING, drain_started_at=timezone.now(), exit_reason=why
    )
    event(d, "replica_draining", f"draining replica {r.ordinal + 1} ({why})", r)


def replicas_undrain(d: Deployment, live: list[Replica], wanted: int) -> int:
    """Scaled back up while replicas drain: up to `wanted` of them serve again (they are
    warm, a new one is not); how many did."""
    back = 0
    for r in [r for r in live if r.status == ReplicaStatus.DRAINING][: max(wanted, 0)]:
        if Replica.objects.filter(pk=r.pk, status=ReplicaStatus.DRAINING).update(
            status=ReplicaStatus.RUNNING, drain_started_at=None, exit_reason=""
        ):
            event(d, "replica_undrained", f"replica {r.ordinal + 1} serves again", r)
            back += 1
    return back
