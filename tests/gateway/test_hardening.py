"""The gateway under attack from its own clients: scraping metrics, flooding it with
made-up keys, lying about where they are."""

import asyncio
import json
import secrets
import threading
import urllib.error
import urllib.request
from collections import Counter

import aiohttp
import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def get(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_need_the_staff_token_and_never_show_deployments_to_anyone_else(
    gateway, upstream_route, org_a, api_client_for, settings
):
    import openai

    key = api_client_for(org_a).raw_key
    openai.OpenAI(base_url=gateway.base_url, api_key=key).chat.completions.create(
        model="streamer", messages=[{"role": "user", "content": "hi"}]
    )
    url = gateway.base_url.replace("/v1", "/metrics")
    status, text = get(url)  # no token configured: there is nothing to find
    assert status == 404 and "streamer" not in text
    assert get(url, key)[0] == 404

    settings.GATEWAY_METRICS_TOKEN = "a-long-random-scrape-token"
    for wrong in (None, key, "a-long-random-scrape-toke", "a-long-random-scrape-token2"):
        status, text = get(url, wrong)
        assert status == 401 and "streamer" not in text
        assert json.loads(text)["error"]["code"] == "invalid_api_key"
    status, text = get(url, "a-long-random-scrape-token")
    assert status == 200 and 'model="streamer"' in text


@pytest.fixture
def small_key_cache(settings):
    settings.GATEWAY_KEY_CACHE_SIZE = 100
    settings.GATEWAY_DB_CONCURRENCY = 3


def test_a_flood_of_made_up_keys_keeps_the_cache_and_the_database_bounded(
    small_key_cache, gateway, monkeypatch
):
    """The same unknown key 200 times at once, then 1,000 random keys: the cache stays at
    its size, each distinct key is read from the database at most once (concurrent asks
    share one read), and never more reads run at once than the allowance."""
    from gateway import auth

    real, lock, seen, running, peak = auth.key_lookup, threading.Lock(), Counter(), [0], [0]

    def counted(raw):
        with lock:
            seen[raw] += 1
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return real(raw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(auth, "key_lookup", counted)

    async def flood():
        async with aiohttp.ClientSession() as session:

            async def ask(key):
                async with session.get(
                    f"{gateway.base_url}/models", headers={"Authorization": f"Bearer {key}"}
                ) as r:
                    return r.status

            same = f"gk_{secrets.token_urlsafe(32)}"
            first = await asyncio.gather(*(ask(same) for _ in range(200)))
            random_keys = [f"gk_{secrets.token_urlsafe(32)}" for _ in range(1000)]
            return first + await asyncio.gather(*(ask(k) for k in random_keys)), same

    statuses, same = asyncio.run(flood())
    assert set(statuses) == {401}
    assert seen[same] == 1
    assert max(seen.values()) == 1 and sum(seen.values()) <= 1001
    assert len(gateway.gateway.auth.keys) <= 100
    assert peak[0] <= 3


@pytest.fixture
def two_regions(org_a, local_pool, settings):
    """One stand-in engine in each of two regions; the one in Dublin has the lower id, so
    it is the pick when the client's region is unknown."""
    from deployments.models import Deployment, GpuType, Node, Region, Replica
    from tests.deployments.conftest import make_pool
    from tests.gateway.upstream import start_upstream

    settings.GATEWAY_REGION_CIDRS = "10.2.0.0/16=us-east"
    eu = Region.objects.create(code="eu-west", name="Dublin", latitude=53.3, longitude=-6.3)
    us = Region.objects.create(code="us-east", name="Virginia", latitude=39.0, longitude=-77.5)
    servers = []
    d = Deployment.objects.create(
        organization=org_a,
        name="global",
        model_ref="x/y",
        engine="vllm",
        gpu_type=GpuType.objects.get(code="cpu"),
        regions=["eu-west", "us-east"],
        status="running",
    )
    for ordinal, region in enumerate((eu, us)):
        pool = make_pool(region, "cpu", "cpu", [(f"{region.code}-1", 1)])
        server, thread = start_upstream()
        servers.append((server, thread))
        Replica.objects.create(
            deployment=d,
            ordinal=ordinal,
            region=region,
            pool=pool,
            node=Node.objects.get(pool=pool),
            gpus=0,
            status="running",
            url=server.url,
            handle=f"external-{ordinal}",
        )
    yield d
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def test_region_headers_count_only_from_trusted_proxies(
    two_regions, gateway, org_a, api_client_for, settings
):
    key = api_client_for(org_a).raw_key

    def served_from(**headers):
        body = {"model": "global", "messages": [{"role": "user", "content": "hi"}]}
        request = urllib.request.Request(
            f"{gateway.base_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
            | {k.replace("_", "-"): v for k, v in headers.items()},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.headers["x-gantry-region"]

    # A client on loopback (not a trusted proxy) naming a region is not believed.
    assert served_from() == "eu-west"
    assert served_from(X_Gantry_Region="us-east") == "eu-west"
    assert served_from(X_Forwarded_For="10.2.0.7") == "eu-west"
    settings.GATEWAY_TRUSTED_PROXIES = "10.9.0.0/16, 192.168.0.0/16"
    assert served_from(X_Gantry_Region="us-east") == "eu-west"
    # Through a trusted proxy, its headers say where the client is.
    settings.GATEWAY_TRUSTED_PROXIES = "127.0.0.0/8"
    assert served_from(X_Gantry_Region="us-east") == "us-east"
    assert served_from(X_Forwarded_For="10.2.0.7") == "us-east"
    # The client is the last hop no trusted proxy wrote: one it made up in front is not.
    assert served_from(X_Forwarded_For="10.2.0.7, 172.16.0.1") == "eu-west"
    assert served_from(X_Forwarded_For="172.16.0.1, 10.2.0.7, 127.0.0.1") == "us-east"
