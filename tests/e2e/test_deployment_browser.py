import pytest
from playwright.sync_api import expect

from deployments.engines import DEMO_MODEL_REF
from deployments.models import Deployment, Node
from tests.conftest import owner_of

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_deploy_in_the_browser_and_watch_it_run(page, celery_worker, org_a, live_server):
    from tests.deployments.conftest import make_pool, make_region

    make_pool(make_region("local", "This machine"), "cpu", "cpu", [("localhost", 4)])
    page.context.add_cookies([_session_cookie(owner_of(org_a), org_a, live_server.url)])

    page.goto("/deployments/")
    page.get_by_role("button", name="New deployment").click()
    page.get_by_label("Name").fill("browser-demo")
    expect(page.get_by_label("Model")).to_have_value(DEMO_MODEL_REF)
    page.get_by_label("GPU type").select_option("cpu")
    page.get_by_label("First choice region").select_option("local")
    page.get_by_role("button", name="Deploy").click()

    # The page follows the deployment live (htmx polling) until it runs.
    status = page.get_by_test_id("status")
    expect(status).to_have_text("running", timeout=90_000)
    timeline = page.get_by_test_id("timeline")
    expect(timeline).to_contain_text("health check passed in")
    expect(timeline).to_contain_text("placed replica 1 on local/cpu/localhost")
    endpoint = page.get_by_test_id("endpoint").inner_text()
    assert endpoint.startswith("http://127.0.0.1:") and endpoint.endswith("/v1")
    expect(page.locator("pre code").first).to_contain_text('"model": "browser-demo"')

    page.get_by_role("link", name="Logs").first.click()
    expect(page.get_by_test_id("replica-log")).to_contain_text("Uvicorn running")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(f"{live_server.url}/deployments/")
    expect(page.get_by_text("Deleted browser-demo")).to_be_visible()
    assert Node.objects.get().gpus_allocated == 0
    assert Deployment.objects.get(name="browser-demo").status == "deleted"


def _session_cookie(user, org, base_url):
    """Sign in the way the browser would, without retyping the sign-up flow."""
    from importlib import import_module
    from urllib.parse import urlparse

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store["gantry_org_id"] = org.pk
    store.save()
    host = urlparse(base_url).hostname
    return {
        "name": settings.SESSION_COOKIE_NAME,
        "value": store.session_key,
        "domain": host,
        "path": "/",
    }
