"""LoRA checkpoints hold what resume needs (adapter, optimizer, scheduler, RNG), not the frozen base, and a resumed
LoRA run ends with exactly the adapter of an uninterrupted one."""

from __future__ import annotations

import torch
from conftest import tiny_lora_raw
from demo_fixtures import _chat_raw, write_chat_corpus
from safetensors.torch import load_file

from pipelines import loop
from pipelines.recipe import build_recipe
from pipelines.runs import checkpoint_dirs


def test_lora_checkpoint_is_the_adapter_and_resumes_exactly(corpus, pretrained, tmp_path):
    raw = tiny_lora_raw(corpus, tmp_path, pretrained, "full", max_steps=8, save_every=0)
    raw["lora"]["dropout"] = 0.1  # the RNG state must be restored too
    loop.train(build_recipe(raw), tmp_path / "full")
    stopped = build_recipe({**raw, "output": {"dir": str(tmp_path), "name": "resumed"}}, ["train.stop_after_steps=4"])
    assert loop.train(stopped, tmp_path / "resumed") == {"status": "stopped", "step": 4}
    (checkpoint,) = checkpoint_dirs(tmp_path / "resumed")
    saved = load_file(checkpoint / "model.safetensors")
    assert saved and all("lora_" in key for key in saved if key.endswith("weight")), sorted(saved)[:5]
    base = load_file(pretrained / "model" / "model.safetensors")
    assert sum(t.numel() for t in saved.values()) < sum(t.numel() for t in base.values()) / 5
    # the scheduler is registered for checkpointing: custom_checkpoint_0.pkl
    assert {p.name for p in checkpoint.iterdir()} >= {"model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl",
                                                       "random_states_0.pkl"}
    resumed = build_recipe({**raw, "output": {"dir": str(tmp_path), "name": "resumed"}}, ["train.resume=auto"])
    assert loop.train(resumed, tmp_path / "resumed")["train"]["resumed_from_step"] == 4
    a = load_file(tmp_path / "full" / "model" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_chat_lora_with_trained_token_rows_resumes_exactly(pretrained, tmp_path):
    """The chat markers' embedding rows train tied to the output layer: saved once, restored to both."""
    raw = _chat_raw(write_chat_corpus(tmp_path / "chat.jsonl"), tmp_path, pretrained)
    raw["train"] |= {"max_steps": 6, "save_every": 0}
    raw["eval"]["generate"] = False
    loop.train(build_recipe({**raw, "output": {"dir": str(tmp_path), "name": "full"}}), tmp_path / "full")
    name = {"output": {"dir": str(tmp_path), "name": "resumed"}}
    loop.train(build_recipe({**raw, **name}, ["train.stop_after_steps=3"]), tmp_path / "resumed")
    loop.train(build_recipe({**raw, **name}, ["train.resume=auto"]), tmp_path / "resumed")
    a = load_file(tmp_path / "full" / "model" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("trainable_tokens" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
