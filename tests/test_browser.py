"""In a real headless browser (Debian's chromium, driven by Playwright): load the app, run a battle, vote, see the reveal.

Saves a screenshot to tests/artifacts/arena.png. Skips, saying why, where chromium or Playwright is missing
(.ci/run installs chromium and fonts-noto-cjk; requirements-dev.txt has Playwright, which uses that chromium).
"""

import shutil
from pathlib import Path

import pytest

from test_app import app_url, launch_app  # noqa: F401 (the launched app fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")


def test_battle_in_the_browser(app_url):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    url, _ = app_url
    ARTIFACTS.mkdir(exist_ok=True)
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--no-first-run", "--disable-sync"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Arena").click()
        page.get_by_role("button", name="Start battle").click()
        vote = page.locator("#vote-a")
        sync_api.expect(vote).to_be_enabled(timeout=60_000)
        assert page.locator("#answer-a").inner_text().strip() and page.locator("#answer-b").inner_text().strip()
        vote.click()
        reveal = page.locator("#reveal")
        sync_api.expect(reveal).to_contain_text("A was", timeout=30_000)
        text = reveal.inner_text()
        assert "B was" in text and any(v in text for v in ("base", "sft-ko", "clo-ko"))
        sync_api.expect(vote).to_be_disabled()
        page.screenshot(path=str(ARTIFACTS / "arena.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "arena.png").stat().st_size > 10_000


def test_demo_mode_hides_train_until_the_admin_password(tiny_model, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    proc, url = launch_app(tiny_model, tmp_path, CLO_DEMO_MODE="1", CLO_ADMIN_PASSWORD="s3cret")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                        "--disable-background-networking"])
            page = browser.new_page()
            page.goto(url)
            page.get_by_role("tab", name="Train").click()
            start = page.get_by_role("button", name="Start", exact=True)
            sync_api.expect(page.get_by_label("Admin password")).to_be_visible(timeout=30_000)
            sync_api.expect(start).to_be_hidden()
            page.get_by_label("Admin password").fill("wrong")
            page.get_by_role("button", name="Unlock training").click()
            sync_api.expect(page.get_by_text("wrong password").first).to_be_visible(timeout=10_000)
            sync_api.expect(start).to_be_hidden()
            page.get_by_label("Admin password").fill("s3cret")
            page.get_by_role("button", name="Unlock training").click()
            sync_api.expect(start).to_be_visible(timeout=10_000)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
