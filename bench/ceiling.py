"""The MFU a model's own shapes allow on this machine: its weight matmuls and its attention alone, timed.

MFU divides by the rate of a large square matmul (`pipelines.flops.matmul_flops_per_s`). A small model's matmuls
are not large and square: the tiny GPT-2's are [4096 tokens x 128] x [128 x 384] and the like, which run well
below that rate on a CPU. This module times exactly the work the MFU numerator counts, in isolation, with the
model's own shapes, so the report can say how far a family's MFU is from what its shapes allow:

* every weight matmul of full training for `tokens` rows: forward `X W`, input gradient `dY W^T`, weight
  gradient `X^T dY` (the `6 N` of Kaplan et al. 2020), one timing per distinct shape, times its count; under LoRA
  the frozen weights run forward and input gradient only (`4 N`, as `pipelines.flops` counts them) and every
  adapted linear (all but the LM head) adds its rank-r A and B matmuls with all three;
* causal attention forward + backward (`torch.nn.functional.scaled_dot_product_attention`, what the models train
  with) for one `[batch, heads, seq_len, head_dim]` layer, times the number of layers.

Everything runs in the precision the run trained in (fp32, or bf16 for bf16 autocast, against a bf16 matmul).

The ceiling is then model FLOPs per step / (matmul seconds + attention seconds) / the large-matmul rate: the MFU
of a step whose every other operator (activations, norms, softmax of the loss, optimizer, Python) took no time.
"""

from __future__ import annotations

import collections
import time

import torch
import torch.nn.functional as F


def _best_seconds(fn, repeats: int = 3) -> float:
    fn()  # warm-up: kernel selection, page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def weight_shapes(model: torch.nn.Module) -> collections.Counter:
    """(in_features, out_features) of every weight matmul: `nn.Linear` and transformers' `Conv1D` (GPT-2)."""
    shapes = collections.Counter()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            shapes[(module.in_features, module.out_features)] += 1
        elif type(module).__name__ == "Conv1D":  # weight [in, out]
            shapes[tuple(module.weight.shape)] += 1
    return shapes


def measure(config, batch: int, seq_len: int, dtype: torch.dtype = torch.float32,
            lora_rank: int | None = None) -> dict:
    """Time a decoder-only model's weight matmuls and attention for one training step of `batch` x `seq_len` tokens.

    Args:
        config: the model's transformers config (the model is built on the meta device to read its shapes).
        batch: sequences per step.
        seq_len: tokens per sequence.
        dtype: the precision of every timed matmul (the run's: fp32, or bf16 under bf16 autocast).
        lora_rank: LoRA rank r when the base weights are frozen and every linear but the head is adapted, else
            None (full training).

    Returns:
        {"matmul_seconds", "matmul_flops", "matmul_flops_per_s", "attention_seconds", "layers", "heads",
        "head_dim", "dtype"}: seconds per step (the current torch threads).
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tokens = batch * seq_len
    seconds = flops = 0.0

    def add(fan_in: int, fan_out: int, count: int, trains: bool) -> None:
        nonlocal seconds, flops
        x, w, dy = (torch.randn(*shape, dtype=dtype) for shape in ((tokens, fan_in), (fan_in, fan_out),
                                                                    (tokens, fan_out)))  # fmt: skip
        work = (lambda: (x @ w, dy @ w.T, x.T @ dy)) if trains else (lambda: (x @ w, dy @ w.T))
        seconds += count * _best_seconds(work)
        flops += count * (6 if trains else 4) * tokens * fan_in * fan_out

    for (fan_in, fan_out), count in weight_shapes(model).items():
        add(fan_in, fan_out, count, trains=lora_rank is None)
    if lora_rank is not None:
        head = model.get_output_embeddings()
        adapted = weight_shapes(model) - weight_shapes(head)  # LoRA on every linear but the head
        for (fan_in, fan_out), count in adapted.items():
            add(fan_in, lora_rank, count, trains=True)
            add(lora_rank, fan_out, count, trains=True)
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    head_dim = config.hidden_size // heads
    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, dtype=dtype, requires_grad=True) for _ in range(3))

    def attention() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    attention_seconds = layers * _best_seconds(attention)
    return {"matmul_seconds": seconds, "matmul_flops": flops, "matmul_flops_per_s": flops / seconds,
            "attention_seconds": attention_seconds, "layers": layers, "heads": heads, "head_dim": head_dim,
            "dtype": str(dtype).removeprefix("torch.")}
