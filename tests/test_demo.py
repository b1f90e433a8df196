"""The Gradio demo at the API level: the app runs in-process on a loopback port over tiny runs trained here,
and `gradio_client` calls every tab's endpoint. Outputs are checked against the runs' own models (plain
`generate` / `predict_proba` calls), not just for being non-empty.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import shutil
import threading
import time
from itertools import pairwise

import pytest
import torch
import yaml
from demo_fixtures import demo_root, free_port, has_task, trained_runs
from gradio_client import Client
from gradio_client.exceptions import AppError

from demo.app import QUEUE_POLL_SECONDS, build_app, run_choices, serve
from demo.inference import fit_decoder_prompt
from demo.models import LoadedModel, ModelCache, Registry, model_bytes
from pipelines.errors import TuneforgeError
from pipelines.run_model import load_run_model

MAX_CHARS = 500
PROMPT = "cmd7 - lists files"


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, corpus, pretrained):
    trained = trained_runs(tmp_path_factory, corpus, pretrained)
    return demo_root(tmp_path_factory.mktemp("demo") / "runs", trained, pretrained, {"gpt-doomed": "gpt-lora"})


@pytest.fixture(scope="module")
def served(runs_root):
    app = build_app(runs_root, cache_mb=256, max_input_chars=MAX_CHARS, concurrency=2)
    url = serve(app, "127.0.0.1", free_port())
    client = Client(url, verbose=False)
    yield app, client
    client.close()
    app.close()


@pytest.fixture(scope="module")
def client(served):
    return served[1]


def greedy_reference(run_dir, ids: list[int], max_new_tokens: int, adapter_off: bool = False, **gen) -> str:
    """What the run's model generates greedily for `ids`, with plain transformers calls."""
    _, _, model, tokenizer = load_run_model(run_dir)
    tensor = torch.tensor([ids])
    context = model.disable_adapter() if adapter_off else torch.no_grad()
    with context, torch.no_grad():
        out = model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, **gen)  # fmt: skip
    new = out[0, 1:] if model.config.is_encoder_decoder else out[0, len(ids):]
    return tokenizer.decode(new, skip_special_tokens=True)


def lm_prompt_ids(run_dir, text: str, prompted: bool) -> list[int]:
    _, _, _, tokenizer = load_run_model(run_dir)
    ids = tokenizer(text + ("\n" if prompted else ""), add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *ids]


def each_extends_the_last(chunks: list[str]) -> bool:
    """Streamed chunks are the text so far: each one starts with the previous one."""
    return all(later.startswith(earlier) for earlier, later in pairwise(chunks))


def test_discovery_offers_finished_runs_labelled_with_task_base_and_score(served, runs_root):
    app, client = served
    registry = app.handlers.registry
    keys = {run.path.name for run in registry.catalog.runs()}
    assert "gpt-unfinished" not in keys  # status "running": never offered
    assert {"gpt-tiny", "gpt-lora", "gpt-doomed"} <= keys
    generator = dict((key, label) for label, key in run_choices(registry, "generator"))
    assert set(generator) == {"gpt-tiny", "gpt-lora", "gpt-doomed"}
    metrics = json.loads((runs_root / "gpt-lora" / "metrics.json").read_text())
    assert generator["gpt-lora"] == (
        f"gpt-lora (causal_lm, lora on {metrics['base_model']}, perplexity {metrics['scores']['perplexity']:.4g})"
    )
    side = [key for _, key in run_choices(registry, "side_by_side")]
    assert "gpt-tiny" not in side and "gpt-lora" in side  # a scratch run has no base to compare with
    header, *selected = client.predict(*[None] * 7, api_name="/refresh_runs")
    assert f"Serving {len(keys)} finished runs" in header
    assert selected[0]["value"] == "gpt-doomed"  # nothing was selected: the first generator run, by name
    assert [key for _, key in selected[0]["choices"]] == ["gpt-doomed", "gpt-lora", "gpt-tiny"]


def test_generator_streams_every_chunk_and_greedy_is_deterministic(client, runs_root):
    job = client.submit("gpt-lora", PROMPT, 0.0, 1.0, 16, api_name="/generate")
    final = job.result()
    chunks = job.outputs()
    assert len(chunks) >= 2 and chunks[-1] == final
    # Each chunk extends the previous one, so the pieces put together are exactly the final text.
    assert each_extends_the_last(chunks)
    assert "".join(later[len(earlier):] for earlier, later in pairwise(["", *chunks])) == final
    assert client.predict("gpt-lora", PROMPT, 0.0, 1.0, 16, api_name="/generate") == final
    ids = lm_prompt_ids(runs_root / "gpt-lora", PROMPT, prompted=True)
    assert final == greedy_reference(runs_root / "gpt-lora", ids, 16)


def test_side_by_side_runs_the_base_and_the_finetuned_model(client, runs_root):
    base, tuned = client.predict("gpt-lora", PROMPT, 12, api_name="/side_by_side")
    ids = lm_prompt_ids(runs_root / "gpt-lora", PROMPT, prompted=True)
    assert tuned == greedy_reference(runs_root / "gpt-lora", ids, 12)
    assert base == greedy_reference(runs_root / "gpt-lora", ids, 12, adapter_off=True)
    assert base == greedy_reference(runs_root / "gpt-tiny", ids, 12)  # adapters off is the pretrained run
    assert base != tuned


def test_eight_concurrent_requests_all_succeed_with_their_own_answers(client):
    prompts = [f"cmd{i} - copies lines" for i in range(4)]
    expected = [client.predict("gpt-lora", p, 0.0, 1.0, 10, api_name="/generate") for p in prompts]
    expected_side = [client.predict("gpt-lora", p, 10, api_name="/side_by_side") for p in prompts]
    # Generator and side-by-side requests interleave on ONE model whose adapters side by side switches off:
    # the per-model lock must keep every answer identical to its sequential one.
    jobs = [client.submit("gpt-lora", p, 0.0, 1.0, 10, api_name="/generate") for p in prompts]
    jobs += [client.submit("gpt-lora", p, 10, api_name="/side_by_side") for p in prompts]
    results = [job.result(timeout=60) for job in jobs]
    assert results[:4] == expected
    assert [tuple(r) for r in results[4:]] == [tuple(r) for r in expected_side]


def test_chat_is_multi_turn_streamed_in_the_runs_template(client, runs_root):
    if not has_task("chat"):
        pytest.skip("pipelines/tasks/chat.py does not exist yet")
    from pipelines.tasks import chat

    job = client.submit("chat-lora", "what does cmd3 do", [], 0.0, 1.0, 8, api_name="/chat")
    history, box = job.result()
    assert box == ""  # the message box is cleared
    assert [m["role"] for m in history] == ["user", "assistant"]
    answers = [_text(out[0][-1]) for out in job.outputs() if out[0][-1]["role"] == "assistant"]
    assert len(answers) >= 1 and each_extends_the_last(answers)
    _, _, model, tokenizer = load_run_model(runs_root / "chat-lora")
    conversation = [{"role": "user", "content": "what does cmd3 do"}]
    ids = chat.build_prompt_ids(tokenizer, conversation)
    reference = greedy_reference(runs_root / "chat-lora", ids, 8, eos_token_id=chat.stop_token_ids(tokenizer))
    assert _text(history[-1]) == reference.lstrip()
    history, _ = client.predict("chat-lora", "and cmd4", history, 0.0, 1.0, 8, api_name="/chat")
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert _text(history[2]) == "and cmd4"


def _text(message: dict) -> str:
    content = message["content"]
    return "".join(p.get("text", "") for p in content) if isinstance(content, list) else content


def test_seq2seq_beam_search_matches_the_run(client, runs_root):
    if not has_task("seq2seq"):
        pytest.skip("pipelines/tasks/seq2seq.py does not exist yet")
    source = "cmd5 copies files. the big cat sat on the mat."
    out = client.predict("bart-summarize", source, 2, 1.0, 0, 12, api_name="/seq2seq")
    _, _, _, tokenizer = load_run_model(runs_root / "bart-summarize")
    ids = tokenizer(source)["input_ids"]
    assert out == greedy_reference(runs_root / "bart-summarize", ids, 12, num_beams=2).strip()
    job = client.submit("bart-denoise", source, 1, 1.0, 0, 12, api_name="/seq2seq")  # one beam: streamed
    job.result()
    chunks = job.outputs()
    assert each_extends_the_last(chunks)
    assert chunks[-1] == greedy_reference(runs_root / "bart-denoise", ids, 12)


def test_classifier_label_is_the_runs_own_prediction(client, runs_root):
    if not has_task("classification"):
        pytest.skip("pipelines/tasks/classification.py does not exist yet")
    from pipelines.tasks.classification import predict_proba

    text = "cmd9 moves bytes quickly"
    out = client.predict("cls-lora", text, "", api_name="/classify")
    _, _, model, tokenizer = load_run_model(runs_root / "cls-lora")
    probs = predict_proba(model, tokenizer, [text])[0]
    top = model.config.id2label[int(probs.argmax())]
    assert out["label"] == top
    confidences = [c["confidence"] for c in out["confidences"]]
    assert confidences == sorted(confidences, reverse=True)
    assert sum(confidences) == pytest.approx(1.0, abs=1e-4)
    assert {c["label"]: c["confidence"] for c in out["confidences"]}[top] == pytest.approx(float(probs.max()), 1e-5)


def test_side_by_side_of_a_classifier_lists_top_labels(client):
    if not has_task("classification"):
        pytest.skip("pipelines/tasks/classification.py does not exist yet")
    text = "cmd9 moves bytes quickly"
    base, tuned = client.predict("cls-lora", text, 8, api_name="/side_by_side")
    top = client.predict("cls-lora", text, "", api_name="/classify")["confidences"]
    assert tuned == " · ".join(f"{c['label']} {c['confidence']:.3f}" for c in top[:3])
    assert len(base.split(" · ")) == 3 and base != tuned  # the base encoder with its untrained head


def test_every_model_computation_runs_on_the_one_compute_thread(served, client):
    # demo.compute: OpenMP helpers stop spinning once two threads have run parallel regions (decoding ~1.7x slower).
    from demo import compute

    registry = served[0].handlers.registry
    keys = ["gpt-lora"] + (["cls-lora"] if has_task("classification") else [])
    seen: set[int] = set()
    hooks = [registry.finetuned(key).model.register_forward_pre_hook(lambda *_: seen.add(threading.get_ident()))
             for key in keys]
    try:
        client.predict("gpt-lora", PROMPT, 0.0, 1.0, 4, api_name="/generate")  # streamed
        client.predict("gpt-lora", PROMPT, 4, api_name="/side_by_side")  # the base: the same model, adapters off
        client.predict("gpt-lora", "run", PROMPT, "", "self", 0, 0, False, api_name="/inspect_attention")
        if "cls-lora" in keys:
            client.predict("cls-lora", "cmd9 moves bytes quickly", "", api_name="/classify")
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {compute.run(threading.get_ident)}
    assert compute.run(compute.run, lambda: 7) == 7  # a job that waits for a job runs it inline, no deadlock
    with pytest.raises(ZeroDivisionError):
        compute.run(lambda: 1 / 0)


def test_the_served_queue_polls_every_20_ms_not_every_1_ms(served):
    # demo.app.QUEUE_POLL_SECONDS: Gradio's own 1 ms polling cost ~10% of the streamed tokens/s in the browser.
    queue = served[0]._queue  # launched: the settings survived `launch`, and this Gradio has both attributes
    assert {name: getattr(queue, name) for name in QUEUE_POLL_SECONDS} == {
        "sleep_when_free": 0.02, "progress_update_sleep_when_free": 0.1}


def test_bad_input_is_a_message_and_the_server_keeps_serving(served):
    app, client = served
    with pytest.raises(AppError, match="prompt: empty"):
        client.predict("gpt-lora", "   ", 0.0, 1.0, 8, api_name="/generate")
    with pytest.raises(AppError, match=f"over this demo's limit of {MAX_CHARS}"):
        client.predict("gpt-lora", "x" * (MAX_CHARS + 1), 0.0, 1.0, 8, api_name="/generate")
    with pytest.raises(AppError, match="less than minimum"):  # slider ranges hold for API callers too
        client.predict("gpt-lora", PROMPT, 0.5, 0.0, 8, api_name="/generate")
    with pytest.raises(AppError, match="not in the list of choices"):  # the UI never takes a path
        client.predict("../../etc", PROMPT, 0.0, 1.0, 8, api_name="/generate")
    with pytest.raises(TuneforgeError, match="no base model"):  # not offered by the tab; refused by the registry too
        app.handlers.registry.base("gpt-tiny")
    # A prompt longer than the 64-token context is truncated (with a warning), not an error.
    assert isinstance(client.predict("gpt-lora", "cmd1 lists files " * 25, 0.0, 1.0, 8, api_name="/generate"), str)
    assert client.predict("gpt-lora", PROMPT, 0.0, 1.0, 4, api_name="/generate")


def test_a_run_deleted_while_the_app_is_up_is_reported_and_evicted(served, runs_root):
    app, client = served
    assert client.predict("gpt-doomed", PROMPT, 0.0, 1.0, 4, api_name="/generate")
    assert "gpt-doomed" in app.handlers.registry.cache.keys
    shutil.rmtree(runs_root / "gpt-doomed")
    with pytest.raises(AppError, match="no longer a finished run"):
        client.predict("gpt-doomed", PROMPT, 0.0, 1.0, 4, api_name="/generate")
    assert "gpt-doomed" not in app.handlers.registry.cache.keys
    assert client.predict("gpt-lora", PROMPT, 0.0, 1.0, 4, api_name="/generate")


def test_leaderboard_shows_tables_charts_and_run_details(client, runs_root):
    tables, charts = client.predict(api_name="/leaderboard")
    for name in ("gpt-lora", "gpt-tiny"):
        assert f"| {name} |" in tables or f"| **{name}** |" in tables
    assert "## Not compared" in tables and "gpt-unfinished" in tables
    assert "## Arena: blind preference ratings" in tables  # demo.arena; no votes in this folder
    n_tables = tables.count("\n## ") - 2  # less "Not compared" and the Arena section
    # per table a bar chart and a quality-vs-cost figure (eval.pareto)
    assert charts.count('src="data:image/png;base64,') == 2 * n_tables
    assert charts.count("quality vs cost (Pareto front)</figcaption>") == n_tables
    recipe, metrics, curve = client.predict("gpt-lora", api_name="/run_details")
    assert yaml.safe_load(recipe) == yaml.safe_load((runs_root / "gpt-lora" / "recipe.yaml").read_text())
    assert metrics == json.loads((runs_root / "gpt-lora" / "metrics.json").read_text())
    with open(curve, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _item(key: str, nbytes: int, loads: list[str]) -> LoadedModel:
    loads.append(key)
    return LoadedModel(key, 1, None, None, torch.nn.Identity(), None, nbytes)


def test_model_cache_is_lru_within_its_byte_budget():
    loads: list[str] = []
    cache = ModelCache(max_bytes=100)
    cache.get("a", 1, lambda: _item("a", 40, loads))
    cache.get("b", 1, lambda: _item("b", 40, loads))
    cache.get("a", 1, lambda: _item("a", 40, loads))  # hit: a becomes the most recent
    cache.get("c", 1, lambda: _item("c", 40, loads))  # 120 > 100: the least recent (b) goes
    assert cache.keys == ["a", "c"] and loads == ["a", "b", "c"] and cache.nbytes == 80
    cache.get("a", 2, lambda: _item("a", 40, loads))  # the run changed on disk: reloaded, not served stale
    assert loads[-1] == "a" and cache.keys == ["c", "a"]
    cache.get("huge", 1, lambda: _item("huge", 500, loads))  # over the whole budget: served alone
    assert cache.keys == ["huge"]


def test_model_cache_loads_once_under_concurrent_requests():
    loads: list[str] = []

    def slow():
        time.sleep(0.2)
        return _item("a", 1, loads)

    cache = ModelCache(max_bytes=100)
    threads = [threading.Thread(target=cache.get, args=("a", 1, slow)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["a"]


def test_registry_budget_counts_real_parameter_bytes(runs_root):
    _, _, model, _ = load_run_model(runs_root / "gpt-tiny")
    size = model_bytes(model)
    assert size == sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * b.element_size()
                                                                          for b in model.buffers())  # fmt: skip
    registry = Registry(runs_root, max_bytes=size + 1)
    registry.finetuned("gpt-tiny")
    registry.finetuned("gpt-lora")  # a LoRA run holds its base's weights too: the budget only fits one
    assert registry.cache.keys == ["gpt-lora"]


def test_prompt_fitting_keeps_bos_and_the_most_recent_tokens():
    fitted = fit_decoder_prompt([0, *range(10, 70)], max_new_tokens=16, context=64, keep_head=1)
    assert fitted.max_new_tokens == 16 and fitted.input_ids == [0, *range(23, 70)]
    assert len(fitted.input_ids) + fitted.max_new_tokens == 64 and len(fitted.notes) == 1
    fitted = fit_decoder_prompt([0, 1, 2], max_new_tokens=100, context=64)
    assert fitted.max_new_tokens == 61 and fitted.input_ids == [0, 1, 2]  # shrinks the budget before the prompt
    assert fit_decoder_prompt([0, 1], 500, None).max_new_tokens == 500


# -- Inspect tab ----------------------------------------------------------------------------------------------------


def _png(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def _chips(markup: str, background: str) -> list[str]:
    """The texts of the token chips drawn in one colour."""
    return [html.unescape(t) for t in re.findall(rf"background:{background};[^>]*>([^<]*)</span>", markup)]


def test_inspect_views_of_a_gpt_run_and_its_base(client, runs_root):
    from pipelines import introspect
    from pipelines.data import load_data

    recipe, _, model, tok = load_run_model(runs_root / "gpt-lora")
    table, summary = client.predict("gpt-lora", "run", PROMPT, api_name="/inspect_tokens")
    ids = [int(i) for i in re.findall(r"<tr><td>\d+</td><td>(\d+)</td>", table)]
    assert ids == [tok.bos_token_id, *tok(PROMPT, add_special_tokens=False)["input_ids"]]  # as the model reads it
    assert f"**{len(ids)} tokens**" in summary and "64-token context window" in summary
    assert f"{len(tok):,} tokens" in summary
    assert client.predict("gpt-lora", "run", ", ".join(map(str, ids)), api_name="/inspect_ids") == tok.decode(ids)

    near, arith, note = client.predict("gpt-lora", "run", "cat", "cat", "dog", "mat", 5,
                                       api_name="/inspect_embeddings")  # fmt: skip
    assert [row[2] for row in near["data"]] == [i for _, i, _ in introspect.neighbours(model, tok, "cat", 5)]
    assert len(arith["data"]) == 5 and "weak structure" in note

    picture, note = client.predict("gpt-lora", "run", api_name="/inspect_positions")
    assert _png(picture) and note.startswith("64 positions × 32 dimensions")

    picture, note = client.predict("gpt-lora", "base", PROMPT, "", "self", 1, 1, False, api_name="/inspect_attention")
    assert _png(picture) and "Grey cells are masked" in note and f"the {len(ids)} query tokens" in note
    with pytest.raises(AppError, match="layer: 5 is out of range; this model has 2 layers"):
        client.predict("gpt-lora", "run", PROMPT, "", "self", 5, 0, False, api_name="/inspect_attention")

    # The base of a LoRA run is the run with adapters off, i.e. the pretrained run it started from.
    _, steps_base, _ = client.predict("gpt-lora", "base", PROMPT, "", 1.0, 5, 4, api_name="/inspect_next_token")
    _, steps_tiny, _ = client.predict("gpt-tiny", "run", PROMPT, "", 1.0, 5, 4, api_name="/inspect_next_token")
    chart, steps, note = client.predict("gpt-lora", "run", PROMPT, "", 0.7, 5, 4, api_name="/inspect_next_token")
    assert steps_base == steps_tiny and steps_base != steps and _png(chart) and "top 5 hold" in note
    expected = introspect.greedy_steps(model, tok, PROMPT, steps=4, k=5, temperature=0.7)
    assert _chips(steps, "#bbf7d0") == [introspect.token_text(tok, s["chosen_id"]) for s in expected]

    windows, note = client.predict("gpt-tiny", "run", 0, api_name="/inspect_windows")
    tiny_recipe = load_run_model(runs_root / "gpt-tiny")[0]
    text = load_data(tiny_recipe.data)["test"][0]["description"]
    expected = introspect.pretraining_windows(tok, text, tiny_recipe.data.max_length)
    assert f"→ {len(expected)} window(s)" in note and windows.count("<h4>window") == min(len(expected), 3)
    windows, note = client.predict("gpt-lora", "run", 0, api_name="/inspect_windows")
    assert "Finetuning on one example per row" in note and "—" in windows  # the prompt's labels are -100
    assert recipe.data.max_length == 64
    with pytest.raises(AppError, match="trained from scratch"):
        client.predict("gpt-tiny", "base", PROMPT, api_name="/inspect_tokens")


def test_inspect_views_of_a_bart_run(client, runs_root):
    if not has_task("denoising"):
        pytest.skip("pipelines/tasks/denoising.py does not exist yet")
    from pipelines import introspect

    _, _, model, tok = load_run_model(runs_root / "bart-denoise")
    source = "cmd5 copies files. the big cat sat on the mat."
    notes = {}
    for kind in ("encoder", "decoder", "cross"):
        picture, notes[kind] = client.predict("bart-denoise", "run", source, "cmd5 copies", kind, 0, 1, True,
                                              api_name="/inspect_attention")  # fmt: skip
        assert _png(picture)
    assert "Grey cells are masked" in notes["decoder"] and "Grey cells" not in notes["encoder"]
    assert "Cross-attention" in notes["cross"]
    prefix = [model.config.decoder_start_token_id] + tok(text_target="cmd5 copies")["input_ids"][:-1]
    assert f"the {len(prefix)} query tokens; columns: the {len(tok(source)['input_ids'])} key" in notes["cross"]

    chart, steps, note = client.predict("bart-denoise", "run", source, "cmd5", 1.0, 8, 3,
                                        api_name="/inspect_next_token")  # fmt: skip
    expected = introspect.greedy_steps(model, tok, source, steps=3, k=8, target_prefix="cmd5")
    assert _chips(steps, "#bbf7d0") == [introspect.token_text(tok, s["chosen_id"]) for s in expected]
    assert _png(chart) and "Encoder-decoder" in note

    windows, note = client.predict("bart-denoise", "run", 0, api_name="/inspect_windows")
    assert "BART text infilling" in note and "encoder input (corrupted)" in windows
    assert _chips(windows, "#fca5a5")[0] == "<mask>"
    _, note = client.predict("bart-summarize", "run", 0, api_name="/inspect_windows")
    assert note.startswith("Does not apply")
    picture, note = client.predict("bart-summarize", "base", api_name="/inspect_positions")
    assert _png(picture) and "the encoder's table" in note


def test_inspect_controls_fit_each_runs_layers_and_heads(served):
    # Picking a run sets the attention kinds and the layer/head sliders; Gradio rebuilds each slider from the
    # update and refuses minimum == maximum, which a one-layer model (the tiny BART here) used to produce.
    from gradio.state_holder import SessionState

    app, _ = served
    controls = next(f for f in app.fns.values() if getattr(f.fn, "__name__", "") == "controls")
    wanted = {"bart-denoise": (["encoder", "decoder", "cross"], 1, 1, False), "gpt-lora": (["self"], 1, 1, True)}
    for run, (kinds, layer_max, head_max, layers_move) in wanted.items():
        kind, layer, head = asyncio.run(app.postprocess_data(controls, list(controls.fn(run)), SessionState(app)))
        assert [c[0] for c in kind["choices"]] == kinds and kind["value"] == kinds[0]
        assert (layer["maximum"], layer["value"], layer["interactive"]) == (layer_max, 0, layers_move)
        assert (head["maximum"], head["value"], head["interactive"]) == (head_max, 0, True)


def test_inspect_views_of_a_classifier_run(client, runs_root):
    if not has_task("classification"):
        pytest.skip("pipelines/tasks/classification.py does not exist yet")
    from pipelines.tasks.classification import predict_proba

    _, _, model, tok = load_run_model(runs_root / "cls-lora")
    text = "cmd9 moves bytes quickly"
    table, summary = client.predict("cls-lora", "run", text, api_name="/inspect_tokens")
    ids = [int(i) for i in re.findall(r"<tr><td>\d+</td><td>(\d+)</td>", table)]
    assert ids == tok(text)["input_ids"] and ids[0] == tok.cls_token_id and "512-token context window" in summary

    chart, classes, note = client.predict("cls-lora", "run", text, "", 1.0, 5, 3, api_name="/inspect_next_token")
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([\d.]+)</td><td>([-+\d.]+)</td></tr>", classes)
    probs = predict_proba(model, tok, [text])[0]
    assert {label: float(p) for label, p, _ in rows} == pytest.approx(
        {model.config.id2label[i]: float(probs[i]) for i in range(len(probs))}, abs=1e-4)  # fmt: skip
    assert rows[0][0] == model.config.id2label[int(probs.argmax())] and "predicts no next token" in note
    _, base_classes, _ = client.predict("cls-lora", "base", text, "", 1.0, 5, 3, api_name="/inspect_next_token")
    assert base_classes != classes  # the base encoder with its untrained head

    picture, note = client.predict("cls-lora", "run", text, "", "self", 5, 11, False, api_name="/inspect_attention")
    assert _png(picture) and "Grey cells" not in note  # an encoder sees every token
    picture, note = client.predict("cls-lora", "run", api_name="/inspect_positions")
    assert _png(picture) and note.startswith("512 positions × 384 dimensions")
    near, _, _ = client.predict("cls-lora", "run", "file", "", "", "", 3, api_name="/inspect_embeddings")
    assert len(near["data"]) == 3
    _, note = client.predict("cls-lora", "run", 0, api_name="/inspect_windows")
    assert note.startswith("Does not apply: a classifier")


@pytest.mark.parametrize("bias, reused", [("none", True), ("all", False), ("lora_only", False)])
def test_base_is_the_adapters_off_model_only_when_lora_left_the_base_untouched(bias, reused):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from demo.models import base_is_adapters_off

    base = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=8, n_embd=16, n_layer=1, n_head=2))
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], bias=bias, fan_in_fan_out=True))
    # bias != "none" trains the base layers' own biases: disable_adapter() would not give the base back.
    assert base_is_adapters_off(lora) is reused
    assert base_is_adapters_off(base) is False
