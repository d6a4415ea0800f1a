import re

import pytest
from playwright.sync_api import expect

from deployments.models import Deployment
from tests.conftest import owner_of
from tests.e2e.test_deployment_browser import _session_cookie
from tests.gateway.conftest import gateway  # noqa: F401 - fixture
from tests.marketplace.weights_fixtures import (
    GGUF_FILE,
    GGUF_REPO,
    catalog_entry,
    hub,  # noqa: F401 - fixture
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_one_click_on_a_cpu_profile_fetches_the_weights_and_runs(
    hub,  # noqa: F811
    page,
    celery_worker,
    gateway,  # noqa: F811
    org_a,
    api_client_for,
    live_server,
):
    import openai

    from tests.deployments.conftest import make_pool, make_region

    catalog_entry()
    hub.rate[GGUF_REPO] = max(len(hub.gguf) // 5, 1)  # about five seconds: watchable
    make_pool(make_region("local", "This machine"), "cpu", "cpu", [("localhost", 4)])
    page.context.add_cookies([_session_cookie(owner_of(org_a), org_a, live_server.url)])

    page.goto("/marketplace/")
    card = page.get_by_test_id("model-card").filter(has_text="Tiny Chat")
    card.get_by_role("button", name="Run on CPU · GGUF Q8_0").click()  # the one click

    expect(page).to_have_url(re.compile(r"/deployments/\d+/$"))
    weights = page.get_by_test_id("weights")
    expect(weights).to_contain_text(GGUF_REPO)
    expect(weights).to_contain_text(GGUF_FILE)
    progress = page.get_by_test_id("weights-progress")
    expect(progress).to_contain_text(re.compile(r"fetching weights \d+% \([\d.]+ of [\d.]+ GB\)"))
    expect(page.get_by_test_id("status")).to_have_text("fetching")
    expect(page.get_by_test_id("status")).to_have_text("running", timeout=120_000)
    expect(progress).to_contain_text("ready")

    d = Deployment.objects.get()
    assert d.source == "catalog:tiny-chat/cpu-q8"
    key = api_client_for(org_a).raw_key
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key)
    answer = client.chat.completions.create(
        model=d.name,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        logit_bias={"2": -100},  # random weights: keep it from stopping at once
    )
    assert answer.usage.completion_tokens > 0
