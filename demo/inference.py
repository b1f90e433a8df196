"""Model-agnostic inference for the demo: model inputs per task, streamed generation, label probabilities.

Decoding settings go through `pipelines.generation.generation_config`, the path evaluation uses, so the demo
decodes a run exactly as its scores were computed for the same settings. Streaming follows transformers'
documented pattern: `model.generate(..., streamer=TextIteratorStreamer)` on another thread (here the demo's one
compute thread, `demo.compute`) while the request thread reads text pieces from the streamer.

Functions here know nothing about Gradio: they raise `TuneforgeError` for bad input and return user-facing notes
(e.g. "prompt truncated") for the UI to show.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from demo import compute
from demo.models import LoadedModel
from pipelines.checks import context_length
from pipelines.errors import TuneforgeError
from pipelines.generation import decode, generation_config
from pipelines.recipe import GenerationSettings

# After the first piece, streamed text goes to the page at most this often (plus the whole answer at the end). Every
# update makes Gradio send the whole message and the browser re-render it; on a 2-core machine serving its own
# browser that work took CPU from generation: 8-12 streamed tokens/s in the page vs 18.6 in process
# (bench/serve_browser.py), before this interval.
UPDATE_SECONDS = 0.25


@dataclass
class ModelInput:
    """One example's token ids, ready for `generate`.

    Attributes:
        input_ids: the prompt (decoder-only) or the source (encoder-decoder), token ids.
        max_new_tokens: the token budget left after fitting the prompt into the model's context.
        eos_token_id: ids that end the answer (None: the model's generation config decides).
        notes: what was changed to make the input fit, for the UI to show.
    """

    input_ids: list[int]
    max_new_tokens: int
    eos_token_id: list[int] | None = None
    notes: list[str] = field(default_factory=list)


def is_encoder_decoder(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def fit_decoder_prompt(ids: list[int], max_new_tokens: int, context: int | None, keep_head: int = 0) -> ModelInput:
    """Make prompt + answer fit a decoder-only model's context window.

    When they do not fit, the answer budget shrinks first, but never below half the context (or what the prompt
    leaves free); a prompt that is still too long keeps its first `keep_head` tokens (e.g. BOS) and its most recent
    tokens, the ones a continuation depends on.

    Args:
        ids: prompt token ids.
        max_new_tokens: tokens the user asked for.
        context: the model's context length in tokens (None: unbounded).
        keep_head: leading tokens that must survive truncation.

    Returns:
        The fitted input, with a note per change.
    """
    notes = []
    if context is None or len(ids) + max_new_tokens <= context:
        return ModelInput(ids, max_new_tokens, notes=notes)
    budget = max(context - len(ids), min(max_new_tokens, context // 2))
    if budget < max_new_tokens:
        notes.append(f"max new tokens lowered from {max_new_tokens} to {budget} to fit the {context}-token context")
    room = context - budget
    if len(ids) > room:
        notes.append(f"prompt truncated from {len(ids)} to its last {room} tokens to fit the {context}-token context")
        ids = ids[:keep_head] + ids[len(ids) - (room - keep_head):]
    return ModelInput(ids, budget, notes=notes)


def causal_lm_input(loaded: LoadedModel, text: str, max_new_tokens: int) -> ModelInput:
    """A generator prompt in the format the run was trained on (see `pipelines.tasks.causal_lm.tokenize`).

    Prompt -> continuation runs were trained on `[BOS] prompt "\\n" text EOS`, so the user's text becomes the
    prompt followed by the newline; pretraining runs simply continue `[BOS] text`.
    """
    tokenizer = loaded.tokenizer
    prompted = "prompt" in loaded.recipe.data.columns
    ids = tokenizer(text + ("\n" if prompted else ""), add_special_tokens=False)["input_ids"]
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return fit_decoder_prompt(head + ids, max_new_tokens, context_length(loaded.model.config), keep_head=len(head))


def seq2seq_input(loaded: LoadedModel, text: str, max_new_tokens: int) -> ModelInput:
    """An encoder input for translation / summarization (or BART infilling), tokenized as in training.

    As `pipelines.tasks.seq2seq.tokenize_pairs` does: with the tokenizer's special tokens (BART: `<s> ... </s>`),
    truncated to the run's `data.max_length`.
    """
    limit = loaded.recipe.data.max_length
    context = context_length(loaded.model.config)
    if context is not None:
        limit = min(limit, context)
    ids = loaded.tokenizer(text, add_special_tokens=True)["input_ids"]
    notes = []
    if context is not None and max_new_tokens + 1 > context:  # the decoder also holds its start token
        notes.append(f"max new tokens lowered from {max_new_tokens} to {context - 1} (the decoder's {context} "
                     "positions hold the start token too)")
        max_new_tokens = context - 1
    if len(ids) > limit:
        notes.append(f"source truncated from {len(ids)} to {limit} tokens (the run's data.max_length)")
        ids = loaded.tokenizer(text, add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]
    return ModelInput(ids, max_new_tokens, notes=notes)


def chat_input(loaded: LoadedModel, messages: list[dict], max_new_tokens: int) -> ModelInput:
    """The conversation in the run's own chat template, ending with the assistant's generation prompt.

    Formatting, the recipe's system prompt and the end-of-turn stop ids come from `pipelines.tasks.chat`, the
    functions training and scoring use. The oldest turns are dropped until the conversation fits the context.

    Args:
        messages: `{"role": "user" | "assistant", "content": str}` in order, the last one from the user.

    Raises:
        TuneforgeError: malformed messages.
    """
    from pipelines.tasks import chat

    tokenizer, context = loaded.tokenizer, context_length(loaded.model.config)
    system = chat.chat_config(loaded.recipe).system_prompt
    with loaded.lock:  # the tokenizer is shared with requests that are generating (see LoadedModel.lock)
        full = chat.build_prompt_ids(tokenizer, messages, system)
        fitted = fit_decoder_prompt(full, max_new_tokens, context)
        notes = [n for n in fitted.notes if not n.startswith("prompt truncated")]
        ids = full
        if len(full) > len(fitted.input_ids):
            ids = chat.build_prompt_ids(tokenizer, messages, system, max_length=len(fitted.input_ids))
            notes.append(f"conversation shortened to its last {len(ids)} tokens (oldest messages first) to fit "
                         f"the {context}-token context")
        stop = chat.stop_token_ids(tokenizer)
    return ModelInput(ids, fitted.max_new_tokens, stop, notes)


def model_input(loaded: LoadedModel, text: str, max_new_tokens: int) -> ModelInput:
    """The model input for one piece of user text, whatever the run's generative task."""
    feed = loaded.task.demo_feed
    with loaded.lock:  # the tokenizer is shared with requests that are generating (see LoadedModel.lock)
        if feed == "continue":
            return causal_lm_input(loaded, text, max_new_tokens)
        if feed == "turn":
            return chat_input(loaded, [{"role": "user", "content": text}], max_new_tokens)
        if feed == "source":
            return seq2seq_input(loaded, text, max_new_tokens)
    raise TuneforgeError(f"run: task {loaded.recipe.task!r} does not generate text; use the Classify tab")


def decoding(
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> GenerationSettings:
    """UI controls -> the recipe's `GenerationSettings`; temperature 0 means greedy (deterministic) decoding.

    Raises:
        TuneforgeError: a value outside its range (API callers can send anything).
    """
    try:
        return GenerationSettings(
            max_new_tokens=int(max_new_tokens),
            num_beams=int(num_beams),
            length_penalty=float(length_penalty),
            no_repeat_ngram_size=int(no_repeat_ngram_size),
            do_sample=float(temperature) > 0,
            temperature=float(temperature) if float(temperature) > 0 else 1.0,
            top_p=float(top_p),
        )
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError; int("x") too
        if hasattr(exc, "errors"):
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        else:
            problems = f"expected numbers ({exc})"
        raise TuneforgeError(f"generation settings: {problems}") from None


class _Cancelled(StoppingCriteria):
    """Stops generation when the request that wanted it has gone (the UI closed the stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.size(0),), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_text(
    loaded: LoadedModel, inputs: ModelInput, settings: GenerationSettings, *, adapter_off: bool = False
) -> Iterator[str]:
    """Generate an answer, yielding the text decoded so far after each new piece.

    Every yielded string extends the previous one; the last is the whole answer. Beam search cannot stream
    (transformers' streamers take one sequence), so with `num_beams > 1` the answer comes as one piece.

    Args:
        loaded: the model (its lock is held while it computes).
        inputs: from `model_input` / `chat_input`; its `max_new_tokens` overrides the settings'.
        settings: decoding settings (see `decoding`).
        adapter_off: run a LoRA model with its adapters disabled, i.e. the base model.

    Yields:
        The answer so far, special tokens removed: the first piece as soon as it is decoded, then at most one update
        per `UPDATE_SECONDS`, and always the whole answer last.
    """
    settings = settings.model_copy(update={"max_new_tokens": inputs.max_new_tokens})
    config = generation_config(loaded.model, loaded.tokenizer, settings)
    if inputs.eos_token_id:
        config.eos_token_id = inputs.eos_token_id
    ids = torch.tensor([inputs.input_ids], dtype=torch.long, device=next(loaded.model.parameters()).device)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "generation_config": config}
    if settings.num_beams > 1:
        yield _generate_once(loaded, kwargs, adapter_off)
        return
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancelled = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            # inference_mode, not generate's own no_grad: no autograd bookkeeping per op (~6% faster decoding).
            with loaded.lock, _adapter(loaded, adapter_off), torch.inference_mode():
                loaded.model.generate(**kwargs, streamer=streamer, stopping_criteria=StoppingCriteriaList(
                    [_Cancelled(cancelled)]))
        except BaseException as exc:  # re-raised in the request thread below
            failure.append(exc)
            streamer.end()  # unblock the reader

    job = compute.submit(work)
    text = shown = ""
    last = 0.0
    try:
        for piece in streamer:
            if piece:
                text += piece
                now = time.perf_counter()
                if not shown or now - last >= UPDATE_SECONDS:  # the first piece at once, then every UPDATE_SECONDS
                    shown, last = text, now
                    yield text
    finally:
        cancelled.set()  # a closed stream stops the worker at the next token
    job.result()
    if failure:
        raise failure[0]
    if text != shown or not text:
        yield text  # the whole answer (empty when the model ended at once)


@compute.on_compute
def _generate_once(loaded: LoadedModel, kwargs: dict, adapter_off: bool) -> str:
    with loaded.lock:
        with _adapter(loaded, adapter_off), torch.inference_mode():
            out = loaded.model.generate(**kwargs)
        # Decoder-only output repeats the prompt; an encoder-decoder's starts with the decoder start token.
        new = out[0, 1:] if is_encoder_decoder(loaded.model) else out[0, kwargs["input_ids"].size(1):]
        return decode(loaded.tokenizer, [new.tolist()])[0]


def _adapter(loaded: LoadedModel, adapter_off: bool):
    return loaded.model.disable_adapter() if adapter_off else contextlib.nullcontext()


def format_labels(probs: dict[str, float], top: int = 3) -> str:
    """`label 0.83 · other 0.10 · ...` for the side-by-side and arena text boxes."""
    return " · ".join(f"{label} {p:.3f}" for label, p in list(probs.items())[:top])


@compute.on_compute
def label_probabilities(
    loaded: LoadedModel, text: str, pair: str | None = None, *, adapter_off: bool = False
) -> dict[str, float]:
    """The classifier's probability per label for one text, highest first.

    Uses the classification task's own `predict_proba` (the function its scores come from), so the demo's top
    label is the run's prediction.

    Returns:
        label name -> probability, sorted by probability, descending.
    """
    from pipelines.tasks import classification

    pairs = [pair] if pair else None
    with loaded.lock, _adapter(loaded, adapter_off):
        probs = classification.predict_proba(loaded.model, loaded.tokenizer, [text], text_pairs=pairs)[0]
    named = dict(zip(classification.label_names(loaded.model), probs.tolist(), strict=True))
    return dict(sorted(named.items(), key=lambda kv: -kv[1]))


def chat_stream(
    model, tokenizer, messages: Sequence, settings: GenerationSettings, system_prompt: str | None = None
) -> Iterator[str]:
    """Stream the next assistant reply for the demo's chat tab, stopping at the end-of-turn token.

    Args:
        model: the run's model (transformers or PEFT), in eval mode.
        tokenizer: the run's tokenizer with its saved chat template.
        messages: the conversation so far, ending with the user's new message.
        settings: decoding settings (the run recipe's `eval.generation`).
        system_prompt: the run recipe's `chat.system_prompt`.

    Yields:
        The reply so far (cumulative text, special tokens removed), as Gradio's streaming chat expects.
    """
    positions = context_length(model.config)
    budget = positions - settings.max_new_tokens if positions else None
    from pipelines.tasks import chat

    ids = chat.build_prompt_ids(tokenizer, messages, system_prompt, max_length=budget)
    chat.set_stop_tokens(model, tokenizer)
    gen_cfg = generation_config(model, tokenizer, settings)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "generation_config": gen_cfg,
              "streamer": streamer}
    job = compute.submit(torch.inference_mode()(model.generate), **kwargs)
    text = ""
    for piece in streamer:
        text += piece
        yield text.strip()
    job.result()
