import os
import shutil

import pytest

from tests.conftest import need
from tests.deployments.conftest import _isolated_var, replica_var  # noqa: F401 - shared
from tests.gateway.conftest import gateway, local_pool, running  # noqa: F401 - shared

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser(django_db_setup):
    # Playwright's sync API keeps an event loop running in this thread for the whole
    # session; the tests' own ORM calls are synchronous and safe, so Django's async guard
    # is lifted while the browser lives (browser tests run last, see tests/conftest.py).
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    need(shutil.which(CHROMIUM) is not None, f"Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield browser
        browser.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url)
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()
