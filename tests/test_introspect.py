"""The inspection library: spans round-trip, attention equals the model's own, probabilities are a softmax."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, BertForSequenceClassification

from pipelines import introspect


@pytest.fixture(scope="module")
def gpt(pretrained):
    model = AutoModelForCausalLM.from_pretrained(pretrained / "model").eval()
    return model, AutoTokenizer.from_pretrained(pretrained / "model")


def test_token_spans_round_trip(gpt):
    _, tok = gpt
    text = "cmd7 copies bytes. Ünïcode → ok"
    tokens = introspect.tokenize_spans(tok, text)
    # Byte-level tokens that split one character (Ü is 2 bytes) share that character's span: rebuild without overlap.
    rebuilt, end = "", 0
    for t in tokens:
        if not t.special:
            rebuilt += text[max(end, t.start) : t.end]
            end = max(end, t.end)
    assert rebuilt == text
    assert all(tokens[i].start <= tokens[i + 1].start for i in range(len(tokens) - 1))
    assert introspect.detokenize(tok, [t.id for t in tokens]) == text
    summary = introspect.vocabulary_summary(tok, gpt[0])
    assert summary["vocab_size"] == len(tok) and summary["context_window"] == 64


def test_attention_equals_model_output_and_rows_sum_to_one(gpt):
    model, tok = gpt
    att = introspect.attention(model, tok, "the cat sat on the mat")
    weights = att.maps["self"]
    n = len(att.tokens)
    assert weights.shape == (2, 2, n, n)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, n))
    assert torch.triu(weights, diagonal=1).abs().max() == 0  # causal mask visible
    model.set_attn_implementation("eager")
    ids = tok("the cat sat on the mat", return_tensors="pt")
    with torch.no_grad():
        direct = torch.stack(model(**ids, output_attentions=True).attentions)[:, 0]
    torch.testing.assert_close(weights, direct)
    assert model.config._attn_implementation == "eager"


def test_topk_is_softmax_of_logits(gpt):
    model, tok = gpt
    top = introspect.next_token_topk(model, tok, "cmd3 lists", k=5, temperature=0.7)
    ids = torch.tensor([[tok.bos_token_id] + tok("cmd3 lists", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    probs = torch.softmax(logits / 0.7, -1)
    assert [t[1] for t in top] == probs.topk(5).indices.tolist()
    assert [t[2] for t in top] == pytest.approx(probs.topk(5).values.tolist(), rel=1e-5)
    assert sum(t[2] for t in top) <= 1.0 + 1e-6
    steps = introspect.greedy_steps(model, tok, "cmd3", steps=3, k=3)
    assert len(steps) == 3 and all(s["chosen"] == s["top"][0][0] for s in steps)


def test_sinusoidal_encoding_matches_the_paper():
    pe = introspect.sinusoidal_positions(50, 8)
    assert pe[0].tolist() == pytest.approx([0, 1, 0, 1, 0, 1, 0, 1])
    assert pe[1, 0] == pytest.approx(math.sin(1.0)) and pe[1, 1] == pytest.approx(math.cos(1.0))
    assert pe[7, 2] == pytest.approx(math.sin(7 / 10000 ** (2 / 8)))
    assert pe[49, 7] == pytest.approx(math.cos(49 / 10000 ** (6 / 8)))
    sim = introspect.position_similarity(pe)
    assert sim.shape == (50, 50) and torch.allclose(sim.diagonal(), torch.ones(50))


def test_learned_positions_and_embedding_neighbours(gpt):
    model, tok = gpt
    pos = introspect.learned_positions(model)
    assert pos.shape == (64, 32)
    near = introspect.neighbours(model, tok, "cat", k=3)
    assert len(near) == 3 and near[0][2] >= near[1][2] >= near[2][2]
    assert all(t[1] not in tok("cat", add_special_tokens=False)["input_ids"] for t in near)
    assert len(introspect.analogy(model, tok, "cat", "dog", "mat", k=4)) == 4


def test_pretraining_windows_show_the_shift(gpt):
    _, tok = gpt
    windows = introspect.pretraining_windows(tok, "the cat sat on the mat " * 10, window=16)
    assert len(windows) >= 2
    for w in windows:
        assert w["input_ids"][1:] == w["label_ids"][:-1]
        assert len(w["input_ids"]) == len(w["label_ids"]) <= 15


def test_class_probabilities_are_sorted_softmax():
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()

    class Tok:
        def __call__(self, text, return_tensors, truncation):
            return {"input_ids": torch.tensor([[1, 5, 7, 2]])}

    rows = introspect.class_probabilities(model, Tok(), "x")
    assert sum(r[1] for r in rows) == pytest.approx(1.0)
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    logits = model(input_ids=torch.tensor([[1, 5, 7, 2]])).logits[0]
    assert {r[0]: r[2] for r in rows} == pytest.approx({"a": float(logits[0]), "b": float(logits[1]),
                                                        "c": float(logits[2])})
