"""The inspection library: spans round-trip, attention equals the model's own, probabilities are a softmax."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, BertForSequenceClassification

from pipelines import introspect
from pipelines.errors import TuneforgeError


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
    assert att.tokens[0] == tok.bos_token and att.causal == ("self",)  # the model reads [BOS] text, as in training
    assert weights.shape == (2, 2, n, n)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, n))
    assert torch.triu(weights, diagonal=1).abs().max() == 0  # causal mask visible
    model.set_attn_implementation("eager")
    ids = torch.tensor([[tok.bos_token_id] + tok("the cat sat on the mat", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        direct = torch.stack(model(input_ids=ids, output_attentions=True).attentions)[:, 0]
    torch.testing.assert_close(weights, direct)
    assert model.config._attn_implementation == "eager"
    assert len(introspect.attention(model, tok, "the cat sat on the mat " * 20, max_tokens=10).tokens) == 10


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


def test_class_probabilities_are_sorted_softmax(classifier):
    model, tok = classifier
    rows = introspect.class_probabilities(model, tok, "x")
    assert sum(r[1] for r in rows) == pytest.approx(1.0)
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    with torch.no_grad():
        logits = model(**tok("x", return_tensors="pt")).logits[0]
    assert {r[0]: r[2] for r in rows} == pytest.approx({"a": float(logits[0]), "b": float(logits[1]),
                                                        "c": float(logits[2])})


def test_decoder_only_reads_bos_first_and_bad_ids_are_refused(gpt):
    model, tok = gpt
    tokens = introspect.model_tokens(model, tok, "cmd3 lists")
    assert tokens[0].id == tok.bos_token_id and tokens[0].special and tokens[0].start == tokens[0].end == 0
    assert [t.id for t in tokens[1:]] == tok("cmd3 lists", add_special_tokens=False)["input_ids"]
    assert introspect.family(model) == introspect.DECODER
    with pytest.raises(TuneforgeError, match="not in the vocabulary"):
        introspect.detokenize(tok, [1, len(tok)])
    with pytest.raises(TuneforgeError, match="temperature"):
        introspect.next_token_topk(model, tok, "cmd3", temperature=0)
    assert introspect.token_text(tok, tok(" cat", add_special_tokens=False)["input_ids"][0]).startswith("␣")


def test_greedy_steps_equal_generate_and_stop_at_eos(gpt):
    model, tok = gpt
    steps = introspect.greedy_steps(model, tok, "cmd3 lists", steps=6, k=3, temperature=0.5)
    ids = torch.tensor([[tok.bos_token_id] + tok("cmd3 lists", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.pad_token_id)  # fmt: skip
    generated = out[0, ids.size(1) :].tolist()
    assert [s["chosen_id"] for s in steps] == generated[: len(steps)]
    assert steps[-1]["chosen_id"] == tok.eos_token_id or len(steps) == 6
    assert steps[1]["continuation"] == tok.decode(generated[:1])
    assert all(sum(c.probability for c in s["top"]) <= 1 + 1e-6 and len(s["top"]) == 3 for s in steps)


@pytest.fixture(scope="module")
def bart():
    """A tiny untrained BART with a BPE tokenizer trained here (the layout of the project's scratch BART)."""
    from transformers import BartForConditionalGeneration

    from pipelines.recipe import ScratchConfig
    from pipelines.scratch import build_config, train_tokenizer

    cfg = ScratchConfig(architecture="bart", vocab_size=300, min_frequency=1, context_length=64, hidden_size=32,
                        layers=2, heads=2)  # fmt: skip
    tok = train_tokenizer(["the cat sat on the mat", "cmd3 lists files quickly", "a dog ran under the tree"] * 20, cfg)
    torch.manual_seed(0)
    return BartForConditionalGeneration(build_config(cfg, tok)).eval(), tok


def test_bart_attention_maps_encoder_decoder_and_cross(bart):
    model, tok = bart
    att = introspect.attention(model, tok, "the cat sat on the mat", target="a dog ran")
    src = tok("the cat sat on the mat")["input_ids"]
    dec = [model.config.decoder_start_token_id] + tok(text_target="a dog ran")["input_ids"][:-1]
    assert att.tokens == tok.convert_ids_to_tokens(src) and att.target_tokens == tok.convert_ids_to_tokens(dec)
    s, t = len(src), len(dec)
    assert att.maps["encoder"].shape == (2, 2, s, s)
    assert att.maps["decoder"].shape == (2, 2, t, t) and att.maps["cross"].shape == (2, 2, t, s)
    for weights in att.maps.values():
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert att.causal == ("decoder",) and torch.triu(att.maps["decoder"], diagonal=1).abs().max() == 0
    assert torch.triu(att.maps["encoder"], diagonal=1).abs().max() > 0  # the encoder sees the whole input
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), output_attentions=True)
    torch.testing.assert_close(att.maps["cross"], torch.stack(out.cross_attentions)[:, 0])
    torch.testing.assert_close(att.maps["encoder"], torch.stack(out.encoder_attentions)[:, 0])
    pos = introspect.learned_positions(model)
    assert pos.shape == (64, 32)  # the 2-row offset of BART's position table is cut off
    torch.testing.assert_close(pos, model.model.encoder.embed_positions.weight[2:].detach())


def test_bart_next_token_is_the_decoders_softmax_after_the_prefix(bart):
    model, tok = bart
    top = introspect.next_token_topk(model, tok, "cmd3 lists files", k=4, temperature=2.0, target_prefix="cmd3")
    dec = [model.config.decoder_start_token_id] + tok(text_target="cmd3")["input_ids"][:-1]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tok("cmd3 lists files")["input_ids"]]),
                       decoder_input_ids=torch.tensor([dec])).logits[0, -1]  # fmt: skip
    probs = torch.softmax(logits / 2.0, -1)
    assert [c.id for c in top] == probs.topk(4).indices.tolist()
    assert [c.probability for c in top] == pytest.approx(probs.topk(4).values.tolist(), rel=1e-5)
    assert [c.logit for c in top] == pytest.approx(logits[probs.topk(4).indices].tolist(), rel=1e-5)
    steps = introspect.greedy_steps(model, tok, "cmd3 lists files", 3, k=4, temperature=2.0, target_prefix="cmd3")
    assert [c.id for c in steps[0]["top"]] == [c.id for c in top]  # step 1 is the top-k after the prefix
    assert [c.probability for c in steps[0]["top"]] == pytest.approx([c.probability for c in top], rel=1e-4)
    dec += [steps[0]["chosen_id"]]  # the cached second step equals a full forward over the longer prefix
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tok("cmd3 lists files")["input_ids"]]),
                       decoder_input_ids=torch.tensor([dec])).logits[0, -1]  # fmt: skip
    assert steps[1]["chosen_id"] == int(logits.argmax())
    assert steps[1]["top"][0].logit == pytest.approx(float(logits.max()), rel=1e-4)


def test_denoising_windows_are_the_test_splits_examples(bart):
    from pipelines.tasks import denoising

    model, tok = bart
    text = "the cat sat on the mat and a dog ran under the tree " * 4
    windows = introspect.denoising_windows(model, tok, text, max_length=16)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(windows) == -(-len(ids) // 14)
    recipe = type("R", (), {"data": type("D", (), {"mix": [], "columns": {"text": "t"}, "max_length": 16})(),
                            "train": type("T", (), {"seed": 5})()})()  # fmt: skip
    import datasets

    examples = denoising.tokenize(datasets.Dataset.from_dict({"t": [text]}), tok, recipe, "test")
    batch = denoising.collate([examples[i] for i in range(len(examples))], tok, recipe, pad_to_multiple_of=1)
    for i, w in enumerate(windows):
        n = len(w["source_ids"])
        assert w["source_ids"] == batch["input_ids"][i, :n].tolist()  # the same corruption training code makes
        assert w["label_ids"] == examples[i]["labels"]
        assert w["decoder_input_ids"] == [model.config.decoder_start_token_id] + w["label_ids"][:-1]
        assert tok.mask_token_id in w["source_ids"]


def test_finetuning_example_masks_the_prompt_and_shifts(gpt):
    _, tok = gpt
    ex = introspect.finetuning_example(tok, "cmd3 - lists files", "cmd3 lists files.", max_length=64)
    prompt = tok("cmd3 - lists files\n", add_special_tokens=False)["input_ids"]
    text = tok("cmd3 lists files.", add_special_tokens=False)["input_ids"]
    assert ex["input_ids"] == [tok.bos_token_id, *prompt, *text]  # [BOS] prompt "\n" text, the last token not input
    assert ex["label_ids"] == [-100] * len(prompt) + text + [tok.eos_token_id]  # shifted; the real EOS keeps its label
    assert ex["label_tokens"][: len(prompt)] == [None] * len(prompt)
    assert ex["input_ids"][len(prompt) + 1 :] == ex["label_ids"][len(prompt) : -1]  # position t predicts t + 1
    plain = introspect.finetuning_example(tok, None, "cmd3 lists files.", max_length=64)  # no prompt column
    assert plain["input_ids"] == [tok.bos_token_id, *text] and plain["label_ids"] == [*text, tok.eos_token_id]


@pytest.fixture(scope="module")
def classifier():
    """A tiny BERT classifier over MiniLM's real WordPiece tokenizer."""
    from pipelines.modeling import load_tokenizer

    tok = load_tokenizer("builtin:minilm-l6")
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=3,
                        id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})  # fmt: skip
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval(), tok


def test_encoder_attention_is_bidirectional_and_classes_match_predict_proba(classifier):
    from pipelines.tasks.classification import predict_proba

    model, tok = classifier
    assert introspect.family(model) == introspect.ENCODER
    att = introspect.attention(model, tok, "ls lists directory contents")
    n = len(att.tokens)
    assert att.tokens[0] == "[CLS]" and att.tokens[-1] == "[SEP]" and att.causal == ()
    assert att.maps["self"].shape == (2, 2, n, n)
    torch.testing.assert_close(att.maps["self"].sum(-1), torch.ones(2, 2, n))
    assert torch.triu(att.maps["self"], diagonal=1).abs().max() > 0
    cut = introspect.attention(model, tok, "ls lists directory contents " * 30, max_tokens=12)
    assert len(cut.tokens) == 12 and cut.tokens[-1] == "[SEP]"
    rows = introspect.class_probabilities(model, tok, "ls lists files", pair="GNU coreutils")
    probs = predict_proba(model, tok, ["ls lists files"], text_pairs=["GNU coreutils"])[0]
    assert {r[0]: r[1] for r in rows} == pytest.approx(dict(zip("abc", probs.tolist(), strict=True)), rel=1e-5)
    with pytest.raises(TuneforgeError, match="predicts classes"):
        introspect.next_token_topk(model, tok, "ls")
    summary = introspect.vocabulary_summary(tok, model)
    assert summary["context_window"] == 64 and summary["special_ids"]["[CLS]"] == tok.cls_token_id
    assert introspect.learned_positions(model).shape == (64, 16)
