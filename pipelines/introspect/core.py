"""See inside a model, the parts that read it directly: model families, tokens, embeddings, positions, attention.

(See `pipelines.introspect` for the whole package.)
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipelines.errors import TuneforgeError
from pipelines.runtime import inner_model

# Model families, by how they read text and what they predict.
DECODER = "decoder"  # decoder-only language model (GPT-2): [BOS] text -> next token
ENCODER_DECODER = "encoder-decoder"  # BART: source -> decoder -> next target token
ENCODER = "encoder"  # BERT-style encoder (a classifier here): text -> class logits


def base_model(model):
    """The transformers model inside a PEFT wrapper (the model itself when it is not wrapped)."""
    return inner_model(model)


def family(model) -> str:
    """`DECODER`, `ENCODER_DECODER` or `ENCODER`, from the config and the model class (PEFT wrappers too)."""
    inner = base_model(model)
    if getattr(inner.config, "is_encoder_decoder", False):
        return ENCODER_DECODER
    return DECODER if type(inner).can_generate() else ENCODER


def context_window(model, tokenizer=None) -> int | None:
    """Positions the model can read (GPT-2 `n_positions`, BART/BERT `max_position_embeddings`), in tokens."""
    config = base_model(model).config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and limit < 10**9 else None  # "no limit" is a huge sentinel


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------------------------
# Tokenization


@dataclass
class Token:
    """One token of a tokenized text: id, its string form and the character span `text[start:end]` it covers.

    A byte-level token holding part of a multi-byte character (e.g. one byte of "Ü") has that character's span,
    so neighbouring spans can overlap; special tokens have an empty span.
    """

    id: int
    token: str
    start: int
    end: int
    special: bool


def tokenize_spans(tokenizer, text: str, *, prepend_bos: bool = False) -> list[Token]:
    """Text -> tokens with ids and character spans (`text[start:end]` is the token's text; specials are empty).

    Uses the fast tokenizer's offset mapping, so spans are exact for byte-level BPE and WordPiece alike.

    Args:
        tokenizer: a fast tokenizer.
        text: the text.
        prepend_bos: decoder-only models: tokenize without special tokens and put BOS first, as training does
            (see `model_tokens`); otherwise the tokenizer adds its own special tokens.

    Returns:
        The tokens in order, T of them.
    """
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=not prepend_bos)
    special_ids = set(tokenizer.all_special_ids)
    out = []
    if prepend_bos and tokenizer.bos_token_id is not None:
        out.append(Token(tokenizer.bos_token_id, tokenizer.bos_token, 0, 0, True))
    for tid, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        special = tid in special_ids and start == end
        out.append(Token(tid, tokenizer.convert_ids_to_tokens(tid), start, end, special))
    return out


def model_tokens(model, tokenizer, text: str) -> list[Token]:
    """`text` tokenized as the model reads it: `[BOS] text` for decoder-only models, else with the specials."""
    return tokenize_spans(tokenizer, text, prepend_bos=family(model) == DECODER)


def detokenize(tokenizer, ids: list[int]) -> str:
    """Token ids -> text (special tokens kept, so the reverse of `tokenize_spans` is visible).

    Raises:
        TuneforgeError: an id outside the vocabulary.
    """
    bad = [i for i in ids if not 0 <= int(i) < len(tokenizer)]
    if bad:
        raise TuneforgeError(f"ids: {bad[:5]} not in the vocabulary; ids run from 0 to {len(tokenizer) - 1}")
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def vocabulary_summary(tokenizer, model) -> dict:
    """Vocabulary size, special tokens and the model's context window.

    Returns:
        {"vocab_size": int, "special_tokens": {name: token string (or list)}, "special_ids": {token: id},
        "context_window": tokens or None}.
    """
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in tokenizer.all_special_tokens}
    return {"vocab_size": len(tokenizer), "special_tokens": dict(tokenizer.special_tokens_map), "special_ids": ids,
            "context_window": context_window(model, tokenizer)}  # fmt: skip


def token_text(tokenizer, token_id: int) -> str:
    """One token as readable text: decoded, with a space shown as `␣` and a newline as `↵` (so they are seen)."""
    text = tokenizer.decode([int(token_id)], skip_special_tokens=False)
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


# ---------------------------------------------------------------------------------------------------------------
# Embeddings


def input_embeddings(model) -> torch.Tensor:
    """[V, d] input embedding matrix (through PEFT wrappers too), float32 on the CPU."""
    return model.get_input_embeddings().weight.detach().float().cpu()


def nearest_tokens(model, tokenizer, vector: torch.Tensor, k: int = 10, exclude: tuple[int, ...] = ()) -> list:
    """The k tokens whose input embeddings have the highest cosine similarity with `vector` [d].

    Returns:
        [(token string, id, cosine similarity)] best first.
    """
    emb = input_embeddings(model)
    sims = F.cosine_similarity(emb, vector.float().cpu().unsqueeze(0), dim=1)
    if exclude:
        sims[list(exclude)] = -2.0  # below any cosine: never chosen
    values, ids = sims.topk(min(k, len(sims)))
    return [(tokenizer.convert_ids_to_tokens(int(i)), int(i), float(v)) for v, i in zip(values, ids, strict=True)]


def word_vector(model, tokenizer, word: str) -> tuple[torch.Tensor, list[int]]:
    """Mean input embedding [d] of the tokens of `word` (one token for most short words).

    Raises:
        TuneforgeError: the word has no tokens (empty).
    """
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise TuneforgeError(f"word: {word!r} has no tokens; type a word")
    return input_embeddings(model)[ids].mean(0), ids


def neighbours(model, tokenizer, word: str, k: int = 10) -> list:
    """Nearest neighbours of `word` in the input embedding matrix by cosine similarity (the word excluded).

    Returns:
        [(token string, id, cosine similarity)] best first.
    """
    vec, ids = word_vector(model, tokenizer, word)
    return nearest_tokens(model, tokenizer, vec, k, exclude=tuple(ids))


def analogy(model, tokenizer, a: str, b: str, c: str, k: int = 10) -> list:
    """Vector arithmetic a - b + c -> nearest tokens by cosine (Mikolov et al. 2013, arXiv:1301.3781), inputs excluded.

    A small model trained on little text shows weak structure; the classic king - man + woman needs far
    more data than these tiny runs see.

    Returns:
        [(token string, id, cosine similarity)] best first.
    """
    va, ia = word_vector(model, tokenizer, a)
    vb, ib = word_vector(model, tokenizer, b)
    vc, ic = word_vector(model, tokenizer, c)
    return nearest_tokens(model, tokenizer, va - vb + vc, k, exclude=tuple(ia + ib + ic))


# ---------------------------------------------------------------------------------------------------------------
# Positions


def sinusoidal_positions(n_positions: int, d_model: int) -> torch.Tensor:
    """The fixed encoding of Vaswani et al. 2017 §3.5: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...).

    Returns:
        [n_positions, d_model] float32.
    """
    pos = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return pe.float()


def learned_positions(model) -> torch.Tensor | None:
    """[P, d] learned position embeddings the model adds to its inputs, or None (e.g. rotary models).

    GPT-2: `wpe`; BERT: `position_embeddings`; BART: the encoder's `embed_positions` without its 2-row offset
    (BART's decoder has a second table of its own).
    """
    for name, module in base_model(model).named_modules():
        if name.endswith(("wpe", "position_embeddings", "encoder.embed_positions")):
            weight = module.weight.detach().float().cpu()
            return weight[getattr(module, "offset", 0) :]
    return None


def rotary_frequencies(model) -> torch.Tensor | None:
    """[d_head / 2] rotation frequencies (radians per token) of a rotary model's query/key dimension pairs, or None.

    Rotary position embedding (RoPE, Su et al. 2021, "RoFormer", eq. 15) rotates dimension pair i of every query
    and key at position p by the angle p * theta_i, theta_i = base^(-2i / d_head) (base = `config.rope_theta`,
    10,000 in the paper, 100,000 in SmolLM2). The values are read from the model's own rotary module (its
    `inv_freq` buffer, which transformers computes from the config with any RoPE scaling applied), so what is
    shown is what the model uses.
    """
    for _, module in base_model(model).named_modules():
        inv_freq = getattr(module, "inv_freq", None)
        if isinstance(inv_freq, torch.Tensor):
            return inv_freq.detach().double().cpu()
    return None


def rotary_distance_score(frequencies: torch.Tensor, max_distance: int) -> torch.Tensor:
    """[max_distance + 1] how RoPE alone shapes a query·key score: the mean over pairs of cos(distance * theta_i).

    With rotary positions a query at m and a key at n score q·R((n - m) theta) k (RoFormer eq. 16): only their
    distance enters. For q = k (every pair equally weighted) the score relative to distance 0 is the mean cosine
    over the pairs; it starts at 1 and decays with distance, with ripples from the slow pairs (RoFormer §3.4.3).

    Args:
        frequencies: [d_head / 2] radians per token, from `rotary_frequencies`.
        max_distance: largest distance shown, in tokens.

    Returns:
        [max_distance + 1] float32, entry k for distance k.
    """
    distance = torch.arange(max_distance + 1, dtype=torch.float64).unsqueeze(1)
    return torch.cos(distance * frequencies.double().unsqueeze(0)).mean(dim=1).float()


def position_similarity(positions: torch.Tensor) -> torch.Tensor:
    """[P, P] cosine similarity between every pair of position vectors [P, d]."""
    unit = F.normalize(positions.float(), dim=1)
    return unit @ unit.T


# ---------------------------------------------------------------------------------------------------------------
# Attention


@dataclass
class Attention:
    """Attention weights of one forward pass.

    Attributes:
        tokens: the T input tokens (encoder tokens for an encoder-decoder).
        maps: name -> [L, H, T_query, T_key], each row a softmax (sums to 1). Decoder-only models: "self";
            encoders: "self"; encoder-decoders: "encoder" [.., T, T], "decoder" [.., T_dec, T_dec] and
            "cross" [.., T_dec, T].
        target_tokens: the T_dec decoder input tokens (encoder-decoders), else None.
        causal: the maps whose keys after the query are masked (zero above the diagonal).
    """

    tokens: list[str]
    maps: dict[str, torch.Tensor]
    target_tokens: list[str] | None = None
    causal: tuple[str, ...] = ()


@contextlib.contextmanager
def eager_attention(model):
    """Run `model` with the eager attention implementation (the only one that returns weights), then restore."""
    inner = base_model(model)
    previous = inner.config._attn_implementation
    inner.set_attn_implementation("eager")
    try:
        yield
    finally:
        inner.set_attn_implementation(previous)


def decoder_prefix(model, tokenizer, target: str) -> list[int]:
    """An encoder-decoder's decoder input for `target`: the start token, then the target's tokens without EOS.

    This is the teacher-forced decoder input training uses (labels `<s> target </s>` shifted right behind
    `decoder_start_token_id`), and what generation has produced after writing `target`.
    """
    ids = tokenizer(text_target=target)["input_ids"]
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return [base_model(model).config.decoder_start_token_id, *ids]


def _fit(ids: list[int], limit: int | None, keep_head: int) -> list[int]:
    """The first `keep_head` ids and the most recent ones, at most `limit` in all."""
    if limit is None or len(ids) <= limit:
        return ids
    return ids[:keep_head] + ids[len(ids) - (limit - keep_head) :]


@torch.no_grad()
def attention(model, tokenizer, text: str, target: str | None = None, max_tokens: int | None = None) -> Attention:
    """Attention weights per layer and head for `text` (and, for encoder-decoders, `target` as decoder input).

    Args:
        model: any model (PEFT too); it runs with eager attention for this call.
        tokenizer: its tokenizer.
        text: the input (the encoder's source for encoder-decoders).
        target: encoder-decoders: the decoder's text (default: `text`, as in denoising), fed teacher-forced.
        max_tokens: keep at most this many tokens per sequence (and never more than the context window): the
            first ones for encoder inputs, BOS plus the first ones for decoder-only inputs.

    Returns:
        See `Attention`. Each map equals the model's own `output_attentions=True` output for these ids.
    """
    kind = family(model)
    limit = min(max_tokens or 10**9, context_window(model, tokenizer) or 10**9)
    device = _device(model)
    if kind == ENCODER_DECODER:
        src = tokenizer(text, truncation=True, max_length=limit)["input_ids"]
        dec = decoder_prefix(model, tokenizer, target if target and target.strip() else text)[:limit]
        src_t, dec_t = torch.tensor([src], device=device), torch.tensor([dec], device=device)
        with eager_attention(model):
            out = model(input_ids=src_t, attention_mask=torch.ones_like(src_t), decoder_input_ids=dec_t,
                        output_attentions=True)  # fmt: skip
        maps = {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions, "cross": out.cross_attentions}
        maps = {name: torch.stack(layers)[:, 0].float().cpu() for name, layers in maps.items()}
        return Attention(tokenizer.convert_ids_to_tokens(src), maps,
                         tokenizer.convert_ids_to_tokens(dec), causal=("decoder",))  # fmt: skip
    ids = [t.id for t in model_tokens(model, tokenizer, text)][:limit]
    if kind == ENCODER and ids[-1] != tokenizer.sep_token_id and tokenizer.sep_token_id is not None:
        ids[-1] = tokenizer.sep_token_id  # a cut encoder input still ends with [SEP], as truncation does
    tensor = torch.tensor([ids], device=device)
    with eager_attention(model):
        out = model(input_ids=tensor, attention_mask=torch.ones_like(tensor), output_attentions=True)
    causal = ("self",) if kind == DECODER else ()
    return Attention(tokenizer.convert_ids_to_tokens(ids), {"self": torch.stack(out.attentions)[:, 0].float().cpu()},
                     causal=causal)  # fmt: skip
