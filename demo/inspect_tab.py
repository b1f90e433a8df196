"""The Inspect tab: see inside a run's model (or its base) -- tokens, embeddings, positions, attention, next-token
probabilities and the windows pretraining reads.

The computations are `pipelines.introspect`'s; this module only draws them (matplotlib figures rendered to images,
HTML token tables) and lays out the tab. It follows `demo.app`'s conventions: runs are named by key only, every
handler is wrapped with `shown_in_ui` (bad input becomes a message, the server keeps serving), text goes through
`Session.text` (length limit), and every computation holds the model's lock. The base of a LoRA run is the same
loaded model with its adapters switched off, as in the Side by side tab.

Endpoints: `/inspect_tokens`, `/inspect_ids`, `/inspect_embeddings`, `/inspect_positions`, `/inspect_attention`,
`/inspect_next_token`, `/inspect_windows`.
"""

from __future__ import annotations

import gradio as gr

from demo.inspector import ATTENTION_KINDS, DEFAULT_TEXT, MAX_K, MAX_STEPS, WHICH, Inspector
from demo.session import Session, run_dropdown

__all__ = ["ATTENTION_KINDS", "DEFAULT_TEXT", "Inspector", "inspect_tab"]


# -- layout ---------------------------------------------------------------------------------------------------------


def inspect_tab(h: Session) -> gr.Dropdown:
    """Inspect tab (`/inspect_*`); returns its run list."""
    ins = Inspector(h)
    with gr.Tab("Inspect", id="inspect") as tab:
        gr.Markdown("See inside a run's model, or its base: how text becomes token ids, what the embeddings and "
                    "position tables hold, where attention goes, how logits become the next token, and what "
                    "pretraining reads. Each view has its own button; **Show all** runs every view.")  # fmt: skip
        with gr.Row():
            run = run_dropdown(h.registry, "inspect")
            which = gr.Radio(WHICH, value="run", label="Model", elem_id="inspect-which")
        with gr.Row():
            text = gr.Textbox(label="Text", value=DEFAULT_TEXT, lines=2, elem_id="inspect-text", scale=3,
                              info=f"Up to {h.max_input_chars:,} characters.")  # fmt: skip
            target = gr.Textbox(label="Target / second text", lines=2, elem_id="inspect-target", scale=2,
                                info="Encoder-decoders: the decoder's text so far. Pair classifiers: the second "
                                "text. Otherwise unused.")  # fmt: skip
        show_all = gr.Button("Show all", variant="primary", elem_id="inspect-all")

        with gr.Accordion("1 · Tokenization", open=True):
            tokens_go = gr.Button("Tokenize", elem_id="inspect-tokens-go", size="sm")
            tokens_md = gr.Markdown(elem_id="inspect-tokens-summary")
            tokens_html = gr.HTML(elem_id="inspect-tokens")
            with gr.Row():
                ids = gr.Textbox(label="Token ids → text", placeholder="e.g. 0, 1183, 264", elem_id="inspect-ids")
                ids_out = gr.Textbox(label="Text", interactive=False, elem_id="inspect-ids-out")
            ids_go = gr.Button("Decode ids", size="sm", elem_id="inspect-ids-go")

        with gr.Accordion("2 · Embeddings", open=True):
            with gr.Row():
                word = gr.Textbox(label="Word", value="file", elem_id="inspect-word")
                a = gr.Textbox(label="a", value="files", elem_id="inspect-a")
                b = gr.Textbox(label="− b", value="file", elem_id="inspect-b")
                c = gr.Textbox(label="+ c", value="directory", elem_id="inspect-c")
                k_near = gr.Slider(1, MAX_K, value=10, step=1, label="Neighbours", elem_id="inspect-k-near")
            emb_go = gr.Button("Find neighbours", size="sm", elem_id="inspect-emb-go")
            emb_md = gr.Markdown(elem_id="inspect-emb-note")
            with gr.Row():
                near = gr.Dataframe(headers=["rank", "token", "id", "cosine"], label="Nearest neighbours of the word",
                                    interactive=False, elem_id="inspect-neighbours")  # fmt: skip
                arith = gr.Dataframe(headers=["rank", "token", "id", "cosine"], label="a − b + c", interactive=False,
                                     elem_id="inspect-analogy")  # fmt: skip

        with gr.Accordion("3 · Positional encoding", open=True):
            pos_go = gr.Button("Show positions", size="sm", elem_id="inspect-pos-go")
            pos_md = gr.Markdown(elem_id="inspect-pos-note")
            pos_img = gr.Image(label="Position vectors and their cosine similarity", format="png", type="numpy",
                               interactive=False, elem_id="inspect-positions")  # fmt: skip

        with gr.Accordion("4 · Attention", open=True):
            with gr.Row():
                kinds = sorted({k for ks in ATTENTION_KINDS.values() for k in ks})  # narrowed per run by `controls`
                kind = gr.Dropdown(kinds, value="self", label="Attention", elem_id="inspect-kind")
                layer = gr.Slider(0, 47, value=0, step=1, label="Layer", elem_id="inspect-layer")
                head = gr.Slider(0, 63, value=0, step=1, label="Head", elem_id="inspect-head")
                average = gr.Checkbox(False, label="Average over heads", elem_id="inspect-average")
            att_go = gr.Button("Show attention", size="sm", elem_id="inspect-att-go")
            att_md = gr.Markdown(elem_id="inspect-att-note")
            att_img = gr.Image(label="Attention weights", format="png", type="numpy", interactive=False,
                               elem_id="inspect-attention")  # fmt: skip

        with gr.Accordion("5 · Next-token probabilities", open=True):
            with gr.Row():
                temperature = gr.Slider(0.05, 3.0, value=1.0, step=0.05, label="Temperature",
                                        elem_id="inspect-temperature")  # fmt: skip
                k_top = gr.Slider(1, MAX_K, value=10, step=1, label="Top-k", elem_id="inspect-k")
                steps = gr.Slider(1, MAX_STEPS, value=6, step=1, label="Greedy steps", elem_id="inspect-steps-n")
            next_go = gr.Button("Predict", size="sm", elem_id="inspect-next-go")
            next_md = gr.Markdown(elem_id="inspect-next-note")
            next_img = gr.Image(label="Top-k probabilities", format="png", type="numpy", interactive=False,
                                elem_id="inspect-topk")  # fmt: skip
            next_html = gr.HTML(elem_id="inspect-next-steps")

        with gr.Accordion("6 · Pretraining windows", open=True):
            with gr.Row():
                row = gr.Number(0, precision=0, minimum=0, label="Test row of the run's data", elem_id="inspect-row")
                win_go = gr.Button("Show windows", size="sm", elem_id="inspect-win-go")
            win_md = gr.Markdown(elem_id="inspect-win-note")
            win_html = gr.HTML(elem_id="inspect-windows-out")

    views = [
        (ins.tokens, [run, which, text], [tokens_html, tokens_md], tokens_go, "inspect_tokens"),
        (ins.embeddings, [run, which, word, a, b, c, k_near], [near, arith, emb_md], emb_go, "inspect_embeddings"),
        (ins.positions, [run, which], [pos_img, pos_md], pos_go, "inspect_positions"),
        (ins.attention, [run, which, text, target, kind, layer, head, average], [att_img, att_md], att_go,
         "inspect_attention"),
        (ins.next_token, [run, which, text, target, temperature, k_top, steps], [next_img, next_html, next_md],
         next_go, "inspect_next_token"),
        (ins.windows, [run, which, row], [win_html, win_md], win_go, "inspect_windows"),
    ]  # fmt: skip
    for fn, inputs, outputs, button, name in views:
        button.click(fn, inputs, outputs, api_name=name)
    ids_go.click(ins.ids_to_text, [run, which, ids], ids_out, api_name="inspect_ids")
    chain = show_all.click(views[0][0], views[0][1], views[0][2], api_visibility="private")
    for fn, inputs, outputs, _, _ in views[1:]:
        chain = chain.then(fn, inputs, outputs, api_visibility="private")
    # Opening the tab (the first run is selected already: no change event) or picking another run. One at a time:
    # both may load a model, and transformers' from_pretrained is not safe to run for two models at once.
    for event in (tab.select, run.change):
        event(ins.controls, run, [kind, layer, head], api_visibility="private", concurrency_limit=1,
              concurrency_id="inspect-controls")  # fmt: skip
    return run
