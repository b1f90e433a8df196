"""What training reads: pretraining windows, one finetuning example, BART's corrupted denoising pieces, built with
the task modules' own functions so the picture is exactly the training input."""

from __future__ import annotations

from pipelines.introspect.core import (
    base_model,
)

# ---------------------------------------------------------------------------------------------------------------
# What training reads


def pretraining_windows(tokenizer, text: str, window: int, eos_id: int | None = None) -> list[dict]:
    """`text` cut into the fixed context windows a causal-LM pretraining recipe trains on.

    The document is tokenized, followed by EOS and cut into windows of `window` tokens (as
    `pipelines.tasks.causal_lm.pack_windows` does; a shorter tail is shown though training drops it). For each
    window, inputs are positions 0..n-2 and labels the same tokens shifted by one (position t predicts t+1).

    Returns:
        [{"input_ids", "input_tokens", "label_ids", "label_tokens"}] one per window, each list n-1 long.
    """
    eos = tokenizer.eos_token_id if eos_id is None else eos_id
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    out = []
    for i in range(0, len(ids), window):
        chunk = ids[i : i + window]
        if len(chunk) < 2:
            break
        out.append({"input_ids": chunk[:-1], "input_tokens": tokenizer.convert_ids_to_tokens(chunk[:-1]),
                    "label_ids": chunk[1:], "label_tokens": tokenizer.convert_ids_to_tokens(chunk[1:])})  # fmt: skip
    return out


def finetuning_example(tokenizer, prompt: str | None, text: str, max_length: int) -> dict:
    """A prompt -> continuation training example (`pipelines.tasks.causal_lm.prompt_example`), shifted.

    As `pipelines.tasks.causal_lm.tokenize` builds it: `[BOS] prompt "\\n" text EOS`, or `[BOS] text EOS` for a
    recipe without a prompt column (`prompt` None).

    Returns:
        {"input_ids", "input_tokens", "label_ids", "label_tokens"}: inputs are positions 0..n-2 of the example,
        labels positions 1..n-1; a label of -100 (BOS and the prompt: no loss) has the token string None.
    """
    from pipelines.tasks.causal_lm import IGNORE, prompt_example

    prompt_ids = tokenizer(prompt + "\n", add_special_tokens=False)["input_ids"] if prompt is not None else []
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids, labels = prompt_example(prompt_ids, text_ids, tokenizer.bos_token_id, tokenizer.eos_token_id, max_length)
    shown = [None if t == IGNORE else tokenizer.convert_ids_to_tokens(t) for t in labels[1:]]
    return {"input_ids": ids[:-1], "input_tokens": tokenizer.convert_ids_to_tokens(ids[:-1]),
            "label_ids": labels[1:], "label_tokens": shown}  # fmt: skip


def denoising_windows(model, tokenizer, text: str, max_length: int) -> list[dict]:
    """`text` as BART text-infilling pretraining sees it: pieces, each corrupted, and the decoder's shift.

    Pieces and corruption come from `pipelines.tasks.denoising` (`tokenize`'s pieces of `max_length - 2` tokens
    between `<s>` and `</s>`; `collate`'s text infilling seeded by split, evaluation seed and example index), with
    the test split's seeds: for the test split's first document this is exactly its examples 0, 1, ...

    Returns:
        One dict per piece: "source_ids"/"source_tokens" (the corrupted encoder input), "decoder_input_ids"/
        "decoder_input_tokens" (start token + labels[:-1]) and "label_ids"/"label_tokens" (the original piece).
    """
    import numpy as np

    from pipelines.tasks import denoising

    width = max_length - 2
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    start = base_model(model).config.decoder_start_token_id
    out = []
    for index, i in enumerate(range(0, len(ids), width)):
        piece = [tokenizer.bos_token_id, *ids[i : i + width], tokenizer.eos_token_id]
        # The seed `denoising.tokenize` gives test example `index` (collate draws its noise from it).
        rng = np.random.default_rng(denoising.noise_seed("test", denoising.EVAL_SEED, index))
        source = [piece[0], *denoising.text_infilling(piece[1:-1], tokenizer.mask_token_id, rng), piece[-1]]
        decoder = [start, *piece[:-1]]
        out.append({"source_ids": source, "source_tokens": tokenizer.convert_ids_to_tokens(source),
                    "decoder_input_ids": decoder, "decoder_input_tokens": tokenizer.convert_ids_to_tokens(decoder),
                    "label_ids": piece, "label_tokens": tokenizer.convert_ids_to_tokens(piece)})  # fmt: skip
    return out
