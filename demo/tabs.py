"""The demo's tab layouts, one builder per tab: each lays out its controls and wires them to `demo.app.Handlers`.

Split from `demo.app` to keep each module short; the handlers are passed in (this module never imports the app, so
there is no import cycle: `demo.app` -> `demo.tabs` -> `demo.session`).
"""

from __future__ import annotations

import gradio as gr

from demo.session import run_dropdown


def input_box(label: str, limit: int, elem_id: str, lines: int = 4) -> gr.Textbox:
    return gr.Textbox(label=label, lines=lines, info=f"Up to {limit:,} characters.", elem_id=elem_id)


def sampling_controls(prefix: str) -> tuple[gr.Slider, gr.Slider, gr.Slider]:
    temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature", info="0 = greedy (deterministic)",
                            elem_id=f"{prefix}-temperature")  # fmt: skip
    top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p", info="nucleus sampling (Holtzman et al. 2020)",
                      elem_id=f"{prefix}-top-p")  # fmt: skip
    max_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens", elem_id=f"{prefix}-max-tokens")
    return temperature, top_p, max_tokens


def generator_tab(h) -> gr.Dropdown:
    """Generator tab (`/generate`); returns its run list."""
    with gr.Tab("Generator", id="generator"):
        gr.Markdown("Prompt → continuation, streamed token by token.")
        run = run_dropdown(h.registry, "generator")
        prompt = input_box("Prompt", h.max_input_chars, "generator-prompt")
        with gr.Row():
            temperature, top_p, max_tokens = sampling_controls("generator")
        go = gr.Button("Generate", variant="primary", elem_id="generator-go")
        out = gr.Textbox(label="Continuation", lines=8, interactive=False, elem_id="generator-out")
    go.click(h.generate, [run, prompt, temperature, top_p, max_tokens], out, api_name="generate",
             show_progress="hidden")  # streamed: see chat_tab
    return run


def chat_tab(h) -> gr.Dropdown:
    """Chat tab (`/chat`); returns its run list."""
    with gr.Tab("Chat", id="chat"):
        gr.Markdown("A conversation with a chat run, in the run's own chat template; answers stream in.")
        run = run_dropdown(h.registry, "chat")
        bot = gr.Chatbot(label="Conversation", height=320, elem_id="chat-bot")
        message = gr.Textbox(label="Message", lines=2, info=f"Up to {h.max_input_chars:,} characters.",
                             elem_id="chat-message")  # fmt: skip
        with gr.Row():
            temperature, top_p, max_tokens = sampling_controls("chat")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="chat-send")
            clear = gr.Button("Clear", elem_id="chat-clear")
    inputs = [run, message, bot, temperature, top_p, max_tokens]
    # Streamed answers are their own progress: Gradio's overlay (a running timer and a pulse) re-rendered in the page
    # while it waited cost the browser 2.0 -> 1.2 CPU s per 64-token answer on 2 cores, 10.4 -> 12.2 streamed tokens/s
    # in the page (bench/serve_browser.py, 2026-12-07).
    send.click(h.chat, inputs, [bot, message], api_name="chat", show_progress="hidden")
    message.submit(h.chat, inputs, [bot, message], api_visibility="private", show_progress="hidden")
    clear.click(lambda: ([], ""), None, [bot, message], api_visibility="private", queue=False)
    return run


def seq2seq_tab(h) -> tuple[gr.Dropdown, list[gr.Slider]]:
    """Translate / Summarize tab (`/seq2seq`); returns its run list and its decoding controls."""
    with gr.Tab("Translate / Summarize", id="seq2seq"):
        gr.Markdown("Source text → generated text (translation, summarization) with beam search. Denoising runs "
                    "(BART pretraining) fill in `<mask>` spans.")
        run = run_dropdown(h.registry, "seq2seq")
        source = input_box("Source text", h.max_input_chars, "seq2seq-source")
        with gr.Row():
            beams = gr.Slider(1, 8, value=4, step=1, label="Beams", info="1 = greedy, streamed")
            penalty = gr.Slider(0.0, 2.0, value=1.0, step=0.1, label="Length penalty",
                                info=">1 favours longer outputs")
            no_repeat = gr.Slider(0, 6, value=0, step=1, label="No-repeat n-gram size", info="0 = off")
            max_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens", elem_id="seq2seq-max-tokens")
        go = gr.Button("Run", variant="primary", elem_id="seq2seq-go")
        out = gr.Textbox(label="Output", lines=6, interactive=False, elem_id="seq2seq-out")
    go.click(h.seq2seq, [run, source, beams, penalty, no_repeat, max_tokens], out, api_name="seq2seq")
    run.change(h.seq2seq_defaults, run, [beams, penalty, no_repeat, max_tokens], api_visibility="private",
               concurrency_limit=None)  # fmt: skip
    return run, [beams, penalty, no_repeat, max_tokens]


def classify_tab(h) -> gr.Dropdown:
    """Classify tab (`/classify`); returns its run list."""
    with gr.Tab("Classify", id="classify"):
        gr.Markdown("Text → probability of each label, most likely first.")
        run = run_dropdown(h.registry, "classify")
        text = input_box("Text", h.max_input_chars, "classify-text", lines=3)
        pair = gr.Textbox(label="Second text (only for runs trained on text pairs)", lines=1)
        go = gr.Button("Classify", variant="primary", elem_id="classify-go")
        out = gr.Label(label="Labels", num_top_classes=10, elem_id="classify-out")
    go.click(h.classify, [run, text, pair], out, api_name="classify")
    return run


def side_by_side_tab(h) -> gr.Dropdown:
    """Side by side tab (`/side_by_side`); returns its run list."""
    with gr.Tab("Side by side", id="side_by_side"):
        gr.Markdown("One input through the base model and the finetuned run (greedy, the run's scoring settings).")
        run = run_dropdown(h.registry, "side_by_side")
        text = input_box("Input", h.max_input_chars, "side-input", lines=3)
        max_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens", elem_id="side-max-tokens")
        go = gr.Button("Compare", variant="primary", elem_id="side-go")
        # Named after the first run's base and the run from the start (`.change` only fires on a new pick).
        base_label, tuned_label = (update["label"] for update in h.side_labels(run.value))
        with gr.Row():
            base = gr.Textbox(label=base_label, lines=8, interactive=False, elem_id="side-base")
            tuned = gr.Textbox(label=tuned_label, lines=8, interactive=False, elem_id="side-tuned")
    go.click(h.side_by_side, [run, text, max_tokens], [base, tuned], api_name="side_by_side")
    run.change(h.side_labels, run, [base, tuned], api_visibility="private", concurrency_limit=None)
    return run


def leaderboard_tab(h) -> tuple[gr.Dropdown, list, list]:
    """Leaderboard tab (`/leaderboard`, `/run_details`); returns its run list, board and details outputs."""
    with gr.Tab("Leaderboard", id="leaderboard"):
        board_refresh = gr.Button("Refresh leaderboard")
        tables = gr.Markdown(elem_id="leaderboard-tables")
        charts = gr.HTML(elem_id="leaderboard-charts")
        gr.Markdown("### Run details")
        run = run_dropdown(h.registry, "details")
        with gr.Row():
            recipe = gr.Code(label="recipe.yaml", language="yaml", interactive=False, max_lines=30)
            metrics = gr.JSON(label="metrics.json")
        curve = gr.Image(label="Loss curve", elem_id="leaderboard-curve")
    board_refresh.click(h.leaderboard, None, [tables, charts], api_name="leaderboard")
    run.change(h.run_details, run, [recipe, metrics, curve], api_name="run_details")
    return run, [tables, charts], [recipe, metrics, curve]
