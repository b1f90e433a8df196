"""BART denoising pretraining: text infilling (Lewis et al. 2019, "BART", arXiv:1910.13461, sections 2.2 and 3).

The encoder reads a corrupted document, the decoder reconstructs the original. Corruption is BART's text
infilling, the noise the paper's final model uses (there with sentence permutation, left out here):

* about 30% of the tokens are masked (`MASK_RATIO`, the paper's 30% "of tokens in each document");
* masked spans have lengths drawn from Poisson(lambda=3) (`POISSON_LAMBDA`);
* each span, whatever its length, becomes ONE `<mask>` token, so the model must also predict how many tokens
  are missing; a 0-length span inserts a `<mask>` where nothing is missing.

Spans are over BPE tokens, as the paper describes them; fairseq's implementation draws them over whole words
and also swaps 10% of the masks for random tokens (`--mask-random 0.1`), which we do not.

Determinism: the corruption of an example depends only on (split, `train.seed`, the example's index in its
tokenized split), through its own NumPy generator, and is applied at collate time. A 1-process and a 2-process
run therefore corrupt every example identically, and evaluation noise never depends on batch size or order.
Every epoch sees the same corruption of an example (static noise, as BERT's original data pipeline): the tiny
recipes train for well under one epoch. Validation and test use seed 0 whatever `train.seed` is, so runs with
different seeds are scored on the same corrupted test set.

Documents longer than `data.max_length` are cut into consecutive pieces of `max_length - 2` tokens (plus `<s>`
and `</s>`); each piece is one example. Target = the uncorrupted piece, loss = summed cross-entropy over it.
"""

from __future__ import annotations

import logging
import math

import datasets
import numpy as np
import torch
from transformers import AutoModelForSeq2SeqLM

from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe
from pipelines.scoring import ScoreContext, Scored, example_losses, loss_evidence
from pipelines.tasks import Task, seq2seq

logger = logging.getLogger(__name__)

MASK_RATIO = 0.3  # BART paper, section 3 ("mask 30% of tokens in each document")
POISSON_LAMBDA = 3.0  # BART paper, section 2.2 ("span lengths drawn from a Poisson distribution (lambda = 3)")
_SPLIT_SALT = {"train": 0, "validation": 1, "test": 2}
EVAL_SEED = 0  # noise seed of the validation and test splits, fixed so every run is scored on the same inputs


def infilling_spans(num_tokens: int, rng: np.random.Generator, mask_ratio: float = MASK_RATIO,
                    poisson_lambda: float = POISSON_LAMBDA) -> list[tuple[int, int]]:
    """Where text infilling masks a sequence: non-overlapping spans covering ceil(mask_ratio * n) tokens.

    Span lengths are drawn from Poisson(poisson_lambda) until they cover the budget; the last one is trimmed
    so exactly `ceil(mask_ratio * num_tokens)` tokens are masked (fairseq's `add_whole_word_mask` does the
    same). The spans are then placed uniformly at random among the unmasked tokens: every interleaving of
    the k spans with the n - masked kept tokens is equally likely.

    Args:
        num_tokens: length n of the sequence to corrupt (special tokens excluded).
        rng: the example's generator.
        mask_ratio: fraction of tokens to mask.
        poisson_lambda: mean span length.

    Returns:
        (start, length) per span in increasing start order, starts in original token positions; length 0
        means a mask is inserted before token `start`.
    """
    budget = math.ceil(mask_ratio * num_tokens)
    lengths: list[int] = []
    covered = 0
    while covered < budget:
        lengths.append(int(rng.poisson(poisson_lambda)))
        covered += lengths[-1]
    if lengths:
        lengths[-1] -= covered - budget
    kept = num_tokens - budget
    slots = np.sort(rng.choice(kept + len(lengths), size=len(lengths), replace=False)) if lengths else []
    spans, cursor, slot_to_span = [], 0, dict(zip(np.asarray(slots).tolist(), lengths, strict=True))
    for slot in range(kept + len(lengths)):
        if slot in slot_to_span:
            spans.append((cursor, slot_to_span[slot]))
            cursor += slot_to_span[slot]
        else:
            cursor += 1
    return spans


def apply_spans(ids: list[int], spans: list[tuple[int, int]], mask_id: int) -> list[int]:
    """Replace every span of `ids` by one `mask_id` (a 0-length span inserts one).

    Returns:
        The corrupted ids: len(ids) - sum(lengths) + len(spans) tokens.
    """
    out, pos = [], 0
    for start, length in spans:
        out.extend(ids[pos:start])
        out.append(mask_id)
        pos = start + length
    out.extend(ids[pos:])
    return out


def text_infilling(ids: list[int], mask_id: int, rng: np.random.Generator) -> list[int]:
    """BART text infilling of one token sequence (special tokens excluded); see `infilling_spans`."""
    return apply_spans(ids, infilling_spans(len(ids), rng), mask_id)


def _documents(rows: datasets.Dataset, recipe: Recipe) -> list[str]:
    """The split's documents: the `text` column of a mix, or the column(s) mapped to the `text` role."""
    if recipe.data.mix:
        return [t for t in rows["text"] if t and t.strip()]
    cols = recipe.data.columns["text"]
    return [t for c in ([cols] if isinstance(cols, str) else cols) for t in rows[c] if t and t.strip()]


def noise_seed(split: str, seed: int, index: int) -> list[int]:
    """The seed of example `index`'s corruption: [split salt, seed, index] (`numpy.random.default_rng` entropy).

    Args:
        split: "train", "validation" or "test" (each has its own salt, so splits never share noise).
        seed: the recipe's seed for training, `EVAL_SEED` for the validation and test splits.
        index: the example's position in its tokenized split.
    """
    return [_SPLIT_SALT[split], seed, index]


def tokenize(rows: datasets.Dataset, tokenizer, recipe: Recipe, split: str) -> datasets.Dataset:
    """Documents -> `<s> piece </s>` examples: `input_ids` and `labels` (both the original), `length`, `noise_seed`.

    `noise_seed` = [split salt, seed, example index] seeds the example's corruption at collate time.
    """
    width = recipe.data.max_length - 2
    ids = tokenizer(_documents(rows, recipe), add_special_tokens=False, verbose=False)["input_ids"]
    pieces = [doc[i : i + width] for doc in ids for i in range(0, len(doc), width)]
    full = [[tokenizer.bos_token_id, *p, tokenizer.eos_token_id] for p in pieces if p]
    seed = recipe.train.seed if split == "train" else EVAL_SEED
    return datasets.Dataset.from_dict({
        "input_ids": full,
        "labels": full,
        "length": [len(x) for x in full],
        "noise_seed": [noise_seed(split, seed, i) for i in range(len(full))],
    })


def collate(features: list[dict], tokenizer, recipe: Recipe, pad_to_multiple_of: int = seq2seq.PAD_MULTIPLE
            ) -> dict[str, torch.Tensor]:
    """Corrupt each example's tokens between `<s>` and `</s>` with its own generator, then pad.

    Returns:
        input_ids, attention_mask: [B, S] (corrupted source); labels: [B, T] (original, -100 on padding).
    """
    sources = []
    for f in features:
        ids = f["input_ids"]
        rng = np.random.default_rng(f["noise_seed"])
        sources.append([ids[0], *text_infilling(ids[1:-1], tokenizer.mask_token_id, rng), ids[-1]])
    return seq2seq.pad_batch(sources, [f["labels"] for f in features], tokenizer.pad_token_id, pad_to_multiple_of)


def prepare(recipe: Recipe, data: datasets.DatasetDict, tokenizer) -> tuple[datasets.DatasetDict, dict]:
    """Check the tokenizer has `<mask>`, `<s>`, `</s>` and that `data.max_length` fits the model.

    Raises:
        TuneforgeError: a missing special token or a length the model cannot hold.
    """
    missing = [n for n in ("mask_token", "bos_token", "eos_token") if getattr(tokenizer, n) is None]
    if missing:
        raise TuneforgeError(
            f"model: the tokenizer has no {', '.join(missing)}; text infilling needs <s>, </s> and <mask> "
            "(a BART-family tokenizer, e.g. model.scratch.architecture: bart or facebook/bart-base)"
        )
    seq2seq.check_lengths(recipe, seq2seq.max_positions(recipe))
    return data, {}


def score(ctx: ScoreContext) -> Scored:
    """Reconstruction perplexity of the test split's original text given its (fixed) corruption."""
    from eval.metrics import perplexity_scores

    nll, n = example_losses(ctx)
    return Scored(
        evidence=loss_evidence(nll, n),
        scores=perplexity_scores(nll.tolist(), n.tolist()),
        settings={
            "perplexity": {"unit": "original tokens given the corrupted input, nats -> exp"},
            "text_infilling": {"mask_ratio": MASK_RATIO, "poisson_lambda": POISSON_LAMBDA, "noise_seed": EVAL_SEED},
        },
    )


TASK = Task(
    name="denoising",
    auto_model=AutoModelForSeq2SeqLM,
    peft_task_type="SEQ_2_SEQ_LM",
    roles=("text",),
    primary_metric="perplexity",
    greater_is_better=False,
    tokenize=tokenize,
    collate=collate,
    loss=seq2seq.loss,
    num_targets=seq2seq.num_targets,
    score=score,
    prepare=prepare,
    demo_feed="source",
    trains_on_windows=True,
)
