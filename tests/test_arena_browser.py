"""The Arena tab in a real browser with two concurrent voters (headless Chromium, as tests/test_demo_browser.py).

Two browser contexts are two users with their own sessions: both start a battle at once, both vote at once, each
sees the names of their own pair only after their vote, the votes file holds both votes whole, and the Leaderboard
shows ratings for the contestants. Screenshots go to test-artifacts/demo/arena-*.png.
"""

from __future__ import annotations

import json
import re

import pytest
from demo_fixtures import demo_root, free_port, trained_runs
from test_demo_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, open_tab

from demo.app import build_app, serve
from demo.arena import VOTES_FILE, contestants

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread")]

QUESTION = "cmd3 - copies lines"


@pytest.fixture(scope="module")
def served(tmp_path_factory, corpus, pretrained):
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="PyPI playwright is not installed (pip install playwright)")
    trained = trained_runs(tmp_path_factory, corpus, pretrained)
    root = demo_root(tmp_path_factory.mktemp("arena-browser") / "runs", trained, pretrained)
    app = build_app(root, concurrency=2)
    url = serve(app, "127.0.0.1", free_port())
    yield url, root, app
    app.close()


@pytest.fixture(scope="module")
def voters(served):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages = []
        for _ in range(2):  # separate contexts: separate cookies and Gradio sessions, like two people
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(served[0])
            page.locator("#header").wait_for()
            open_tab(page, "Arena")
            pages.append(page)
        yield pages
        browser.close()


def test_two_concurrent_voters_vote_blind_and_both_votes_are_kept(served, voters):
    from playwright.sync_api import expect

    _, root, app = served
    names = {c.name for c in contestants(app.handlers.registry)["causal_lm"]}
    for page in voters:
        expect(page.locator("#arena-task input")).to_have_value("causal_lm")
        page.locator("#arena-input textarea").fill(QUESTION)
        page.locator("#arena-max-tokens input[type=number]").fill("8")
        page.locator("#arena-max-tokens input[type=number]").press("Enter")
    for page in voters:  # both battles are in flight together
        page.locator("#arena-go").click()
    for page in voters:
        expect(page.locator("#arena-vote-a")).to_be_enabled()
        expect(page.locator("#arena-status")).to_contain_text("Both answered")
        shown = page.locator("body").inner_text()  # the visible page: this tab and any message toasts
        assert not any(name in shown for name in names)  # blind: no contestant is named before the vote
    voters[0].screenshot(path=str(ARTIFACTS / "arena-battle.png"), full_page=True)

    for page, button in zip(voters, ("#arena-vote-a", "#arena-vote-tie"), strict=True):
        page.locator(button).click()
    revealed = []
    for page in voters:
        status = page.locator("#arena-status")
        expect(status).to_contain_text("A was")
        expect(page.locator("#arena-vote-a")).to_be_disabled()  # one vote per battle
        match = re.search(r"A was (.+?), B was (.+?)\. Press", status.inner_text())
        assert match, status.inner_text()
        revealed.append((match.group(1), match.group(2)))
    voters[0].screenshot(path=str(ARTIFACTS / "arena-revealed.png"), full_page=True)

    votes = [json.loads(line) for line in (root / VOTES_FILE).read_text().splitlines()]
    assert sorted((v["a"], v["b"], v["winner"]) for v in votes) == sorted(
        [(*revealed[0], "a"), (*revealed[1], "tie")])
    assert all(a in names and b in names and a != b for a, b in revealed)

    page = voters[1]
    open_tab(page, "Leaderboard")
    page.get_by_role("button", name="Refresh leaderboard").click()
    tables = page.locator("#leaderboard-tables")
    expect(tables).to_contain_text("Arena: blind preference ratings")
    winner = revealed[0][0]
    expect(tables.locator("tr", has_text=winner).filter(has_text="perplexity").last).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "arena-leaderboard.png"), full_page=True)
