import pytest
from playwright.sync_api import expect

from deployments.models import Deployment
from marketplace.services import catalog_load
from tests.conftest import owner_of
from tests.e2e.test_deployment_browser import _session_cookie

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_find_a_model_and_deploy_the_demo_in_three_clicks(page, celery_worker, org_a, live_server):
    from tests.deployments.conftest import make_pool, make_region

    catalog_load()
    make_pool(make_region("local", "This machine"), "cpu", "cpu", [("localhost", 4)])
    page.context.add_cookies([_session_cookie(owner_of(org_a), org_a, live_server.url)])

    page.goto("/marketplace/")
    cards = page.get_by_test_id("model-card")
    page.get_by_label("Search models").fill("qwen")  # search as you type
    expect(cards.first).to_contain_text("Qwen")
    expect(page.get_by_test_id("model-card").filter(has_text="Llama 3.1 8B")).to_have_count(0)
    page.get_by_label("Fits on").select_option("h200-141gb")
    expect(page.get_by_test_id("model-card").filter(has_text="Qwen3 235B-A22B")).to_have_count(1)
    expect(page.get_by_test_id("model-card").filter(has_text="Qwen3 30B-A3B")).to_have_count(0)
    page.get_by_role("link", name="Qwen3 235B-A22B").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Qwen3 235B-A22B")
    expect(page.locator("table")).to_contain_text("4×H200 141GB")
    # The exact launch a deployment of a profile starts, one click away.
    page.get_by_text("Launch of h100x8-fp8").click()
    expect(page.get_by_test_id("launch-h100x8-fp8")).to_contain_text(
        "vllm.entrypoints.openai.api_server --model Qwen/Qwen3-235B-A22B-FP8"
    )
    expect(page.get_by_test_id("launch-h100x8-fp8")).to_contain_text(
        "--tensor-parallel-size 8 --enable-expert-parallel"
    )

    # From the grid to a starting deployment: card → Deploy → confirm.
    page.goto("/marketplace/")
    page.get_by_label("Search models").fill("demo")
    card = page.get_by_test_id("model-card").filter(has_text="Gantry tiny demo (random weights)")
    card.get_by_role("button", name="Deploy").click()  # click 1
    expect(page.get_by_test_id("fit-check")).to_contain_text("Fits: needs 0.3 GiB")
    expect(page.get_by_label("Region")).to_have_value("local")
    page.get_by_role("button", name="Deploy now").click()  # click 2

    expect(page.get_by_test_id("status")).to_have_text("running", timeout=90_000)
    endpoint = page.get_by_test_id("endpoint").inner_text()
    assert endpoint.startswith("http://127.0.0.1:")
    expect(page.locator("pre code").first).to_contain_text(f"curl {endpoint}/chat/completions")
    d = Deployment.objects.get()
    assert d.source == "catalog:gantry-tiny-random-llama/cpu-f32"
