from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from builder.models import Build
from tests.builder.conftest import gguf_build
from tests.conftest import owner_of


def test_wizard_source_inspect_configure_in_the_browser(org_a, web_client, demo_gguf, local_pool):
    client = web_client(owner_of(org_a), org_a)
    response = client.post(
        reverse("builder:new"),
        {
            "name": "wizard-tiny",
            "kind": "upload",
            "files": SimpleUploadedFile("tiny.gguf", demo_gguf.read_bytes()),
        },
    )
    build = Build.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/builds/{build.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert "gguf:llama" in page and "Fits: needs" in page and "llama.cpp" in page
    # A bad option comes back next to the form, and nothing changes.
    bad = client.post(
        reverse("builder:configure", args=[build.pk]),
        {"engine": "llama.cpp", "options": "n_threads=9999", "env": ""},
    )
    assert bad.status_code == 400 and "n_threads must be from 1 to 256" in bad.content.decode()
    assert Build.objects.get().options == {}
    ok = client.post(
        reverse("builder:configure", args=[build.pk]),
        {
            "engine": "llama.cpp",
            "options": "n_threads=2",
            "env": "LOG_LEVEL=info",
            "max_context": "256",
        },
    )
    assert ok.status_code == 302
    build.refresh_from_db()
    assert (build.options, build.env, build.max_context) == (
        {"n_threads": 2},
        {"LOG_LEVEL": "info"},
        256,
    )


def test_bad_source_in_the_browser_keeps_the_input_and_names_the_field(org_a, web_client, hub):
    client = web_client(owner_of(org_a), org_a)
    response = client.post(
        reverse("builder:new"),
        {"name": "x", "kind": "huggingface", "repo_id": "acme/missing", "token": "hf_secret"},
    )
    body = response.content.decode()
    assert response.status_code == 400 and "token: No repo acme/missing" in body
    assert 'value="acme/missing"' in body and "hf_secret" not in body
    assert not Build.objects.exists()


def test_another_org_cannot_build_from_your_upload(org_a, org_b, api_client_for, demo_gguf):
    upload = (
        api_client_for(org_a)
        .post(
            "/api/v1/uploads",
            {"files": [SimpleUploadedFile("tiny.gguf", demo_gguf.read_bytes())]},
            format="multipart",
        )
        .json()
    )
    response = api_client_for(org_b).post(
        "/api/v1/builds",
        {"name": "stolen", "source": {"kind": "upload", "upload": upload["id"]}},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["upload"] == ["No such upload in this organization."]
    assert not Build.objects.exists()


def test_private_model_of_a_build_is_invisible_to_another_org(
    org_a, org_b, api_client_for, demo_gguf, local_pool
):
    from builder import images
    from marketplace.models import CatalogModel

    build = gguf_build(org_a, demo_gguf, "secret-model")
    images.register_catalog_entry(build=build, image="gantry-builds/alpha/secret-model:x")
    assert CatalogModel.objects.filter(organization=org_a, slug="secret-model").exists()
    b_api = api_client_for(org_b)
    assert b_api.get("/api/v1/models/secret-model").status_code == 404
    assert "secret-model" not in b_api.get("/api/v1/models", {"search": "secret"}).content.decode()
    deploy = b_api.post("/api/v1/deployments", {"model": "secret-model"}, format="json")
    assert deploy.status_code == 400 and "No model 'secret-model'" in deploy.json()["model"][0]
    assert api_client_for(org_a).get("/api/v1/models/secret-model").status_code == 200


def test_a_deployment_waits_for_the_weights_and_shows_the_progress(
    org_a, api_client_for, demo_gguf, local_pool, django_capture_on_commit_callbacks
):
    """Deployed before its weights are cached, a build's model waits (pending, with the
    progress) and starts once the prefetch has filled the cache."""
    from builder import images, services, weights
    from deployments.models import Deployment
    from tests.deployments.conftest import reconcile_until

    build = gguf_build(org_a, demo_gguf, "waits")
    with django_capture_on_commit_callbacks(execute=False):
        build = services.build_start(build=build)  # queued: prefetch not run yet
    images.register_catalog_entry(build=build, image="gantry/llamacpp:0.3.36")
    api = api_client_for(org_a)
    response = api.post(
        "/api/v1/deployments", {"model": "waits", "regions": ["local"]}, format="json"
    )
    assert response.status_code == 201, response.content
    d = Deployment.objects.get()
    reconcile_until(d, lambda d: d.status == "pending", what="pending")
    assert d.status_reason.startswith("waiting for the model weights (0%, 0 of ")
    assert not d.replicas.exists()
    cache = weights.weights_cache_for(build)
    weights.weights_prefetch(cache_id=cache.pk, build_id=build.pk)
    reconcile_until(d, lambda d: d.status == "running", what="running once the weights are in")
