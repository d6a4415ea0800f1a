"""The browser door of the weights cache: the grid's one-click CPU deploy, the gated-repo
message, the deployment page's weights card and retry, the organization's hub token."""

import pytest
from django.urls import reverse

from deployments.models import Deployment, WeightsFetch
from deployments.services.weights import weights_fetch_run
from tests.conftest import owner_of
from tests.marketplace.weights_fixtures import (
    GATED_REPO,
    GGUF_FILE,
    GGUF_REPO,
    catalog_entry,
    hub,  # noqa: F401 - fixture
)

pytestmark = pytest.mark.django_db


def test_grid_offers_one_click_cpu_deploys_and_the_click_follows_the_fetch(
    hub,  # noqa: F811
    org_a,
    web_client,
    local_pool,
    django_assert_max_num_queries,
):
    catalog_entry()
    client = web_client(owner_of(org_a), org_a)
    with django_assert_max_num_queries(10):
        grid = client.get(reverse("marketplace:grid")).content.decode()
    assert "Run on CPU · GGUF Q8_0" in grid
    response = client.post(reverse("marketplace:deploy", args=["tiny-chat"]), {"profile": "cpu-q8"})
    d = Deployment.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/deployments/{d.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert GGUF_REPO in page and GGUF_FILE in page and "fetching weights" in page
    assert 'hx-trigger="every 2s"' in page  # the page follows the fetch live

    weights_fetch_run(fetch_id=d.weights_id)
    live = client.get(response["Location"], {"partial": "live"}, HTTP_HX_REQUEST="true")
    assert "weights ready (0.03 GB)" in live.content.decode()


def test_gated_model_without_a_token_says_so_in_the_deploy_page(
    hub,  # noqa: F811
    org_a,
    web_client,
    local_pool,
):
    catalog_entry(slug="gated-chat", repo=GATED_REPO, gated=True, hf_repo=GATED_REPO)
    client = web_client(owner_of(org_a), org_a)
    response = client.post(
        reverse("marketplace:deploy", args=["gated-chat"]), {"profile": "cpu-q8"}
    )
    assert response.status_code == 400
    assert "is gated on the hub: it needs a hub token" in response.content.decode()
    assert not Deployment.objects.exists() and not WeightsFetch.objects.exists()


def test_a_failed_fetch_is_retried_from_the_deployment_page(
    hub,  # noqa: F811
    org_a,
    web_client,
    local_pool,
):
    catalog_entry()
    missing = hub.files[GGUF_REPO].pop(GGUF_FILE)
    client = web_client(owner_of(org_a), org_a)
    client.post(reverse("marketplace:deploy", args=["tiny-chat"]), {"profile": "cpu-q8"})
    d = Deployment.objects.get()
    weights_fetch_run(fetch_id=d.weights_id)
    page = client.get(reverse("deployments:detail", args=[d.pk])).content.decode()
    assert "has no such file on the hub" in page and "Retry the fetch" in page

    hub.files[GGUF_REPO][GGUF_FILE] = missing
    response = client.post(reverse("deployments:weights_retry", args=[d.pk]))
    assert response.status_code == 302
    assert WeightsFetch.objects.get().status == "pending"
    assert weights_fetch_run(fetch_id=d.weights_id).status == "ready"


def test_hub_token_is_set_in_the_page_and_never_shown_back(
    org_a, web_client, add_member, make_user
):
    client = web_client(owner_of(org_a), org_a)
    page = client.get(reverse("portal:api_keys")).content.decode()
    assert "No hub token is set" in page
    response = client.post(reverse("portal:hub_token"), {"token": "hf_secretvalue42"}, follow=True)
    page = response.content.decode()
    assert "A hub token is set" in page and "hf_secretvalue42" not in page
    org_a.refresh_from_db()
    assert org_a.hub_token_encrypted and "hf_secretvalue42" not in org_a.hub_token_encrypted

    bad = client.post(reverse("portal:hub_token"), {"token": "bad token"}, follow=True)
    assert "A hub token is 8–200 letters" in bad.content.decode()

    member = make_user("plain-member")
    add_member(org_a, member)
    assert (
        web_client(member, org_a).post(reverse("portal:hub_token"), {"token": ""}).status_code
        == 403
    )
