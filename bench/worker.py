"""One benchmark measurement in its own process: `python -m bench.worker FAMILY CONFIG --work DIR --out FILE`.

Configs:
    tuneforge         `pipelines.loop.train` with the family's recipe built in code.
    trainer_defaults  `transformers.Trainer` with default `TrainingArguments` (only the shared work is set: steps,
                      batch, learning rate and its constant schedule, logging interval) and the collator the
                      transformers task guides use (pad to the longest row of the batch).
    trainer_speed     `Trainer` configured as its performance guides recommend for this hardware: length-grouped
                      batches (`train_sampling_strategy="group_by_length"`),
                      padding to a multiple of 8, fused AdamW (already the default), packed windows for causal LM.
    sft_packing       TRL `SFTTrainer` with `packing=True` (its default best-fit-decreasing packing, padding-free).
    sft_assistant     chat: TRL `SFTTrainer` with `assistant_only_loss=True` and packing (bench/chat_peers.py).
    tuneforge_bf16    tuneforge under bf16 autocast (`ACCELERATE_MIXED_PRECISION=bf16`); MFU against a bf16 matmul.

The chat family's `Trainer` rows and its TRL row are in bench/chat_peers.py.

Each process measures a large matmul after training (the MFU reference) and writes one JSON result. Peak memory is
read by the parent from the finished process's rusage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DATASETS_VERBOSITY", "error")

import torch  # noqa: E402

from bench.families import FAMILIES, Family, base_path, log_every, scaled, tuneforge_recipe  # noqa: E402
from bench.measure import TokenCounter  # noqa: E402
from pipelines.flops import matmul_flops_per_s  # noqa: E402

PROBE_BUDGET_S = 3.0
CONFIGS = ("tuneforge", "tuneforge_bf16", "trainer_defaults", "trainer_speed", "sft_packing", "sft_assistant")


# ---------------------------------------------------------------------------------------------------------------
# tuneforge


def run_tuneforge(family: Family, work: Path, name: str) -> dict:
    """Train with `pipelines.loop.train`; the counter hooks the model `loop.build` returns."""
    from pipelines import loop

    counter = TokenCounter()
    build = loop.build
    built = []

    def counted_build(*args, **kwargs):
        prep = build(*args, **kwargs)
        counter.attach(prep.model)
        built.append(prep)
        return prep

    loop.build = counted_build
    recipe = tuneforge_recipe(family, work, name)
    metrics = loop.train(recipe, work / "runs" / name, overwrite=True)
    train = metrics["train"]
    log = [json.loads(line) for line in (work / "runs" / name / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    reported = ("tokens_per_s", "nonpad_tokens_per_s", "padding_fraction", "model_flops", "matmul_flops_per_s", "mfu")
    return {"train_seconds": train["seconds"], "final_loss": losses[-1], "losses": losses,
            "heldout_loss": heldout_loss(family, work, built[0].model, built[0].tokenizer),
            "reported": {k: train.get(k) for k in reported}, **counter.result()}


@torch.no_grad()
def heldout_loss(family: Family, work: Path, model, tokenizer) -> float:
    """Mean loss per target token (nats) on the family's first `heldout` validation rows, the same code for all.

    Rows, tokenization, batching and loss are tuneforge's (`pipelines.tasks`), so the number compares the trained
    weights and nothing else.
    """
    from pipelines.tasks import get_task

    recipe, _, data = peer_rows(family, work, tokenizer)
    task = get_task(family.name)
    features = task.tokenize(data["validation"], tokenizer, recipe, "validation")
    model.eval()
    total = count = 0.0
    for start in range(0, len(features), 32):
        rows = [features[i] for i in range(start, min(start + 32, len(features)))]
        nll, n = task.loss(model, task.collate(rows, tokenizer=tokenizer, recipe=recipe))
        total, count = total + float(nll.double().sum()), count + float(n.sum())
    return total / count


# ---------------------------------------------------------------------------------------------------------------
# Peers: the same rows, tokenized the way the transformers / TRL guides do it


def peer_rows(family: Family, work: Path, tokenizer):
    """The rows tuneforge trains on (same sample, same label ids), before tokenization.

    Returns:
        (recipe, from_pretrained kwargs of the task such as the label maps, DatasetDict of all splits)
    """
    from pipelines import data as data_lib
    from pipelines.tasks import get_task

    recipe = tuneforge_recipe(family, work, "peer")
    data = data_lib.load_data(recipe.data)
    kwargs = {}
    task = get_task(family.name)
    if task.prepare is not None:
        data, kwargs = task.prepare(recipe, data, tokenizer)
    return recipe, kwargs, data


def causal_windows(rows, tokenizer, window: int):
    """transformers' causal LM guide / run_clm.py: tokenize, join (EOS after each document), cut full windows."""
    eos = tokenizer.eos_token_id

    def group_texts(batch: dict) -> dict:
        ids = tokenizer([t or "" for t in batch["description"]], add_special_tokens=False)["input_ids"]
        stream = [t for doc in ids for t in (*doc, eos)]
        n = (len(stream) // window) * window
        return {"input_ids": [stream[i : i + window] for i in range(0, n, window)]}

    return rows.map(group_texts, batched=True, batch_size=1000, remove_columns=rows.column_names)


def training_args(family: Family, work: Path, name: str, **speed):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(work / "peer-out" / name),
        max_steps=family.steps,
        per_device_train_batch_size=family.batch,
        learning_rate=family.learning_rate,
        lr_scheduler_type="constant",
        logging_steps=log_every(family),
        seed=family.seed,
        **speed,
    )


SPEED_ARGS = {"train_sampling_strategy": "group_by_length", "optim": "adamw_torch_fused"}


def run_trainer(family: Family, work: Path, name: str, speed: bool) -> dict:
    """`Trainer` on the family's rows, with default or speed-tuned arguments."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
        Trainer,
    )

    from pipelines import modeling

    base = base_path(family, work)
    tokenizer = AutoTokenizer.from_pretrained(modeling.resolve_base(base))
    recipe, model_kwargs, data = peer_rows(family, work, tokenizer)
    rows = data["train"]
    multiple = 8 if speed else None
    if family.name == "causal_lm":
        model = AutoModelForCausalLM.from_pretrained(base)
        train = causal_windows(rows, tokenizer, family.max_length)
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False, pad_to_multiple_of=multiple)
    elif family.name == "seq2seq":
        model = AutoModelForSeq2SeqLM.from_pretrained(base)
        cut = {"max_length": family.max_length, "truncation": True}

        # transformers' translation guide; sources and targets share the 64-token limit here, as in tuneforge.
        def encode(batch: dict) -> dict:
            return tokenizer(batch["en"], text_target=batch["de"], **cut)

        train = rows.map(encode, batched=True, remove_columns=rows.column_names)
        collator = DataCollatorForSeq2Seq(tokenizer, model=model, pad_to_multiple_of=multiple)
    else:
        from transformers import AutoModelForSequenceClassification

        model = modeling.load_model(base, AutoModelForSequenceClassification, **model_kwargs)
        model = modeling.apply_lora(model, recipe.lora, "SEQ_CLS")

        def encode(batch: dict) -> dict:
            enc = tokenizer(batch["package"], batch["synopsis"], truncation=True, max_length=family.max_length)
            enc["labels"] = batch["label_id"]
            return enc

        train = rows.map(encode, batched=True, remove_columns=rows.column_names)
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)
    counter = TokenCounter()
    counter.attach(model)
    timer = TrainTimer()
    args = training_args(family, work, name, **(SPEED_ARGS if speed else {}))
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator, callbacks=[timer])
    trainer.train()
    return {**peer_result(trainer, timer, counter), "heldout_loss": heldout_loss(family, work, model, tokenizer)}


def run_sft(family: Family, work: Path, name: str) -> dict:
    """TRL `SFTTrainer` with packing on the family's documents (causal LM only)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    base = base_path(family, work)
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = peer_rows(family, work, tokenizer)[2]["train"]
    docs = Dataset.from_dict({"text": [t for t in rows["description"] if t]})
    model = AutoModelForCausalLM.from_pretrained(base)
    counter = TokenCounter()
    counter.attach(model)
    timer = TrainTimer()
    args = SFTConfig(
        output_dir=str(work / "peer-out" / name), max_steps=family.steps, per_device_train_batch_size=family.batch,
        learning_rate=family.learning_rate, lr_scheduler_type="constant", logging_steps=log_every(family),
        seed=family.seed, packing=True, max_length=family.max_length,
        bf16=False,  # TRL defaults to bf16, which needs a GPU (or use_cpu); every config here runs fp32
        gradient_checkpointing=False,  # TRL's default trades speed for memory; off is its fast setting
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=docs, processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    return {**peer_result(trainer, timer, counter), "heldout_loss": heldout_loss(family, work, model, tokenizer)}


def _timer_class():
    from transformers import TrainerCallback

    class _TrainTimer(TrainerCallback):
        """Seconds from `on_train_begin` to `on_train_end`: the training loop, as tuneforge's `train.seconds`."""

        seconds = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self._t0

    return _TrainTimer


def TrainTimer():  # noqa: N802 - a factory so that importing this module does not import transformers
    return _timer_class()()


def peer_result(trainer, timer, counter: TokenCounter) -> dict:
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {"train_seconds": timer.seconds, "final_loss": losses[-1], "losses": losses, **counter.result()}


# ---------------------------------------------------------------------------------------------------------------
# Evaluation speed: batched, length-sorted generation against one example at a time

EVAL_EXAMPLES = 64


@torch.no_grad()
def run_evalspeed(family: Family, work: Path, model_dir: Path) -> dict:
    """Generate for the first `EVAL_EXAMPLES` validation sources with `pipelines.generation.generate_ids`, once
    in batches of 32 (sorted by length, KV cache) and once one example at a time, with the decoding settings of
    recipes/bart/lora-translate-en-de.yaml (beam search, 4 beams, 48 new tokens: `min_new_tokens` too)."""
    from accelerate import Accelerator
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from pipelines.generation import generate_ids
    from pipelines.recipe import GenerationSettings
    from pipelines.tasks import get_task

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    recipe, _, data = peer_rows(family, work, tokenizer)
    features = get_task(family.name).tokenize(data["validation"], tokenizer, recipe, "validation")
    prompts = list(features["input_ids"][:EVAL_EXAMPLES])
    settings = GenerationSettings(max_new_tokens=48, num_beams=4)
    # Every answer runs its 48 tokens: an 80-step model may end at once (1 token per answer on 2026-12-07), which
    # would time the prompts, not the generation. The same for both ways, so the outputs still compare.
    model.generation_config.min_new_tokens = settings.max_new_tokens
    accelerator = Accelerator(cpu=True)
    generate_ids(accelerator, model, tokenizer, prompts[:2], settings, 2)  # warm-up
    t0 = time.perf_counter()
    batched = generate_ids(accelerator, model, tokenizer, prompts, settings, 32)
    batched_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = generate_ids(accelerator, model, tokenizer, prompts, settings, 1)
    single_s = time.perf_counter() - t0
    return {"examples": len(prompts), "batch_size": 32, "num_beams": settings.num_beams,
            "max_new_tokens": settings.max_new_tokens, "batched_seconds": batched_s, "one_at_a_time_seconds": single_s,
            "speedup": single_s / batched_s, "same_output": sum(a == b for a, b in zip(batched, single, strict=True))
            / len(prompts), "mean_new_tokens": sum(len(x) for x in batched) / len(batched), "model": str(model_dir)}


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("config", choices=[*CONFIGS, "evalspeed"])
    parser.add_argument("--model", type=Path, default=None, help="evalspeed: the trained seq2seq model directory")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", default=None)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="data order seed (the base weights stay the same)")
    args = parser.parse_args(argv)
    family = dataclasses.replace(scaled(FAMILIES[args.family], args.scale), seed=args.seed)
    name = args.name or f"{args.family}-{args.config}"
    torch.manual_seed(0)
    if args.config == "evalspeed":
        result = run_evalspeed(family, args.work, args.model or Path(base_path(family, args.work)))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        return 0
    dtype = torch.float32
    if args.config == "tuneforge_bf16":
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"  # read by the Accelerator the loop creates
        dtype = torch.bfloat16
    if args.config.startswith("tuneforge"):
        result = run_tuneforge(family, args.work, name)
    elif args.config == "sft_packing":
        result = run_sft(family, args.work, name)
    elif args.config == "sft_assistant":
        from bench.chat_peers import run_sft_chat

        result = run_sft_chat(family, args.work, name)
    elif family.name == "chat":
        from bench.chat_peers import run_trainer_chat

        result = run_trainer_chat(family, args.work, name, speed=args.config == "trainer_speed")
    else:
        result = run_trainer(family, args.work, name, speed=args.config == "trainer_speed")
    # Peak memory of training and scoring, before the probes below allocate their own matrices.
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # MFU reference: a large matmul in the precision the run computed in, timed in this process after training.
    result["matmul_flops_per_s"] = matmul_flops_per_s("cpu", dtype, budget_s=PROBE_BUDGET_S)
    result["precision"] = "bf16" if dtype == torch.bfloat16 else "fp32"
    # What MFU this model's own shapes allow, in the run's precision: the targets that ask for an MFU.
    if (args.family, args.config) in {("causal_lm", "tuneforge"), ("chat", "tuneforge"), ("chat", "tuneforge_bf16")}:
        from transformers import AutoConfig

        from bench import ceiling
        from pipelines.modeling import resolve_base

        config = AutoConfig.from_pretrained(resolve_base(base_path(family, args.work)))
        rank = family.lora["r"] if family.lora else None
        result["shape_ceiling"] = ceiling.measure(config, family.batch, family.max_length, dtype, rank)
    result.update(family=args.family, config=args.config, steps=family.steps, batch=family.batch,
                  threads=torch.get_num_threads())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
