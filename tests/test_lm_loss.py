"""The chunked next-token loss equals the plain all-logits loss (values and gradients) and never runs the head on
more than one chunk of positions at a time."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from pipelines.lm_loss import next_token_losses, plain_losses

IGNORE = -100


def tiny(arch: str, vocab: int = 512) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "llama":
        config = tf.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                tie_word_embeddings=True)
        return tf.LlamaForCausalLM(config).eval()  # eval: no dropout, so two forwards compute the same
    config = tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return tf.GPT2LMHeadModel(config).eval()


def batch(seed: int = 1, vocab: int = 512) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # right padding
    labels = ids.clone()
    labels[mask == 0] = IGNORE
    labels[0, :5] = IGNORE  # a masked prompt
    labels[2, 3:9] = IGNORE  # a masked user turn
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def reference(model, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    targets = torch.nn.functional.pad(b["labels"][:, 1:], (0, 1), value=IGNORE)
    inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    return plain_losses(model, inputs, targets), (targets != IGNORE).sum(dim=1)


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_chunked_loss_and_gradients_equal_plain(arch):
    model = tiny(arch)
    b = batch()
    inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    ref, ref_n = reference(model, b)
    ref.sum().backward()
    ref_grads = grads(model)
    # 7 rows per chunk: the 52 targets span 8 chunks, the last one partial.
    nll, n = next_token_losses(model, inputs, b["labels"], chunk_elements=7 * 512, recompute_above=0)
    nll.sum().backward()
    new_grads = grads(model)
    assert n.tolist() == ref_n.tolist() == [19, 16, 17]
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)
    assert new_grads.keys() == ref_grads.keys() and len(ref_grads) > 5
    for name, g in ref_grads.items():
        torch.testing.assert_close(new_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_head_never_sees_more_than_one_chunk_and_skips_untargeted_positions():
    model = tiny("llama")
    b = batch()
    seen = []
    model.lm_head.register_forward_hook(lambda m, args, out: seen.append(out.shape[:-1].numel()))
    inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    nll, _ = next_token_losses(model, inputs, b["labels"], chunk_elements=16 * 512, recompute_above=0)
    nll.sum().backward()
    # forward: the model's own call on an empty slice, then 4 chunks (16+16+16+4 = 52 targets);
    # backward: the checkpointed chunks run the head once more each.
    assert seen[0] == 0
    assert max(seen) == 16
    assert sum(seen) == 2 * 52
    seen.clear()  # small logits (under recompute_above): the chunks' logits are kept, the head runs once
    nll, _ = next_token_losses(model, inputs, b["labels"], chunk_elements=16 * 512)
    nll.sum().backward()
    assert (max(seen), sum(seen)) == (16, 52)


def test_lora_packed_chat_batch_matches_plain():
    from peft import LoraConfig, get_peft_model

    from pipelines.tasks import chat

    model = get_peft_model(tiny("llama"), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(3))
    positions = torch.tensor([list(range(8)) + list(range(12)), list(range(20))])
    labels = ids.clone()
    labels[0, :3] = IGNORE
    labels[0, 8:11] = IGNORE
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "position_ids": positions}
    nll, n = chat.loss(model, b)
    nll.sum().backward()
    new_grads = grads(model)
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)
    ref = plain_losses(model, {"input_ids": ids, "position_ids": positions}, targets)
    ref.sum().backward()
    ref_grads = grads(model)
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)
    assert n.tolist() == [14, 19]
    assert all("lora" in k for k in ref_grads) and len(ref_grads) > 10
    for name, g in ref_grads.items():
        torch.testing.assert_close(new_grads[name], g, rtol=1e-4, atol=1e-7, msg=name)


def test_softcapped_models_keep_the_plain_loss():
    from pipelines.lm_loss import output_head

    model = tiny("llama")
    assert output_head(model) is model.lm_head
    model.config.final_logit_softcapping = 30.0
    assert output_head(model) is None
    b = batch()
    inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    with torch.no_grad():
        nll, _ = next_token_losses(model, inputs, b["labels"])
        torch.testing.assert_close(nll, reference(model, b)[0])


def head_case(bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(16, 40, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(40, 16, generator=g))
        if bias:
            head.bias.copy_(torch.randn(40, generator=g))
    hidden = torch.randn(23, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 40, (23,), generator=g)
    weights = torch.rand(23, generator=g) + 0.5  # per-token upstream gradients
    return head, hidden, targets, weights


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("upstream", ["uniform", "per_token"])
def test_fused_head_and_loss_equal_plain(bias, upstream):
    """The fused nn.Linear head + loss (gradients made in the forward) gives the plain values and gradients, also
    when the upstream gradient differs per token (its weight/bias gradients are then recomputed)."""
    from pipelines.lm_loss import _LinearCrossEntropy, chunked_nll, fusable

    head, hidden, targets, weights = head_case(bias)
    scale = weights if upstream == "per_token" else torch.full_like(weights, 0.25)
    assert fusable(head, hidden)
    calls = []
    original = _LinearCrossEntropy.forward
    _LinearCrossEntropy.forward = staticmethod(lambda *a: calls.append(1) or original(*a))
    try:
        losses = chunked_nll(head, hidden, targets, chunk=5)  # 5 chunks, the last one of 3 rows
    finally:
        _LinearCrossEntropy.forward = staticmethod(original)
    assert calls == [1]
    (losses * scale).sum().backward()
    fused = [hidden.grad, head.weight.grad] + ([head.bias.grad] if bias else [])
    head.zero_grad(set_to_none=True)
    hidden.grad = None
    plain = torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="none")
    (plain * scale).sum().backward()
    reference = [hidden.grad, head.weight.grad] + ([head.bias.grad] if bias else [])
    torch.testing.assert_close(losses, plain.detach(), rtol=1e-6, atol=1e-5)
    for got, want in zip(fused, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fused_loss_under_bf16_autocast_matches_plain_autocast():
    from pipelines.lm_loss import chunked_nll

    head, hidden, targets, _ = head_case(bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = chunked_nll(head, hidden, targets, chunk=8)
        losses.sum().backward()
        fused = (losses.detach(), hidden.grad, head.weight.grad)
        hidden.grad, head.weight.grad = None, None
        plain = torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="none")
        plain.sum().backward()
    assert losses.dtype == torch.float32 and hidden.grad.dtype == head.weight.grad.dtype == torch.float32
    for got, want in zip(fused, (plain.detach(), hidden.grad, head.weight.grad), strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_hooked_or_wrapped_heads_are_not_fused():
    """A head someone hooks (DeepSpeed ZeRO-3 gathers its weight in a pre-hook) or a subclass runs as a module."""
    from pipelines.lm_loss import fusable

    head, hidden, _, _ = head_case(bias=False)
    assert fusable(head, hidden)
    handle = head.register_forward_pre_hook(lambda m, a: None)
    assert not fusable(head, hidden)
    handle.remove()

    class Scaled(torch.nn.Linear):
        pass

    assert not fusable(Scaled(16, 40), hidden)
    head.weight.requires_grad_(False)
    assert not fusable(head, hidden.detach())  # nothing to differentiate: the plain chunks run


def test_the_loop_and_the_scorer_run_the_head_under_the_runs_autocast(monkeypatch):
    # Accelerate autocasts the model's forward only; the chunked head and loss run after it, under the autocast the
    # forward ran in (read where the head's input is captured): under bf16 the head computes in bf16 like the model.
    import datasets
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from pipelines import flops, lm_loss
    from pipelines.loop import accumulate_gradients
    from pipelines.meter import Meter
    from pipelines.scoring import ScoreContext, example_losses
    from pipelines.tasks import causal_lm

    dtypes = []
    fused = lm_loss._for_each_chunk

    def spy(hidden, weight, bias, targets, chunk, dtype, *rest):
        dtypes.append(dtype)
        return fused(hidden, weight, bias, targets, chunk, dtype, *rest)

    monkeypatch.setattr(lm_loss, "_for_each_chunk", spy)
    b = batch()
    rows = [(ids[m == 1].tolist(), lab[m == 1].tolist()) for ids, m, lab in
            zip(b["input_ids"], b["attention_mask"], b["labels"], strict=True)]  # fmt: skip
    features = datasets.Dataset.from_dict({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows],
                                           "length": [len(r[0]) for r in rows]})  # fmt: skip
    for precision, want in (("bf16", torch.bfloat16), ("no", torch.float32)):
        AcceleratorState._reset_state(True)
        try:
            accelerator = Accelerator(cpu=True, mixed_precision=precision)
            model = accelerator.prepare(tiny("gpt2").train())
            dtypes.clear()
            accumulate_gradients(causal_lm, model, accelerator, [b], Meter(), flops.flop_spec(model),
                                 torch.zeros(2, dtype=torch.float64))  # fmt: skip
            assert dtypes == [want]  # the fused head + loss while training
            scored = []
            model.lm_head.register_forward_hook(lambda module, args, out, seen=scored: seen.append(out.dtype))
            ctx = ScoreContext(accelerator=accelerator, model=model, tokenizer=type("T", (), {"pad_token_id": 0}),
                               recipe=None, rows=features, features=features, task=causal_lm)  # fmt: skip
            nll, count = example_losses(ctx)
            assert set(scored) == {want} and count.tolist() == [int(n) for n in reference(tiny("gpt2"), b)[1]]
        finally:
            AcceleratorState._reset_state(True)
