"""See inside a model: tokens, embeddings, positions, attention, next-token probabilities, pretraining windows.

Plain functions over a loaded model and tokenizer (any run or base, plain or PEFT-wrapped), returning tensors and
small records; the demo's Inspect tab only draws them. Shapes: T = tokens, V = vocabulary, d = hidden size,
P = positions, L = layers, H = heads, C = classes.

Inputs are built the way training builds them, so what is shown is what the model saw: a decoder-only model
reads `[BOS] text` (as `pipelines.tasks.causal_lm` and the demo's generator do), an encoder-decoder or an encoder
reads the text with its tokenizer's special tokens (`<s> text </s>`, `[CLS] text [SEP]`).
"""

from pipelines.introspect.core import (
    DECODER,
    ENCODER,
    ENCODER_DECODER,
    Attention,
    Token,
    analogy,
    attention,
    base_model,
    context_window,
    decoder_prefix,
    detokenize,
    eager_attention,
    family,
    input_embeddings,
    learned_positions,
    model_tokens,
    nearest_tokens,
    neighbours,
    position_similarity,
    rotary_distance_score,
    rotary_frequencies,
    sinusoidal_positions,
    token_text,
    tokenize_spans,
    vocabulary_summary,
    word_vector,
)
from pipelines.introspect.predictions import (
    Candidate,
    class_probabilities,
    greedy_steps,
    next_token_topk,
)
from pipelines.introspect.windows import (
    denoising_windows,
    finetuning_example,
    pretraining_windows,
)

__all__ = [
    "Attention",
    "Candidate",
    "DECODER",
    "ENCODER",
    "ENCODER_DECODER",
    "Token",
    "analogy",
    "attention",
    "base_model",
    "class_probabilities",
    "context_window",
    "decoder_prefix",
    "denoising_windows",
    "detokenize",
    "eager_attention",
    "family",
    "finetuning_example",
    "greedy_steps",
    "input_embeddings",
    "learned_positions",
    "model_tokens",
    "nearest_tokens",
    "neighbours",
    "next_token_topk",
    "position_similarity",
    "pretraining_windows",
    "rotary_distance_score",
    "rotary_frequencies",
    "sinusoidal_positions",
    "token_text",
    "tokenize_spans",
    "vocabulary_summary",
    "word_vector",
]
