"""The benchmark's measuring helpers (FLOP formula, padding counts, ratios) and the loop's speed features.

The full benchmark (`python -m bench.run`) is not part of the test suite; these pin down what it computes.
"""

from __future__ import annotations

import dataclasses
import json

import datasets
import numpy as np
import pytest
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from bench.families import FAMILIES
from bench.measure import TokenCounter, padding_fraction, segment_lengths
from bench.report import summarize, targets
from pipelines import batching, flops, tokenized


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, n_inner=128)
    return GPT2LMHeadModel(config)


# Per GPT-2 layer: c_attn 32x96 + attn c_proj 32x32 + mlp c_fc 32x128 + mlp c_proj 128x32 = 12288 weights;
# 2 layers + the (tied) LM head 64x32 = 26624 matmul weights. Embeddings, norms and biases do not count.
GPT2_MATMUL_WEIGHTS = 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32) + 64 * 32


def test_full_training_flops_are_6n_plus_attention():
    spec = flops.flop_spec(tiny_gpt2())
    assert spec.linear == {"src": 6 * GPT2_MATMUL_WEIGHTS, "tgt": 0, "example": 0}
    assert (spec.src_layers, spec.d_attn, spec.encoder_decoder) == (2, 32, False)
    # Two examples of 16 and 8 real tokens: 6N per token + 12 L d T per token (T = the example's length).
    got = flops.training_flops(spec, torch.tensor([16, 8]))
    assert float(got) == 6 * GPT2_MATMUL_WEIGHTS * 24 + 12 * 2 * 32 * (16 * 16 + 8 * 8)


@pytest.mark.parametrize("arch", ["gpt2", "bart", "bert"])
def test_formula_equals_torch_flop_counter_on_a_training_step(arch):
    # torch's FlopCounterMode counts every matmul of the real forward + backward (eager attention: its bmm's).
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    small = {"vocab_size": 300, "max_position_embeddings": 64}
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    elif arch == "bart":
        model = BartForConditionalGeneration(BartConfig(
            d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, **small))
    else:
        model = BertForSequenceClassification(BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=5, **small))
    model.config._attn_implementation = "eager"
    model.config.use_cache = False
    model.train()
    ids = torch.randint(4, 300, (3, 20))
    labels = {"gpt2": ids, "bart": torch.randint(4, 300, (3, 12)), "bert": torch.tensor([0, 1, 2])}[arch]
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=labels).loss.backward()
    tgt = torch.full((3,), 12) if arch == "bart" else None
    assert float(flops.training_flops(flops.flop_spec(model), torch.full((3,), 20), tgt)) == counter.get_total_flops()


def test_lora_flops_count_frozen_weights_4n_and_adapters_6n():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_gpt2(), LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    spec = flops.flop_spec(model)
    adapters = 2 * (4 * 32 + 96 * 4)  # lora_A [4, 32] and lora_B [96, 4] in each of the 2 layers
    assert spec.linear["src"] == 4 * GPT2_MATMUL_WEIGHTS + 6 * adapters


def test_encoder_decoder_flops_put_cross_attention_keys_on_source_tokens():
    config = BartConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32)
    spec = flops.flop_spec(BartForConditionalGeneration(config))
    attn, ffn = 16 * 16, 2 * 16 * 32
    src = 4 * attn + ffn + 2 * attn  # encoder layer + the decoder's cross-attention k/v (run on encoder output)
    tgt = 4 * attn + 2 * attn + ffn + 50 * 16  # decoder self-attention, cross q/o, feed-forward, LM head
    assert spec.linear == {"src": 6 * src, "tgt": 6 * tgt, "example": 0}
    got = flops.batch_flops(spec, {"input_ids": torch.zeros(1, 8, dtype=torch.long),
                                   "attention_mask": torch.tensor([[1] * 6 + [0] * 2]),
                                   "labels": torch.tensor([[5, 6, 7, -100]])})
    s, t = 6, 3
    assert float(got) == 6 * src * s + 6 * tgt * t + 12 * 16 * (1 * s * s + 1 * (t * t + t * s))


def test_classifier_heads_count_once_per_example():
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)
    spec = flops.flop_spec(BertForSequenceClassification(config))
    assert spec.linear["example"] == 6 * (16 * 16 + 16 * 3)  # pooler dense + classifier
    assert spec.linear["src"] == 6 * (4 * 16 * 16 + 2 * 16 * 32)


def test_token_counter_counts_padding_and_decoder_positions():
    counter = TokenCounter(encoder_decoder=True)
    counter.observe({"input_ids": torch.zeros(2, 4, dtype=torch.long),
                     "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
                     "labels": torch.tensor([[5, 6, -100], [7, -100, -100]])})
    result = counter.result()
    assert (result["tokens"], result["nonpad_tokens"], result["forwards"]) == (14, 8, 1)
    assert result["padding_fraction"] == pytest.approx(6 / 14)
    assert padding_fraction(0, 0) == 0.0


def test_padding_free_rows_split_at_position_resets():
    assert segment_lengths(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])).tolist() == [3, 2, 4]
    counter = TokenCounter(spec=flops.flop_spec(tiny_gpt2()))
    counter.observe({"input_ids": torch.zeros(1, 9, dtype=torch.long),
                     "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])})
    assert counter.tally.nonpad_tokens == counter.tally.tokens == 9
    # Attention is counted per packed sequence (3, 2 and 4 tokens), not over the whole row of 9.
    assert counter.tally.model_flops == 6 * GPT2_MATMUL_WEIGHTS * 9 + 12 * 2 * 32 * (9 + 4 + 16)


def test_hook_counts_training_forwards_only():
    model = tiny_gpt2()
    counter = TokenCounter()
    counter.attach(model)
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    model.train()
    model(**batch)
    model.eval()
    with torch.no_grad():
        model(**batch)
    assert (counter.tally.forwards, counter.tally.tokens) == (1, 10)


def _run(config: str, seconds: float, nonpad: int, tokens: int, loss: float) -> dict:
    return {"config": config, "train_seconds": seconds, "tokens": tokens, "nonpad_tokens": nonpad,
            "padding_fraction": 1 - nonpad / tokens, "model_flops": 2e9, "matmul_flops_per_s": 1e9,
            "peak_rss_mb": 900.0, "final_loss": loss, "heldout_loss": loss, "process_wall_seconds": seconds + 5}


def test_summary_ratios_and_targets():
    family = dataclasses.replace(FAMILIES["classification"], steps=4)
    runs = [_run("tuneforge", 10, 950, 1000, 2.00), _run("tuneforge", 12, 950, 1000, 2.00),
            _run("trainer_defaults", 20, 600, 1000, 2.02), _run("trainer_speed", 12, 900, 1000, 2.01)]
    summary = summarize(family, runs)
    tf = summary["configs"]["tuneforge"]["mean"]
    assert tf["nonpad_tokens_per_s"] == pytest.approx((95 + 950 / 12) / 2)
    assert tf["mfu"] == pytest.approx((0.2 + 2 / 12) / 2)  # 2e9 FLOPs / seconds / 1e9 FLOP/s
    ratios = summary["ratios"]
    assert ratios["best_peer"] == "trainer_speed"
    assert ratios["nonpad_tokens_per_s_vs_best_peer"] == pytest.approx(tf["nonpad_tokens_per_s"] / 75)
    assert ratios["nonpad_tokens_per_s_vs_trainer_defaults"] == pytest.approx(tf["nonpad_tokens_per_s"] / 30)
    found = targets({"families": {"classification": summary}})
    checks = [(t["target"], round(t["value"], 4), t["met"]) for t in found]
    tf_rate = tf["nonpad_tokens_per_s"]
    assert checks == [
        ("classification: non-padding tokens/s vs best peer (Trainer, tuned for speed)", round(tf_rate / 75, 4), True),
        ("classification: non-padding tokens/s vs Trainer defaults", round(tf_rate / 30, 4), True),
        # Noise: no spread over repeats here, so the floor of 1% of the peer's loss.
        ("classification: held-out loss difference to Trainer, defaults (nats) within noise", 0.02, True),
        ("classification: held-out loss difference to Trainer, tuned for speed (nats) within noise", 0.01, True),
        ("classification: padding fraction (tuneforge)", 0.05, True),
    ]


def test_shape_ceiling_counts_every_weight_matmul_and_enters_the_report():
    from transformers import GPT2Config

    from bench import ceiling
    from bench.perf_report import ceiling_lines

    config = GPT2Config(vocab_size=512, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    c = ceiling.measure(config, batch=2, seq_len=32)
    # per layer: qkv 64x192, attention out 64x64, MLP 64x256 and 256x64 (GPT-2's Conv1D); the head 64x512 once
    per_token = 2 * 64 * (192 + 64 + 256 + 256) + 64 * 512
    assert c["matmul_flops"] == 6 * 64 * per_token
    assert (c["layers"], c["heads"], c["head_dim"]) == (2, 4, 16)
    assert c["matmul_seconds"] > 0 and c["attention_seconds"] > 0 and c["dtype"] == "float32"
    # LoRA r=4 in bf16: the frozen weights forward and input gradient (4 N), A and B of every linear but the head
    lora = ceiling.measure(config, batch=2, seq_len=32, dtype=torch.bfloat16, lora_rank=4)
    adapters = 2 * 4 * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64))
    assert lora["matmul_flops"] == 4 * 64 * per_token + 6 * 64 * adapters and lora["dtype"] == "bfloat16"
    family = dataclasses.replace(FAMILIES["chat"], steps=4)  # the family with a bf16 configuration
    runs = [{**_run("tuneforge", 10, 1000, 1000, 2.0), "shape_ceiling": {**c, "matmul_seconds": 0.3,
                                                                         "attention_seconds": 0.1}},
            {**_run("tuneforge_bf16", 5, 1000, 1000, 2.0), "shape_ceiling": {**lora, "matmul_seconds": 0.1,
                                                                              "attention_seconds": 0.1}}]  # fmt: skip
    summary = summarize(family, runs)
    fp32, bf16 = (" ".join(ceiling_lines(summary)).split("MFU ceiling")[1:])
    # 2e9 model FLOPs / 4 steps = 5e8 per step over 0.4 s = 1.25e9 FLOP/s, 125% of the 1e9 matmul rate
    assert "in fp32" in fp32 and "would reach **125.0%** MFU" in fp32 and "reach 20.0% (16% of that ceiling)" in fp32
    # the bf16 run: 5e8 per step over 0.2 s = 250%; it reached 2e9 / 5 s / 1e9 = 40% (16% of that)
    assert "in bf16" in bf16 and "tuneforge, bf16 autocast process" in bf16 and "**250.0%**" in bf16
    assert "reach 40.0% (16% of that ceiling)" in bf16


# ---------------------------------------------------------------------------------------------------------------
# The loop's speed features


def test_length_grouping_keeps_global_batches_and_cuts_padding():
    lengths = np.random.default_rng(0).integers(4, 64, size=4000)
    one = batching.StepBatches(lengths, 8, 1, 1, 0, seed=3, group_by_length=True)
    split = [batching.StepBatches(lengths, 4, 1, 2, r, seed=3, group_by_length=True) for r in (0, 1)]
    for step in (0, 7, 499):
        assert sorted(sum(one.for_step(step), [])) == sorted(sum((s.for_step(step)[0] for s in split), []))
    padded = sum(lengths[b].max() * len(b) for b in one.epoch_batches(0))
    real = sum(lengths[b].sum() for b in one.epoch_batches(0))
    assert 1 - real / padded < 0.05  # random batches of this spread pad about 45%
    first = one.for_step(0)[0]
    assert lengths[first].max() == lengths.max()  # the longest batch runs first


def test_equal_lengths_are_ordered_by_the_tiebreak():
    rng = np.random.default_rng(1)
    source = rng.integers(4, 64, size=1600)
    target = np.clip(source + rng.integers(-20, 20, size=1600), 1, 64)  # a pair pads on both sides
    longer, total = np.maximum(source, target), source + target

    def padding(batches):
        return 1 - sum(total[b].sum() for b in batches) / sum(
            len(b) * (source[b].max() + target[b].max()) for b in batches)

    from pipelines.tasks.seq2seq import length_tiebreak

    plain = batching.StepBatches(longer, 16, 1, 1, 0, seed=0, group_by_length=True)
    by_total = batching.StepBatches(longer, 16, 1, 1, 0, seed=0, group_by_length=True, tiebreak=total)
    by_side = batching.StepBatches(longer, 16, 1, 1, 0, seed=0, group_by_length=True,
                                   tiebreak=[length_tiebreak(s, t) for s, t in zip(source, target, strict=True)])
    assert sorted(sum(plain.epoch_batches(0), [])) == sorted(sum(by_side.epoch_batches(0), []))  # same examples
    # (longer side, shorter length) groups pairs that pad alike on both sides better than source + target does
    assert padding(by_side.epoch_batches(0)) < padding(by_total.epoch_batches(0)) < padding(plain.epoch_batches(0))


def test_pad_multiple_only_on_gpus():
    assert batching.pad_multiple(torch.device("cpu")) == 1
    assert batching.pad_multiple(torch.device("cuda", 0)) == 8


def test_tokenized_splits_are_cached_across_runs(tmp_path, monkeypatch):
    from pipelines.recipe import build_recipe
    from pipelines.scratch import train_tokenizer
    from pipelines.tasks import get_task

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    rows = datasets.Dataset.from_dict({"text": [f"doc {i} " + "word " * (i % 7) for i in range(40)]})
    recipe = build_recipe({"task": "causal_lm", "model": {"base": "unused"},
                           "data": {"source": "x.jsonl", "columns": {"text": "text"}, "packing": True,
                                    "max_length": 8}})
    tokenizer = train_tokenizer(rows["text"], build_recipe({
        "task": "causal_lm", "model": {"scratch": {"architecture": "gpt2", "vocab_size": 300, "min_frequency": 1,
                                                   "hidden_size": 32, "heads": 2}},
        "data": {"source": "x.jsonl", "columns": {"text": "text"}}}).model.scratch)
    task = get_task("causal_lm")
    calls = []

    def counting_tokenize(*args):
        calls.append(1)
        return task.tokenize(*args)

    counted = dataclasses.replace(task, tokenize=counting_tokenize)
    first = tokenized.tokenize_cached(counted, rows, tokenizer, recipe, "train")
    again = tokenized.tokenize_cached(counted, rows, tokenizer, recipe, "train")
    assert len(calls) == 1 and again["input_ids"] == first["input_ids"] == task.tokenize(
        rows, tokenizer, recipe, "train")["input_ids"]
    longer = recipe.model_copy(update={"data": recipe.data.model_copy(update={"max_length": 16})})
    tokenized.tokenize_cached(counted, rows, tokenizer, longer, "train")  # another setting: another entry
    tokenized.tokenize_cached(counted, rows.select(range(39)), tokenizer, recipe, "train")  # other rows: another entry
    assert len(calls) == 3
    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 3


def test_check_metrics_recomputes_scores_and_flags_a_tampered_one(tmp_path, capsys):
    from bench.check_metrics import main as check

    run = tmp_path / "runs" / "cls"
    run.mkdir(parents=True)
    rows = [{"prediction": p, "reference": r} for p, r in [("a", "a"), ("b", "a"), ("b", "b"), ("c", "b")]]
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = {"accuracy": 0.5, "macro_f1": (2 / 3 + 1 / 2 + 0) / 3, "weighted_f1": (2 / 3 + 1 / 2) / 2,
              "micro_f1": 0.5, "mcc": 2 / (10 * 8) ** 0.5}  # by hand from the four rows (Gorodkin's multiclass MCC)
    metrics = {"task": "classification", "scores": scores}
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert check([str(tmp_path / "runs")]) == 0
    (run / "metrics.json").write_text(json.dumps({**metrics, "scores": {**scores, "macro_f1": 0.4}}))
    assert check([str(tmp_path / "runs")]) == 1
    assert "cls: macro_f1 stored 0.4 recomputed 0.3888888889 DIFFERENT" in capsys.readouterr().out


def test_chat_family_keeps_bf16_out_of_the_peers_and_checks_memory_and_serving():
    family = dataclasses.replace(FAMILIES["chat"], steps=4)
    runs = [_run("tuneforge", 10, 1000, 1000, 2.00), _run("tuneforge_bf16", 5, 1000, 1000, 2.00),
            {**_run("trainer_defaults", 20, 600, 1000, 2.01), "peak_rss_mb": 1000.0},
            {**_run("sft_assistant", 12, 1000, 1000, 2.00), "peak_rss_mb": 1500.0}]
    runs[0]["peak_rss_mb"] = 700.0
    summary = summarize(family, runs)
    ratios = summary["ratios"]
    assert ratios["best_peer"] == "sft_assistant"  # bf16 is twice as fast but is tuneforge's own variant
    assert ratios["nonpad_tokens_per_s_vs_best_peer"] == pytest.approx(1.2)
    assert (ratios["leanest_peer"], ratios["peak_rss_vs_leanest_peer"]) == ("trainer_defaults", pytest.approx(0.7))
    assert ratios["bf16_nonpad_tokens_per_s_vs_fp32"] == pytest.approx(2.0)
    serving = {"fastest": "bfloat16", "dtypes": {"bfloat16": {"one_user": {"ttft_s": 1.2, "tokens_per_s": 14.0}}}}
    found = {t["target"]: (round(t["value"], 4), t["met"]) for t in targets(
        {"families": {"chat": summary}, "serving": serving})}
    best = "chat: non-padding tokens/s vs best peer (TRL SFTTrainer, assistant-only loss, packing)"
    assert found[best] == (1.2, True)
    assert found["chat: peak RSS vs leanest peer (Trainer, defaults)"] == (0.7, True)
    assert found["chat: MFU of tuneforge vs in-run matmul, same precision"] == (0.2, False)  # 2e9 / 10 s / 1e9
    assert found["chat: MFU of tuneforge, bf16 autocast vs in-run matmul, same precision"] == (0.4, False)
    assert found["chat serving: time to first token, 1 user, bfloat16 (s)"] == (1.2, True)
    assert found["chat serving: streamed tokens/s, 1 user, bfloat16"] == (14.0, False)
    assert not any("bf16 autocast (nats)" in name for name in found)


def test_chat_peers_template_renders_smollm2_and_masks_assistant_turns_with_their_end():
    from tiny_hub import ARCHS, SMOLLM2_TEMPLATE, tokenizer_for

    from bench.chat_peers import TRAINING_TEMPLATE, conversations_per_step, encode

    tok = tokenizer_for(ARCHS["llama"])
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "what is ls"},
                {"role": "assistant", "content": "list files"}, {"role": "user", "content": "and cp"},
                {"role": "assistant", "content": "copy files"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, chat_template=TRAINING_TEMPLATE)
    assert rendered == tok.apply_chat_template(messages, tokenize=False, chat_template=SMOLLM2_TEMPLATE)
    tok.chat_template = TRAINING_TEMPLATE
    row = encode(tok, [messages], 256)[0]
    supervised = tok.decode([t for t, y in zip(row["input_ids"], row["labels"], strict=True) if y != -100])
    assert supervised.replace(" ", "") == "listfiles<|im_end|>copyfiles<|im_end|>"
    assert conversations_per_step([100, 300], batch=8, max_length=256) == 10  # 2048 tokens / 200 per conversation
