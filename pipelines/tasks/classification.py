"""Sequence classification with an encoder (BERT, MiniLM, RoBERTa, DistilBERT): a text (or a pair) -> one label.

Roles: `text` (one column), optional `text_pair` (a second column, encoded as the tokenizer's sentence pair,
e.g. `[CLS] text [SEP] pair [SEP]` for BERT) and `label`.

The label set comes from the TRAINING split only (`prepare`): labels sorted by training frequency, ties by name;
`classification.top_k_labels` keeps the K most frequent and `classification.other_labels` drops the rest or maps them
to one extra class `other`. Labels of validation/test rows that are not in the label set (outside the top K, or never
seen in training) are counted and logged, then dropped or mapped to `other` (when that class exists) -- never a crash
and never a silently wrong index. Ids are stored in a `label_id` column; `id2label`/`label2id` go into the model
config, which `on_save` writes next to a LoRA adapter so the run loads with plain transformers + peft.

The head is trained in full and saved with a LoRA adapter (PEFT's `modules_to_save`, which PEFT sets to the
`classifier`/`score` head for `SEQ_CLS`). Batches are length-grouped by the loop (`length` column) and padded to
a multiple of 8 (on GPUs; the loop decides). The loss is the per-example cross-entropy (summed by the loop, one
target per example).
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import partial

import datasets
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from pipelines.batching import PAD_MULTIPLE, right_pad
from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe
from pipelines.runtime import unwrap
from pipelines.scoring import ScoreContext, Scored, sorted_loader
from pipelines.tasks import Task
from pipelines.tasks.labels import LABEL_ID, OTHER, label_set, map_labels, role_column, settings

logger = logging.getLogger(__name__)

__all__ = ["LABEL_ID", "OTHER", "TASK", "balanced_weights", "collate", "encode", "label_names", "label_set", "logits",
           "loss", "map_labels", "predict_proba", "role_column", "score", "score_log_probs"]

TOP_PROBABILITIES = 3  # classes (with probabilities) listed per example in predictions.jsonl
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
def prepare(recipe: Recipe, data: datasets.DatasetDict, tokenizer) -> tuple[datasets.DatasetDict, dict]:
    """The label set and ids (see `map_labels`), and the label maps for `from_pretrained`.

    Also sets `tokenizer.model_max_length` to `data.max_length`, so the tokenizer saved with the run truncates
    exactly as training and scoring did (`predict_proba` uses it by default).

    Returns:
        (data with `label_id`, {"num_labels", "id2label", "label2id", "problem_type"}).
    """
    data, names, _ = map_labels(recipe, data)
    if tokenizer is not None:
        tokenizer.model_max_length = recipe.data.max_length
    kwargs = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
        "problem_type": "single_label_classification",
    }
    return data, kwargs


def label_names(model) -> list[str]:
    """Class names in id order from a (possibly PEFT- or DDP-wrapped) classifier's config."""
    id2label = unwrap(model).config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


# ---------------------------------------------------------------------------------------------------------------
# Tokens and batches


def encode(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> dict[str, list]:
    """Tokenize texts (or text pairs) with the model's special tokens, truncated to `max_length` tokens.

    Pairs are truncated longest-first (transformers' default), so both parts keep their beginnings.

    Returns:
        {"input_ids", "length", and "token_type_ids" when the tokenizer makes them}: one list per text.
    """
    enc = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True, max_length=max_length)
    out = {"input_ids": enc["input_ids"], "length": [len(ids) for ids in enc["input_ids"]]}
    if "token_type_ids" in enc:
        out["token_type_ids"] = enc["token_type_ids"]
    return out


def balanced_weights(label_ids: list[int]) -> dict[int, float]:
    """Per-class loss weights n / (K * count): scikit-learn's `class_weight="balanced"` (after King & Zeng 2001).

    Every class then carries the same total weight, and the weights average 1 over the examples, so the loss keeps
    its scale. Returns {label id: weight} for the labels present.
    """
    counts = Counter(label_ids)
    return {label: len(label_ids) / (len(counts) * n) for label, n in counts.items()}


def tokenize(rows: datasets.Dataset, tokenizer, recipe: Recipe, split: str) -> datasets.Dataset:
    """Rows (with `label_id` from `prepare`) -> `input_ids`, [`token_type_ids`], `labels`, `length` and, for the
    training split with `classification.class_weights: balanced`, `weight` (see `balanced_weights`)."""
    text_col, pair_col = role_column(recipe, "text"), role_column(recipe, "text_pair")
    balanced = settings(recipe).class_weights == "balanced" and split == "train"
    weights = balanced_weights(list(rows[LABEL_ID])) if balanced else None

    def fn(batch: dict) -> dict:
        pairs = batch[pair_col] if pair_col else None
        out = {**encode(tokenizer, batch[text_col], pairs, recipe.data.max_length), "labels": batch[LABEL_ID]}
        if weights is not None:
            out["weight"] = [weights[label] for label in batch[LABEL_ID]]
        return out

    return rows.map(fn, batched=True, batch_size=1000, remove_columns=rows.column_names, desc=f"tokenize {split}")


def collate(features: list[dict], tokenizer, recipe: Recipe | None = None, pad_to_multiple_of: int = PAD_MULTIPLE
            ) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row rounded up to a multiple of `pad_to_multiple_of`; the mask is 0 on padding.

    Returns:
        input_ids, attention_mask [, token_type_ids]: [B, T] int64; labels [B] int64 and weight [B] float32 when
        the rows have them.
    """
    ids, mask = right_pad([f["input_ids"] for f in features], tokenizer.pad_token_id, pad_to_multiple_of)
    batch = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in features[0]:
        batch["token_type_ids"] = right_pad([f["token_type_ids"] for f in features], 0, pad_to_multiple_of)[0]
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
    if "weight" in features[0]:
        batch["weight"] = torch.tensor([f["weight"] for f in features], dtype=torch.float32)
    return batch


def logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Class logits [B, num_labels] in float32 (the model may run in bf16)."""
    return model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits.float()


def loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy (nats), times the example's class weight when the batch has `weight`, and one
    target per example (so the loop's mean is sum(w_i * nll_i) / n, scikit-learn's sample-weighted loss).

    Returns:
        (nll [B] float32, count [B] int64 of ones)
    """
    nll = F.cross_entropy(logits(model, batch), batch["labels"], reduction="none")
    if "weight" in batch:
        nll = nll * batch["weight"]
    return nll, torch.ones_like(batch["labels"])


def num_targets(batch: dict[str, torch.Tensor]) -> int:
    """One target per example."""
    return int(batch["labels"].numel())


# ---------------------------------------------------------------------------------------------------------------
# Prediction and scores


@torch.no_grad()
def predict_proba(model, tokenizer, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32,
                  max_length: int | None = None) -> torch.Tensor:
    """Class probabilities for raw texts: the computation the run's scores come from, on one process.

    Texts are sorted by length and batched (padding never changes a prediction: padded positions are masked).

    Args:
        model: a classifier (plain or PEFT-wrapped), on any device.
        tokenizer: its tokenizer (a run's saved tokenizer truncates at the run's data.max_length).
        texts: N texts.
        text_pairs: N second texts for pair classification, or None.
        batch_size: texts per forward pass.
        max_length: tokens per input; None: `tokenizer.model_max_length` capped at the model's positions.

    Returns:
        [N, num_labels] float32 CPU tensor of probabilities (softmax of the logits), rows in input order.

    Raises:
        TuneforgeError: text_pairs of a different length than texts.
    """
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise TuneforgeError(f"predict_proba: {len(texts)} texts but {len(text_pairs)} text_pairs")
    if max_length is None:
        positions = getattr(model.config, "max_position_embeddings", None) or 512
        max_length = min(tokenizer.model_max_length, positions)
    enc = encode(tokenizer, texts, text_pairs, max_length)
    rows = [{k: enc[k][i] for k in enc} for i in range(len(texts))]
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["length"])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.empty((len(rows), len(label_names(model))), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx], tokenizer).items()}
        out[idx] = logits(model, batch).softmax(dim=-1).cpu()
    model.train(was_training)
    return out


@torch.no_grad()
def test_log_probs(ctx: ScoreContext) -> torch.Tensor:
    """Log class probabilities for every test example, gathered from all processes.

    Returns:
        [N, num_labels] float32 CPU tensor in the split's original order.
    """
    loader, order = sorted_loader(ctx)
    was_training = ctx.model.training
    ctx.model.eval()
    parts = []
    for batch in loader:
        parts.append(ctx.accelerator.gather_for_metrics(logits(ctx.model, batch).log_softmax(dim=-1)).cpu())
    ctx.model.train(was_training)
    sorted_lp = torch.cat(parts)
    out = torch.empty_like(sorted_lp)
    out[torch.tensor(order)] = sorted_lp
    return out


# The scalar scores `score_log_probs` reports (`eval.metrics.classification_scores` plus the mean cross-entropy).
METRICS = ("accuracy", "macro_f1", "weighted_f1", "micro_f1", "mcc", "loss")


def metrics(recipe: Recipe) -> tuple[str, ...]:
    """The scalar scores `score` reports (the same for every classification recipe)."""
    return METRICS


def score(ctx: ScoreContext) -> Scored:
    """Accuracy, macro/weighted F1, per-class precision/recall/F1 and mean cross-entropy on the test split.

    Also a confusion-matrix PNG (`confusion_matrix.png`, written by the loop into the run folder) and one
    prediction per example with its top-3 class probabilities.
    """
    log_probs = test_log_probs(ctx)
    names = label_names(ctx.accelerator.unwrap_model(ctx.model))
    y_true = [int(y) for y in ctx.features["labels"]]
    text_col, pair_col = role_column(ctx.recipe, "text"), role_column(ctx.recipe, "text_pair")
    pairs = list(ctx.rows[pair_col]) if pair_col else None
    return score_log_probs(log_probs, y_true, names, list(ctx.rows[text_col]), pairs)


def score_log_probs(log_probs: torch.Tensor, y_true: list[int], names: list[str], texts: list[str],
           pairs: list[str] | None = None, settings: dict | None = None) -> Scored:
    """Scores, predictions and the confusion matrix from class log-probabilities (shared with the baseline).

    Args:
        log_probs: [N, C] log class probabilities, rows in test-split order.
        y_true: N true class ids.
        names: C class names in id order.
        texts / pairs: the N inputs, shown in predictions.jsonl.
        settings: extra metric settings to record (e.g. the baseline's vectorizer).

    Returns:
        Scored with scores {accuracy, macro_f1, weighted_f1, micro_f1, mcc, per_class, loss}, predictions
        [{id, text, [text_pair], reference, prediction, probabilities (top 3)}] and the confusion-matrix artifact.
    """
    from eval.metrics import classification_scores
    from eval.plots import confusion_matrix_png

    y_pred = log_probs.argmax(dim=-1).tolist()
    scores = classification_scores(y_true, y_pred, labels=list(range(len(names))), label_names=names)
    nll = -log_probs[torch.arange(len(y_true)), torch.tensor(y_true, dtype=torch.long)]
    scores["loss"] = float(nll.double().mean())  # mean cross-entropy per example, nats
    top_p, top_i = log_probs.exp().topk(min(TOP_PROBABILITIES, len(names)), dim=-1)
    predictions = []
    for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)):
        row = {"id": i, "text": texts[i]}
        if pairs is not None:
            row["text_pair"] = pairs[i]
        top = zip(top_i[i].tolist(), top_p[i].tolist(), strict=True)
        row.update(reference=names[t], prediction=names[p], probabilities={names[c]: float(q) for c, q in top})
        predictions.append(row)
    metric_settings = {
        "classification": {
            "labels": names,
            "averages": "macro/weighted/micro over the classes present in references or predictions "
                        "(scikit-learn); per_class lists every class",
            "scale": "0-1",
            "loss": "mean cross-entropy per example, nats",
        },
        **(settings or {}),
    }
    return Scored(scores=scores, settings=metric_settings, predictions=predictions,
                  artifacts={"confusion_matrix.png": partial(confusion_matrix_png, y_true, y_pred, names)})


def on_save(model_dir, model, tokenizer, recipe: Recipe) -> None:
    """Write the model config (label maps) next to a LoRA adapter; a full model's save already holds it.

    With config.json beside the adapter, plain transformers + peft restore the right head:
    `AutoModelForSequenceClassification.from_pretrained(base, config=AutoConfig.from_pretrained(model_dir))`
    then `PeftModel.from_pretrained(that, model_dir)`.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        inner = model.get_base_model()
        inner.config.architectures = [type(inner).__name__]  # the base's config names its headless class
        inner.config.save_pretrained(model_dir)


TASK = Task(
    name="classification",
    auto_model=AutoModelForSequenceClassification,
    peft_task_type="SEQ_CLS",
    roles=("text", "label"),
    optional_roles=("text_pair",),
    primary_metric="macro_f1",
    greater_is_better=True,
    tokenize=tokenize,
    collate=collate,
    loss=loss,
    num_targets=num_targets,
    score=score,
    prepare=prepare,
    on_save=on_save,
    token_level=False,
    demo_feed="classify",
    throughput_unit="examples",
    head_in_config=True,
    metrics=metrics,
    stratify_role="label",
)
