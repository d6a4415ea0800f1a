"""The routing policy per deployment: least-busy or prefix affinity with bounded load,
through the API, the page and the gateway (one process, and two sharing Redis)."""

import asyncio

import httpx2 as httpx
import pytest

from deployments.models import Deployment, GpuType, Node, Region, Replica
from gateway import affinity as affinity_module
from gateway.affinity import Affinity
from gateway.routes import Target
from gateway.routing import bounded, prefix_of
from tests.conftest import need, owner_of, redis_available, redis_url
from tests.gateway.upstream import start_upstream

pytestmark = pytest.mark.django_db(transaction=True)

SYSTEM = [
    f"You are assistant number {i}. " + "Answer briefly and politely. " * 40 for i in range(6)
]


def _targets(n: int) -> list[Target]:
    return [Target(i, f"http://r{i}", "local") for i in range(1, n + 1)]


def test_a_prefix_keeps_the_home_its_first_claim_gave_it_in_every_process():
    need(redis_available(), "Redis (prefix homes shared by gateway processes)")
    import redis.asyncio as aioredis

    async def run():
        shared = [aioredis.Redis.from_url(redis_url()) for _ in range(2)]
        one, two = Affinity(shared[0]), Affinity(shared[1])
        key = Affinity.key(7, f"a system prompt {id(shared)}")
        assert await one.home(key) is None
        assert await one.claim(key, 1) == 1
        # The other process reads the home, and its own claim loses to the first one.
        assert await two.home(key) == 1
        assert await two.claim(key, 2) == 1
        # A home that stopped is taken over.
        assert await two.claim(key, 2, move=True) == 2
        assert await Affinity(shared[0]).home(key) == 2
        # Another deployment's prefix of the same text is its own.
        assert await two.home(Affinity.key(8, f"a system prompt {id(shared)}")) is None
        for client in shared:
            await client.delete(key)
            await client.aclose()

    asyncio.run(run())


def test_without_redis_the_homes_are_kept_in_the_process_and_bounded(monkeypatch):
    monkeypatch.setattr(affinity_module, "MAX_LOCAL", 100)

    async def run():
        homes = Affinity()
        for i in range(1000):  # a client sending a new prefix with every request
            assert await homes.claim(Affinity.key(1, f"prompt {i}"), i % 3 + 1) == i % 3 + 1
        assert len(homes.local) == 100
        assert await homes.home(Affinity.key(1, "prompt 999")) == 999 % 3 + 1
        assert await homes.home(Affinity.key(1, "prompt 0")) is None  # the oldest went first

    asyncio.run(run())


def test_redis_down_routes_as_if_the_prefix_were_new():
    import redis.asyncio as aioredis

    async def run():
        down = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        homes = Affinity(down)
        key = Affinity.key(1, "prompt")
        assert await homes.home(key) is None
        assert await homes.claim(key, 3) == 3  # kept in the process meanwhile
        await down.aclose()

    asyncio.run(run())


def test_the_prefix_is_the_start_of_the_conversation_not_its_last_turn():
    system = {"role": "system", "content": SYSTEM[0]}
    one = prefix_of({"messages": [system, {"role": "user", "content": "first question"}]})
    two = prefix_of(
        {
            "messages": [
                system,
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "second question"},
            ]
        }
    )
    assert one == two and len(one) == 1024
    # Odd content (lists of parts, numbers) is rendered, never a crash.
    assert prefix_of({"messages": [{"role": "user", "content": [{"type": "text"}]}, 5]})
    assert prefix_of({"prompt": [1, 2, 3]}) == "[1, 2, 3]"


def test_a_busy_home_passes_the_request_to_the_next_replica_in_order():
    order = _targets(3)  # the home first, then the others least loaded first
    load = {t.replica_id: 0 for t in order}
    assert bounded(order, load)[0] == order[0]
    load[order[0].replica_id] = 5  # far above the mean
    assert bounded(order, load)[0] == order[1]
    load[order[1].replica_id] = 5
    assert bounded(order, load)[0] == order[2]


def test_at_low_load_a_home_keeps_its_prefix_within_the_slack(settings):
    settings.GATEWAY_PREFIX_LOAD_SLACK = 2
    order = _targets(2)
    # One request more than the idle replica: within the slack, the home keeps it ...
    assert bounded(order, {1: 1, 2: 0})[0] == order[0]
    # ... two more: past both the slack and the factor of the mean, it spills.
    assert bounded(order, {1: 2, 2: 0})[0] == order[1]
    settings.GATEWAY_PREFIX_LOAD_SLACK = 3  # a wider slack keeps it there too
    assert bounded(order, {1: 2, 2: 0})[0] == order[0]
    # At high load the factor governs: 25% over the mean, not a fixed number of requests.
    assert bounded(order, {1: 24, 2: 20})[0] == order[0]
    assert bounded(order, {1: 40, 2: 20})[0] == order[1]


def _deployment(org, pool, urls, policy="prefix_affinity", name="routed"):
    d = Deployment.objects.create(
        organization=org,
        name=name,
        model_ref="x/y",
        engine="vllm",
        gpu_type=GpuType.objects.get(code="cpu"),
        regions=["local"],
        status="running",
        desired_replicas=len(urls),
        max_replicas=max(len(urls), 1),
        routing_policy=policy,
    )
    for i, url in enumerate(urls):
        Replica.objects.create(
            deployment=d,
            ordinal=i,
            region=Region.objects.get(code="local"),
            pool=pool,
            node=Node.objects.get(pool=pool),
            gpus=0,
            status="running",
            url=url,
            handle="external",
        )
    return d


@pytest.fixture
def upstreams():
    started = [start_upstream() for _ in range(3)]
    yield [server for server, _ in started]
    for server, thread in started:
        server.should_exit = True
        thread.join(timeout=10)


def _ask(base: str, key: str, system: str, user: str, model="routed", stream=False) -> int:
    answer = httpx.post(
        f"{base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": model,
            "stream": stream,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        },
        timeout=30,
    )
    return answer.status_code


def _who_got(upstreams) -> dict[str, set[int]]:
    """Which upstreams (by index) received each system prompt."""
    seen: dict[str, set[int]] = {}
    for i, server in enumerate(upstreams):
        for body in server.received:
            seen.setdefault(body["messages"][0]["content"], set()).add(i)
    return seen


def test_two_gateway_processes_send_a_prefix_to_the_same_replica(
    gateway_processes, upstreams, org_a, local_pool, api_client_for
):
    _deployment(org_a, local_pool, [u.url for u in upstreams])
    key = api_client_for(org_a).raw_key
    for turn in range(3):
        for n, system in enumerate(SYSTEM):
            base = gateway_processes[(turn + n) % 2]  # alternate the processes
            assert _ask(base, key, system, f"user {n} turn {turn}") == 200
    seen = _who_got(upstreams)
    assert set(seen) == set(SYSTEM)
    # Each system prompt landed on one replica only, whichever process sent it ...
    assert all(len(replicas) == 1 for replicas in seen.values()), seen
    # ... and the prompts did not all pile onto one replica.
    assert len(set().union(*seen.values())) >= 2


def test_new_prefixes_spread_evenly_and_a_stopped_home_is_replaced(
    gateway, upstreams, org_a, local_pool, api_client_for
):
    d = _deployment(org_a, local_pool, [u.url for u in upstreams])
    key = api_client_for(org_a).raw_key
    base = gateway.base_url.removesuffix("/v1")
    for n, system in enumerate(SYSTEM):  # one at a time: every replica idle each time
        assert _ask(base, key, system, f"user {n}") == 200
    seen = _who_got(upstreams)
    homes = [sum(1 for replicas in seen.values() if i in replicas) for i in range(3)]
    assert homes == [2, 2, 2], seen  # 6 prompts, 3 replicas: two homes each
    # The home of the first prompt stops: the prompt gets a new home, and stays there.
    first = next(iter(seen[SYSTEM[0]]))
    d.replicas.filter(url=upstreams[first].url).update(status="stopped")
    gateway.gateway.router.forget(org_a.pk)
    before = [len(u.received) for u in upstreams]
    for turn in range(3):
        assert _ask(base, key, SYSTEM[0], f"user 0 turn {turn}") == 200
    gained = [len(u.received) - n for u, n in zip(upstreams, before, strict=True)]
    assert gained[first] == 0 and sorted(gained) == [0, 0, 3], gained


def test_a_home_that_stays_too_busy_moves_its_prefix_to_where_its_requests_went(
    gateway, upstreams, org_a, local_pool, api_client_for
):
    d = _deployment(org_a, local_pool, [u.url for u in upstreams[:2]])
    key = api_client_for(org_a).raw_key
    base = gateway.base_url.removesuffix("/v1")
    assert _ask(base, key, SYSTEM[0], "first") == 200
    home = next(iter(_who_got(upstreams[:2])[SYSTEM[0]]))
    busy = d.replicas.get(url=upstreams[home].url).pk
    router = gateway.gateway.router
    router.in_flight[busy] += 10  # as if ten requests were under way there
    try:
        for turn in range(3):  # each passed on by the load bound: three in a row
            assert _ask(base, key, SYSTEM[0], f"turn {turn}") == 200
    finally:
        router.in_flight[busy] -= 10
    before = [len(u.received) for u in upstreams[:2]]
    # The old home is idle again, but the prefix lives where its requests went now.
    assert _ask(base, key, SYSTEM[0], "after") == 200
    gained = [len(u.received) - n for u, n in zip(upstreams[:2], before, strict=True)]
    assert gained[home] == 0 and gained[1 - home] == 1, gained


def test_spills_in_a_row_move_a_home_and_one_request_home_resets_the_count():
    homes = Affinity()
    key = Affinity.key(1, "prompt")
    assert not homes.spilled(key) and not homes.spilled(key)
    homes.kept(key)  # one request went home: the next spills start again from zero
    assert not homes.spilled(key) and not homes.spilled(key)
    assert homes.spilled(key)  # the third in a row


def test_least_busy_ignores_the_prompt(gateway, upstreams, org_a, local_pool, api_client_for):
    _deployment(org_a, local_pool, [u.url for u in upstreams], policy="least_busy")
    key = api_client_for(org_a).raw_key
    base = gateway.base_url.removesuffix("/v1")
    for n, system in enumerate(SYSTEM):
        assert _ask(base, key, system, f"user {n}") == 200
    # One at a time, nothing in flight: the tie always breaks to the same replica.
    assert len(set().union(*_who_got(upstreams).values())) == 1


def test_a_hot_prefix_spills_over_instead_of_piling_onto_one_replica(
    gateway, upstreams, org_a, local_pool, api_client_for
):
    _deployment(org_a, local_pool, [u.url for u in upstreams[:2]])
    key = api_client_for(org_a).raw_key
    base = gateway.base_url.removesuffix("/v1")

    async def burst():
        async with httpx.AsyncClient(timeout=30) as client:

            async def one(i):
                r = await client.post(
                    f"{base}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={
                        "model": "routed",
                        "stream": True,
                        "messages": [
                            {"role": "system", "content": SYSTEM[0]},
                            {"role": "user", "content": f"q{i}"},
                        ],
                    },
                )
                return r.status_code

            return await asyncio.gather(*(one(i) for i in range(8)))

    assert asyncio.run(burst()) == [200] * 8
    counts = [len(u.received) for u in upstreams[:2]]
    assert sorted(counts) != [0, 8], counts  # the second replica took its share
    assert max(counts) <= 6


# --- The setting: API and page ---------------------------------------------------------


def _url(d) -> str:
    return f"/api/v1/deployments/{d.pk}/serving"


def test_the_policy_is_set_through_the_api_and_shown_on_the_page(
    org_a, local_pool, api_client_for, web_client
):
    d = _deployment(org_a, local_pool, [], policy="least_busy", name="chat")
    api = api_client_for(org_a)
    answer = api.post(
        _url(d),
        {
            "routing_policy": "prefix_affinity",
            "autoscale_metric": "ttft_p95",
            "autoscale_target": 800,
            "scale_down_window_s": 120,
        },
        format="json",
    )
    assert answer.status_code == 200, answer.content
    assert answer.json()["routing_policy"] == "prefix_affinity"
    assert answer.json()["autoscale_metric"] == "ttft_p95"
    d.refresh_from_db()
    assert (d.routing_policy, d.autoscale_target, d.scale_down_window_s) == (
        "prefix_affinity",
        800,
        120,
    )
    assert d.events.filter(kind="serving_changed").exists()
    client = web_client(owner_of(org_a), org_a)
    page = client.get(f"/deployments/{d.pk}/").content.decode()
    assert "Prefix affinity" in page and "800 ms TTFT p95 (the SLO)" in page


def test_the_page_form_changes_the_policy(org_a, local_pool, web_client):
    d = _deployment(org_a, local_pool, [], policy="least_busy", name="chat")
    client = web_client(owner_of(org_a), org_a)
    answer = client.post(
        f"/deployments/{d.pk}/serving/",
        {
            "routing_policy": "prefix_affinity",
            "autoscale_metric": "in_flight",
            "autoscale_target": "",
            "scale_up_window_s": "0",
            "scale_down_window_s": "60",
        },
        HTTP_HX_REQUEST="true",
    )
    assert answer.status_code == 200
    assert "Serving settings saved." in answer.content.decode()
    d.refresh_from_db()
    assert d.routing_policy == "prefix_affinity" and d.scale_down_window_s == 60
    bad = client.post(
        f"/deployments/{d.pk}/serving/", {"routing_policy": "prefix"}, HTTP_HX_REQUEST="true"
    )
    assert "routing_policy: Choose one of: least_busy, prefix_affinity." in bad.content.decode()


@pytest.mark.parametrize(
    "body, field",
    [
        ({"routing_policy": "prefix"}, "routing_policy"),  # an abbreviation
        ({"routing_policy": "PREFIX_AFFINITY"}, "routing_policy"),
        ({"routing_policy": 1}, "routing_policy"),
        ({"routing_policy": ""}, "routing_policy"),
        ({"autoscale_metric": "kv"}, "autoscale_metric"),
        ({"autoscale_target": True}, "autoscale_target"),
        ({"autoscale_target": "true"}, "autoscale_target"),
        ({"autoscale_target": 2.5}, "autoscale_target"),
        ({"autoscale_target": 10**12}, "autoscale_target"),
        ({"autoscale_metric": "kv_cache", "autoscale_target": 101}, "autoscale_target"),
        ({"scale_down_window_s": -1}, "scale_down_window_s"),
        ({"scale_up_window_s": "9" * 50}, "scale_up_window_s"),
        ({"policy": "least_busy"}, "policy"),
    ],
)
def test_bad_serving_settings_get_400_naming_the_field_and_change_nothing(
    org_a, local_pool, api_client_for, body, field
):
    d = _deployment(org_a, local_pool, [], policy="least_busy", name="chat")
    # A valid value beside the bad one is not written either.
    answer = api_client_for(org_a).post(
        _url(d), {"scale_down_window_s": 300, **body}, format="json"
    )
    assert answer.status_code == 400, answer.content
    assert field in answer.json(), answer.json()
    d.refresh_from_db()
    assert (d.routing_policy, d.scale_down_window_s, d.autoscale_target) == ("least_busy", 20, None)


def test_another_organizations_deployment_answers_404(org_a, org_b, local_pool, api_client_for):
    d = _deployment(org_a, local_pool, [], name="chat")
    answer = api_client_for(org_b).post(_url(d), {"routing_policy": "least_busy"}, format="json")
    assert answer.status_code == 404
    assert api_client_for(org_b).get(f"/api/v1/deployments/{d.pk}/traffic").status_code == 404


def test_streams_report_ttft_and_inter_token_latency_per_replica(
    gateway, upstreams, org_a, local_pool, api_client_for, settings, web_client
):
    import urllib.request

    from django.db.models import Sum

    from deployments.models import TrafficMinute
    from tests.gateway.conftest import wait_for

    settings.GATEWAY_METRICS_TOKEN = "scrape"
    d = _deployment(org_a, local_pool, [upstreams[0].url])
    key = api_client_for(org_a).raw_key
    base = gateway.base_url.removesuffix("/v1")
    for i in range(3):
        assert _ask(base, key, SYSTEM[0], f"q{i}", stream=True) == 200
    # Summed over rows: the three may straddle a minute boundary (one row per minute).
    rows = TrafficMinute.objects.filter(deployment=d)
    assert wait_for(lambda: (rows.aggregate(n=Sum("requests"))["n"] or 0) >= 3)
    traffic = api_client_for(org_a).get(f"/api/v1/deployments/{d.pk}/traffic").json()
    # The stand-in engine sends a token every 50 ms.
    assert traffic["itl_p50_ms"] in (50, 75) and traffic["ttft_p50_ms"] is not None
    [replica] = traffic["replicas"]
    assert replica["replica"] == d.replicas.get().pk and replica["requests"] == 3
    page = web_client(owner_of(org_a), org_a).get(f"/deployments/{d.pk}/").content.decode()
    assert "TTFT p50" in page and "inter-token p95" in page
    assert f"r{replica['replica']}" in page  # the per-replica row
    scrape = urllib.request.Request(f"{base}/metrics", headers={"Authorization": "Bearer scrape"})
    text = urllib.request.urlopen(scrape).read().decode()
    assert "gantry_gateway_inter_token_latency_seconds_bucket{" in text
    assert f'replica="{replica["replica"]}"' in text
    assert "gantry_org_spend_cents" in text or wait_for(
        lambda: b"gantry_org_spend_cents{" in urllib.request.urlopen(scrape).read()
    )
