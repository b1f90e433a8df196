"""Tiny random checkpoints of the architectures users bring from the Hub, saved like Hub checkpoints.

Each architecture is built from its REAL transformers config class with tiny sizes (hidden 32, 1-2 layers,
2 heads, a few hundred tokens), the way transformers' own tests build tiny random models, and saved with a
tokenizer laid out like the real one: the same special tokens and ids where they matter (T5's pad 0 / EOS 1,
BART's `<s> </s>` wrapping, Marian's pad as the decoder start, mBART's language codes through the real
`MBartTokenizer`, BERT's `[CLS] .. [SEP]` with token types, RoBERTa's `<s> .. </s></s> ..`), the vocabulary a
small BPE / WordPiece trained offline here with `tokenizers`. Decoder tokenizers carry the chat template of the
real family's instruct tokenizer where it has one (SmolLM2 / Qwen ChatML, Mistral `[INST]`, Gemma turns,
Phi-3 `<|user|>`), simplified to the parts a text-only conversation uses.

`ARCHS` lists per architecture: the task it is trained for, how to build it, and the LoRA target names that
`target_modules: auto` must find (the architecture's own projection names).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

WORDS = "the a cat dog sat ran on under mat tree big small red blue quickly slowly and".split()
VERBS = ("copies", "lists", "moves", "prints")
NOUNS = ("files", "lines", "bytes", "words")


def texts(n: int = 120, seed: int = 0) -> list[str]:
    """Short man-page-like sentences: the tokenizer training text and the test corpora's vocabulary."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(f"cmd{i % 10} {rng.choice(VERBS)} {rng.choice(NOUNS)}. " + " ".join(rng.choices(WORDS, k=8)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Chat templates of the real instruct tokenizers (text-only parts; tool calls and images left out)

# SmolLM2-Instruct (Llama architecture): ChatML with a default system prompt.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen2.5-Instruct / Qwen3 (no tools, no reasoning content): ChatML, Qwen2.5 adds its default system prompt.
QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif %}{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# Qwen3 without its reasoning branch (see QWEN3_REAL_TEMPLATE below): plain ChatML, no default system prompt.
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# Mistral-7B-Instruct-v0.1: [INST] turns, the answer ends with EOS; no system role.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
# Gemma 3 (text): the assistant is `model`, every turn ends with <end_of_turn>.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Phi-3-mini-instruct: <|user|> / <|assistant|> turns ending with <|end|>. The real template also writes
# `{% else %}{{ eos_token }}` after a conversation rendered without a generation prompt: PHI3_REAL_TEMPLATE.
PHI3_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
PHI3_REAL_TEMPLATE = PHI3_TEMPLATE.replace("{% endif %}", "{% else %}{{ eos_token }}{% endif %}")
# Qwen3's real template (the branch a plain conversation takes): an assistant turn after the last user turn that
# ends the conversation gets an empty reasoning block, `<think>\n\n</think>\n\n`, earlier turns do not.
QWEN3_REAL_TEMPLATE = (
    "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if message.role == 'user' and ns.last_query_index == messages|length - 1 %}"
    "{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}{%- if message.role == 'assistant' %}"
    "{%- if loop.index0 > ns.last_query_index and loop.last %}"
    "{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' + message.content }}"
    "{%- else %}{{- '<|im_start|>assistant\n' + message.content }}{%- endif %}{{- '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers


@dataclass(frozen=True)
class TokSpec:
    """How a family's tokenizer is laid out.

    Attributes:
        kind: "bytelevel" (GPT-2 / RoBERTa BPE), "metaspace" (SentencePiece-like BPE: Llama, T5, XLM-R),
            "wordpiece" (BERT).
        specials: special tokens in id order (ids 0..n-1), e.g. ("<s>", "<pad>", "</s>", "<unk>").
        roles: tokenizer role -> token, e.g. {"bos_token": "<s>", "eos_token": "</s>"}.
        single / pair: post-processor templates (`tokenizers` TemplateProcessing); None adds nothing.
        extra: more special tokens (chat markers) appended after the trained vocabulary.
        token_types: whether the model takes `token_type_ids` (BERT, ELECTRA, DeBERTa).
        lowercase: BERT-uncased-like normalization.
        pad_last: the pad token is the last id (Marian).
    """

    kind: str
    specials: tuple[str, ...]
    roles: tuple[tuple[str, str], ...]
    single: str | None = None
    pair: str | None = None
    extra: tuple[str, ...] = ()
    token_types: bool = False
    lowercase: bool = False
    pad_last: str | None = None


@functools.cache
def _trained(kind: str, specials: tuple[str, ...], lowercase: bool) -> str:
    """A tokenizer model trained on `texts()`, as JSON (shared by every family with the same layout)."""
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=list(specials), min_frequency=1)
    elif kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials), min_frequency=1,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        unk = next((s for s in specials if "unk" in s.lower()), None)
        tok = Tokenizer(models.BPE(unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(specials), min_frequency=1)
    tok.train_from_iterator(texts(), trainer)
    return tok.to_str()


def build_tokenizer(spec: TokSpec, chat_template: str | None = None) -> tf.PreTrainedTokenizerFast:
    """A fast tokenizer with the family's special tokens, post-processor and (optional) chat template."""
    tok = Tokenizer.from_str(_trained(spec.kind, spec.specials, spec.lowercase))
    if spec.extra:
        tok.add_special_tokens(list(spec.extra))
    if spec.pad_last:
        tok.add_special_tokens([spec.pad_last])
    if spec.single:
        tokens = {t for t in (spec.single + " " + (spec.pair or "")).split() if not t.startswith("$")}
        tokens = {t.split(":")[0] for t in tokens}
        tok.post_processor = processors.TemplateProcessing(
            single=spec.single, pair=spec.pair, special_tokens=[(t, tok.token_to_id(t)) for t in sorted(tokens)]
        )
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if spec.token_types else [])
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=names, **dict(spec.roles))
    if spec.extra:
        fast.add_special_tokens({"additional_special_tokens": list(spec.extra)})
    if chat_template:
        fast.chat_template = chat_template
    return fast


def mbart_tokenizer(fifty: bool = False) -> tf.MBartTokenizer | tf.MBart50Tokenizer:
    """The real `MBartTokenizer` (mbart-large-cc25 layout: `X </s> en_XX`, targets `Y </s> de_DE`), or with
    `fifty` the real `MBart50Tokenizer` (`en_XX X </s>`, targets `de_DE Y </s>`), on a tiny unigram vocabulary of
    whole words and single characters."""
    pieces = sorted({"▁" + w for t in texts() for w in t.split()} | set("abcdefghijklmnopqrstuvwxyz0123456789.▁"))
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -1.0 - (len(p) < 2) * 5)
                                                                                for p in pieces]
    tokenizer_class = tf.MBart50Tokenizer if fifty else tf.MBartTokenizer
    return tokenizer_class(vocab=vocab, src_lang="en_XX", tgt_lang="de_DE")


BYTE_GPT2 = TokSpec("bytelevel", ("<|endoftext|>",), (("bos_token", "<|endoftext|>"), ("eos_token", "<|endoftext|>"),
                                                      ("unk_token", "<|endoftext|>")))
ROBERTA = TokSpec("bytelevel", ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
                  (("bos_token", "<s>"), ("eos_token", "</s>"), ("pad_token", "<pad>"), ("unk_token", "<unk>"),
                   ("cls_token", "<s>"), ("sep_token", "</s>"), ("mask_token", "<mask>")),
                  single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>")
BERT = TokSpec("wordpiece", ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
               (("pad_token", "[PAD]"), ("unk_token", "[UNK]"), ("cls_token", "[CLS]"), ("sep_token", "[SEP]"),
                ("mask_token", "[MASK]")),
               single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", token_types=True, lowercase=True)


@dataclass
class Arch:
    """One architecture of the matrix.

    Attributes:
        name: transformers' `model_type`.
        task: the tuneforge task trained on it ("causal_lm", "chat", "seq2seq", "classification").
        targets: the leaf names LoRA's `auto` must put adapters on (the architecture's own projections).
        heads: classification: the head modules trained in full and saved (`modules_to_save`).
        decoder_start: seq2seq: which token the decoder starts from ("pad", "eos", or a token string).
        forced_bos: seq2seq: the token generation forces right after the start (mBART-50's target language).
    """

    name: str
    task: str
    model_class: type
    config: dict
    tokenizer: TokSpec | None
    targets: tuple[str, ...]
    chat_template: str | None = None
    heads: tuple[str, ...] = ()
    decoder_start: str | None = None
    forced_bos: str | None = None
    headless: bool = False  # save the encoder alone (the Hub's base checkpoints carry no classification head)
    generation: dict = field(default_factory=dict)


DEC = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
       "num_key_value_heads": 1, "max_position_embeddings": 128}
ATTN_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
S2S = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
       "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 64}
BART_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
ENC = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
       "max_position_embeddings": 66}
BERT_TARGETS = ("query", "key", "value", "dense")
CHATML = ("<|im_start|>", "<|im_end|>")

ARCHS = {a.name: a for a in [
    # Decoders. GPT-2, GPT-NeoX (Pythia) and OPT tokenizers have no chat template: prompt -> continuation.
    Arch("gpt2", "causal_lm", tf.GPT2LMHeadModel, {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128},
         BYTE_GPT2, ("c_attn", "c_proj", "c_fc")),
    Arch("gpt_neox", "causal_lm", tf.GPTNeoXForCausalLM,
         {**DEC, "num_key_value_heads": 2, "rotary_pct": 0.25},
         TokSpec("bytelevel", ("<|endoftext|>", "<|padding|>"),
                 (("bos_token", "<|endoftext|>"), ("eos_token", "<|endoftext|>"), ("unk_token", "<|endoftext|>"))),
         ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")),
    Arch("opt", "causal_lm", tf.OPTForCausalLM,
         {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "max_position_embeddings": 128, "word_embed_proj_dim": 32, "pad_token_id": 1, "bos_token_id": 2,
          "eos_token_id": 2},
         TokSpec("bytelevel", ("<s>", "<pad>", "</s>", "<unk>"),
                 (("bos_token", "</s>"), ("eos_token", "</s>"), ("pad_token", "<pad>"), ("unk_token", "<unk>")),
                 single="</s> $A"),  # OPT prepends </s> as its BOS
         ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")),
    # Chat decoders, each with its family's template.
    Arch("llama", "chat", tf.LlamaForCausalLM, DEC,
         TokSpec("bytelevel", ("<|endoftext|>", *CHATML),
                 (("bos_token", "<|im_start|>"), ("eos_token", "<|im_end|>"), ("pad_token", "<|im_end|>"),
                  ("unk_token", "<|endoftext|>"))),  # SmolLM2-Instruct's layout: <|im_end|> is EOS and pad
         ATTN_MLP, SMOLLM2_TEMPLATE),
    Arch("qwen2", "chat", tf.Qwen2ForCausalLM, DEC,
         TokSpec("bytelevel", ("<|endoftext|>", *CHATML),
                 (("eos_token", "<|im_end|>"), ("pad_token", "<|endoftext|>"))),  # Qwen has no BOS
         ATTN_MLP, QWEN2_TEMPLATE),
    Arch("qwen3", "chat", tf.Qwen3ForCausalLM, {**DEC, "head_dim": 16},
         TokSpec("bytelevel", ("<|endoftext|>", *CHATML),
                 (("eos_token", "<|im_end|>"), ("pad_token", "<|endoftext|>"))),
         ATTN_MLP, QWEN3_TEMPLATE),
    Arch("mistral", "chat", tf.MistralForCausalLM, {**DEC, "head_dim": 16},
         TokSpec("metaspace", ("<unk>", "<s>", "</s>"),
                 (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>")), single="<s> $A"),
         ATTN_MLP, MISTRAL_TEMPLATE),
    Arch("gemma3_text", "chat", tf.Gemma3ForCausalLM,
         {**DEC, "head_dim": 16, "sliding_window": 16, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1},
         TokSpec("metaspace", ("<pad>", "<eos>", "<bos>", "<unk>"),
                 (("bos_token", "<bos>"), ("eos_token", "<eos>"), ("pad_token", "<pad>"), ("unk_token", "<unk>")),
                 single="<bos> $A", extra=("<start_of_turn>", "<end_of_turn>")),
         ATTN_MLP, GEMMA3_TEMPLATE),
    Arch("phi3", "chat", tf.Phi3ForCausalLM, {**DEC, "num_key_value_heads": 2, "pad_token_id": 0},
         TokSpec("metaspace", ("<unk>", "<s>", "</s>"),
                 (("bos_token", "<s>"), ("eos_token", "<|endoftext|>"), ("pad_token", "<|endoftext|>"),
                  ("unk_token", "<unk>")),
                 extra=("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
         ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), PHI3_TEMPLATE),
    # Encoder-decoders and where each one's decoder starts.
    Arch("bart", "seq2seq", tf.BartForConditionalGeneration,
         {**S2S, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 2},
         ROBERTA, BART_TARGETS, decoder_start="eos"),
    Arch("t5", "seq2seq", tf.T5ForConditionalGeneration,
         {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_heads": 2, "pad_token_id": 0,
          "eos_token_id": 1, "decoder_start_token_id": 0, "relative_attention_num_buckets": 8},
         TokSpec("metaspace", ("<pad>", "</s>", "<unk>"),
                 (("pad_token", "<pad>"), ("eos_token", "</s>"), ("unk_token", "<unk>")), single="$A </s>"),
         ("q", "k", "v", "o", "wi", "wo"), decoder_start="pad"),
    Arch("mbart", "seq2seq", tf.MBartForConditionalGeneration,
         {**S2S, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}, None, BART_TARGETS,
         decoder_start="de_DE"),  # mbart-large-en-ro: the decoder starts from the target language code
    Arch("mbart-50", "seq2seq", tf.MBartForConditionalGeneration,
         {**S2S, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 2}, None,
         BART_TARGETS, decoder_start="eos", forced_bos="de_DE"),  # mBART-50: </s>, then the forced language code
    Arch("marian", "seq2seq", tf.MarianMTModel,
         {**S2S, "eos_token_id": 0, "forced_eos_token_id": 0},
         TokSpec("metaspace", ("</s>", "<unk>"), (("eos_token", "</s>"), ("unk_token", "<unk>"),
                                                  ("pad_token", "<pad>")), single="$A </s>", pad_last="<pad>"),
         BART_TARGETS, decoder_start="pad"),  # Marian's pad (its last id) starts the decoder
    Arch("pegasus", "seq2seq", tf.PegasusForConditionalGeneration,
         {**S2S, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0},
         TokSpec("metaspace", ("<pad>", "</s>", "<mask_1>", "<mask_2>", "<unk>"),
                 (("pad_token", "<pad>"), ("eos_token", "</s>"), ("unk_token", "<unk>"), ("mask_token", "<mask_2>")),
                 single="$A </s>"),
         BART_TARGETS, decoder_start="pad"),
    # Encoder classifiers and their heads (new at finetuning: trained in full and saved with the adapter).
    Arch("bert", "classification", tf.BertForSequenceClassification, ENC, BERT, BERT_TARGETS,
         heads=("classifier",), headless=True),
    Arch("roberta", "classification", tf.RobertaForSequenceClassification, {**ENC, "pad_token_id": 1}, ROBERTA,
         BERT_TARGETS, heads=("classifier",), headless=True),
    Arch("xlm-roberta", "classification", tf.XLMRobertaForSequenceClassification, {**ENC, "pad_token_id": 1},
         TokSpec("metaspace", ROBERTA.specials, ROBERTA.roles, single=ROBERTA.single, pair=ROBERTA.pair),
         BERT_TARGETS, heads=("classifier",), headless=True),
    Arch("distilbert", "classification", tf.DistilBertForSequenceClassification,
         {"dim": 32, "hidden_dim": 64, "n_layers": 2, "n_heads": 2, "max_position_embeddings": 64},
         TokSpec(BERT.kind, BERT.specials, BERT.roles, single=BERT.single, pair="[CLS] $A [SEP] $B [SEP]",
                 lowercase=True),
         ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"), heads=("pre_classifier", "classifier"),
         headless=True),
    Arch("deberta-v2", "classification", tf.DebertaV2ForSequenceClassification,
         {**ENC, "max_position_embeddings": 64, "relative_attention": True, "position_buckets": 16,
          "pos_att_type": ["p2c", "c2p"], "share_att_key": True, "position_biased_input": False,
          "pooler_hidden_size": 32,
          "type_vocab_size": 0},
         TokSpec("metaspace", ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"), BERT.roles, single=BERT.single,
                 pair=BERT.pair, token_types=True),
         ("query_proj", "key_proj", "value_proj", "dense"), heads=("pooler", "classifier"), headless=True),
    Arch("electra", "classification", tf.ElectraForSequenceClassification, {**ENC, "embedding_size": 32}, BERT,
         BERT_TARGETS, heads=("classifier",), headless=True),
    Arch("modernbert", "classification", tf.ModernBertForSequenceClassification,
         {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "max_position_embeddings": 128, "local_attention": 16, "global_attn_every_n_layers": 2,
          "pad_token_id": 0, "cls_token_id": 2, "sep_token_id": 3, "bos_token_id": 2, "eos_token_id": 3},
         TokSpec("bytelevel", ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), BERT.roles,
                 single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]"),
         ("Wqkv", "Wo", "Wi"), heads=("head", "classifier"), headless=True),
]}


def tokenizer_for(arch: Arch):
    if arch.name.startswith("mbart"):
        return mbart_tokenizer(fifty=arch.name == "mbart-50")
    return build_tokenizer(arch.tokenizer, arch.chat_template)


def special_ids(tok) -> dict:
    return {k: getattr(tok, f"{k}_token_id") for k in ("bos", "eos", "pad") if getattr(tok, f"{k}_token", None)}


def save_checkpoint(arch: Arch, out: Path, **config) -> Path:
    """Build `arch` with random weights (seed 0) and save it with its tokenizer under `out`.

    Args:
        **config: config values over the tiny defaults (e.g. the real model's `max_position_embeddings`).
    """
    tok = tokenizer_for(arch)
    config_class = arch.model_class.config_class
    ids = special_ids(tok)
    kwargs = {f"{k}_token_id": v for k, v in ids.items()}
    kwargs.update(arch.config)
    kwargs.update(config)
    if arch.name == "mbart":
        kwargs["decoder_start_token_id"] = tok.convert_tokens_to_ids(arch.decoder_start)
    if arch.name == "marian":
        kwargs.update(pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.pad_token_id)
    config = config_class(vocab_size=len(tok), **kwargs)
    config.tie_word_embeddings = getattr(config, "tie_word_embeddings", True)
    torch.manual_seed(0)
    model = arch.model_class(config)
    if arch.forced_bos:
        model.generation_config.forced_bos_token_id = tok.convert_tokens_to_ids(arch.forced_bos)
    if arch.headless:
        model = getattr(model, model.base_model_prefix)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
