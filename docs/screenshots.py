"""Refresh the README's screenshots from a running portal (`make run` in another shell).

.venv/bin/python docs/screenshots.py [http://127.0.0.1:8000]
"""

import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
OUT = Path(__file__).parent / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

# (file name, path) — each page is shot signed in as the demo user.
PAGES = [
    ("dashboard.png", "/"),
    ("marketplace.png", "/marketplace/"),
    ("model.png", "/marketplace/deepseek-r1/"),
    ("deploy.png", "/marketplace/qwen3-8b/deploy/"),
    ("api-keys.png", "/keys/"),
    ("members.png", "/members/"),
    ("deployments.png", "/deployments/"),
    ("deployment.png", None),  # the demo deployment's own page, once it runs
    ("capacity.png", "/capacity/"),
    ("build-new.png", "/builds/new/"),
    ("usage.png", "/billing/"),
]


def main() -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800}, base_url=BASE)
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill("demo")
        page.get_by_label("Password").fill("gantry-demo")
        page.locator("main form").get_by_role("button", name="Sign in").click()
        for name, path in PAGES:
            if path is None:
                page.goto("/deployments/")
                page.get_by_role("link", name="tiny-demo").click()
                page.get_by_test_id("status").get_by_text("running").wait_for(timeout=120_000)
            else:
                page.goto(path)
            if name == "api-keys.png":
                page.get_by_label("Key name").fill("notebook")
                page.get_by_role("button", name="Create key").click()
                page.get_by_test_id("new-key").wait_for()
            page.screenshot(path=str(OUT / name), full_page=True)
            print("wrote", OUT / name)
        # A custom build from an uploaded GGUF (needs the Docker engine and `make images`).
        from deployments.demo_model import write_demo_gguf

        gguf = write_demo_gguf(Path("/tmp/gantry-screenshot/tiny.gguf"))
        page.goto("/builds/new/")
        page.get_by_label("Model name").fill(f"my-model-{int(time.time()) % 10000}")
        page.get_by_label("An upload").check()
        page.set_input_files("#id_files", str(gguf))
        page.get_by_role("button", name="Inspect").click()
        page.get_by_role("button", name="Build image").click()
        page.get_by_test_id("build-status").get_by_text("succeeded").wait_for(timeout=120_000)
        page.screenshot(path=str(OUT / "build.png"), full_page=True)
        print("wrote", OUT / "build.png")
        browser.close()


if __name__ == "__main__":
    main()
