"""POST /api/v1/deployments with `build`: deploy a finished build of one's own organization
by its id. (The full path, with a real image build, is in test_build_e2e.)"""

import pytest
from django.utils import timezone

from builder import images, weights
from builder.models import Build, BuildStatus
from deployments.models import Deployment
from tests.builder.conftest import gguf_build


def finished_build(org, gguf, name: str) -> Build:
    """A build in the state the two build tasks leave a succeeded one: its weights cached,
    its catalog entry registered and linked, the status succeeded. (The image is the engine
    image; building a real one is test_build_e2e's job.)"""
    build = gguf_build(org, gguf, name)
    cache = weights.weights_cache_for(build)
    weights.weights_prefetch(cache_id=cache.pk, build_id=build.pk)
    model = images.register_catalog_entry(build=build, image="gantry/llamacpp:0.3.36")
    Build.objects.filter(pk=build.pk).update(
        status=BuildStatus.SUCCEEDED,
        phase="done",
        image="gantry/llamacpp:0.3.36",
        catalog_model=model,
        finished_at=timezone.now(),
    )
    return Build.objects.get(pk=build.pk)


def test_a_finished_build_deploys_by_its_id(org_a, api_client_for, demo_gguf, local_pool):
    build = finished_build(org_a, demo_gguf, "mine")
    response = api_client_for(org_a).post(
        "/api/v1/deployments",
        {"build": build.pk, "name": "from-build", "regions": ["local"]},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "from-build" and body["status"] == "pending"
    d = Deployment.objects.get(pk=body["id"])
    profile = build.catalog_model.profiles.get()
    assert d.source == f"build:{build.pk}" and d.organization == org_a
    assert (d.engine, d.image, d.model_ref) == ("llama.cpp", profile.image, profile.model_ref)
    assert d.regions == ["local"]


def test_a_build_deploys_with_its_profile_named_and_the_region_chosen(
    org_a, api_client_for, demo_gguf, local_pool
):
    build = finished_build(org_a, demo_gguf, "mine")
    response = api_client_for(org_a).post(
        "/api/v1/deployments", {"build": str(build.pk), "profile": f"build-{build.pk}"}
    )
    assert response.status_code == 201, response.content
    d = Deployment.objects.get()
    assert d.name == "mine" and d.regions == ["local"]  # the region with room


def test_another_orgs_build_answers_as_if_it_did_not_exist(
    org_a, org_b, api_client_for, demo_gguf, local_pool
):
    theirs = finished_build(org_b, demo_gguf, "theirs")
    api = api_client_for(org_a)
    stolen = api.post("/api/v1/deployments", {"build": theirs.pk}, format="json")
    missing = api.post("/api/v1/deployments", {"build": theirs.pk + 1000}, format="json")
    assert stolen.status_code == missing.status_code == 400
    assert stolen.json()["build"] == [f"No build '{theirs.pk}' in this organization."]
    assert missing.json()["build"] == [f"No build '{theirs.pk + 1000}' in this organization."]
    assert "theirs" not in stolen.content.decode()
    assert not Deployment.objects.exists()


@pytest.mark.parametrize("status", [BuildStatus.INSPECTED, BuildStatus.BUILDING, "failed"])
def test_a_build_that_has_not_succeeded_is_refused_saying_so(
    status, org_a, api_client_for, demo_gguf, local_pool
):
    build = gguf_build(org_a, demo_gguf, "unfinished")
    Build.objects.filter(pk=build.pk).update(status=status)
    response = api_client_for(org_a).post("/api/v1/deployments", {"build": build.pk}, format="json")
    assert response.status_code == 400
    assert "not finished; deploy it once it has succeeded" in response.json()["build"][0]
    assert not Deployment.objects.exists()


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"build": 1, "model": "x"}, "build", "Give one of build or model, not both."),
        ({"build": 1, "model": "x"}, "model", "Give one of build or model, not both."),
        ({"name": "lonely"}, "non_field_errors", "Give build (a build id), model"),
        ({}, "non_field_errors", "or the engine fields (model_ref, gpu_type, regions)"),
        ({"build": "1 OR 1=1"}, "build", "No build '1 OR 1=1' in this organization."),
        ({"build": "-1"}, "build", "No build '-1' in this organization."),
        ({"build": "9" * 300}, "build", "no more than 255 characters"),
        ({"build": 1, "model_ref": "/etc/passwd"}, "model_ref", "Set by build's profile"),
        ({"build": 1, "image": "evil:latest"}, "image", "Set by build's profile"),
        ({"build": 1, "regions": []}, "regions", "Give at least one region code."),
        ({"profile": "x", "model_ref": "m"}, "profile", "A profile goes with build or model."),
        ({"model_ref": "m"}, "gpu_type", "This field is required."),
    ],
)
def test_bad_deployment_sources_name_the_field_and_create_nothing(
    body, field, words, org_a, api_client_for, local_pool
):
    response = api_client_for(org_a).post("/api/v1/deployments", body, format="json")
    assert response.status_code == 400, response.content
    assert words in " ".join(response.json()[field])
    assert not Deployment.objects.exists()


def test_the_schema_documents_both_sources(client, db):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    fields = schema["components"]["schemas"]["DeploymentIn"]["properties"]
    assert {"model", "build", "profile", "model_ref"} <= set(fields)
