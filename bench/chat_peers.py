"""The peers of the SmolLM2 LoRA chat family: `Trainer` (defaults, tuned) and TRL `SFTTrainer`, assistant-only loss.

Every peer trains the same LoRA (tuneforge's `modeling.apply_lora` with the family's `lora:` section) on the same
conversations (tuneforge's sample, with the recipe's system prompt), 256 tokens at most, loss on the assistant turns
and their `<|im_end|>` only, as tuneforge's `chat.loss_on: assistant` does. The conversations are rendered with
`TRAINING_TEMPLATE`: SmolLM2's own ChatML template plus the `{% generation %}` markers that transformers'
`return_assistant_tokens_mask` and TRL's `assistant_only_loss` need (TRL ships such training templates for the
families it knows; SmolLM2's is not among them, and its docs say to add the markers). It renders exactly the text of
the original template (checked at run time).

* Trainer, defaults: batches of whole conversations padded to the longest (`DataCollatorForSeq2Seq`, labels padded
  with -100), sampled at random.
* Trainer, tuned: what transformers documents for speed and applies on a CPU: `group_by_length` sampling and
  padding-free batches (`DataCollatorWithFlattening`: one row, `position_ids` restarting per conversation, which
  SDPA turns into a block-diagonal mask), fused AdamW.
* TRL SFTTrainer: `assistant_only_loss=True`, `packing=True` (best-fit-decreasing into 256-token bins, which turns
  on its padding-free batches), gradient checkpointing off (TRL's default trades speed for memory), fp32.

The Trainer rows see whole conversations, not packed windows, so their batch is set in conversations: as many as
fill the same number of tokens as tuneforge's and TRL's 8 windows of 256 on average (`conversations_per_step`).
"""

from __future__ import annotations

from pathlib import Path

TRAINING_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def conversations(family, work: Path, tokenizer) -> tuple[list[list[dict]], object]:
    """The family's training conversations as message lists (system prompt included), and the recipe."""
    from bench.worker import peer_rows
    from pipelines.tasks.chat_template import chat_config, normalize_messages

    recipe, _, data = peer_rows(family, work, tokenizer)
    system = chat_config(recipe).system_prompt
    column = recipe.data.columns["messages"]
    return [normalize_messages(m, system) for m in data["train"][column]], recipe


def training_tokenizer(base: str):
    """SmolLM2's tokenizer with `TRAINING_TEMPLATE`, after checking it renders what the original template does."""
    from transformers import AutoTokenizer

    from pipelines import modeling

    tokenizer = AutoTokenizer.from_pretrained(modeling.resolve_base(base))
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
             {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"},
             {"role": "assistant", "content": "b"}]
    original = tokenizer.apply_chat_template(probe, tokenize=False)
    if tokenizer.apply_chat_template(probe, tokenize=False, chat_template=TRAINING_TEMPLATE) != original:
        raise RuntimeError("TRAINING_TEMPLATE no longer renders SmolLM2's chat template; update it")
    tokenizer.chat_template = TRAINING_TEMPLATE
    return tokenizer


def encode(tokenizer, convs: list[list[dict]], max_length: int):
    """transformers' way to an assistant-only loss: `return_assistant_tokens_mask` over the generation markers.

    Returns:
        datasets.Dataset with input_ids, labels (-100 outside assistant turns) and length.
    """
    from datasets import Dataset

    rows = {"input_ids": [], "labels": [], "length": []}
    for messages in convs:
        enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, truncation=True,
                                            max_length=max_length, return_assistant_tokens_mask=True)
        ids, mask = enc["input_ids"], enc["assistant_masks"]
        rows["input_ids"].append(ids)
        rows["labels"].append([t if m else -100 for t, m in zip(ids, mask, strict=True)])
        rows["length"].append(len(ids))
    return Dataset.from_dict(rows)


def conversations_per_step(lengths: list[int], batch: int, max_length: int) -> int:
    """Conversations that hold, on average, the tokens of `batch` full windows of `max_length` (at least 1)."""
    mean = sum(lengths) / max(len(lengths), 1)
    return max(1, round(batch * max_length / max(mean, 1.0)))


def lora_model(family):
    """SmolLM2 with the family's LoRA, as tuneforge builds it (fp32, SDPA attention)."""
    from transformers import AutoModelForCausalLM

    from pipelines import modeling
    from pipelines.recipe import LoraConfig

    model = modeling.load_model(modeling.resolve_base(family.base), AutoModelForCausalLM)
    model.config.use_cache = False
    return modeling.apply_lora(model, LoraConfig(**family.lora), "CAUSAL_LM")


def run_trainer_chat(family, work: Path, name: str, speed: bool) -> dict:
    """`Trainer` on the conversations: padded batches (defaults) or padding-free, length-grouped ones (tuned)."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer

    from bench.measure import TokenCounter
    from bench.worker import SPEED_ARGS, TrainTimer, heldout_loss, peer_result, training_args

    tokenizer = training_tokenizer(family.base)
    convs, _ = conversations(family, work, tokenizer)
    train = encode(tokenizer, convs, family.max_length)
    per_step = conversations_per_step(train["length"], family.batch, family.max_length)
    model = lora_model(family)
    counter = TokenCounter()
    counter.attach(model)
    timer = TrainTimer()
    if speed:
        collator = DataCollatorWithFlattening()
        args = training_args(family, work, name, **SPEED_ARGS)
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True)
        args = training_args(family, work, name)
        train = train.remove_columns("length")
    args.per_device_train_batch_size = per_step
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator, callbacks=[timer])
    trainer.train()
    return {**peer_result(trainer, timer, counter), "conversations_per_step": per_step,
            "heldout_loss": heldout_loss(family, work, model, tokenizer)}


def run_sft_chat(family, work: Path, name: str) -> dict:
    """TRL `SFTTrainer`: assistant-only loss, best-fit-decreasing packing (padding-free), fp32."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from bench.measure import TokenCounter
    from bench.worker import TrainTimer, heldout_loss, log_every, peer_result

    tokenizer = training_tokenizer(family.base)
    convs, _ = conversations(family, work, tokenizer)
    model = lora_model(family)
    counter = TokenCounter()
    counter.attach(model)
    timer = TrainTimer()
    args = SFTConfig(
        output_dir=str(work / "peer-out" / name), max_steps=family.steps, per_device_train_batch_size=family.batch,
        learning_rate=family.learning_rate, lr_scheduler_type="constant", logging_steps=log_every(family),
        seed=family.seed, max_length=family.max_length, packing=True, assistant_only_loss=True,
        bf16=False,  # TRL defaults to bf16; every peer row here runs fp32 like tuneforge's fp32 row
        gradient_checkpointing=False,  # TRL's default trades speed for memory; off is its fast setting
        report_to="none",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"messages": convs}),
                         processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    return {**peer_result(trainer, timer, counter), "heldout_loss": heldout_loss(family, work, model, tokenizer)}
