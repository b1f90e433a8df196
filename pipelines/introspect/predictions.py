"""Next-token probabilities: the top-k after a prompt, greedy steps with their candidates, class probabilities."""

from __future__ import annotations

from typing import NamedTuple

import torch

from pipelines.errors import TuneforgeError
from pipelines.introspect.core import (
    ENCODER,
    ENCODER_DECODER,
    _device,
    _fit,
    base_model,
    context_window,
    decoder_prefix,
    family,
    model_tokens,
)

# ---------------------------------------------------------------------------------------------------------------
# Next-token probabilities


class Candidate(NamedTuple):
    """One possible next token: its string form, id, probability at the chosen temperature and raw logit."""

    token: str
    id: int
    probability: float
    logit: float


def _check_sampling(k: int, temperature: float, vocab: int) -> None:
    if not temperature > 0:
        raise TuneforgeError(f"temperature: {temperature} must be > 0 (softmax(logits / T); small T -> argmax)")
    if not 1 <= k <= vocab:
        raise TuneforgeError(f"k: {k} must be between 1 and the vocabulary size {vocab}")


def _lm_inputs(model, tokenizer, prompt: str, target_prefix: str | None) -> dict:
    """Token ids for a next-token prediction: `{"ids": decoder-side ids, "source": encoder ids or None}`.

    Raises:
        TuneforgeError: an encoder (classifier) model, which predicts no next token.
    """
    kind = family(model)
    if kind == ENCODER:
        raise TuneforgeError("model: an encoder classifier predicts classes, not a next token (class_probabilities)")
    limit = context_window(model, tokenizer)
    if kind == ENCODER_DECODER:
        source = tokenizer(prompt, truncation=limit is not None, max_length=limit)["input_ids"]
        return {"source": source, "ids": decoder_prefix(model, tokenizer, target_prefix or "")}
    return {"source": None, "ids": [t.id for t in model_tokens(model, tokenizer, prompt)]}


def _next_logits(model, ids: list[int], source: list[int] | None, limit: int | None) -> torch.Tensor:
    """[V] float32 logits for the token after `ids` (decoder-only, or the decoder given `source`)."""
    device = _device(model)
    if source is None:
        keep = 1 if limit is not None and len(ids) > limit else 0
        ids = _fit(ids, limit, keep_head=keep)  # keep BOS and the most recent tokens
        tensor = torch.tensor([ids], device=device)
        return model(input_ids=tensor, attention_mask=torch.ones_like(tensor)).logits[0, -1].float().cpu()
    src = torch.tensor([source], device=device)
    dec = torch.tensor([_fit(ids, limit, keep_head=1)], device=device)
    out = model(input_ids=src, attention_mask=torch.ones_like(src), decoder_input_ids=dec)
    return out.logits[0, -1].float().cpu()


def _top(tokenizer, logits: torch.Tensor, k: int, temperature: float) -> list[Candidate]:
    probs = torch.softmax(logits / temperature, dim=-1)
    p, i = probs.topk(k)
    return [Candidate(tokenizer.convert_ids_to_tokens(int(t)), int(t), float(q), float(logits[t]))
            for q, t in zip(p, i, strict=True)]  # fmt: skip


@torch.no_grad()
def next_token_topk(model, tokenizer, prompt: str, k: int = 10, temperature: float = 1.0,
                    target_prefix: str | None = None) -> list[Candidate]:  # fmt: skip
    """Top-k next tokens after `prompt` with probabilities softmax(logits / temperature).

    Decoder-only models read `[BOS] prompt` (longer prompts keep BOS and their last tokens); encoder-decoders
    read `prompt` as the source and predict the decoder's next token after `target_prefix` (default: the first).

    Args:
        temperature: > 0; divides the logits before the softmax (Hinton et al. 2015 / Ackley et al. 1985).

    Returns:
        k candidates best first (a `Candidate` unpacks as (token, id, probability, logit)); probabilities sum
        to at most 1.

    Raises:
        TuneforgeError: an encoder model, temperature <= 0 or k outside 1..V.
    """
    inputs = _lm_inputs(model, tokenizer, prompt, target_prefix)
    _check_sampling(k, temperature, model.get_input_embeddings().num_embeddings)
    logits = _next_logits(model, inputs["ids"], inputs["source"], context_window(model, tokenizer))
    return _top(tokenizer, logits, k, temperature)


@torch.no_grad()
def greedy_steps(model, tokenizer, prompt: str, steps: int = 5, k: int = 5, temperature: float = 1.0,
                 target_prefix: str | None = None) -> list[dict]:  # fmt: skip
    """A greedy continuation, step by step: at each step the top-k candidates and the chosen (argmax) token.

    Works on token ids (the chosen id is appended; text is never re-tokenized), reuses the key/value cache
    between steps (an encoder-decoder's encoder runs once) and stops after EOS. Step 1's candidates are
    `next_token_topk`'s. The argmax does not depend on the temperature; the probabilities shown do.

    Args:
        steps: tokens to generate at most; a prompt is cut (BOS and its last tokens kept) so that prompt and
            continuation fit the context window.

    Returns:
        One dict per step: {"continuation": text generated before this step, "top": [Candidate] best first,
        "chosen": token string, "chosen_id": id}.

    Raises:
        TuneforgeError: as `next_token_topk`.
    """
    inputs = _lm_inputs(model, tokenizer, prompt, target_prefix)
    _check_sampling(k, temperature, model.get_input_embeddings().num_embeddings)
    limit = context_window(model, tokenizer)
    ids = inputs["ids"]
    if limit is not None:
        keep = 1 if inputs["source"] is not None or ids[0] == tokenizer.bos_token_id else 0
        ids = _fit(ids, max(limit - steps + 1, keep + 1), keep_head=keep)
    device = _device(model)
    step_ids = torch.tensor([ids], device=device)
    cache, encoded, source_mask = None, None, None
    if inputs["source"] is not None:
        source = torch.tensor([inputs["source"]], device=device)
        source_mask = torch.ones_like(source)
        encoded = model.get_encoder()(input_ids=source, attention_mask=source_mask)
    new, out = [], []
    for _ in range(min(steps, (limit or 10**9) - len(ids) + 1)):
        if encoded is None:
            result = model(input_ids=step_ids, cache=cache, use_cache=True)
        else:
            result = model(encoder_outputs=encoded, attention_mask=source_mask, decoder_input_ids=step_ids,
                           cache=cache, use_cache=True)  # fmt: skip
        cache = result.cache
        top = _top(tokenizer, result.logits[0, -1].float().cpu(), k, temperature)
        out.append({"continuation": tokenizer.decode(new), "top": top, "chosen": top[0].token, "chosen_id": top[0].id})
        new.append(top[0].id)
        if top[0].id == tokenizer.eos_token_id:
            break
        step_ids = torch.tensor([[top[0].id]], device=device)
    return out


@torch.no_grad()
def class_probabilities(model, tokenizer, text: str, pair: str | None = None,
                        max_length: int | None = None) -> list[tuple[str, float, float]]:  # fmt: skip
    """A classifier's labels with probabilities (softmax of the logits) and logits for `text`, best first.

    Tokenized as `pipelines.tasks.classification.predict_proba` does (the run's scores come from there), so the
    first label is the run's prediction.

    Args:
        pair: the second text, for runs trained on text pairs.
        max_length: tokens per input; None: the tokenizer's limit capped at the model's positions.

    Returns:
        [(label, probability, logit)] for the C classes, best first.
    """
    if max_length is None:
        max_length = min(tokenizer.model_max_length, context_window(model, tokenizer) or 512)
    enc = tokenizer(text, pair, truncation=True, max_length=max_length, return_tensors="pt")
    logits = model(**{k: v.to(_device(model)) for k, v in enc.items()}).logits[0].float().cpu()
    probs = torch.softmax(logits, -1)
    names = base_model(model).config.id2label
    order = probs.argsort(descending=True).tolist()
    return [(str(names.get(i, i)), float(probs[i]), float(logits[i])) for i in order]
