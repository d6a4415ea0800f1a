"""Where the playground is offered: on the page of a deployment that serves (or sleeps),
for roles that may use it, and from the marketplace page of the model it was deployed from.
The browser flow itself is in tests/e2e/test_playground_browser.py."""

import pytest
from django.urls import reverse

from deployments.models import Deployment, GpuType
from marketplace.services import catalog_load
from portal.models import Role
from tests.conftest import owner_of

pytestmark = pytest.mark.django_db


def deployment(org, name, status="running", **extra) -> Deployment:
    return Deployment.objects.create(
        organization=org,
        name=name,
        model_ref="x/y",
        gpu_type=GpuType.objects.get(code="cpu"),
        regions=["local"],
        status=status,
        **extra,
    )


def test_a_running_or_sleeping_deployment_has_a_playground_and_a_stopped_one_not(org_a, web_client):
    client = web_client(owner_of(org_a), org_a)
    running = deployment(org_a, "awake")
    asleep = deployment(org_a, "dozing", status="stopped", asleep=True, desired_replicas=0)
    stopped = deployment(org_a, "off", status="stopped", desired_replicas=0)
    for d, shown in ((running, True), (asleep, True), (stopped, False)):
        page = client.get(reverse("deployments:detail", args=[d.pk])).content.decode()
        assert ('id="playground"' in page) is shown, d.name
        assert ("playground-1.1.js" in page) is shown
    page = client.get(reverse("deployments:detail", args=[running.pk])).content.decode()
    # The page holds no credential: the script asks for one when a prompt is sent.
    assert "gp_" not in page and "gk_" not in page
    assert f'data-mint-url="/deployments/{running.pk}/playground/token/"' in page


def test_a_billing_member_sees_no_playground(org_a, make_user, add_member, web_client):
    d = deployment(org_a, "awake")
    m = add_member(org_a, make_user("accountant"), Role.BILLING)
    admin = add_member(org_a, make_user("boss"), Role.ADMIN)
    assert web_client(admin.user, org_a).get(f"/deployments/{d.pk}/").status_code == 200
    client = web_client(m.user, org_a)
    assert client.post(f"/deployments/{d.pk}/playground/token/").status_code == 403
    assert client.get("/playground/compare/").status_code == 403


def test_the_model_page_links_the_organizations_deployments_of_that_model(org_a, org_b, web_client):
    catalog_load()
    mine = deployment(org_a, "qwen-a", source="catalog:qwen3-8b/h100-bf16")
    deployment(org_a, "qwen-b", source="catalog:qwen3-8b/l4-awq")
    deployment(org_a, "other-model", source="catalog:deepseek-r1/h200-fp8")
    deployment(org_b, "theirs", source="catalog:qwen3-8b/h100-bf16")
    page = web_client(owner_of(org_a), org_a).get("/marketplace/qwen3-8b/").content.decode()
    assert "Your deployments of this model" in page
    assert f'href="/deployments/{mine.pk}/#playground"' in page
    assert "qwen-b" in page and "other-model" not in page and "theirs" not in page
    assert "/playground/compare/?a=" in page


def test_compare_takes_only_the_organizations_deployments_by_id(org_a, org_b, web_client):
    a, b = deployment(org_a, "left"), deployment(org_a, "right")
    theirs = deployment(org_b, "theirs")
    client = web_client(owner_of(org_a), org_a)
    page = client.get(f"/playground/compare/?a={a.pk}&b={b.pk}").content.decode()
    assert 'data-testid="pane-left"' in page and 'data-testid="pane-right"' in page
    for bad in (str(theirs.pk), "1e3", "-1", "abc", "99999999999999999999"):
        assert client.get(f"/playground/compare/?a={bad}").status_code == 404, bad
