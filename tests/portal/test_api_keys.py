import logging
import re

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from portal.models import ApiKey
from portal.tokens import api_key_digest
from tests.conftest import owner_of


def test_created_key_is_shown_once_and_stored_only_as_digest(org_a, web_client):
    client = web_client(owner_of(org_a), org_a)
    response = client.post(reverse("portal:api_keys"), {"name": "ci"})
    assert response.status_code == 200
    key = ApiKey.objects.get(organization=org_a, name="ci")
    raw = response.context["new_key"]
    assert raw.startswith("gk_") and raw.startswith(key.prefix)
    assert raw in response.content.decode()
    assert response["Cache-Control"] == "no-store"
    # Only the digest is stored: no column holds the key.
    assert key.digest == api_key_digest(raw) and raw not in str(vars(key))
    # The next visit lists the key by prefix but never shows it again.
    again = client.get(reverse("portal:api_keys")).content.decode()
    assert key.prefix in again and raw not in again


def test_htmx_create_returns_the_panel_with_the_key(org_a, web_client):
    client = web_client(owner_of(org_a), org_a)
    response = client.post(reverse("portal:api_keys"), {"name": "nb"}, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<div id="keys-panel">')
    assert "<html" not in body
    raw = re.search(r'data-testid="new-key">(gk_[^<]+)<', body).group(1)
    assert ApiKey.objects.get(name="nb").digest == api_key_digest(raw)


def test_key_without_name_is_refused_with_the_field_named(org_a, web_client, api_client_for):
    client = web_client(owner_of(org_a), org_a)
    response = client.post(reverse("portal:api_keys"), {"name": ""})
    assert "name:" in response.content.decode()
    api = api_client_for(org_a)
    response = api.post("/api/v1/keys", {"name": ""}, format="json")
    assert response.status_code == 400 and "name" in response.json()
    assert ApiKey.objects.filter(organization=org_a).count() == 1  # just the client's own


def test_key_authenticates_the_api_and_records_last_use(org_a, api_client_for):
    api = api_client_for(org_a)
    response = api.get("/api/v1/me")
    assert response.status_code == 200
    body = response.json()
    assert body["organization"]["slug"] == "alpha" and body["auth"] == "api_key"
    assert body["role"] == "owner"
    key = ApiKey.objects.get(digest=api_key_digest(api.raw_key))
    assert key.last_used_at is not None


def test_api_creates_lists_and_revokes_keys(org_a, api_client_for):
    api = api_client_for(org_a)
    created = api.post("/api/v1/keys", {"name": "deploy-bot"}, format="json")
    assert created.status_code == 201
    new_raw = created.json()["key"]
    listed = api.get("/api/v1/keys").json()
    assert listed["count"] == 2 and {"count", "next", "previous", "results"} <= listed.keys()
    assert all("key" not in row and "digest" not in row for row in listed["results"])
    bot = APIClient()
    bot.credentials(HTTP_AUTHORIZATION=f"Bearer {new_raw}")
    assert bot.get("/api/v1/me").status_code == 200
    assert api.delete(f"/api/v1/keys/{created.json()['id']}").status_code == 204
    assert bot.get("/api/v1/me").status_code == 401


@pytest.mark.parametrize(
    "header",
    ["Bearer gk_not-a-real-key-at-all-000000000000", "Bearer nonsense", "Token abc", "Bearer"],
)
def test_unknown_or_malformed_key_gets_401(db, header):
    api = APIClient()
    response = api.get("/api/v1/me", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


def test_revoked_key_gets_401_in_browser_flow_too(org_a, web_client, api_client_for):
    api = api_client_for(org_a)
    key = ApiKey.objects.get(digest=api_key_digest(api.raw_key))
    client = web_client(owner_of(org_a), org_a)
    response = client.post(reverse("portal:api_key_revoke", args=[key.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "revoked" in response.content.decode()
    assert api.get("/api/v1/me").status_code == 401


def test_key_of_org_a_asking_for_object_of_org_b_gets_404(org_a, org_b, api_client_for):
    b_api = api_client_for(org_b)
    b_key = ApiKey.objects.get(digest=api_key_digest(b_api.raw_key))
    api = api_client_for(org_a)
    assert api.get(f"/api/v1/keys/{b_key.pk}").status_code == 404
    assert api.delete(f"/api/v1/keys/{b_key.pk}").status_code == 404
    assert b_api.get("/api/v1/me").status_code == 200


def test_member_cannot_revoke_someone_elses_key(org_a, make_user, add_member, api_client_for):
    member = make_user("mia")
    add_member(org_a, member, "member")
    owner_api = api_client_for(org_a)
    owner_key = ApiKey.objects.get(digest=api_key_digest(owner_api.raw_key))
    member_api = api_client_for(org_a, member)
    assert member_api.delete(f"/api/v1/keys/{owner_key.pk}").status_code == 403
    assert owner_api.get("/api/v1/me").status_code == 200


def test_key_never_reaches_a_log(org_a, web_client, caplog):
    caplog.set_level(logging.DEBUG)
    client = web_client(owner_of(org_a), org_a)
    raw = client.post(reverse("portal:api_keys"), {"name": "quiet"}).context["new_key"]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    api.get("/api/v1/me")
    api.get("/api/v1/keys/999999")  # a 404 is logged by django.request
    key = ApiKey.objects.get(name="quiet")
    client.post(reverse("portal:api_key_revoke", args=[key.pk]))
    api.get("/api/v1/me")  # a 401 is logged too
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "api key" in logged  # the events were logged, with the prefix ...
    assert raw not in logged and raw[len(key.prefix) :] not in logged  # ... never the key


def test_removing_a_member_revokes_their_keys(org_a, make_user, add_member, api_client_for):
    member = make_user("leo")
    membership = add_member(org_a, member, "member")
    member_api = api_client_for(org_a, member)
    owner_api = api_client_for(org_a)
    assert owner_api.delete(f"/api/v1/members/{membership.pk}").status_code == 204
    assert member_api.get("/api/v1/me").status_code == 401


def test_keys_carry_optional_rate_limits_with_checked_values(org_a, api_client_for):
    api = api_client_for(org_a)
    created = api.post(
        "/api/v1/keys",
        {"name": "limited", "requests_per_minute": 60, "tokens_per_minute": 100_000},
        format="json",
    )
    assert created.status_code == 201
    assert (created.json()["requests_per_minute"], created.json()["tokens_per_minute"]) == (
        60,
        100_000,
    )
    bad = api.post("/api/v1/keys", {"name": "bad", "requests_per_minute": 0}, format="json")
    assert bad.status_code == 400 and "requests_per_minute" in bad.json()
    assert not ApiKey.objects.filter(name="bad").exists()
