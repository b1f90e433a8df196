"""The demo on a Llama-architecture chat run (SmolLM2's layout), in the default test run.

A tiny random Llama checkpoint with SmolLM2's ChatML template and special tokens (`<|im_end|>` is EOS and pad;
tests/tiny_hub.py) is LoRA-finetuned for a few chat steps; the app serves it and `gradio_client` calls the Chat,
Side by side and Inspect endpoints. Answers are checked against plain transformers calls on the run's own model:
the same ChatML prompt, the stop at `<|im_end|>`, the base being the run with its adapters off. The real
SmolLM2-135M-Instruct goes through the same tab code in the slow browser test (tests/test_demo_browser.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from demo_fixtures import free_port, llama_chat_run
from gradio_client import Client
from test_demo import _png, _text, each_extends_the_last
from tiny_hub import ARCHS

from demo.app import build_app, serve
from pipelines import introspect
from pipelines.run_model import load_run_model
from pipelines.tasks import chat

QUESTION = "what does cmd3 do"
NEW = 12


@pytest.fixture(scope="module")
def llama_runs(tmp_path_factory):
    return llama_chat_run(tmp_path_factory.mktemp("demo-llama")).parent


@pytest.fixture(scope="module")
def client(llama_runs):
    app = build_app(llama_runs, cache_mb=64, max_input_chars=500, concurrency=2)
    client = Client(serve(app, "127.0.0.1", free_port()), verbose=False)
    yield client
    client.close()
    app.close()


def reference(run_dir, ids: list[int], adapter_off: bool = False) -> tuple[str, list[int]]:
    """Greedy answer and new token ids from plain `generate`, stopping at the template's end of turn."""
    _, _, model, tokenizer = load_run_model(run_dir)
    tensor = torch.tensor([ids])
    context = model.disable_adapter() if adapter_off else torch.no_grad()
    with context, torch.no_grad():
        out = model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=NEW,
                             do_sample=False, eos_token_id=chat.stop_token_ids(tokenizer),
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    new = out[0, len(ids):].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), new


def test_side_by_side_answers_one_question_with_the_base_and_the_finetuned_llama(client, llama_runs):
    run = llama_runs / "llama-chat"
    _, _, _, tokenizer = load_run_model(run)
    ids = chat.build_prompt_ids(tokenizer, [{"role": "user", "content": QUESTION}])
    prompt = tokenizer.decode(ids)
    # SmolLM2's own ChatML: its default system turn, the question, the assistant's generation prompt.
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    assert chat.stop_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]

    base, tuned = client.predict("llama-chat", QUESTION, NEW, api_name="/side_by_side")
    expected_base, base_ids = reference(run, ids, adapter_off=True)
    expected_tuned, tuned_ids = reference(run, ids)
    assert (base, tuned) == (expected_base, expected_tuned)
    assert base != tuned
    # The answer ends at <|im_end|> or at the token budget, never past an end of turn.
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for new in (base_ids, tuned_ids):
        assert stop not in new[:-1] and (new[-1] == stop or len(new) == NEW)


def test_chat_streams_a_turn_in_the_chatml_template(client, llama_runs):
    job = client.submit("llama-chat", QUESTION, [], 0.0, 1.0, NEW, api_name="/chat")
    history, _ = job.result()
    answers = [_text(out[0][-1]) for out in job.outputs() if out[0][-1]["role"] == "assistant"]
    assert answers and each_extends_the_last(answers)
    _, _, _, tokenizer = load_run_model(llama_runs / "llama-chat")
    ids = chat.build_prompt_ids(tokenizer, [{"role": "user", "content": QUESTION}])
    assert _text(history[-1]) == reference(llama_runs / "llama-chat", ids)[0].lstrip()


def test_inspect_views_work_on_a_rotary_llama(client, llama_runs):
    _, _, model, tokenizer = load_run_model(llama_runs / "llama-chat")
    picture, note = client.predict("llama-chat", "run", api_name="/inspect_positions")
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    assert _png(picture) and note.startswith("**Rotary positions") and f"{head_dim // 2} dimension pairs" in note
    table, summary = client.predict("llama-chat", "run", QUESTION, api_name="/inspect_tokens")
    assert "tokens**" in summary and "<table" in table
    near, _, _ = client.predict("llama-chat", "base", "files", "cmd1", "lists", "files", 3,
                                api_name="/inspect_embeddings")  # fmt: skip
    assert len(near["data"]) == 3
    picture, note = client.predict("llama-chat", "run", QUESTION, "", "self", 1, 1, False,
                                   api_name="/inspect_attention")  # fmt: skip
    assert _png(picture) and "Grey cells are masked" in note
    chart, steps, note = client.predict("llama-chat", "base", QUESTION, "", 1.0, 3, 2, api_name="/inspect_next_token")
    assert _png(chart) and "top 3 hold" in note


def test_rotary_frequencies_and_distance_score_follow_roformer():
    arch = ARCHS["llama"]
    config = arch.model_class.config_class(vocab_size=64, **{**arch.config, "rope_theta": 100_000.0})
    model = arch.model_class(config)
    freqs = introspect.rotary_frequencies(model)
    d = config.hidden_size // config.num_attention_heads
    expected = torch.tensor([100_000.0 ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    torch.testing.assert_close(freqs, expected, rtol=1e-6, atol=0)
    score = introspect.rotary_distance_score(freqs, 8)
    assert score.shape == (9,) and score[0].item() == pytest.approx(1.0)
    assert score[3].item() == pytest.approx(sum(math.cos(3 * f) for f in expected.tolist()) / (d // 2), abs=1e-6)
    assert score[1] < score[0]  # the fastest pair turns ~1 radian per token: the score drops at once
    gpt2 = ARCHS["gpt2"]
    assert introspect.rotary_frequencies(gpt2.model_class(gpt2.model_class.config_class(
        vocab_size=64, **gpt2.config))) is None  # fmt: skip
