"""Gather-then-save writes what a plain save_pretrained of the unwrapped model writes, on 1 or N processes.

`python tests/distributed_save_check.py OUT` (one process) or under
`ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 tests/distributed_save_check.py OUT`. For a full GPT-2
(tied embeddings), a GPT-2 LoRA adapter, a chat-style adapter with trained added-token rows, a BERT classifier
LoRA adapter with its head (`modules_to_save`) and a head-only BERT classifier, it saves with
`distributed.save_model` into OUT/new/<case> and the way the loop saved before (the unwrapped module's
save_pretrained on the main process; chat re-saved without embedding layers) into OUT/old/<case>, then the main
process asserts both folders hold byte-identical files. Exits 0 when all match.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from pipelines import distributed, modeling
from pipelines.recipe import LoraConfig


def gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2))


def bert() -> BertForSequenceClassification:
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3)
    return BertForSequenceClassification(config)


def cases() -> dict:
    lora = LoraConfig(r=2, alpha=4, dropout=0.0)

    def chat():
        model = gpt2()
        modeling.fit_embeddings(model, 66)  # two added marker tokens, as the chat task adds
        return modeling.apply_lora(model, lora, "CAUSAL_LM", trainable_token_indices=[64, 65])

    def head_only():
        model = bert()
        modeling.freeze_all_but_head(model)
        return model

    return {
        "full-gpt2": gpt2,
        "lora-gpt2": lambda: modeling.apply_lora(gpt2(), lora, "CAUSAL_LM"),
        "lora-chat-tokens": chat,
        "lora-classifier-head": lambda: modeling.apply_lora(bert(), lora, "SEQ_CLS"),
        "head-only-classifier": head_only,
    }


def main(out: Path) -> int:
    accelerator = Accelerator()
    for name, make in cases().items():
        torch.manual_seed(0)
        model = make()
        with torch.no_grad():  # trained-looking weights: LoRA's B starts at zero, which would hide a mix-up
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.1)
        model = accelerator.prepare(model)
        distributed.save_model(accelerator, model, out / "new" / name)
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            unwrapped.save_pretrained(out / "old" / name, safe_serialization=True)
            if name == "lora-chat-tokens":
                unwrapped.save_pretrained(out / "old" / name, safe_serialization=True, save_embedding_layers=False)
            if hasattr(unwrapped, "peft_config") and unwrapped.get_base_model().can_generate():
                # save_model adds what a full model's save_pretrained writes and an adapter's does not
                unwrapped.get_base_model().generation_config.save_pretrained(out / "old" / name)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name in cases():
            old, new = out / "old" / name, out / "new" / name
            old_files = sorted(p.name for p in old.iterdir())
            new_files = sorted(p.name for p in new.iterdir())
            assert old_files == new_files, (name, old_files, new_files)
            assert any(f.endswith(".safetensors") for f in new_files), (name, new_files)
            for f in new_files:
                assert (old / f).read_bytes() == (new / f).read_bytes(), (name, f)
        print(f"identical: {', '.join(cases())} on {accelerator.num_processes} process(es)")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
