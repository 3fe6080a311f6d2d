"""The docs' screenshots of the app at a projector's width (1280 px) and at a phone's (400 px), whole pages.

Starts `python app.py --model miniature --engine peft` on a fresh vote store, casts votes through the `/battle` and
`/vote` endpoints so the Leaderboard has ratings to show (each vote drawn at random, with a fixed seed: they fill
the tables and say nothing about the variants), then opens Compare (the first example, compared) and the
Leaderboard in Debian's chromium, driven by Playwright, and saves:

    docs/compare-projector.png   docs/leaderboard-projector.png   docs/compare-400.png   docs/leaderboard-400.png

and prints each page's height in pixels (the Train tab's too).

    python docs/screenshots.py [--votes 40]     # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SIZES = {"projector": (1280, 720), "400": (400, 800)}
DONE = re.compile(r"(as asked|, not [a-z]+|to tell its language|loops|repeats the prompt) · \d+ tokens · ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vote(url: str, n: int, seed: int = 0) -> None:
    """`n` votes, each from its own session (the per-session limits stay out of the way), drawn at random."""
    from gradio_client import Client

    rng = random.Random(seed)
    for _ in range(n):
        client = Client(url, verbose=False)
        battle = client.predict("", "mini", api_name="/battle")
        client.predict(battle["battle_id"], rng.choice(["a", "b", "tie", "a", "b", "both_bad"]), api_name="/vote")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--votes", type=int, default=40)
    args = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (apt-get install chromium fonts-noto-cjk)")
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="clo-shots-") as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLO_DB": str(Path(tmp) / "votes.db")}
        log = open(Path(tmp) / "app.log", "w")
        app = subprocess.Popen([sys.executable, "app.py", "--model", "miniature", "--engine", "peft", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            from gradio_client import Client

            for _ in range(240):
                try:
                    Client(url, verbose=False)
                    break
                except Exception:  # noqa: BLE001 (not up yet)
                    if app.poll() is not None:
                        sys.exit((Path(tmp) / "app.log").read_text()[-2000:])
                    time.sleep(0.5)
            vote(url, args.votes)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
                for size, (width, height) in SIZES.items():
                    page = browser.new_page(viewport={"width": width, "height": height})
                    page.goto(url)
                    page.get_by_label("Example prompt").click()
                    page.get_by_role("option").first.click()
                    expect(page.get_by_label("Prompt in the target language")).not_to_have_value("", timeout=30_000)
                    page.get_by_role("button", name="Compare", exact=True).click()
                    for pane in ("target", "english"):
                        for slot in ("base", "sft", "clo"):
                            expect(page.locator(f"#{pane}-{slot}")).to_contain_text(DONE, timeout=120_000)
                    page.screenshot(path=str(DOCS / f"compare-{size}.png"), full_page=True)
                    print(f"{size}: Compare page {page.evaluate('document.body.scrollHeight')} px tall")
                    page.get_by_role("tab", name="Leaderboard").click()
                    expect(page.locator("#board-status")).to_contain_text("votes", timeout=30_000)
                    page.wait_for_timeout(1500)
                    page.screenshot(path=str(DOCS / f"leaderboard-{size}.png"), full_page=True)
                    print(f"{size}: Leaderboard page {page.evaluate('document.body.scrollHeight')} px tall")
                    page.get_by_role("tab", name="Train").click()
                    page.wait_for_timeout(1500)
                    print(f"{size}: Train page {page.evaluate('document.body.scrollHeight')} px tall")
                    page.close()
                browser.close()
        finally:
            app.terminate()
            app.wait(timeout=30)
    print("wrote " + ", ".join(f"docs/{kind}-{size}.png" for kind in ("compare", "leaderboard") for size in SIZES))


if __name__ == "__main__":
    main()
