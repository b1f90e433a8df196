"""Chat serving speed as a user sees it: the demo's Chat tab in headless Chromium, 1 user and 4 users at once.

Called by `bench.serve` after its fp32 in-process measurement. The demo app (`demo.app.build_app`, the Gradio server
`tuneforge demo` starts) serves the runs folder on a free local port; each user is its own browser context (its
own Gradio session) on the Chat tab with the chat run picked, temperature 0 and `max_new_tokens` set, and the
same user message as the in-process measurement. A MutationObserver in each page records, with the page's clock
(`Date.now()`, ms):

* `sent`: the Send button is clicked;
* `first`: the first time the bot's message has visible text (the first streamed word on screen);
* `last`: the last change of that text (the last word on screen).

Time to first token = first - sent (it includes Gradio's queue, the server, the websocket/SSE stream and the
browser's rendering: what a user waits); streamed tokens/s = (answer tokens - 1) / (last - first), the answer
re-tokenized as in `bench.serve.request`. One warm-up request loads the model into the demo (its load time is
reported separately), then `REPEATS` single-user requests (median) with that user's page the only one open, then
`USERS - 1` more pages open and the `USERS` users click Send one right after another (a few ms apart); their figures
are reported as mean / max.
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

OBSERVER = """() => {
  window.__serve = {sent: null, first: null, last: null};
  const box = document.querySelector('#chat-bot');
  new MutationObserver(() => {
    const bots = box.querySelectorAll('[data-testid="bot"]');
    const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
    if (window.__serve.sent === null || !text) return;
    const now = Date.now();
    if (window.__serve.first === null) window.__serve.first = now;
    window.__serve.last = now;
  }).observe(box, {subtree: true, childList: true, characterData: true});
}"""
SEND = "() => { window.__serve = {sent: Date.now(), first: null, last: null};" \
       " document.querySelector('#chat-send').click(); }"
# Done: the answer has not changed for 3 s (independent of how the page shows progress; the demo streams at least
# every `demo.inference.UPDATE_SECONDS` while it generates, and a queued user's answer has not started yet).
IDLE = "() => window.__serve.first !== null && Date.now() - window.__serve.last > 3000"
# The answer as the model wrote it (the bubble's aria-label; its text is rendered Markdown).
ANSWER = """() => { const b = document.querySelectorAll('#chat-bot [data-testid="bot"]');
                    const label = b.length ? b[b.length - 1].getAttribute('aria-label') || '' : '';
                    return label.replace(/^bot's message: /, ''); }"""


def _user_page(browser, url: str, run: str, new_tokens: int, timeout_ms: int):
    """A new browser context (its own Gradio session) on the Chat tab, `run` picked, greedy, observer installed."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    page.goto(url)
    page.locator("#header").wait_for()
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-run input").click()
    page.get_by_role("option", name=re.compile(rf"^{re.escape(run)} \(")).click()
    for elem_id, value in (("chat-temperature", 0), ("chat-max-tokens", new_tokens)):
        box = page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
    page.evaluate(OBSERVER)
    return page


def _ask(pages: list, text: str, tokenizer, new_tokens: int) -> list[dict]:
    """Every page sends `text` (one right after another), waits for its answer, and reports its timings."""
    for page in pages:
        page.locator("#chat-message textarea").fill(text)
    for page in pages:
        page.evaluate(SEND)
    out = []
    for page in pages:
        page.wait_for_function(IDLE, polling=50)
        times = page.evaluate("() => window.__serve")
        answer = page.evaluate(ANSWER)
        tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
        tokens += 1 if tokens < new_tokens else 0  # the end-of-turn token that ended the answer
        stream_s = (times["last"] - times["first"]) / 1000
        out.append({"ttft_s": (times["first"] - times["sent"]) / 1000, "stream_s": stream_s,
                    "total_s": (times["last"] - times["sent"]) / 1000, "new_tokens": tokens,
                    "tokens_per_s": (tokens - 1) / stream_s if stream_s > 0 else float("nan")})
        page.locator("#chat-clear").click()  # the next request starts a new conversation
        page.wait_for_function("() => !document.querySelector('#chat-bot [data-testid=\"bot\"]')")
    return out


def measure(run_dir: Path, text: str, tokenizer, new_tokens: int, repeats: int, users: int) -> dict:
    """Serve `run_dir`'s runs folder, then time the Chat tab for 1 user (`repeats`, median) and `users` at once.

    Returns:
        {"load_and_first_answer_s", "one_user": {ttft_s, tokens_per_s, requests}, "concurrent": {users,
        ttft_mean_s, ttft_max_s, per_user_tokens_per_s, requests}}: seconds and tokens/s by the page's clock.
    """
    from playwright.sync_api import sync_playwright

    from bench.demo import _open_page, serve_runs

    app, url = serve_runs(run_dir.parent)
    try:
        with sync_playwright() as p:
            browser, first_page = _open_page(p, timeout_ms=300_000)
            first_page.close()
            # One user has one page: the other users' pages (each a renderer taking some CPU from the model when
            # the browser shares the machine) open after the single-user requests.
            pages = [_user_page(browser, url, run_dir.name, new_tokens, 300_000)]
            t0 = time.perf_counter()
            _ask(pages, text, tokenizer, new_tokens)  # warm-up: the demo loads the model on first use
            load_s = time.perf_counter() - t0
            single = [_ask(pages, text, tokenizer, new_tokens)[0] for _ in range(repeats)]
            pages += [_user_page(browser, url, run_dir.name, new_tokens, 300_000) for _ in range(users - 1)]
            many = _ask(pages, text, tokenizer, new_tokens)
            browser.close()
    finally:
        app.close()
    return {
        "load_and_first_answer_s": load_s,
        "one_user": {"ttft_s": statistics.median(r["ttft_s"] for r in single),
                     "tokens_per_s": statistics.median(r["tokens_per_s"] for r in single), "requests": single},
        "concurrent": {"users": users, "ttft_mean_s": statistics.fmean(r["ttft_s"] for r in many),
                       "ttft_max_s": max(r["ttft_s"] for r in many),
                       "per_user_tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in many),
                       "requests": many},
    }
