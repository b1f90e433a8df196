"""Chat formatting shared by training, scoring and the demo: the template (ChatML or the tokenizer's own), message
checks, which characters and tokens the assistant says (the loss mask), stop tokens and the generation prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.errors import TuneforgeError
from pipelines.recipe import ChatConfig, Recipe
from pipelines.runtime import inner_model
from pipelines.tasks import causal_lm

IGNORE = causal_lm.IGNORE
ROLES = ("system", "user", "assistant")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n` per message, generation prompt `<|im_start|>assistant\n`.
# BOS (when the tokenizer has one) is rendered once, first. `{% generation %}` marks what the assistant says
# (content + <|im_end|>) for transformers' `return_assistant_tokens_mask`; it does not change the text.
CHATML_TEMPLATE = (
    "{%- if bos_token is defined and bos_token %}{{ bos_token }}{% endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chat_config(recipe: Recipe) -> ChatConfig:
    """The recipe's `chat` section, or its defaults when the recipe has none."""
    return recipe.chat if recipe.chat is not None else ChatConfig()


# ---------------------------------------------------------------------------------------------------------------
# Template


def install_chat_template(tokenizer, template: str) -> None:
    """Give `tokenizer` the template the recipe asks for (in place).

    Args:
        tokenizer: a fast tokenizer; gains `<|im_start|>`/`<|im_end|>` (special, never split) and the ChatML
            template for "chatml"; is checked for its own template for "tokenizer".
        template: "chatml" or "tokenizer" (`chat.template`).

    Raises:
        TuneforgeError: "tokenizer" but the tokenizer has no chat template, or a slow tokenizer (token offsets
            are needed for the masks).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TuneforgeError(
            f"model.base: chat needs a fast tokenizer (character offsets locate assistant turns); "
            f"{type(tokenizer).__name__} is slow"
        )
    if template == "tokenizer":
        if not tokenizer.chat_template:
            raise TuneforgeError(
                "chat.template: 'tokenizer' but this tokenizer has no chat template; "
                "set chat.template=chatml to install a ChatML template"
            )
        return
    tokenizer.add_special_tokens({"extra_special_tokens": [IM_START, IM_END]}, replace_extra_special_tokens=False)
    tokenizer.chat_template = CHATML_TEMPLATE


def normalize_messages(messages: Sequence, system_prompt: str | None = None, where: str = "messages") -> list[dict]:
    """Check a conversation and return it as plain `{"role", "content"}` dicts, with the system prompt first.

    Args:
        messages: a list of mappings with "role" (system/user/assistant) and "content" (str).
        system_prompt: prepended as a system message when set and the conversation has none.
        where: names the conversation in error messages (e.g. "data.columns.messages row 12").

    Returns:
        A new list of `{"role", "content"}` dicts.

    Raises:
        TuneforgeError: not a list of such mappings, an unknown role, non-string content, or an empty list.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TuneforgeError(f"{where}: expected a non-empty list of {{role, content}} messages, got {messages!r:.80}")
    out = []
    for j, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise TuneforgeError(
                f"{where}: message {j} is {message!r:.80}; each message needs role in {list(ROLES)} and a string "
                "content (the standard `messages` format)"
            )
        out.append({"role": role, "content": content})
    if system_prompt and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as the one text the model reads: `tokenizer.apply_chat_template(..., tokenize=False)`."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], text: str | None = None) -> list[tuple[int, int]]:
    """Character spans of what each assistant turn says in `render(tokenizer, messages)`.

    A span starts after the generation prompt (`render(messages[:k], add_generation_prompt=True)`) and ends
    where `render(messages[:k + 1])` ends, minus trailing whitespace: the content plus the end-of-turn token,
    without the newline a template writes after it (ChatML's `<|im_end|>\\n`).

    Args:
        tokenizer: with a chat template.
        messages: a normalized conversation.
        text: its rendering, if already computed.

    Returns:
        One (start, end) character span per assistant message, in order.

    Raises:
        TuneforgeError: the conversation starts with an assistant turn, or the template does not render prefixes
            of a conversation as prefixes of its rendering (then spans cannot be located; e.g. templates that
            drop earlier reasoning), named with the template setting to change.
    """
    text = render(tokenizer, messages) if text is None else text
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if k == 0:
            raise TuneforgeError("data.columns.messages: a conversation starts with an assistant turn; "
                                 "it needs a user (or system) message before the first assistant answer")
        prompt = render(tokenizer, messages[:k], add_generation_prompt=True)
        upto = text if k + 1 == len(messages) else render(tokenizer, messages[: k + 1])
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise TuneforgeError(
                "chat.template: the tokenizer's template does not render a conversation's prefixes as prefixes of "
                "its full rendering, so assistant turns cannot be located; use chat.template=chatml"
            )
        spans.append((len(prompt), len(upto.rstrip())))
    return spans


def encode_conversation(
    tokenizer, messages: list[dict], loss_on: str, max_length: int
) -> tuple[list[int], list[int], bool]:
    """Token ids and labels of one conversation.

    Labels are unshifted (aligned with ids; the loss shifts, as for causal LM). A token is a target when its
    character range overlaps a selected assistant span. The first token is always -100: it is never predicted
    unpacked, and packed it must not become the target of the previous conversation's last token.

    Args:
        tokenizer: fast tokenizer with a chat template.
        messages: a normalized conversation.
        loss_on: "assistant", "last_assistant" or "all".
        max_length: keep the first `max_length` tokens.

    Returns:
        (input_ids, labels, truncated).

    Raises:
        TuneforgeError: the template renders BOS twice at the start (then the model would see two BOS tokens).
    """
    text = render(tokenizer, messages)
    spans = None if loss_on == "all" else assistant_spans(tokenizer, messages, text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return labelled(tokenizer, enc["input_ids"], enc["offset_mapping"], spans, loss_on, max_length)


def labelled(tokenizer, ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]] | None,
              loss_on: str, max_length: int) -> tuple[list[int], list[int], bool]:
    """`encode_conversation` from the tokenized rendering and its assistant spans (None for loss_on=all)."""
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:2] == [bos, bos]:
        raise TuneforgeError(
            "chat.template: the rendered conversation starts with two BOS tokens; use a template that writes "
            "bos_token once (chat.template=chatml does)"
        )
    if spans is None:
        labels = list(ids)
    else:
        spans = spans[-1:] if loss_on == "last_assistant" else spans
        labels, j = [], 0
        for token, (start, end) in zip(ids, offsets, strict=True):  # tokens and spans both in text order
            while j < len(spans) and spans[j][1] <= start:
                j += 1
            inside = j < len(spans) and end > spans[j][0]
            labels.append(token if inside else IGNORE)
    if labels:
        labels[0] = IGNORE
    return ids[:max_length], labels[:max_length], len(ids) > max_length


def end_of_turn_id(tokenizer) -> int | None:
    """The token that ends an assistant turn in the tokenizer's template (ChatML: `<|im_end|>`).

    Found by rendering a one-exchange conversation: the last token of the assistant span when it is a special
    (added) token, else the tokenizer's EOS.
    """
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = render(tokenizer, messages)
    (start, end), = assistant_spans(tokenizer, messages, text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    inside = [t for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True) if s < end and e > start]
    specials = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_encoder.values())
    return inside[-1] if inside and inside[-1] in specials else tokenizer.eos_token_id


def stop_token_ids(tokenizer) -> list[int]:
    """Ids that end generation: the end-of-turn token, then the tokenizer's EOS (deduplicated, None dropped)."""
    return list(dict.fromkeys(t for t in (end_of_turn_id(tokenizer), tokenizer.eos_token_id) if t is not None))


def set_stop_tokens(model, tokenizer) -> None:
    """Make `model.generation_config.eos_token_id` the stop ids, so `generate()` ends at the end of the turn.

    Args:
        model: a transformers model or a PEFT model around one (its base model's config is changed).
        tokenizer: the run's tokenizer (with its chat template).
    """
    inner = inner_model(model)
    inner.generation_config.eos_token_id = stop_token_ids(tokenizer)


def build_prompt_ids(
    tokenizer, messages: Sequence, system_prompt: str | None = None, max_length: int | None = None
) -> list[int]:
    """Token ids that ask the model for the next assistant turn, formatted exactly as in training.

    Args:
        tokenizer: the run's tokenizer (its saved chat template).
        messages: the conversation so far (usually ending with a user message).
        system_prompt: the recipe's `chat.system_prompt`, prepended when the conversation has no system message.
        max_length: prompt token budget; the oldest non-system messages are dropped until the prompt fits, and
            a single message longer than the budget keeps its last `max_length` tokens.

    Returns:
        `apply_chat_template(messages, add_generation_prompt=True)` token ids.

    Raises:
        TuneforgeError: malformed messages.
    """
    messages = normalize_messages(messages, system_prompt)

    def ids_of(msgs: list[dict]) -> list[int]:
        return tokenizer(render(tokenizer, msgs, add_generation_prompt=True), add_special_tokens=False)["input_ids"]

    ids = ids_of(messages)
    head = 1 if messages[0]["role"] == "system" else 0
    while max_length is not None and len(ids) > max_length and len(messages) > head + 1:
        del messages[head]
        ids = ids_of(messages)
    return ids[-max_length:] if max_length is not None else ids
