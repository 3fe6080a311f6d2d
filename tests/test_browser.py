"""In a real headless browser (Debian's chromium, driven by Playwright), as a visitor and as a speaker would:
a battle, a vote and the reveal; the Leaderboard after exactly one vote; one-click downloads; two training runs
in one page (the loss chart, the adapters listed but not served until promoted); the demo-mode gate.

Saves screenshots to tests/artifacts/. Skips, saying why, where chromium or Playwright is missing
(.ci/run installs chromium and fonts-noto-cjk; requirements-dev.txt has Playwright, which uses that chromium).
"""

import re
from pathlib import Path

import pytest
from conftest import ARTIFACTS, CHROMIUM, launch_app, make_adapters

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def browsed_app(tiny_model, tmp_path_factory):
    """`python app.py` on the tiny model with sft-ko and clo-ko, for the battle: not the shared app_url, whose store
    test_app votes in (the battle counts exactly one vote)."""
    work = tmp_path_factory.mktemp("browsed")
    make_adapters(tiny_model, work / "adapters")
    proc, url = launch_app(tiny_model, work)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_battle_in_the_browser(browsed_app):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    url = browsed_app
    ARTIFACTS.mkdir(exist_ok=True)
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--no-first-run", "--disable-sync"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        phone = browser.new_page(viewport={"width": 400, "height": 800})
        phone.goto(url)
        for tab in ("Compare", "Arena", "Leaderboard", "Train", "Data"):  # none hidden behind an overflow menu
            sync_api.expect(phone.get_by_role("tab", name=tab)).to_be_visible(timeout=30_000)
        phone.close()

        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        # typing over an example: the dropdown no longer names it and the example's English goes with it
        page.get_by_label("Example prompt").click()
        page.get_by_role("option").first.click()
        english = page.get_by_label("The same prompt in English (filled in for examples)")
        sync_api.expect(english).not_to_have_value("", timeout=30_000)
        page.get_by_label("Prompt in the target language").press_sequentially(" 더")
        sync_api.expect(english).to_have_value("", timeout=30_000)
        sync_api.expect(page.get_by_label("Example prompt")).to_have_value("")
        page.get_by_label("Prompt in the target language").fill("")
        page.get_by_role("button", name="Compare", exact=True).click()  # no prompt: one message, no Error badges
        sync_api.expect(page.get_by_text("write a prompt first")).to_be_visible(timeout=30_000)
        page.wait_for_timeout(1000)
        assert page.get_by_text("Error", exact=True).count() == 0
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
        page.get_by_role("button", name="Draw a prompt").click()  # a new prompt clears the last battle from the screen
        sync_api.expect(reveal).to_have_text("", timeout=30_000)
        sync_api.expect(page.locator("#answer-a")).to_have_text("")
        sync_api.expect(page.get_by_label("Your prompt (or leave empty and draw one)")).not_to_have_value("")

        # the Leaderboard after exactly one vote: counts, a plain sentence, no ratings, no Error badge anywhere
        page.get_by_role("tab", name="Leaderboard").click()
        status = page.locator("#board-status")
        sync_api.expect(status).to_contain_text("1 vote.", timeout=30_000)
        sync_api.expect(status).to_contain_text("not enough votes to rate yet (n = 1)")
        page.wait_for_timeout(1000)  # let any failing panel show its badge
        assert page.get_by_text("Error", exact=True).count() == 0
        sync_api.expect(page.locator("#rating-plot")).to_be_hidden()
        page.screenshot(path=str(ARTIFACTS / "leaderboard-one-vote.png"), full_page=True)

        # each download is one click, and holds the vote just cast
        import pandas as pd  # (a CSV row spans lines when an answer holds a newline: read it, do not count lines)

        for button, check in (("#download-csv", lambda p: len(pd.read_csv(p)) == 1),
                              ("#download-parquet", lambda p: len(pd.read_parquet(p)) == 1)):
            with page.expect_download(timeout=30_000) as download:
                page.locator(button).click()
            assert check(Path(download.value.path())), button
        browser.close()
    assert (ARTIFACTS / "arena.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_finished_run_is_listed_not_served_until_promoted(tiny_model, tmp_path):
    """Two training runs in one page while the demo serves: the loss chart shows each run; Compare's answers do
    not change until the speaker puts the new adapter in a slot."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    make_adapters(tiny_model, tmp_path / "adapters")
    # its own launch: the runs it starts and the adapter it promotes change what the app serves
    proc, url = launch_app(tiny_model, tmp_path)
    expect = sync_api.expect
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                        "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)

            def compare() -> str:
                page.goto(url)  # a fresh page: the panes start empty, so what follows is this comparison's answers
                page.get_by_role("tab", name="Compare").click()
                page.get_by_label("Example prompt").click()
                page.get_by_role("option").first.click()
                # the example fills the prompt through a server round trip: Compare before it lands sends no prompt
                expect(page.get_by_label("Prompt in the target language")).not_to_have_value("", timeout=30_000)
                page.get_by_role("button", name="Compare", exact=True).click()
                # the language, in words, comes when an answer ends
                done = re.compile(r"(as asked|, not [a-z]+|to tell its language|loops|repeats the prompt) · \d+ tokens · ")
                for pane in ("target", "english"):
                    for slot in ("base", "sft", "clo"):
                        expect(page.locator(f"#{pane}-{slot}")).to_contain_text(done, timeout=90_000)
                text = page.locator("#target-clo").inner_text()
                answer, marks = text.rsplit("\n", 1)
                return f"{answer.strip()} | {marks.split(' tokens')[0]} tokens | {marks.split('·')[-1].strip()}"

            before = compare()
            assert before.endswith("clo-ko")
            page.get_by_role("tab", name="Train").click()
            page.get_by_label("Cross-lingual pairs").fill("8")
            status, lines = page.locator("#train-status"), page.locator("#loss-plot g.mark-line path")
            for run, steps in (("clo-ko-2", 3), ("clo-ko-3", 5)):  # the form moves on to a free name after each run
                page.get_by_label("Max steps (−1: by epochs)").fill(str(steps))
                expect(page.get_by_text(f"# = {run}")).to_be_visible(timeout=30_000)
                page.get_by_role("button", name="Start", exact=True).click()
                expect(status).to_contain_text(run, timeout=60_000)
                expect(status).to_contain_text("Finished", timeout=240_000)
                expect(lines).to_have_count(5, timeout=30_000)  # this run's curves: one line per series, `steps` points
                page.wait_for_function(f"() => [...document.querySelectorAll('#loss-plot g.mark-line path')]"
                                       f".every(p => (p.getAttribute('d') || '').split('L').length === {steps})",
                                       timeout=30_000)
                for series in ("loss", "L_SFT", "L_CL", "margin x_l", "margin x_en"):
                    expect(page.locator("#loss-plot").get_by_text(series, exact=True)).to_be_visible()
                page.screenshot(path=str(ARTIFACTS / f"train-{run}.png"), full_page=True)
            assert compare() == before  # two finished runs, and the audience still sees the same CLO answer

            page.get_by_role("tab", name="Train").click()
            page.get_by_label("CLO slot").click()
            page.get_by_role("option", name="clo-ko-3").click()
            page.get_by_role("button", name="Apply").click()
            expect(page.locator("#lineup")).to_contain_text("Saved at", timeout=30_000)
            page.get_by_role("tab", name="Compare").click()  # the line-up line as it is now, without a reload
            expect(page.locator("#serving")).to_contain_text("clo-ko-3", timeout=30_000)
            after = compare()
            assert after.endswith("clo-ko-3")
            expect(page.locator("#serving")).to_contain_text("clo-ko-3")
            expect(page.locator("#serving")).to_contain_text("chosen by the speaker")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_demo_mode_hides_train_until_the_admin_password(tiny_model, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    # its own launch: demo mode and the admin password are settings at start
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
