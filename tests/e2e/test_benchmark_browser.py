"""In the browser: benchmark the bench deployment with a concurrency sweep through the
gateway and watch the run live, to its charts."""

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.conftest import owner_of
from tests.e2e.test_deployment_browser import _session_cookie
from tests.lab.conftest import bench_deployment, lab_worker  # noqa: F401 - shared

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_benchmark_a_deployment_in_the_browser_and_see_the_charts(
    page,
    org_a,
    bench_deployment,  # noqa: F811
    lab_worker,  # noqa: F811
    live_server,
):
    page.context.add_cookies([_session_cookie(owner_of(org_a), org_a, live_server.url)])
    page.goto("/lab/benchmarks/")
    page.get_by_role("button", name="New benchmark").click()
    page.get_by_label("Deployment").select_option(str(bench_deployment.pk))
    page.get_by_label("Input tokens").fill("32")
    page.get_by_label("Output tokens").fill("16")
    page.get_by_label("Requests per point").fill("4")
    page.get_by_label("Concurrency sweep").fill("1, 2, 3")
    page.get_by_label("TTFT p95 (ms)").fill("60000")
    page.get_by_role("button", name="Run benchmark").click()

    # The page follows the run (htmx polling): progress and log, then the charts.
    expect(page.get_by_test_id("bench-status")).to_have_text("succeeded", timeout=240_000)
    expect(page.get_by_test_id("bench-log")).to_contain_text("c=3")
    expect(page.get_by_test_id("bench-charts").locator("svg")).to_have_count(4)
    expect(page.get_by_test_id("bench-points").locator("tbody tr")).to_have_count(3)
    expect(page.get_by_test_id("bench-best")).to_contain_text("output tokens/s")
    if shots := os.environ.get("GANTRY_SCREENSHOTS_DIR"):
        page.screenshot(path=str(Path(shots) / "benchmark.png"), full_page=True)
