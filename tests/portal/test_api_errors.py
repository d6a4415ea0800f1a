"""The API answers every error as JSON, never an HTML page and never a bare 500."""

import logging

import pytest
from django.test import override_settings

from tests.conftest import owner_of

NOT_IDS = ["abc", "null,null", "1e9", "-1", "0", "1.5", "%20", "99999999999999999999999"]


@pytest.mark.parametrize("bad_id", NOT_IDS)
@pytest.mark.parametrize(
    "template",
    [
        "/api/v1/deployments/{}",
        "/api/v1/deployments/{}/events",
        "/api/v1/deployments/1/replicas/{}/logs",
        "/api/v1/keys/{}",
        "/api/v1/builds/{}",
        "/api/v1/invoices/{}",
        "/api/v1/members/{}",
    ],
)
def test_a_segment_that_is_not_an_id_is_a_json_404(template, bad_id, org_a, api_client_for):
    response = api_client_for(org_a).get(template.format(bad_id))
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"detail": "Not found."}


def test_an_id_past_bigint_is_404_not_a_database_error(org_a, api_client_for):
    api = api_client_for(org_a)
    for path in ("/api/v1/deployments/9223372036854775808", "/api/v1/builds/1" + "0" * 18):
        assert api.get(path).status_code == 404
    # Browser pages share the converter.
    assert api.get("/deployments/9223372036854775808/").status_code == 404


@override_settings(DEBUG=True)
def test_unknown_api_url_is_json_even_with_debug_on(org_a, api_client_for):
    response = api_client_for(org_a).get("/api/v1/no-such-thing")
    assert response.status_code == 404 and response.json() == {"detail": "Not found."}
    assert "X-Request-ID" in response


def test_wrong_method_is_a_json_405_with_allow(org_a, api_client_for):
    response = api_client_for(org_a).put("/api/v1/deployments", {}, format="json")
    assert response.status_code == 405
    assert "detail" in response.json() and "POST" in response["Allow"]


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=xx", "text/plain"])
def test_a_body_that_is_not_json_is_refused_with_415(content_type, org_a, api_client_for):
    body = b'--xx\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--xx--\r\n'
    response = api_client_for(org_a).generic(
        "POST", "/api/v1/deployments", body, content_type=content_type
    )
    assert response.status_code == 415
    assert "Unsupported media type" in response.json()["detail"]


def test_a_form_body_is_refused_with_415(org_a, api_client_for):
    response = api_client_for(org_a).post(
        "/api/v1/deployments", {"name": "x", "regions": "local"}, format="multipart"
    )
    assert response.status_code == 415


def test_too_large_a_body_is_a_json_413(org_a, api_client_for, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = '{"name": "' + "x" * 2000 + '"}'
    response = api_client_for(org_a).generic(
        "POST", "/api/v1/deployments", body, content_type="application/json"
    )
    assert response.status_code == 413 and "too large" in response.json()["detail"]


@pytest.mark.parametrize("body", ["{", "[]", "null", '"x"', "1e999", '{"regions": {"a": 1}}'])
def test_malformed_or_wrongly_typed_json_is_a_400(body, org_a, api_client_for):
    response = api_client_for(org_a).generic(
        "POST", "/api/v1/deployments", body, content_type="application/json"
    )
    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/json")


def test_an_unhandled_error_is_a_json_500_with_a_request_id_in_the_log(
    org_a, api_client_for, monkeypatch, caplog, settings
):
    settings.DEBUG = True  # no debug page for the API even so
    from portal import api as portal_api

    def broken(self, request):
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr(portal_api.ApiKeyViewSet, "list", broken)
    with caplog.at_level(logging.ERROR, logger="gantry.api"):
        response = api_client_for(org_a).get("/api/v1/keys")
    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"detail", "request_id"} and body["request_id"] == response["X-Request-ID"]
    assert "secret-internal-detail" not in response.content.decode()
    logged = [r for r in caplog.records if body["request_id"] in r.getMessage()]
    assert logged and logged[0].exc_info[0] is RuntimeError


def test_an_error_page_outside_the_api_stays_html(org_a, web_client):
    client = web_client(owner_of(org_a), org_a)
    response = client.get("/deployments/abc/")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_the_schema_documents_every_error_shape(client, db):
    doc = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    schemas = doc["components"]["schemas"]
    assert {"Error", "ServerError", "ValidationError"} <= set(schemas)
    assert schemas["ServerError"]["required"] == ["detail", "request_id"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                codes = set(operation["responses"])
                assert {"400", "401", "403", "404", "405", "415", "429", "500"} <= codes, (
                    f"{method} {path}"
                )


def test_too_many_requests_is_a_json_429_with_retry_after(org_a, api_client_for, monkeypatch):
    from rest_framework.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "rate", "2/minute", raising=False)
    api = api_client_for(org_a)
    assert [api.get("/api/v1/keys").status_code for _ in range(2)] == [200, 200]
    response = api.get("/api/v1/keys")
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert "throttled" in response.json()["detail"].lower()
