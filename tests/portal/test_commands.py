import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from portal.models import Membership, Organization, Role


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_createorg_creates_owner_and_org_then_key_works(db):
    run("createorg", "acme", "--owner", "root", "--password", "s3cret-long-pass")
    org = Organization.objects.get(slug="acme")
    user = get_user_model().objects.get(username="root")
    assert Membership.objects.get(organization=org, user=user).role == Role.OWNER
    out = run("create_api_key", "--org", "acme", "--user", "root", "--name", "ci")
    key = out.strip()
    assert out == key + "\n" and key.startswith("gk_")  # the key, and nothing else
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert api.get("/api/v1/me").json()["organization"]["slug"] == "acme"


def test_createorg_refuses_unknown_owner_without_password(db):
    with pytest.raises(CommandError, match="pass --password"):
        run("createorg", "acme", "--owner", "ghost")
    assert not Organization.objects.exists()


def test_createorg_refuses_bad_and_taken_slugs(db):
    run("createorg", "acme", "--owner", "root", "--password", "s3cret-long-pass")
    with pytest.raises(CommandError, match=r"slug: .*taken"):
        run("createorg", "acme", "--owner", "root")
    with pytest.raises(CommandError, match=r"slug: .*lowercase"):
        run("createorg", "Not_OK", "--owner", "root")


def test_create_api_key_refuses_non_members(db):
    run("createorg", "acme", "--owner", "root", "--password", "s3cret-long-pass")
    get_user_model().objects.create_user(username="outsider", password="x-long-pass-42")
    with pytest.raises(CommandError, match="not a member"):
        run("create_api_key", "--org", "acme", "--user", "outsider", "--name", "x")
    with pytest.raises(CommandError, match="No organization"):
        run("create_api_key", "--org", "nope", "--user", "root", "--name", "x")


def test_demo_is_idempotent(db):
    run("demo")
    run("demo")
    assert Organization.objects.filter(slug="demo").count() == 1
    assert get_user_model().objects.get(username="demo").check_password("gantry-demo")


def test_demo_loads_each_apps_demo_data_through_its_app_config(db, client):
    from deployments.models import Deployment, Region

    out = run("demo")
    assert "Region local: a CPU pool" in out and "Catalog: " in out
    assert Region.objects.filter(code="local").exists()
    assert Deployment.objects.filter(organization__slug="demo", name="tiny-demo").exists()
    client.force_login(get_user_model().objects.get(username="demo"))
    page = client.get("/").content.decode()
    # The dashboard's cards come from each app's AppConfig.dashboard_cards.
    assert "Browse models" in page and "See deployments" in page
    assert '<header>Deployments</header><p class="stat">1</p>' in page
