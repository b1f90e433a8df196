"""Sequence to sequence (BART-style encoder-decoder): summarization and translation, scored on generated text.

Examples: the `source` column is the encoder input, the `target` column becomes `labels` (the tokenizer's
`text_target`), both wrapped in the tokenizer's special tokens (BART: `<s> ... </s>`). Labels are padded with -100
and nothing else: the model builds its decoder inputs from them (`shift_tokens_right` in transformers' BART:
`[decoder_start_token_id] + labels[:-1]`, -100 replaced by the pad id), so the decoder never sees -100 and there
is no second shift here. With BART's `decoder_start_token_id = </s>` a target `<s> t1 t2 </s>` trains the decoder
on inputs `</s> <s> t1 t2` against labels `<s> t1 t2 </s>`, exactly what generation starts from.

Scoring on the test split: the references' perplexity under the model (teacher forcing, cheap) and generation
with the recipe's decoding settings (`eval.generation`; batched beam search with the KV cache, sorted by length,
see `pipelines.generation`), scored with `eval.metrics` (ROUGE for summarization, BLEU and chrF for translation).
The first metric listed is the run's primary metric.
"""

from __future__ import annotations

import logging

import datasets
import torch
import torch.nn.functional as F
from transformers import AutoModelForSeq2SeqLM

from pipelines import checks
from pipelines.batching import IGNORE, PAD_MULTIPLE, right_pad
from pipelines.errors import TuneforgeError
from pipelines.generation import decode, generate_ids
from pipelines.recipe import Recipe, Seq2SeqConfig
from pipelines.runtime import is_main_process
from pipelines.scoring import ScoreContext, Scored, example_losses, generation_score_names, loss_evidence
from pipelines.tasks import Task
from pipelines.tasks.names import LOSS_SCORES

logger = logging.getLogger(__name__)

# Scored when the recipe leaves eval.metrics empty: all three (each costs well under a second on a test split).
DEFAULT_METRICS = ("rouge", "bleu", "chrf")
# The score that stands for a metric when it is listed first (the run's primary metric).
HEADLINE = {"rouge": "rougeL", "bleu": "bleu", "chrf": "chrf"}
# ROUGE with Porter stemming, as in the CNN/DailyMail and XSum literature and HF's summarization examples.
METRIC_KWARGS = {"rouge": {"use_stemmer": True}}


def settings(recipe: Recipe) -> Seq2SeqConfig:
    """The recipe's `seq2seq:` section, or its defaults when the recipe has none.

    Args:
        recipe: a seq2seq recipe.

    Returns:
        The target-side settings.
    """
    return recipe.seq2seq if recipe.seq2seq is not None else Seq2SeqConfig()


def column(recipe: Recipe, role: str) -> str:
    """The single column the recipe maps to `role`.

    Raises:
        TuneforgeError: the role maps to a list of columns.
    """
    col = recipe.data.columns[role]
    if not isinstance(col, str):
        raise TuneforgeError(f"data.columns.{role}: task {recipe.task!r} takes one column here, got {col}; pick one")
    return col


def max_positions(recipe: Recipe) -> int | None:
    """The model's learned position table size (BART `max_position_embeddings`), or None if it has none.

    Read from the scratch architecture or the base checkpoint's config, without loading weights.
    """
    if recipe.model.scratch is not None:
        return recipe.model.scratch.context_length
    from pipelines import modeling

    return getattr(modeling.base_config(recipe.model.base), "max_position_embeddings", None)


def check_lengths(recipe: Recipe, positions: int | None) -> None:
    """Every length the recipe asks for must fit the model's position table.

    The decoder holds `decoder_start_token_id` plus every generated token, so generation needs
    `max_new_tokens + 1` positions; training needs `target_max_length` (the labels, start token included by
    the shift) and the encoder `max_length`.

    Raises:
        TuneforgeError: every length that does not fit, with the limit and the fix.
    """
    if positions is None:
        return
    problems = [p for p in [checks.max_length_problem(recipe.data.max_length, positions,
                                                      " (longer sources are truncated and counted)")] if p]
    target_max_length = settings(recipe).target_max_length
    if recipe.task == "seq2seq" and target_max_length > positions:
        problems.append(f"seq2seq.target_max_length: {target_max_length} exceeds the model's {positions} "
                        f"positions; set seq2seq.target_max_length<={positions}")
    gen = recipe.eval.generation
    if recipe.task == "seq2seq" and recipe.eval.generate and gen.max_new_tokens + 1 > positions:
        problems.append(f"eval.generation.max_new_tokens: {gen.max_new_tokens} new tokens after the decoder start "
                        f"token need {gen.max_new_tokens + 1} positions but the model has {positions}; set "
                        f"eval.generation.max_new_tokens<={positions - 1}")
    if problems:
        raise TuneforgeError("\n".join(problems))


def prepare(recipe: Recipe, data: datasets.DatasetDict, tokenizer) -> tuple[datasets.DatasetDict, dict]:
    """Check lengths against the model, drop rows with an empty source or target (counted in the log).

    Returns:
        (data without empty rows, no extra `from_pretrained` kwargs)

    Raises:
        TuneforgeError: a length the model cannot honour, or a split left empty.
    """
    src, tgt = column(recipe, "source"), column(recipe, "target")
    check_lengths(recipe, max_positions(recipe))
    out = {}
    for split, rows in data.items():
        keep = [i for i, (s, t) in enumerate(zip(rows[src], rows[tgt], strict=True))
                if s is not None and t is not None and s.strip() and t.strip()]
        dropped = len(rows) - len(keep)
        if dropped and is_main_process():
            logger.warning("%s: dropped %d of %d rows with an empty %r or %r", split, dropped, len(rows), src, tgt)
        if not keep:
            raise TuneforgeError(f"data.columns: every {split} row has an empty {src!r} or {tgt!r}; check the columns")
        out[split] = rows.select(keep) if dropped else rows
    return datasets.DatasetDict(out), {}


def tokenize_pairs(tokenizer, sources: list[str], targets: list[str], max_length: int, target_max_length: int):
    """Tokenize source/target pairs with the tokenizer's special tokens; truncate and count the long ones.

    Args:
        sources: encoder texts.
        targets: decoder texts (tokenized as `text_target`).
        max_length: source tokens per example, special tokens included.
        target_max_length: label tokens per example, special tokens included.

    Returns:
        (input_ids, labels, truncated_sources, truncated_targets): token id lists per example (unpadded; labels
        have no -100) and how many sources / targets were cut.
    """
    full = tokenizer(sources, text_target=targets, verbose=False)
    input_ids, labels = full["input_ids"], full["labels"]
    long_src = [i for i, ids in enumerate(input_ids) if len(ids) > max_length]
    long_tgt = [i for i, ids in enumerate(labels) if len(ids) > target_max_length]
    # Re-tokenize only the long rows with truncation: the tokenizer then keeps its closing special tokens.
    if long_src:
        cut = tokenizer([sources[i] for i in long_src], max_length=max_length, truncation=True)["input_ids"]
        for i, ids in zip(long_src, cut, strict=True):
            input_ids[i] = ids
    if long_tgt:
        cut = tokenizer(text_target=[targets[i] for i in long_tgt], max_length=target_max_length,
                        truncation=True)["input_ids"]
        for i, ids in zip(long_tgt, cut, strict=True):
            labels[i] = ids
    return input_ids, labels, len(long_src), len(long_tgt)


def length_tiebreak(source_tokens: int, target_tokens: int) -> int:
    """The order of pairs whose longer side is equally long: source-longer pairs first, then by the shorter side.

    Args:
        source_tokens, target_tokens: the pair's token counts (each < 2**20).

    Returns:
        `side * 2**20 + shorter`, side 1 when the source is at least as long as the target: one integer that sorts
        like the tuple (side, shorter).
    """
    return (source_tokens >= target_tokens) * 2**20 + min(source_tokens, target_tokens)


def tokenize(rows: datasets.Dataset, tokenizer, recipe: Recipe, split: str) -> datasets.Dataset:
    """Rows -> `input_ids` (source), `labels` (target, unshifted), `length` (the longer of the two) and
    `length_tiebreak`: length-grouped batching sorts by `length` and breaks its ties by which side is the longer
    one, then by the shorter side's length (one integer, `side * 2**20 + shorter`), so a batch holds pairs that pad
    alike on both sides."""
    data = recipe.data
    src, tgt = column(recipe, "source"), column(recipe, "target")
    input_ids, labels, cut_src, cut_tgt = tokenize_pairs(
        tokenizer, list(rows[src]), list(rows[tgt]), data.max_length, settings(recipe).target_max_length
    )
    if (cut_src or cut_tgt) and is_main_process():
        logger.warning(
            "%s: truncated %d of %d sources to data.max_length=%d and %d targets to seq2seq.target_max_length=%d",
            split, cut_src, len(rows), data.max_length, cut_tgt, settings(recipe).target_max_length,
        )
    # `length` orders length-grouped batches: the longer side decides how much a pair pads (source or target).
    pairs = [(len(s), len(t)) for s, t in zip(input_ids, labels, strict=True)]
    lengths = [max(pair) for pair in pairs]
    # Measured on the benchmark's 1280 gettext pairs (6 data orders): padding 9.9% with ties broken by
    # source + target tokens, 8.8% with (longer side, shorter length); docs/measurements.md.
    tiebreak = [length_tiebreak(s, t) for s, t in pairs]
    return datasets.Dataset.from_dict({"input_ids": input_ids, "labels": labels, "length": lengths,
                                       "length_tiebreak": tiebreak})


def pad_batch(sources: list[list[int]], targets: list[list[int]], pad_id: int, pad_to_multiple_of: int = PAD_MULTIPLE
              ) -> dict[str, torch.Tensor]:
    """Right-pad sources with the pad id and targets with -100, each to its longest row rounded up to a multiple.

    Returns:
        input_ids, attention_mask: [B, S] int64; labels: [B, T] int64 (-100 on padding).
    """
    ids, mask = right_pad(sources, pad_id, pad_to_multiple_of)
    labels, _ = right_pad(targets, IGNORE, pad_to_multiple_of)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate(features: list[dict], tokenizer, recipe: Recipe, pad_to_multiple_of: int = PAD_MULTIPLE
            ) -> dict[str, torch.Tensor]:
    """Pad a micro-batch (see `pad_batch`); decoder inputs are left to the model."""
    return pad_batch([f["input_ids"] for f in features], [f["labels"] for f in features], tokenizer.pad_token_id,
                     pad_to_multiple_of)


def loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed cross-entropy over the labels (nats) and target counts.

    `labels` go into the model, which derives `decoder_input_ids` from them (shift right, start token first);
    logits[:, t] predicts labels[:, t], so no shift happens here.

    Returns:
        (nll [B] float32, count [B] int64)
    """
    labels = batch["labels"]
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, use_cache=False
    ).logits
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(labels.shape)
    return nll.sum(dim=1), (labels != IGNORE).sum(dim=1)


def num_targets(batch: dict[str, torch.Tensor]) -> int:
    """Target tokens in a batch: labels that are not -100 (no shift: labels align with the logits)."""
    return int((batch["labels"] != IGNORE).sum())


def metric_names(recipe: Recipe) -> tuple[str, ...]:
    """The generation metrics to compute: `eval.metrics`, or every one when it is empty."""
    return tuple(recipe.eval.metrics) or DEFAULT_METRICS


def metrics(recipe: Recipe) -> tuple[str, ...]:
    """The scalar scores `score` reports: reference loss and perplexity, plus the generation metrics' scores."""
    return LOSS_SCORES + (generation_score_names(metric_names(recipe)) if recipe.eval.generate else ())


def check_generation(model, recipe: Recipe) -> None:
    """The loaded model's position table must hold the start token plus `max_new_tokens`.

    Raises:
        TuneforgeError: see `check_lengths`.
    """
    config = getattr(model, "config", None)
    check_lengths(recipe, getattr(config, "max_position_embeddings", None))


def score(ctx: ScoreContext) -> Scored:
    """Reference perplexity and generation metrics on the test split.

    Returns:
        Scored with `loss`, `perplexity`, `num_tokens` (reference tokens) and, when `eval.generate`, the metric
        scores (`rouge1` ... `rougeLsum` 0-1, `bleu` and `chrf` 0-100); predictions
        `{"id", "source", "prediction", "reference"}` per test row in split order.
    """
    from eval.metrics import generation_scores, perplexity_scores

    recipe = ctx.recipe
    nll, n = example_losses(ctx)
    scores = perplexity_scores(nll.tolist(), n.tolist())
    settings = {"perplexity": {"unit": "reference tokens, teacher forcing, nats -> exp"}}
    if not recipe.eval.generate:
        return Scored(scores=scores, settings=settings, primary_metric="perplexity", greater_is_better=False,
                      evidence=loss_evidence(nll, n))

    check_generation(ctx.accelerator.unwrap_model(ctx.model), recipe)
    generated = generate_ids(
        ctx.accelerator, ctx.model, ctx.tokenizer, list(ctx.features["input_ids"]), recipe.eval.generation,
        ctx.batch_size,
    )
    predictions = decode(ctx.tokenizer, generated)
    sources = list(ctx.rows[column(recipe, "source")])
    references = [t.strip() for t in ctx.rows[column(recipe, "target")]]
    metrics = metric_names(recipe)
    gen_scores, gen_settings = generation_scores(
        predictions, references, metrics, {m: METRIC_KWARGS[m] for m in metrics if m in METRIC_KWARGS}
    )
    scores.update(gen_scores)
    settings.update(gen_settings)
    settings["generation"] = recipe.eval.generation.model_dump()
    rows = [
        {"id": i, "source": s, "prediction": p, "reference": r}
        for i, (s, p, r) in enumerate(zip(sources, predictions, references, strict=True))
    ]
    return Scored(scores=scores, settings=settings, predictions=rows, primary_metric=HEADLINE[metrics[0]],
                  greater_is_better=True)


TASK = Task(
    name="seq2seq",
    auto_model=AutoModelForSeq2SeqLM,
    peft_task_type="SEQ_2_SEQ_LM",
    roles=("source", "target"),
    primary_metric="rougeL",  # the default metrics' first; a recipe's eval.metrics decides per run (Scored)
    greater_is_better=True,
    tokenize=tokenize,
    collate=collate,
    loss=loss,
    num_targets=num_targets,
    score=score,
    prepare=prepare,
    generates=True,
    demo_feed="source",
    metrics=metrics,
)
