"""The playground in real Chromium, through the real gateway, on the real llama.cpp engine:
the page mints a token, calls the gateway across origins (CORS), streams the answer in and
shows its token counts, timings and cost; the usage page then shows those tokens.

With GANTRY_SCREENSHOTS=1 the tests also refresh the README's screenshots."""

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from deployments.engines import DEMO_MODEL_REF
from deployments.models import Deployment
from deployments.services import deployment_create
from tests.conftest import owner_of
from tests.deployments.conftest import reconcile_until
from tests.e2e.test_deployment_browser import _session_cookie

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
STATS = re.compile(
    r"(\d+) prompt \+ (\d+) completion tokens · TTFT \d+ ms · [\d.]+ tokens/s · \$\d+\.\d{6}"
)


@pytest.fixture
def portal_gateway(settings, live_server, request):
    """The gateway the page talks to, allowing the live portal's origin."""
    settings.GATEWAY_CORS_ORIGINS = [live_server.url]
    gw = request.getfixturevalue("gateway")
    settings.GATEWAY_URL = gw.base_url.removesuffix("/v1")
    return gw


def shoot(locator, name: str) -> None:
    if os.environ.get("GANTRY_SCREENSHOTS"):
        locator.screenshot(path=str(SCREENSHOTS / name))


def ask(scope, prompt: str) -> None:
    scope.get_by_label("Temperature").fill("0")
    scope.get_by_label("Seed").fill("7")
    scope.get_by_label("Max tokens").fill("16")
    scope.get_by_role("radio", name="Completion").check()
    scope.get_by_label("Message").fill(prompt)
    scope.get_by_test_id("send").click()


def watch_text_changes(page) -> None:
    page.evaluate(
        """() => {
        window.textChanges = 0;
        for (const log of document.querySelectorAll('[data-role=conversation]')) {
          new MutationObserver((records) => { window.textChanges += records.length; })
            .observe(log, {subtree: true, childList: true, characterData: true});
        }
      }"""
    )


def test_a_prompt_streams_with_its_counts_and_the_usage_page_shows_the_tokens(
    page, portal_gateway, running, org_a, live_server
):
    page.context.add_cookies([_session_cookie(owner_of(org_a), org_a, live_server.url)])
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"/deployments/{running.pk}/")
    playground = page.locator("#playground")
    expect(playground.get_by_test_id("code-curl")).to_contain_text('"model": "chat"')
    expect(playground.get_by_test_id("code-python")).to_contain_text(portal_gateway.base_url)
    expect(playground.get_by_test_id("code-js")).to_contain_text("GANTRY_API_KEY")

    watch_text_changes(page)
    ask(playground, "Once upon a time")
    stats = playground.get_by_test_id("stats")
    expect(stats).to_have_text(STATS, timeout=90_000)
    # The code to copy follows the form: the completion endpoint, the settings just used.
    curl = playground.get_by_test_id("code-curl")
    expect(curl).to_contain_text(f"{portal_gateway.base_url}/completions")
    for sent in ('"max_tokens": 16', '"temperature": 0', '"seed": 7', '"prompt": "Once upon'):
        expect(curl).to_contain_text(sent)
    python = playground.get_by_test_id("code-python")
    expect(python).to_contain_text("client.completions.create(")
    expect(python).to_contain_text("max_tokens=16,")
    expect(playground.get_by_test_id("code-js")).to_contain_text('"seed": 7')
    # Chat with a system prompt (quotes and all): the chat endpoint, the messages in order.
    playground.get_by_role("radio", name="Chat").check()
    playground.get_by_label("System prompt").fill("Answer as 'Gantry'.")
    playground.get_by_label("Message").fill("Hi")
    expect(curl).to_contain_text(f"{portal_gateway.base_url}/chat/completions")
    expect(curl).to_contain_text("""Answer as '\\''Gantry'\\''.""")
    expect(python).to_contain_text(
        'messages=[{"role":"system","content":"Answer as \'Gantry\'."},'
        '{"role":"user","content":"Hi"}],'
    )
    answer = playground.get_by_test_id("assistant-text").last
    assert answer.inner_text().strip()
    # Token by token: the answer's text was rewritten event by event as it streamed.
    assert page.evaluate("window.textChanges") > 8
    prompt_tokens, completion_tokens = map(int, STATS.search(stats.inner_text()).groups())
    assert prompt_tokens > 0 and completion_tokens > 1
    expect(playground.get_by_test_id("playground-error")).to_be_hidden()
    shoot(playground, "playground.png")

    # Billed like any call: the usage page shows exactly the tokens the page showed.
    page.goto("/billing/")
    row = page.locator("tr", has_text="output_tokens").filter(has_text="chat")
    for _ in range(40):
        if row.count():
            break
        page.wait_for_timeout(500)
        page.reload()
    expect(row).to_contain_text(str(completion_tokens))
    expect(page.locator("tr", has_text="input_tokens").filter(has_text="chat")).to_contain_text(
        str(prompt_tokens)
    )


def test_side_by_side_streams_two_answers_with_their_own_figures(
    page, portal_gateway, running, org_a, live_server
):
    second = deployment_create(
        organization=org_a,
        user=owner_of(org_a),
        name="chat-long",
        model_ref=DEMO_MODEL_REF,
        gpu_type="cpu",
        regions=["local"],
        engine_args=["--n_ctx", "1024"],
    )
    reconcile_until(second, lambda d: d.status == "running", what="running")
    page.context.add_cookies([_session_cookie(owner_of(org_a), org_a, live_server.url)])
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/playground/compare/")
    page.get_by_label("Left").select_option("chat")
    page.get_by_label("Right").select_option("chat-long")
    page.get_by_role("button", name="Compare").click()
    watch_text_changes(page)
    ask(page.locator("[data-playground]"), "The river")
    for name in ("chat", "chat-long"):
        pane = page.get_by_test_id(f"pane-{name}")
        expect(pane.get_by_test_id("stats")).to_have_text(STATS, timeout=90_000)
        assert pane.get_by_test_id("assistant-text").inner_text().strip()
    assert page.evaluate("window.textChanges") > 16
    shoot(page.locator("main"), "playground-side-by-side.png")


def test_a_sleeping_deployment_says_it_is_waking_and_then_answers(
    page, portal_gateway, running, org_a, live_server
):
    # Put it to sleep as the autoscaler does: zero replicas, a request may wake it.
    Deployment.objects.filter(pk=running.pk).update(desired_replicas=0, asleep=True)
    reconcile_until(running, lambda d: not d.replicas.filter(status="running").exists())
    page.context.add_cookies([_session_cookie(owner_of(org_a), org_a, live_server.url)])
    page.goto(f"/deployments/{running.pk}/")
    playground = page.locator("#playground")
    ask(playground, "Wake up")
    expect(playground.get_by_test_id("playground-status")).to_contain_text(
        re.compile(r"waking, about \d+ s")
    )
    # The gateway woke it (desired state); the reconciler (the worker, here run inline)
    # starts the replica while the page waits.
    reconcile_until(running, lambda d: d.status == "running", what="awake")
    expect(playground.get_by_test_id("stats")).to_have_text(STATS, timeout=90_000)


def test_a_chat_turn_and_a_refusal_in_the_gateways_words(
    page, portal_gateway, running, org_a, live_server, settings
):
    settings.PLAYGROUND_REQUESTS_PER_MINUTE = 1
    page.context.add_cookies([_session_cookie(owner_of(org_a), org_a, live_server.url)])
    page.goto(f"/deployments/{running.pk}/")
    playground = page.locator("#playground")
    playground.get_by_label("System prompt").fill("Answer in one word.")
    playground.get_by_role("radio", name="Chat").check()
    playground.get_by_label("Max tokens").fill("8")
    playground.get_by_label("Message").fill("Hello there")
    playground.get_by_test_id("send").click()
    expect(playground.get_by_test_id("stats")).to_contain_text("completion tokens", timeout=90_000)
    expect(playground.get_by_test_id("user-text")).to_have_text("Hello there")

    # One request a minute: the second is refused, and the page says what the gateway said.
    playground.get_by_label("Message").fill("And again")
    playground.get_by_test_id("send").click()
    expect(playground.get_by_test_id("playground-error")).to_have_text(
        re.compile(r"Rate limit reached for your playground requests; retry in \d+ s\.")
    )
