"""Batched, length-sorted generation with the KV cache, correct for decoder-only and encoder-decoder models.

Decoder-only prompts are padded on the LEFT so every row's next token follows its last real token; encoder
inputs are padded on the right (the encoder masks them). The decoder of an encoder-decoder starts from its
configured `decoder_start_token_id`. Decoding settings come from the recipe, never a library default length.
Across processes, every generated row is padded to the same fixed width before `gather_for_metrics`, so
ragged outputs gather correctly and the last uneven batch's duplicates are dropped.
"""

from __future__ import annotations

import datasets
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import GenerationConfig

from pipelines import distributed
from pipelines.batching import right_pad
from pipelines.recipe import GenerationSettings


def generation_config(model, tokenizer, settings: GenerationSettings) -> GenerationConfig:
    """The model's generation config with the recipe's decoding settings applied on top.

    Sampling settings are only passed when `do_sample` is on, so greedy/beam search stays deterministic.
    """
    base = model.generation_config.to_dict() if getattr(model, "generation_config", None) else {}
    base.update(
        max_new_tokens=settings.max_new_tokens,
        num_beams=settings.num_beams,
        length_penalty=settings.length_penalty,
        no_repeat_ngram_size=settings.no_repeat_ngram_size,
        do_sample=settings.do_sample,
        temperature=settings.temperature if settings.do_sample else 1.0,
        top_p=settings.top_p if settings.do_sample else 1.0,
        top_k=None if not settings.do_sample else base.get("top_k", 50),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=base.get("eos_token_id") or tokenizer.eos_token_id,
    )
    base.pop("max_length", None)  # max_new_tokens governs; never the library's default 20
    return GenerationConfig(**base)


def pad_prompts(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to one width on `side` ("left" or "right").

    Returns:
        input_ids [B, T], attention_mask [B, T] (1 on real tokens).
    """
    if side == "right":
        return right_pad(rows, pad_id, 1)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


@torch.no_grad()
def generate_ids(
    accelerator: Accelerator,
    model,
    tokenizer,
    prompts: list[list[int]],
    settings: GenerationSettings,
    batch_size: int,
) -> list[list[int]]:
    """Generate continuations for every prompt, batched and sorted by length, across all processes.

    Args:
        prompts: token ids per example (decoder-only: the prompt; encoder-decoder: the source).
        settings: the recipe's decoding settings.
        batch_size: prompts per forward pass per process.

    Returns:
        Newly generated token ids per example (prompt excluded, stopped at EOS, EOS and padding removed), in
        the order of `prompts`.
    """
    unwrapped = accelerator.unwrap_model(model)
    encoder_decoder = bool(getattr(unwrapped.config, "is_encoder_decoder", False))
    side = "right" if encoder_decoder else "left"
    gen_cfg = generation_config(unwrapped, tokenizer, settings)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    ds = datasets.Dataset.from_dict({"index": order, "ids": [prompts[i] for i in order]})

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_prompts([r["ids"] for r in rows], tokenizer.pad_token_id, side)
        return {"input_ids": ids, "attention_mask": mask, "index": torch.tensor([r["index"] for r in rows])}

    loader = accelerator.prepare(DataLoader(ds, batch_size=batch_size, collate_fn=collate))
    width = settings.max_new_tokens
    was_training = unwrapped.training
    unwrapped.eval()
    indices, outputs = [], []
    with distributed.generation_context(accelerator, model) as synced_gpus:
        for batch in loader:
            # synced_gpus: with sharded weights every rank keeps stepping until all are done (gathers are collective)
            out = unwrapped.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     generation_config=gen_cfg, synced_gpus=synced_gpus)
            # Decoder-only output repeats the (left-padded) prompt; encoder-decoder output starts with the decoder
            # start token. Keep only new tokens, then pad to a fixed width so processes gather equal shapes.
            new = out[:, batch["input_ids"].size(1):] if not encoder_decoder else out[:, 1:]
            fixed = torch.full((new.size(0), width), tokenizer.pad_token_id, dtype=torch.long, device=new.device)
            fixed[:, : min(width, new.size(1))] = new[:, :width]
            index, fixed = accelerator.gather_for_metrics((batch["index"], fixed))
            indices.append(index.cpu())
            outputs.append(fixed.cpu())
    unwrapped.train(was_training)
    by_index = dict(zip(torch.cat(indices).tolist(), torch.cat(outputs).tolist(), strict=True))
    return [_until_eos(by_index[i], tokenizer, unwrapped) for i in range(len(prompts))]


def _until_eos(ids: list[int], tokenizer, model) -> list[int]:
    """Cut at the first end-of-sequence token (the model's EOS ids) and drop padding and special tokens."""
    eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    out = []
    for t in ids:
        if t in eos_ids:
            break
        if t != tokenizer.pad_token_id:
            out.append(t)
    return out


def decode(tokenizer, rows: list[list[int]]) -> list[str]:
    """Token ids -> text, special tokens removed, whitespace stripped."""
    return [t.strip() for t in tokenizer.batch_decode(rows, skip_special_tokens=True)]
