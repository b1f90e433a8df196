"""The benchmark's three task families: model, data, sequence length, batch and steps, identical for every config.

* causal_lm: pretraining the tiny GPT-2 of recipes/gpt/pretrain-tiny.yaml (its `model.scratch` section: size,
  BPE vocabulary, 256-token context) on packed 256-token windows of man-page DESCRIPTION text. Full training.
* seq2seq: training the tiny BART of recipes/bart/pretrain-tiny.yaml from scratch on English -> German gettext
  messages, sources and targets up to 64 tokens. Full training. The messages range from one word to long
  sentences, so how batches are padded matters.
* classification: LoRA (r=16 on every linear layer, head in full) on the pretrained MiniLM-L6 for Debian
  package name + synopsis -> archive section (the 20 most frequent, the rest as "other"), up to 64 tokens.
* chat: LoRA (r=16, all linear layers) chat SFT of the real SmolLM2-135M-Instruct on the built-in man-page
  conversations (recipes/gpt/smollm2-chat-lora-manpages.yaml), loss on assistant turns, 256-token sequences,
  8 sequences per step. Also run by tuneforge under bf16 autocast (`tuneforge_bf16`), the CPU setting measured
  against fp32; its MFU is against a bf16 matmul.

Every config starts from the same saved base weights (built once by `ensure_base`, seed 0) and uses the same
optimizer settings: AdamW, constant learning rate, no warmup, no weight decay, gradient clipping at 1.0 (the
`Trainer` defaults, which tuneforge matches here), fp32. Rows come from tuneforge's data loader (the same
`train_limit` sample) so every framework sees the same examples; each framework tokenizes them its own way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipelines.recipe import Recipe, build_recipe

ROOT = Path(__file__).resolve().parent.parent
# The scratch models' shapes come from the shipped pretraining recipes, so the benchmark follows them.
SHAPES = {kind: ROOT / "recipes" / kind / "pretrain-tiny.yaml" for kind in ("gpt", "bart")}
TOKENIZER_TEXTS = 20_000  # BPE training texts for the bases (the recipes use up to 200k; merges barely change)


@dataclass(frozen=True)
class Family:
    """One task family's fixed work.

    Attributes:
        name: causal_lm | seq2seq | classification (tuneforge's task name).
        configs: the configurations compared, tuneforge first.
        steps: optimizer steps.
        batch: examples (packed windows for causal_lm) per optimizer step; one micro-batch, no accumulation.
        learning_rate: constant learning rate.
        data: tuneforge `data:` section (source, columns, lengths, limits).
        lora: tuneforge `lora:` section, or None for full training.
        base: "gpt", "bart" (built by `ensure_base`) or a `model.base` value.
        one_epoch: the training sample is exactly `steps * batch` rows, so every config trains on every row once
            and the comparison does not depend on which part of an epoch a sampler serves first.
        seed: data order and initialisation seed of every configuration.
        task_section: the task's own recipe section (`seq2seq:`, `classification:`, `chat:`), or None for none.
        heldout: validation examples every config is scored on after training (the same code for all).
    """

    name: str
    title: str
    configs: tuple[str, ...]
    steps: int
    batch: int
    learning_rate: float
    data: dict
    base: str
    lora: dict | None = None
    one_epoch: bool = False
    seed: int = 0
    task_section: dict | None = None
    heldout: int = 128

    @property
    def max_length(self) -> int:
        return self.data["max_length"]


FAMILIES = {
    "causal_lm": Family(
        name="causal_lm",
        title="Causal LM: tiny GPT-2 pretraining on packed man-page text",
        configs=("tuneforge", "trainer_defaults", "trainer_speed", "sft_packing"),
        steps=16,
        batch=16,
        learning_rate=1e-3,
        data={"source": "manpages", "columns": {"text": "description"}, "packing": True, "max_length": 256,
              "train_limit": 2000},
        base="gpt",
    ),
    "seq2seq": Family(
        name="seq2seq",
        title="Seq2seq: tiny BART, English -> German gettext messages",
        configs=("tuneforge", "trainer_defaults", "trainer_speed"),
        steps=80,
        batch=16,
        learning_rate=1e-3,
        data={"source": "gettext", "params": {"lang": "de"}, "columns": {"source": "en", "target": "de"},
              "max_length": 64},
        task_section={"target_max_length": 64},
        base="bart",
        one_epoch=True,
    ),
    "classification": Family(
        name="classification",
        title="Classification: MiniLM-L6 + LoRA, Debian package -> section",
        configs=("tuneforge", "trainer_defaults", "trainer_speed"),
        steps=40,
        batch=32,
        learning_rate=1e-3,
        data={"source": "debian-packages", "columns": {"text": "package", "text_pair": "synopsis", "label": "section"},
              "max_length": 64},
        task_section={"top_k_labels": 20, "other_labels": "other"},
        base="builtin:minilm-l6",
        lora={"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "auto"},
        one_epoch=True,
    ),
    # 4 steps: a SmolLM2 step is ~6 s on a quiet 2-core machine and every tuneforge / TRL step does the same work
    # (8 full packed windows; the Trainer rows a fixed number of conversations), so the rate is stable after the
    # first step (the spread over the 2 repeats is in the table); the family's 5 configs x 2 repeats then fit in
    # ~15 minutes with model loading and held-out scoring, which keeps the whole benchmark under 30 minutes (with
    # 6 steps it took 32.9). LoRA dropout 0 as in the recipe (PEFT's default); bench/profile.py measures 0.05.
    "chat": Family(
        name="chat",
        title="Chat SFT: SmolLM2-135M-Instruct + LoRA on man-page conversations",
        configs=("tuneforge", "trainer_defaults", "trainer_speed", "sft_assistant", "tuneforge_bf16"),
        steps=4,
        batch=8,
        learning_rate=1e-3,
        data={"source": "manpages-chat", "columns": {"messages": "messages"}, "max_length": 256, "packing": True,
              "train_limit": 2000},
        task_section={"template": "tokenizer", "loss_on": "assistant",
                      "system_prompt": "You explain Unix manual pages."},
        base="builtin:smollm2-135m-instruct",
        lora={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "auto"},
        heldout=64,
    ),
}


def scaled(family: Family, scale: float) -> Family:
    """The family with `steps` multiplied by `scale` (at least 4), for quick smoke runs."""
    from dataclasses import replace

    return replace(family, steps=max(4, round(family.steps * scale)))


def log_every(family: Family) -> int:
    """Loss logging interval: the final training loss is the mean over the last quarter of the steps."""
    return max(1, family.steps // 4)


def base_path(family: Family, work: Path) -> str:
    return str(work / "bases" / family.base) if family.base in ("gpt", "bart") else family.base


def tuneforge_recipe(family: Family, work: Path, name: str) -> Recipe:
    """The family as a tuneforge recipe built in code (test scoring reduced to 16 rows: it is not measured)."""
    data = {**family.data, "validation_limit": family.heldout, "test_limit": 16}
    if family.one_epoch:
        data["train_limit"] = family.steps * family.batch
    raw = {
        "task": family.name,
        "model": {"base": base_path(family, work)},
        "data": data,
        "train": {"max_steps": family.steps, "micro_batch_size": family.batch, "learning_rate": family.learning_rate,
                  "lr_schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
                  "log_every": log_every(family), "seed": family.seed},
        "eval": {"batch_size": 32, "score_base": False, "generate": False},
        "output": {"dir": str(work / "runs"), "name": name},
    }
    if family.lora is not None:
        raw["lora"] = family.lora
    if family.task_section is not None:
        raw[family.name] = family.task_section
    return build_recipe(raw, origin=f"bench:{family.name}")


# ---------------------------------------------------------------------------------------------------------------
# Bases: the tiny GPT-2 and BART, random init (seed 0) with a BPE tokenizer, saved once per work directory


def ensure_base(kind: str, work: Path) -> Path:
    """Build (once) and return the directory of the tiny `kind` ("gpt" or "bart") base model and tokenizer.

    The tokenizer is tuneforge's scratch BPE (`pipelines.scratch`) trained on the family's training texts; the
    weights are the config's random initialisation with seed 0, as a scratch recipe starts.
    """
    import hashlib

    from pipelines import scratch
    from pipelines.recipe import ScratchConfig, load_recipe

    out = work / "bases" / kind
    spec = load_recipe(SHAPES[kind]).model.scratch.model_dump(exclude={"tokenizer_max_texts"})
    # Rebuilt when the shape or tuneforge's scratch code (tokenizer training, config) changes.
    identity = {**spec, "texts": TOKENIZER_TEXTS,
                "scratch": hashlib.sha256(Path(scratch.__file__).read_bytes()).hexdigest()[:16]}
    stamp = out / "bench_base.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == identity:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from pipelines.sources import load_source

    if kind == "gpt":
        rows = load_source("manpages")["train"]
        texts = [t for t in rows["description"][:TOKENIZER_TEXTS] if t]
    else:
        rows = load_source("gettext", lang="de")["train"]
        texts = [t for pair in zip(rows["en"], rows["de"], strict=True) for t in pair if t][:TOKENIZER_TEXTS]
    cfg = ScratchConfig(**spec, tokenizer_max_texts=TOKENIZER_TEXTS)
    tokenizer = scratch.train_tokenizer(texts, cfg)
    config = scratch.build_config(cfg, tokenizer)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    auto = AutoModelForCausalLM if kind == "gpt" else AutoModelForSeq2SeqLM
    model = auto.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    stamp.write_text(json.dumps(identity))
    return out
