"""Draining a replica before it stops, end to end: real llama.cpp replicas behind the real
gateway; a scale-down while streams are under way drops none of them."""

import json
import threading

import httpx2 as httpx
import pytest

from deployments.engines import DEMO_MODEL_REF
from deployments.services import deployment_create, deployment_scale
from tests.conftest import owner_of
from tests.deployments.conftest import reconcile_until
from tests.gateway.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


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
    # One stream per replica (least busy spreads them): llama.cpp's Python server cuts a
    # stream short when another request reaches it (its interrupt_requests default).
    threads = [threading.Thread(target=_stream, args=(base, key, results, i)) for i in range(2)]
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
    assert sorted(r[0] for r in results) == [0, 1]
    for _i, status, done, finish, chars in results:
        assert (status, done, finish) == (200, True, "length"), results
        assert chars > 0
    assert gw.router.in_flight[leaving.pk] == 0
    leaving.refresh_from_db()
    assert "drained in" in leaving.exit_reason
    assert d.events.filter(kind="replica_draining", replica=leaving).exists()
    assert d.replicas.filter(status="running").count() == 1
