def test_openapi_document_and_local_docs_are_served(client, db):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    doc = schema.json()
    assert doc["openapi"].startswith("3.") and "/api/v1/keys" in doc["paths"]
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    for path in ("/api/docs/", "/api/redoc/"):
        page = client.get(path).content.decode()
        assert "/static/drf_spectacular_sidecar/" in page  # local files, no CDN
        assert "cdn." not in page and "unpkg" not in page and "jsdelivr" not in page


def test_api_without_credentials_gets_401(client, db):
    response = client.get("/api/v1/keys")
    assert response.status_code == 401
