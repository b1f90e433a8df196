"""See inside a model: tokens, embeddings, positions, attention, next-token probabilities, pretraining windows.

Plain functions over a loaded model and tokenizer (any run or base), returning tensors and small records; the
demo's Inspect tab only draws them. Shapes: T = tokens, V = vocabulary, d = hidden size, L = layers, H = heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def tokenize_spans(tokenizer, text: str) -> list[Token]:
    """Text -> tokens with ids and character spans (`text[start:end]` is the token's text; specials are empty).

    Uses the fast tokenizer's offset mapping, so spans are exact for byte-level BPE and WordPiece alike.
    """
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    special_ids = set(tokenizer.all_special_ids)
    out = []
    for tid, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        special = tid in special_ids and start == end
        out.append(Token(tid, tokenizer.convert_ids_to_tokens(tid), start, end, special))
    return out


def detokenize(tokenizer, ids: list[int]) -> str:
    """Token ids -> text (special tokens kept, so the reverse of `tokenize_spans` is visible)."""
    return tokenizer.decode(ids, skip_special_tokens=False)


def vocabulary_summary(tokenizer, model) -> dict:
    """Vocabulary size, special tokens and the model's context window (in tokens)."""
    config = getattr(model, "config", None)
    window = (getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
              or tokenizer.model_max_length)
    return {"vocab_size": len(tokenizer), "special_tokens": dict(tokenizer.special_tokens_map),
            "context_window": int(window)}


def _input_embeddings(model) -> torch.Tensor:
    """[V, d] input embedding matrix (through PEFT wrappers too)."""
    return model.get_input_embeddings().weight.detach().float()


def nearest_tokens(model, tokenizer, vector: torch.Tensor, k: int = 10, exclude: tuple[int, ...] = ()) -> list:
    """The k tokens whose input embeddings have the highest cosine similarity with `vector` [d].

    Returns:
        [(token string, id, cosine similarity)] best first.
    """
    emb = _input_embeddings(model)
    sims = F.cosine_similarity(emb, vector.float().unsqueeze(0), dim=1)
    if exclude:
        sims[list(exclude)] = -2.0
    values, ids = sims.topk(min(k, len(sims)))
    return [(tokenizer.convert_ids_to_tokens(int(i)), int(i), float(v)) for v, i in zip(values, ids, strict=True)]


def word_vector(model, tokenizer, word: str) -> tuple[torch.Tensor, list[int]]:
    """Mean input embedding [d] of the tokens of `word` (one token for most short words)."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{word!r} has no tokens")
    return _input_embeddings(model)[ids].mean(0), ids


def neighbours(model, tokenizer, word: str, k: int = 10) -> list:
    """Nearest neighbours of `word` in the input embedding matrix by cosine similarity (the word excluded)."""
    vec, ids = word_vector(model, tokenizer, word)
    return nearest_tokens(model, tokenizer, vec, k, exclude=tuple(ids))


def analogy(model, tokenizer, a: str, b: str, c: str, k: int = 10) -> list:
    """Vector arithmetic a - b + c -> nearest tokens (Mikolov et al. 2013), inputs excluded.

    A small model trained on little text shows weak structure; the classic king - man + woman needs far
    more data than these tiny runs see.
    """
    va, ia = word_vector(model, tokenizer, a)
    vb, ib = word_vector(model, tokenizer, b)
    vc, ic = word_vector(model, tokenizer, c)
    return nearest_tokens(model, tokenizer, va - vb + vc, k, exclude=tuple(ia + ib + ic))


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

    GPT-2: `wpe`; BERT: `position_embeddings`; BART: the encoder's `embed_positions` without its 2-row offset.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, module in base.named_modules():
        if name.endswith(("wpe", "position_embeddings", "encoder.embed_positions")):
            weight = module.weight.detach().float()
            return weight[getattr(module, "offset", 0):]
    return None


def position_similarity(positions: torch.Tensor) -> torch.Tensor:
    """[P, P] cosine similarity between every pair of position vectors [P, d]."""
    unit = F.normalize(positions.float(), dim=1)
    return unit @ unit.T


@dataclass
class Attention:
    """Attention weights of one forward pass: name -> [L, H, T_query, T_key] (each row sums to 1)."""

    tokens: list[str]
    maps: dict[str, torch.Tensor]
    target_tokens: list[str] | None = None


@torch.no_grad()
def attention(model, tokenizer, text: str, target: str | None = None) -> Attention:
    """Attention weights per layer and head for `text` (and, for encoder-decoders, `target` as decoder input).

    Decoder-only models give "self" (causal: zero above the diagonal); encoder-decoders give "encoder",
    "decoder" and "cross" (decoder queries x encoder keys); encoders give "self". Computed with the eager
    attention implementation, the only one that returns weights.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = base.config._attn_implementation
    base.set_attn_implementation("eager")
    try:
        enc = tokenizer(text, return_tensors="pt")
        tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
        if getattr(base.config, "is_encoder_decoder", False):
            dec = tokenizer(text_target=target or text, return_tensors="pt")["input_ids"]
            dec_in = torch.cat([torch.tensor([[base.config.decoder_start_token_id]]), dec[:, :-1]], dim=1)
            out = model(**enc, decoder_input_ids=dec_in, output_attentions=True)
            maps = {"encoder": torch.stack(out.encoder_attentions)[:, 0], "decoder": torch.stack(out.decoder_attentions)[:, 0],
                    "cross": torch.stack(out.cross_attentions)[:, 0]}
            return Attention(tokens, maps, tokenizer.convert_ids_to_tokens(dec_in[0]))
        out = model(**enc, output_attentions=True)
        return Attention(tokens, {"self": torch.stack(out.attentions)[:, 0]})
    finally:
        base.set_attn_implementation(previous)


@torch.no_grad()
def next_token_topk(model, tokenizer, prompt: str, k: int = 10, temperature: float = 1.0) -> list:
    """Top-k next tokens after `prompt` with probabilities softmax(logits / temperature).

    Returns:
        [(token string, id, probability, logit)] best first; probabilities sum to at most 1.
    """
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and not getattr(model.config, "is_encoder_decoder", False):
        ids = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), ids], dim=1)
    logits = model(input_ids=ids).logits[0, -1].float()
    probs = torch.softmax(logits / temperature, dim=-1)
    p, i = probs.topk(k)
    return [(tokenizer.convert_ids_to_tokens(int(t)), int(t), float(q), float(logits[t])) for q, t in zip(p, i, strict=True)]


@torch.no_grad()
def greedy_steps(model, tokenizer, prompt: str, steps: int = 5, k: int = 5, temperature: float = 1.0) -> list:
    """A greedy continuation, step by step: at each step the top-k candidates and the chosen (argmax) token."""
    out, text = [], prompt
    for _ in range(steps):
        top = next_token_topk(model, tokenizer, text, k, temperature)
        out.append({"context": text, "top": top, "chosen": top[0][0]})
        text += tokenizer.decode([top[0][1]])
    return out


@torch.no_grad()
def class_probabilities(model, tokenizer, text: str) -> list:
    """A classifier's labels with probabilities and logits for `text`, best first."""
    enc = tokenizer(text, return_tensors="pt", truncation=True)
    logits = model(**enc).logits[0].float()
    probs = torch.softmax(logits, -1)
    names = model.config.id2label
    order = probs.argsort(descending=True).tolist()
    return [(names.get(i, str(i)), float(probs[i]), float(logits[i])) for i in order]


def pretraining_windows(tokenizer, text: str, window: int, eos_id: int | None = None) -> list[dict]:
    """`text` cut into the fixed context windows a causal-LM pretraining recipe trains on.

    The document is tokenized, followed by EOS and cut into windows of `window` tokens (as
    `pipelines.tasks.causal_lm.pack_windows` does; a shorter tail is shown though training drops it). For each
    window, inputs are positions 0..n-2 and labels the same tokens shifted by one (position t predicts t+1).

    Returns:
        [{"input_ids", "input_tokens", "label_ids", "label_tokens"}] one per window.
    """
    eos = tokenizer.eos_token_id if eos_id is None else eos_id
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    out = []
    for i in range(0, len(ids), window):
        chunk = ids[i : i + window]
        if len(chunk) < 2:
            break
        out.append({"input_ids": chunk[:-1], "input_tokens": tokenizer.convert_ids_to_tokens(chunk[:-1]),
                    "label_ids": chunk[1:], "label_tokens": tokenizer.convert_ids_to_tokens(chunk[1:])})
    return out
