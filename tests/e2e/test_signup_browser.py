import pytest
from playwright.sync_api import expect

from portal.models import ApiKey
from portal.tokens import api_key_digest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_sign_up_land_on_dashboard_create_a_key_and_see_it_once(page, tmp_path):
    page.goto("/")
    page.get_by_role("button", name="Sign up").first.click()
    page.get_by_label("Username").fill("grace")
    page.get_by_label("Email").fill("grace@example.com")
    page.get_by_label("Password").fill("a-very-long-passphrase")
    page.locator("main form").get_by_role("button", name="Sign up").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("grace")
    expect(page.get_by_text("this is your personal organization")).to_be_visible()

    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Key name").fill("laptop")
    page.get_by_role("button", name="Create key").click()  # an htmx swap, no reload
    shown = page.get_by_test_id("new-key")
    expect(shown).to_be_visible()
    raw = shown.inner_text().strip()
    assert raw.startswith("gk_")
    assert ApiKey.objects.get(name="laptop").digest == api_key_digest(raw)
    page.screenshot(path=str(tmp_path / "api-key-once.png"), full_page=True)

    page.reload()
    expect(page.get_by_role("cell", name="laptop")).to_be_visible()
    assert raw not in page.content()
    expect(page.get_by_test_id("new-key")).to_have_count(0)
