"""The playground's credential: minted by the portal (page and API) for one member and one
deployment, accepted by the gateway only for that deployment, for minutes, never by the
management API — and a playground call is metered like any other."""

import json
import re
import time
import types
from datetime import timedelta

import httpx2 as httpx
import pytest
from django.core import signing
from django.utils import timezone

from billing.models import TokenRate, UsageRecord
from deployments import playground
from deployments.models import Deployment, GpuType
from portal.models import Membership, Role
from tests.conftest import owner_of
from tests.gateway.conftest import tokens, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def make_deployment(org, name, **extra) -> Deployment:
    return Deployment.objects.create(
        organization=org,
        name=name,
        model_ref="x/y",
        gpu_type=GpuType.objects.get(code="cpu"),
        regions=["local"],
        status=extra.pop("status", "stopped"),
        desired_replicas=extra.pop("desired_replicas", 0),
        **extra,
    )


def mint(api, deployment, body=None):
    return api.post(
        f"/api/v1/deployments/{deployment.pk}/playground-token", body or {}, format="json"
    )


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_member_of_another_organization_cannot_mint_for_this_deployment(
    org_a, org_b, api_client_for, web_client
):
    d = make_deployment(org_a, "chat")
    assert mint(api_client_for(org_b), d).status_code == 404
    page = web_client(owner_of(org_b), org_b)
    assert page.post(f"/deployments/{d.pk}/playground/token/").status_code == 404
    cost = page.get(f"/deployments/{d.pk}/playground/cost/?input_tokens=1&output_tokens=1")
    assert cost.status_code == 404
    assert page.get(f"/playground/compare/?a={d.pk}").status_code == 404


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"ttl_s": "600"}, "ttl_s", "valid integer"),
        ({"ttl_s": True}, "ttl_s", "valid integer"),
        ({"ttl_s": 60.5}, "ttl_s", "valid integer"),
        ({"ttl_s": None}, "ttl_s", "null"),
        ({"ttl_s": 5}, "ttl_s", "from 10 to 600"),
        ({"ttl_s": 10**12}, "ttl_s", "from 10 to 600"),
        ({"ttl_s": 60, "deployment": 2}, "deployment", "Unknown field; allowed: ttl_s"),
    ],
)
def test_wrong_values_in_the_mint_body_name_the_field(org_a, api_client_for, body, field, words):
    d = make_deployment(org_a, "chat")
    response = mint(api_client_for(org_a), d, body)
    assert response.status_code == 400, response.content
    assert words in json.dumps(response.json()[field])


def test_a_list_as_the_mint_body_is_refused(org_a, api_client_for):
    d = make_deployment(org_a, "chat")
    response = api_client_for(org_a).post(
        f"/api/v1/deployments/{d.pk}/playground-token", [1], format="json"
    )
    assert response.status_code == 400


def test_the_billing_role_may_not_use_the_playground(org_a, make_user, add_member, api_client_for):
    d = make_deployment(org_a, "chat")
    m = add_member(org_a, make_user("accountant"), Role.BILLING)
    assert mint(api_client_for(org_a, m.user), d).status_code == 403


def test_both_doors_mint_a_token_that_names_the_gateway_not_the_engine(
    org_a, api_client_for, web_client, settings
):
    settings.GATEWAY_URL = "https://api.example.test"
    d = make_deployment(org_a, "chat", asleep=True)
    api = mint(api_client_for(org_a), d, {"ttl_s": 60})
    assert api.status_code == 201
    body = api.json()
    assert body["token"].startswith("gp_") and body["ttl_s"] == 60
    assert body["base_url"] == "https://api.example.test/v1" and body["model"] == "chat"
    assert body["waking"] is True and body["wake_estimate_s"] == playground.DEFAULT_WAKE_S
    page = web_client(owner_of(org_a), org_a).post(f"/deployments/{d.pk}/playground/token/")
    assert page.status_code == 200 and page.json()["ttl_s"] == settings.PLAYGROUND_TOKEN_TTL_S
    grant = playground.playground_token_read(page.json()["token"])
    assert (grant.deployment_id, grant.organization_id) == (d.pk, org_a.pk)


def test_the_token_cannot_call_the_management_api(org_a, api_client_for, client):
    d = make_deployment(org_a, "chat")
    token = mint(api_client_for(org_a), d).json()["token"]
    for path in ("/api/v1/deployments", f"/api/v1/deployments/{d.pk}", "/api/v1/usage"):
        response = client.get(path, headers=bearer(token))
        assert response.status_code == 401, path
    response = client.post(
        f"/api/v1/deployments/{d.pk}/playground-token", {}, headers=bearer(token)
    )
    assert response.status_code == 401


def test_the_gateway_refuses_expired_tampered_and_foreign_tokens(
    gateway, org_a, api_client_for, monkeypatch
):
    a = make_deployment(org_a, "chat")
    make_deployment(org_a, "other")
    api = api_client_for(org_a)
    token = mint(api, a, {"ttl_s": 10}).json()["token"]
    url = f"{gateway.base_url}/chat/completions"

    # For deployment A only: B is refused before anything reaches an engine.
    other = httpx.post(url, json={**CHAT, "model": "other"}, headers=bearer(token))
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "wrong_deployment"
    # A has no replica (stopped): the token got past authentication to the route.
    assert httpx.post(url, json=CHAT, headers=bearer(token)).json()["error"]["code"] == (
        "model_stopped"
    )
    models = httpx.get(f"{gateway.base_url}/models", headers=bearer(token)).json()
    assert [m["id"] for m in models["data"]] == ["chat"]

    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert httpx.post(url, json=CHAT, headers=bearer(tampered)).status_code == 401

    later = time.time() + 11
    monkeypatch.setattr(playground, "time", types.SimpleNamespace(time=lambda: later))
    expired = httpx.post(url, json=CHAT, headers=bearer(token))
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "invalid_api_key"


def test_a_member_who_left_the_organization_is_refused(
    gateway, org_a, make_user, add_member, api_client_for
):
    make_deployment(org_a, "chat")
    member = add_member(org_a, make_user("leaver"))
    token = mint(api_client_for(org_a, member.user), Deployment.objects.get(name="chat"))
    token = token.json()["token"]
    Membership.objects.filter(pk=member.pk).delete()
    response = httpx.post(f"{gateway.base_url}/chat/completions", json=CHAT, headers=bearer(token))
    assert response.status_code == 401


def test_playground_requests_are_rate_limited_per_member(
    org_a, api_client_for, settings, transactional_db, request
):
    settings.PLAYGROUND_REQUESTS_PER_MINUTE = 2
    gateway = request.getfixturevalue("gateway")
    d = make_deployment(org_a, "chat")
    token = mint(api_client_for(org_a), d).json()["token"]
    url = f"{gateway.base_url}/chat/completions"
    answers = [httpx.post(url, json=CHAT, headers=bearer(token)) for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [503, 503]
    assert answers[2].status_code == 429
    message = answers[2].json()["error"]["message"]
    assert re.fullmatch(
        r"Rate limit reached for your playground requests; retry in \d+ s\.", message
    )


def test_cors_lets_the_portal_origin_call_the_gateway_and_no_other(
    org_a, api_client_for, settings, request
):
    settings.GATEWAY_CORS_ORIGINS = ["http://portal.example.test"]
    gateway = request.getfixturevalue("gateway")
    url = f"{gateway.base_url}/chat/completions"
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-scale-up-timeout",
    }
    ok = httpx.options(url, headers={**preflight, "Origin": "http://portal.example.test"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "http://portal.example.test"
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    evil = httpx.options(url, headers={**preflight, "Origin": "http://evil.example.test"})
    assert evil.status_code == 400 and "access-control-allow-origin" not in evil.headers
    # Refusals carry the header too, so the page can read the gateway's sentence.
    refused = httpx.post(
        url,
        json=CHAT,
        headers={"Origin": "http://portal.example.test", "Authorization": "Bearer gp_nope"},
    )
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "http://portal.example.test"


def test_a_streamed_playground_answer_on_llama_cpp_gets_a_usage_event_and_is_metered(
    gateway, running, org_a, api_client_for, web_client
):
    TokenRate.objects.create(
        model="chat",
        input_cents_per_million=30,
        output_cents_per_million=90,
        effective_from=timezone.now() - timedelta(hours=1),
    )
    token = mint(api_client_for(org_a), running).json()["token"]
    body = {
        "model": "chat",
        "prompt": "Once upon a time",
        "max_tokens": 8,
        "seed": 7,
        "temperature": 0,
        "logit_bias": {"2": -100},
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", f"{gateway.base_url}/completions", json=body, headers=bearer(token), timeout=120
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    final = json.loads(lines[-2][5:])
    assert final["choices"] == [] and final["object"] == "text_completion"
    texts = [json.loads(line[5:]) for line in lines[:-2]]
    # The count the gateway meters: one per event that carries text and does not close.
    generated = sum(1 for e in texts if e["choices"][0]["finish_reason"] is None)
    usage = final["usage"]
    assert usage["completion_tokens"] == generated >= 8 and usage["prompt_tokens"] > 0
    # Metered to the organization, exactly the counts the page is shown.
    assert wait_for(lambda: tokens(running, "output_tokens") == generated, timeout=30)
    assert tokens(running, "input_tokens") == usage["prompt_tokens"]
    assert set(UsageRecord.objects.values_list("organization_id", flat=True)) == {org_a.pk}
    # The price shown for it is the ledger's.
    page = web_client(owner_of(org_a), org_a)
    cost = page.get(
        f"/deployments/{running.pk}/playground/cost/"
        f"?input_tokens={usage['prompt_tokens']}&output_tokens={generated}"
    ).json()
    ledger = sum(UsageRecord.objects.values_list("amount_micros", flat=True))
    assert cost["micros"] == ledger > 0

    # A client that did not ask for usage gets the engine's stream as it was.
    plain = {**body, "stream_options": None}
    with httpx.stream(
        "POST", f"{gateway.base_url}/completions", json=plain, headers=bearer(token), timeout=120
    ) as response:
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]"
    assert not any(json.loads(e[5:]).get("choices") == [] for e in events[:-1])


def test_the_cost_endpoint_checks_its_numbers(org_a, web_client):
    d = make_deployment(org_a, "chat")
    page = web_client(owner_of(org_a), org_a)
    for query in ("input_tokens=-1&output_tokens=1", "input_tokens=1", "input_tokens=1e3"):
        response = page.get(f"/deployments/{d.pk}/playground/cost/?{query}")
        assert response.status_code == 400


def test_only_tokens_signed_by_this_portal_for_playground_use_are_read(settings):
    good = {"d": 1, "o": 1, "u": 1, "e": int(time.time()) + 60}
    key = settings.API_KEY_HMAC_SECRET
    assert playground.playground_token_read(
        "gp_" + signing.dumps(good, key=key, salt=playground.SALT)
    ) == playground.Grant(1, 1, 1, good["e"])
    for forged in (
        signing.dumps(good, key="another secret", salt=playground.SALT),
        signing.dumps(good, key=key, salt="another use"),
        signing.dumps({**good, "d": True}, key=key, salt=playground.SALT),
        signing.dumps({**good, "o": "1"}, key=key, salt=playground.SALT),
        signing.dumps([1, 1, 1, good["e"]], key=key, salt=playground.SALT),
        "a" * 600,
    ):
        assert playground.playground_token_read("gp_" + forged) is None


def test_an_engine_that_reports_usage_in_streams_keeps_its_own_single_usage_event(
    gateway, upstream_route, org_a, api_client_for
):
    token = mint(api_client_for(org_a), upstream_route).json()["token"]
    body = {
        "model": "streamer",
        "messages": [{"role": "user", "content": "three words here"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", json=body, headers=bearer(token)
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    usages = [json.loads(line[5:])["usage"] for line in lines[:-1] if '"usage"' in line]
    assert usages == [{"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}]
