"""Models pretrained from scratch: a byte-level BPE tokenizer trained with `tokenizers`, and a tiny config.

The tokenizer is byte-level BPE as in GPT-2 (Radford et al. 2019) and BART (Lewis et al. 2019), so every input
byte is representable and decoding round-trips text exactly. The result is a standard Hugging Face tokenizer
(`AutoTokenizer.from_pretrained` loads it) and a standard config (`AutoModelFor...` builds it).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BartConfig, GPT2Config, PreTrainedConfig, PreTrainedTokenizerFast

from pipelines.recipe import ScratchConfig

# Special tokens per architecture, in id order. GPT-2 style: one end-of-text token that separates documents
# (it doubles as BOS/EOS as in GPT-2) plus a distinct pad token, so padding can never be confused with a
# real EOS. BART style: the fairseq/RoBERTa layout <s>=0, <pad>=1, </s>=2, <unk>=3, then <mask>.
SPECIAL_TOKENS = {
    "gpt2": {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
             "pad_token": "<|pad|>"},
    "bart": {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
             "mask_token": "<mask>"},
}


def train_tokenizer(texts: Iterable[str], cfg: ScratchConfig) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts`.

    Args:
        texts: training documents (the training split only, never validation/test).
        cfg: vocabulary size and minimum merge frequency; `architecture` picks the special tokens.

    Returns:
        A fast tokenizer. For BART it wraps every sequence as `<s> ... </s>` (as `facebook/bart-base` does);
        GPT-2 style adds nothing (documents are joined with the end-of-text token by the caller).
    """
    specials = list(dict.fromkeys(SPECIAL_TOKENS[cfg.architecture].values()))
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if cfg.architecture == "bart":
        bos, eos = SPECIAL_TOKENS["bart"]["bos_token"], SPECIAL_TOKENS["bart"]["eos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}",
            pair=f"{bos} $A {eos} {eos} $B {eos}",
            special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS[cfg.architecture])
    fast.model_max_length = cfg.context_length
    return fast


def build_config(cfg: ScratchConfig, tokenizer: PreTrainedTokenizerFast) -> PreTrainedConfig:
    """A GPT-2 or BART config of the recipe's size, with the tokenizer's special-token ids.

    BART: `decoder_start_token_id` is `</s>` (=2) as in `facebook/bart-base`, and the encoder and decoder
    each get `layers` layers. GPT-2 uses GPT-2's tanh-approximated GELU as PyTorch's one fused kernel
    (`gelu_pytorch_tanh`, the same function as GPT-2's `gelu_new`, which is 7 separate element-wise ops).
    """
    ffn = cfg.ffn_size or 4 * cfg.hidden_size
    if cfg.architecture == "gpt2":
        return GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=cfg.context_length,
            n_embd=cfg.hidden_size,
            n_layer=cfg.layers,
            n_head=cfg.heads,
            n_inner=ffn,
            activation_function="gelu_pytorch_tanh",
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
    return BartConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=cfg.context_length,
        d_model=cfg.hidden_size,
        encoder_layers=cfg.layers,
        decoder_layers=cfg.layers,
        encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        dropout=cfg.dropout,
        attention_dropout=cfg.dropout,
        activation_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_bos_token_id=tokenizer.bos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
