"""Chat SFT: finetune a decoder on whole conversations written with a chat template, loss on assistant turns.

A conversation is the standard `messages` list of `{"role": "system" | "user" | "assistant", "content": str}`.
It is rendered to ONE text by the tokenizer's chat template (`tokenizer.apply_chat_template`), tokenized without
extra special tokens (exactly as `apply_chat_template(..., tokenize=True)` does), and labelled:

* `chat.loss_on: assistant` (default): every assistant turn's content AND its end-of-turn token (ChatML's
  `<|im_end|>`) keep their labels, so the model learns to answer and to stop. System and user turns, template
  scaffolding (`<|im_start|>assistant\\n`, the newline after `<|im_end|>`), BOS and padding are -100.
  `last_assistant` keeps only the final assistant turn; `all` keeps every token (a plain LM on the rendering).
* Assistant spans come from rendering message prefixes (`messages[:k]` with the generation prompt, then
  `messages[:k+1]`) and mapping those character spans onto token offsets. This works with ANY template that
  renders prefixes as prefixes (ChatML, Llama 3, Qwen 2.5, Zephyr, ...) and never looks at token ids, so the
  end-of-turn token keeps its label even when it doubles as the pad token (SmolLM2's tokenizer does that).
  The same idea as transformers' `return_assistant_tokens_mask`, which only works for templates carrying
  `{% generation %}` markers; the ChatML template installed here carries them too, and the two masks agree.

Templates: `chat.template: tokenizer` uses the tokenizer's own template; `chatml` installs a ChatML template
(OpenAI's format as used by Qwen and SmolLM2), adds `<|im_start|>`/`<|im_end|>` as special tokens when missing
and renders the tokenizer's BOS once at the start. The loop grows the embeddings for added tokens and, under
LoRA, trains just those rows (PEFT `trainable_token_indices`; the tied GPT-2 output head follows), and saves the
tokenizer with the template into the run's `model/`, so plain `tokenizer.apply_chat_template` reproduces the
training format at inference.

Packing (`data.packing: true`, training split only): conversations are packed best-fit-decreasing into windows
of `data.max_length` tokens with `position_ids` restarting at 0 for each conversation and NO 2-D attention mask,
so transformers builds a block-diagonal causal mask from the position resets (its padding-free packing, the
format of `DataCollatorWithFlattening`; it works with sdpa, eager and flash-attention). No token attends across
conversations and GPT-2's absolute positions restart, so a packed batch gives the same loss as the unpacked one.
Validation and test are never packed and always scored on assistant tokens, whatever `loss_on` trains on, so
perplexities stay comparable across recipes.
"""

from __future__ import annotations

import logging

import datasets
import torch
from transformers import AutoModelForCausalLM

from pipelines.errors import TuneforgeError
from pipelines.generation import decode, generate_ids
from pipelines.lm_loss import next_token_losses
from pipelines.recipe import Recipe
from pipelines.runtime import inner_model
from pipelines.scoring import ScoreContext, Scored, example_losses, generation_score_names, loss_evidence
from pipelines.tasks import Task, causal_lm
from pipelines.tasks.chat_template import (
    CHATML_TEMPLATE,
    IGNORE,
    IM_END,
    IM_START,
    ROLES,
    assistant_spans,
    build_prompt_ids,
    chat_config,
    encode_conversation,
    end_of_turn_id,
    install_chat_template,
    labelled,
    normalize_messages,
    render,
    set_stop_tokens,
    stop_token_ids,
)
from pipelines.tasks.names import LOSS_SCORES

# The template helpers are part of this task's public face (tests, the demo and scoring call them as chat.X).
__all__ = [
    "CHATML_TEMPLATE",
    "IGNORE",
    "IM_END",
    "IM_START",
    "ROLES",
    "assistant_spans",
    "build_prompt_ids",
    "chat_config",
    "encode_conversation",
    "end_of_turn_id",
    "install_chat_template",
    "labelled",
    "normalize_messages",
    "render",
    "set_stop_tokens",
    "stop_token_ids",
    "TASK",
    "collate",
    "first_answer_prompts",
    "loss",
    "on_save",
    "pack_conversations",
    "prepare",
    "score",
    "tokenize",
]

logger = logging.getLogger(__name__)


def check_mask(tokenizer, messages: list[dict], loss_on: str, max_length: int) -> tuple[str, list[str]]:
    """One training conversation with its supervised tokens marked, and what is wrong with its mask.

    The most reported chat-finetuning bug is a mask that silently supervises everything or nothing, or drops the
    end-of-turn token so the model never learns to stop (e.g. trl#4879, unsloth#384); this catches each on a
    real conversation of the recipe, with the template the run will use.

    Args:
        tokenizer: with the recipe's chat template installed (`prepare`).
        messages: a normalized training conversation.
        loss_on: `chat.loss_on`.
        max_length: `data.max_length` (turns cut off by it are not checked for their end).

    Returns:
        (the rendering with every supervised run of tokens in «», one message per problem: a mask that is empty,
        all ones while loss_on is not "all", or an assistant turn whose end-of-turn token is not supervised).
    """
    text = render(tokenizer, messages)
    spans = None if loss_on == "all" else assistant_spans(tokenizer, messages, text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids, labels, _ = labelled(tokenizer, enc["input_ids"], enc["offset_mapping"], spans, loss_on, max_length)
    pieces, inside = [], False
    for token, label in zip(ids, labels, strict=True):
        if (label != IGNORE) != inside:
            inside = not inside
            pieces.append("«" if inside else "»")
        pieces.append(tokenizer.decode([token]))
    preview = "".join(pieces) + ("»" if inside else "")
    supervised = sum(label != IGNORE for label in labels)
    problems = []
    where = f"chat.loss_on={loss_on}: one training conversation"
    if supervised == 0:
        problems.append(f"{where} has no supervised token (an empty mask trains nothing); check the template's "
                        "assistant turns and data.max_length")
    elif loss_on != "all" and supervised == len(labels) - 1:  # labels[0] is never a target
        problems.append(f"{where} supervises every token, system and user turns included; the template's "
                        "assistant turns were not located")
    if spans:
        eot = end_of_turn_id(tokenizer)
        selected = spans[-1:] if loss_on == "last_assistant" else spans
        for k, (start, end) in enumerate(selected):
            last = max((i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < end and e > start), default=None)
            if last is None or last >= len(ids):
                continue  # cut off by data.max_length: its end is not in the window
            if ids[last] != eot or labels[last] == IGNORE:
                problems.append(f"{where}: assistant turn {k + 1} does not end with a supervised end-of-turn token "
                                f"{tokenizer.decode([eot])!r}, so the model would not learn to stop")
    return preview, problems


def check(recipe: Recipe, tokenizer, rows: datasets.Dataset) -> tuple[list[str], list[str]]:
    """`validate`'s chat check: render one training conversation with its mask (`check_mask`).

    Args:
        recipe: the chat recipe.
        tokenizer: the base's tokenizer with the recipe's template installed (`prepare`).
        rows: training rows (the first is checked).

    Returns:
        (notes: the marked rendering, errors: the mask's problems).
    """
    chat = chat_config(recipe)
    messages = normalize_messages(rows[0][recipe.data.columns["messages"]], chat.system_prompt,
                                  "data.columns.messages (train row 0)")
    preview, problems = check_mask(tokenizer, messages, chat.loss_on, recipe.data.max_length)
    shown = preview.rstrip().replace("\n", "\n       ")
    return [f"one training conversation, supervised tokens in «»:\n       {shown}"], problems


# ---------------------------------------------------------------------------------------------------------------
# Task functions


def prepare(recipe: Recipe, data: datasets.DatasetDict, tokenizer) -> tuple[datasets.DatasetDict, dict]:
    """Install the recipe's chat template (and ChatML tokens) into the tokenizer; the data is unchanged."""
    install_chat_template(tokenizer, chat_config(recipe).template)
    return data, {}


def pack_conversations(examples: list[tuple[list[int], list[int]]], window: int) -> dict[str, list[list[int]]]:
    """Pack conversations into windows of at most `window` tokens, best fit decreasing.

    Longest conversations first, each into the open window with the least room that still fits it (a new one
    when none does), which leaves little padding. Positions restart at 0 for every conversation.

    Args:
        examples: (input_ids, labels) per conversation, each at most `window` long.
        window: tokens per window (`data.max_length`).

    Returns:
        {"input_ids", "labels", "position_ids", "length"} with one entry per window.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i][0]), i))
    windows: list[list[int]] = []  # example indices per window
    room: list[int] = []
    by_room: list[list[int]] = [[] for _ in range(window + 1)]  # free tokens -> windows with that much room
    for i in order:
        need = len(examples[i][0])
        best = next((r for r in range(need, window + 1) if by_room[r]), None)
        if best is None:
            windows.append([])
            room.append(window)
            w = len(windows) - 1
        else:
            w = by_room[best].pop()
        windows[w].append(i)
        room[w] -= need
        by_room[room[w]].append(w)
    out = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for members in windows:
        out["input_ids"].append([t for i in members for t in examples[i][0]])
        out["labels"].append([t for i in members for t in examples[i][1]])
        out["position_ids"].append([p for i in members for p in range(len(examples[i][0]))])
        out["length"].append(len(out["input_ids"][-1]))
    return out


def tokenize(rows: datasets.Dataset, tokenizer, recipe: Recipe, split: str) -> datasets.Dataset:
    """Conversations -> `input_ids`, `labels` (-100 outside the trained turns), `length` (+ `position_ids` packed).

    Raises:
        TuneforgeError: a malformed conversation (named by row), or a template problem.
    """
    chat, data = chat_config(recipe), recipe.data
    column = data.columns["messages"]
    loss_on = chat.loss_on if split == "train" else "assistant"  # scores always on assistant tokens

    def encode(batch: dict, indices: list[int]) -> dict:
        # encode_conversation, with one batched (Rust) tokenizer call per batch of conversations
        conversations = [normalize_messages(m, chat.system_prompt, f"data.columns.messages ({split} row {i})")
                         for i, m in zip(indices, batch[column], strict=True)]
        texts = [render(tokenizer, m) for m in conversations]
        spans = [None if loss_on == "all" else assistant_spans(tokenizer, m, t)
                 for m, t in zip(conversations, texts, strict=True)]
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)  # cut below
        out = {"input_ids": [], "labels": [], "length": [], "truncated": []}
        for ids, offsets, sp in zip(enc["input_ids"], enc["offset_mapping"], spans, strict=True):
            ids, labels, truncated = labelled(tokenizer, ids, offsets, sp, loss_on, data.max_length)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["length"].append(len(ids))
            out["truncated"].append(truncated)
        return out

    encoded = rows.map(encode, batched=True, with_indices=True, remove_columns=rows.column_names,
                       desc=f"tokenize {split}")
    if any(encoded["truncated"]):
        logger.warning("chat: %d of %d %s conversations cut to data.max_length=%d tokens",
                       sum(encoded["truncated"]), len(encoded), split, data.max_length)
    encoded = encoded.remove_columns("truncated")
    if not (data.packing and split == "train"):
        return encoded
    packed = pack_conversations(list(zip(encoded["input_ids"], encoded["labels"], strict=True)), data.max_length)
    return datasets.Dataset.from_dict(packed)


def collate(features: list[dict], tokenizer, recipe: Recipe, pad_to_multiple_of: int = causal_lm.PAD_MULTIPLE
            ) -> dict[str, torch.Tensor]:
    """Unpacked rows: causal LM's right-padded batch. Packed windows: the same plus `position_ids` [B, T].

    Padding after a packed window gets positions 0, 1, ... of its own, so transformers treats it as one more
    sequence that no real token attends to; its labels are -100. `attention_mask` then only marks real tokens
    for the loop's token counts; the loss does not pass it to the model.
    """
    batch = causal_lm.collate(features, tokenizer, recipe, pad_to_multiple_of)
    if "position_ids" in features[0]:
        width = batch["input_ids"].size(1)
        positions = torch.zeros_like(batch["input_ids"])
        for i, f in enumerate(features):
            n = len(f["position_ids"])
            positions[i, :n] = torch.tensor(f["position_ids"])
            positions[i, n:] = torch.arange(width - n)
        batch["position_ids"] = positions
    return batch


def loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal LM's per-example summed NLL (nats) and target counts; packed windows keep conversations apart.

    Packed: the forward gets `position_ids` and no `attention_mask`, so transformers derives the block-diagonal
    causal mask from where positions restart (`masking_utils.find_packed_sequence_indices`). `use_cache=False`
    because that detection is skipped when a KV cache exists (GPT-2 creates one whenever use_cache is on).

    Returns:
        (nll [B] float32, count [B] int64), per row (a packed row holds several conversations).
    """
    if "position_ids" not in batch:
        return causal_lm.loss(model, batch)
    return next_token_losses(model, {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]},
                             batch["labels"])


def first_answer_prompts(rows: datasets.Dataset, recipe: Recipe) -> tuple[list[list[dict]], list[str]]:
    """For each conversation: the messages before its first assistant turn, and that turn's content."""
    chat = chat_config(recipe)
    prompts, references = [], []
    for i, messages in enumerate(rows[recipe.data.columns["messages"]]):
        messages = normalize_messages(messages, chat.system_prompt, f"data.columns.messages (test row {i})")
        first = next((k for k, m in enumerate(messages) if m["role"] == "assistant"), None)
        if first is None:
            raise TuneforgeError(f"data.columns.messages (test row {i}): the conversation has no assistant turn")
        prompts.append(messages[:first])
        references.append(messages[first]["content"])
    return prompts, references


def generation_metrics(recipe: Recipe) -> tuple[str, ...]:
    """The metric modules that score generated first answers: `eval.metrics`, or ROUGE."""
    return tuple(recipe.eval.metrics) or ("rouge",)


def metrics(recipe: Recipe) -> tuple[str, ...]:
    """The scalar scores `score` reports: assistant-token loss and perplexity, plus those of generated answers."""
    return LOSS_SCORES + (generation_score_names(generation_metrics(recipe)) if recipe.eval.generate else ())


def score(ctx: ScoreContext) -> Scored:
    """Assistant-token perplexity of the test conversations, and ROUGE of generated first answers.

    Generation: prompt = system + first user turn + the generation prompt (left-padded batches, greedy unless
    the recipe samples), stopped at the end-of-turn token, compared with the reference first answer by ROUGE
    (or the recipe's `eval.metrics`) through `eval.metrics.generation_scores`. Perplexity stays the primary
    metric: it scores every assistant token, ROUGE only the first answer's words.
    """
    from eval.metrics import generation_scores, perplexity_scores

    nll, n = example_losses(ctx)
    scores = perplexity_scores(nll.tolist(), n.tolist())
    settings = {"perplexity": {"unit": "per assistant token incl. end-of-turn, nats -> exp",
                               "tokens": "assistant turns of the test conversations"}}
    if not ctx.recipe.eval.generate:
        return Scored(scores=scores, settings=settings, evidence=loss_evidence(nll, n))
    gen = ctx.recipe.eval.generation
    metrics = generation_metrics(ctx.recipe)
    messages, references = first_answer_prompts(ctx.rows, ctx.recipe)
    prompts = [build_prompt_ids(ctx.tokenizer, m, max_length=ctx.recipe.data.max_length) for m in messages]
    set_stop_tokens(ctx.accelerator.unwrap_model(ctx.model), ctx.tokenizer)
    generated = generate_ids(ctx.accelerator, ctx.model, ctx.tokenizer, prompts, gen, ctx.batch_size)
    predictions = decode(ctx.tokenizer, generated)
    generated_scores, generated_settings = generation_scores(predictions, references, metrics)
    scores.update(generated_scores)
    settings.update(generated_settings)
    settings["generation"] = {**gen.model_dump(), "stop_token_ids": stop_token_ids(ctx.tokenizer),
                              "prompt": "system + first user turn + generation prompt; reference: first answer"}
    rows = [{"id": i, "prompt": m[-1]["content"], "prediction": p, "reference": r}
            for i, (m, p, r) in enumerate(zip(messages, predictions, references, strict=True))]
    return Scored(scores=scores, settings=settings, predictions=rows, evidence=loss_evidence(nll, n))


def on_save(model_dir, model, tokenizer, recipe: Recipe) -> None:
    """Stop at the end-of-turn token everywhere: in the saved generation config and as the saved tokenizer's EOS.

    PEFT's loaders do not read an adapter folder's generation_config.json, and pipelines and servers stop at the
    tokenizer's EOS, so the saved tokenizer names the end-of-turn token (ChatML `<|im_end|>`) as its EOS. The
    in-memory tokenizer is left as it is (scoring runs after saving). The adapter itself is saved by
    `distributed.save_model`, without copies of the embedding matrices when the added marker rows train through
    `trainable_token_indices`.
    """
    from transformers import AutoTokenizer

    set_stop_tokens(model, tokenizer)
    inner = inner_model(model)
    inner.generation_config.save_pretrained(model_dir)
    end = end_of_turn_id(tokenizer)
    if end is not None and end != tokenizer.eos_token_id:
        saved = AutoTokenizer.from_pretrained(model_dir)
        saved.eos_token = tokenizer.convert_ids_to_tokens(end)
        saved.save_pretrained(model_dir)


TASK = Task(
    name="chat",
    auto_model=AutoModelForCausalLM,
    peft_task_type="CAUSAL_LM",
    roles=("messages",),
    primary_metric="perplexity",
    greater_is_better=False,
    tokenize=tokenize,
    collate=collate,
    loss=loss,
    num_targets=causal_lm.num_targets,
    score=score,
    scores_forgetting=True,
    prepare=prepare,
    on_save=on_save,
    generates=True,
    demo_feed="turn",
    check=check,
    metrics=metrics,
)
