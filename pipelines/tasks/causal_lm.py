"""Causal language modelling (GPT-style): pretraining on packed windows, or prompt -> continuation finetuning.

Two ways to build examples, chosen by the recipe:

* `data.packing: true` (pretraining): documents are tokenized, joined with the end-of-text token and cut into
  fixed windows of `data.max_length` tokens; every position is a target, no step computes padding.
* otherwise: one example per row, `[BOS] prompt "\\n" text EOS`; prompt tokens (and BOS) are -100 so the loss
  is on the continuation only; the real EOS keeps its label so the model learns to stop.

Labels are stored unshifted (aligned with `input_ids`); the loss shifts by one, as transformers' models do.
"""

from __future__ import annotations

import datasets
import torch
from transformers import AutoModelForCausalLM

from pipelines.batching import IGNORE, PAD_MULTIPLE, right_pad
from pipelines.lm_loss import next_token_losses
from pipelines.recipe import Recipe
from pipelines.scoring import (
    ScoreContext,
    Scored,
    example_losses,
    generation_score_names,
    loss_evidence,
    perplexity,
)
from pipelines.tasks import Task
from pipelines.tasks.names import LOSS_SCORES


def _texts(rows: dict, role: str, recipe: Recipe) -> list[str]:
    return [t or "" for t in rows[recipe.data.columns[role]]] if recipe.data.mix == [] else rows["text"]


def pack_windows(token_lists: list[list[int]], eos_id: int, window: int) -> list[list[int]]:
    """Concatenate documents, each followed by EOS, and cut into full windows of `window` tokens.

    The tail shorter than a window is dropped (as transformers' run_clm example does), so every window is
    full and no padding is ever computed.

    Args:
        token_lists: token ids per document, without special tokens.
        eos_id: the end-of-text id appended after each document.
        window: tokens per window.

    Returns:
        List of windows, each exactly `window` ids.
    """
    stream = [t for ids in token_lists for t in (*ids, eos_id)]
    return [stream[i : i + window] for i in range(0, len(stream) - window + 1, window)]


def prompt_example(prompt_ids: list[int], text_ids: list[int], bos_id: int | None, eos_id: int, max_length: int):
    """One finetuning example: ids = [BOS] + prompt + text + [EOS], labels -100 on BOS and prompt.

    Truncation keeps the prompt and cuts the continuation (EOS is kept only when the whole text fits).

    Returns:
        (input_ids, labels), both length <= max_length.
    """
    head = ([bos_id] if bos_id is not None else []) + prompt_ids
    tail = text_ids + [eos_id]
    ids = (head + tail)[:max_length]
    labels = ([IGNORE] * len(head) + tail)[:max_length]
    return ids, labels


def tokenize(rows: datasets.Dataset, tokenizer, recipe: Recipe, split: str) -> datasets.Dataset:
    """Rows -> `input_ids`, `labels` (unshifted, -100 where no loss) and `length`."""
    data = recipe.data
    eos = tokenizer.eos_token_id
    # Exactly one BOS: we tokenize with add_special_tokens=False and prepend the tokenizer's BOS ourselves. For
    # GPT-2 style tokenizers that is the end-of-text token, which also precedes every document in pretraining.
    bos = tokenizer.bos_token_id

    def packed(batch: dict) -> dict:
        # verbose=False: whole documents are longer than the model on purpose; packing cuts them into windows.
        ids = tokenizer(_texts(batch, "text", recipe), add_special_tokens=False, verbose=False)["input_ids"]
        windows = pack_windows(ids, eos, data.max_length)
        return {"input_ids": windows, "labels": windows, "length": [len(w) for w in windows]}

    def prompted(batch: dict) -> dict:
        texts = tokenizer(_texts(batch, "text", recipe), add_special_tokens=False, verbose=False)["input_ids"]
        if "prompt" in data.columns:
            prompts = [p + "\n" for p in _texts(batch, "prompt", recipe)]
            prompts = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        else:
            prompts = [[] for _ in texts]
        out = {"input_ids": [], "labels": [], "length": []}
        for p, t in zip(prompts, texts, strict=True):
            ids, labels = prompt_example(p, t, bos, eos, data.max_length)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["length"].append(len(ids))
        return out

    fn = packed if data.packing else prompted
    return rows.map(fn, batched=True, batch_size=1000, remove_columns=rows.column_names, desc=f"tokenize {split}")


def collate(features: list[dict], tokenizer, recipe: Recipe, pad_to_multiple_of: int = PAD_MULTIPLE
            ) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row rounded up to a multiple of `pad_to_multiple_of`; pad labels are -100, mask 0.

    Returns:
        input_ids, attention_mask, labels: [B, T] int64.
    """
    ids, mask = right_pad([f["input_ids"] for f in features], tokenizer.pad_token_id, pad_to_multiple_of)
    labels, _ = right_pad([f["labels"] for f in features], IGNORE, pad_to_multiple_of)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed next-token cross-entropy (nats) and target counts.

    Position t predicts token t+1 (labels[:, 1:], -100 ignored). Summing (not averaging) lets the loop weight
    every token equally across micro-batches and processes. The LM head and the loss run per chunk of target
    tokens (`pipelines.lm_loss`), so all the [B, T, vocab] logits never exist at once.

    Returns:
        (nll [B] float32, count [B] int64)
    """
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    return next_token_losses(model, inputs, batch["labels"])


def num_targets(batch: dict[str, torch.Tensor]) -> int:
    """Target tokens in a batch: labels after the one-token shift that are not -100."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def generates(recipe: Recipe) -> bool:
    """Whether `score` also generates: with `eval.generate`, named `eval.metrics`, a prompt column, no packing.

    Opt-in by naming the metrics: most causal-LM recipes are scored by perplexity alone, and tiny pretrained
    models have fewer positions than prompt + the default eval.generation.max_new_tokens.
    """
    return bool(recipe.eval.generate and recipe.eval.metrics and "prompt" in recipe.data.columns
                and not recipe.data.packing)


def metrics(recipe: Recipe) -> tuple[str, ...]:
    """The scalar scores `score` reports: loss and perplexity, plus the generation metrics' when it generates."""
    return LOSS_SCORES + (generation_score_names(recipe.eval.metrics) if generates(recipe) else ())


def score(ctx: ScoreContext) -> Scored:
    """Test perplexity; with a prompt column and `eval.metrics` (e.g. [rouge]), also those of generations.

    Perplexity is over the whole test split (continuation tokens only when prompts are masked).
    Generation: prompt = `[BOS] prompt "\\n"`, exactly the head of a training example (`prompt_example`), cut to
    `data.max_length`; left-padded batches, greedy unless the recipe samples, `eval.generation.max_new_tokens`,
    stopped at EOS (which ends every training continuation); reference = the row's text.
    """
    from eval.metrics import generation_scores
    from pipelines.generation import decode, generate_ids

    nll, n = example_losses(ctx)
    scored = Scored(scores=perplexity(nll, n), settings={"perplexity": {"unit": "per token, nats -> exp"}},
                    evidence=loss_evidence(nll, n))
    recipe = ctx.recipe
    if not generates(recipe):
        return scored
    bos = ctx.tokenizer.bos_token_id
    prompts = [p + "\n" for p in _texts(ctx.rows, "prompt", recipe)]
    prompt_ids = ctx.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    prompt_ids = [(([bos] if bos is not None else []) + p)[: recipe.data.max_length] for p in prompt_ids]
    references = _texts(ctx.rows, "text", recipe)
    generated = generate_ids(ctx.accelerator, ctx.model, ctx.tokenizer, prompt_ids, recipe.eval.generation,
                             ctx.batch_size)
    predictions = decode(ctx.tokenizer, generated)
    generated_scores, generated_settings = generation_scores(predictions, references, tuple(recipe.eval.metrics))
    scored.scores.update(generated_scores)
    scored.settings.update(generated_settings)
    scored.settings["generation"] = {**recipe.eval.generation.model_dump(),
                                     "prompt": "[BOS] prompt + newline; reference: the text column"}
    scored.predictions = [{"id": i, "prompt": p.rstrip("\n"), "prediction": g, "reference": r}
                          for i, (p, g, r) in enumerate(zip(prompts, predictions, references, strict=True))]
    return scored


TASK = Task(
    name="causal_lm",
    auto_model=AutoModelForCausalLM,
    peft_task_type="CAUSAL_LM",
    roles=("text",),
    optional_roles=("prompt",),
    primary_metric="perplexity",
    greater_is_better=False,
    tokenize=tokenize,
    collate=collate,
    loss=loss,
    num_targets=num_targets,
    score=score,
    scores_forgetting=True,
    scores_packed_windows=True,
    trains_on_windows=True,
    metrics=metrics,
)
