"""The Lab's tuning in the browser, end to end on the real llama.cpp engine: start a
tuning from the form, watch its trials arrive live, publish the winner, and see the
measured figures with their provenance on the model page."""

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from deployments.models import Node
from lab.models import Tuning
from marketplace.services import catalog_load
from tests.conftest import owner_of
from tests.e2e.test_deployment_browser import _session_cookie

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def test_tune_in_the_browser_publish_and_see_the_figures(page, celery_worker, org_a, live_server):
    from tests.deployments.conftest import make_pool, make_region

    catalog_load()
    make_pool(make_region("local", "This machine"), "cpu", "cpu", [("localhost", 4)])
    staff = owner_of(org_a)
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    page.context.add_cookies([_session_cookie(staff, org_a, live_server.url)])
    page.set_viewport_size({"width": 1280, "height": 1100})

    page.goto("/lab/tunings/")
    page.get_by_label("Model").select_option("gantry-tiny-random-llama")
    page.get_by_label("Objective").select_option("max_throughput_under_slo")
    page.get_by_label("SLO: TTFT p95 (ms)").fill("60000")
    page.get_by_label("Amount").fill("3")
    page.get_by_label("Load: concurrency levels").fill("1,2")
    page.get_by_label("Workload: input tokens").fill("16")
    page.get_by_label("Output tokens").fill("8")
    page.get_by_label("Requests per load point").fill("3")
    page.get_by_label("Flags to search").fill('{"--n_threads": [1, 2], "--n_batch": [64, 256]}')
    page.get_by_role("button", name="Start tuning").click()

    # The page follows the run live (htmx polling) until the budget is spent.
    status = page.get_by_test_id("tuning-status")
    expect(status).to_have_text(re.compile("succeeded|failed|cancelled"), timeout=240_000)
    tuning = Tuning.objects.get()
    assert tuning.status == "succeeded", tuning.log
    expect(page.get_by_test_id("trials")).to_contain_text("complete")
    expect(page.get_by_test_id("why-best")).to_contain_text("is best")
    expect(page.get_by_test_id("pareto-chart")).to_be_visible()
    if os.environ.get("GANTRY_SCREENSHOTS"):
        page.screenshot(path=str(SHOTS / "tuning.png"), full_page=True)
    assert tuning.trials.count() == 3
    assert sum(Node.objects.values_list("gpus_allocated", flat=True)) == 0

    page.get_by_role("button", name="Publish as tuned profile").click()
    expect(page).to_have_url(f"{live_server.url}/marketplace/gantry-tiny-random-llama/")
    # The profile's own row (the next one holds its rendered launch).
    row = page.get_by_test_id("profile-tuned-cpu-llamacpp")
    expect(row).to_contain_text("measured")
    row.get_by_text("provenance").click()
    expect(row).to_contain_text(f"tuning #{tuning.pk}")
    expect(row).to_contain_text("within ±15%")
    if os.environ.get("GANTRY_SCREENSHOTS"):
        page.screenshot(path=str(SHOTS / "tuned-model.png"), full_page=True)
