"""Pre-launch checks: recipe x Accelerate launch config combinations that would fail late on a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.recipe import build_recipe
from pipelines.validate import check_launch, load_launch_config, validate_many

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml")) + [ROOT / "accelerate_config.yaml"]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
LORA = {"task": "causal_lm", "model": {"base": "gpt2"}, "lora": {},
        "data": {"source": "x.jsonl", "columns": {"text": "t"}}}
SEQ2SEQ = {"task": "seq2seq", "model": {"base": "facebook/bart-base"}, "lora": {},
           "data": {"source": "x.jsonl", "columns": {"source": "s", "target": "t"}}}


def launch(name: str) -> dict:
    return load_launch_config(ROOT / "recipes" / "accelerate" / name)


def known_bad(recipe_path: Path, config_path: Path) -> bool:
    """The shipped combinations validate must refuse: accumulating micro-batches under DeepSpeed, select_best with
    sharded parameters (FSDP full shard, ZeRO-3)."""
    train = yaml.safe_load(recipe_path.read_text()).get("train") or {}
    if train.get("select_best") and config_path.name in ("fsdp.yaml", "deepspeed-zero3.yaml"):
        return True
    return config_path.name.startswith("deepspeed") and train.get("gradient_accumulation_steps", 1) > 1


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_recipes_with_shipped_launch_configs(config, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    for recipe in RECIPES:
        code = validate_many([str(recipe)], [], launch_config=str(config))
        out = capsys.readouterr().out
        assert code == (2 if known_bad(recipe, config) else 0), out


def test_zero3_generates_but_needs_a_gathered_final_save():
    cfg = launch("deepspeed-zero3.yaml")
    assert check_launch(build_recipe(SEQ2SEQ), cfg) == []  # synced generation: no longer refused
    no_gather = {**cfg, "deepspeed_config": {**cfg["deepspeed_config"], "zero3_save_16bit_model": False}}
    problems = check_launch(build_recipe(SEQ2SEQ), no_gather)
    assert len(problems) == 1 and "zero3_save_16bit_model: true" in problems[0]
    assert check_launch(build_recipe(SEQ2SEQ), launch("deepspeed-zero2.yaml")) == []


def test_deepspeed_offloaded_optimizer_and_clipping_mismatch():
    cfg = launch("deepspeed-zero2.yaml")
    offload = {**cfg, "deepspeed_config": {**cfg["deepspeed_config"], "offload_optimizer_device": "cpu"}}
    problems = check_launch(build_recipe(LORA), offload)
    assert len(problems) == 1 and "offload_optimizer_device: none" in problems[0]
    problems = check_launch(build_recipe(LORA, ["train.max_grad_norm=0.5"]), cfg)
    assert len(problems) == 1 and "gradient_clipping (1.0)" in problems[0] and "0.5" in problems[0]


def test_fsdp_ram_efficient_loading_needs_synced_module_states():
    cfg = launch("fsdp.yaml")
    assert cfg["fsdp_config"]["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"  # checkpoints stay sharded
    bad = {**cfg, "fsdp_config": {**cfg["fsdp_config"], "fsdp_sync_module_states": False}}
    problems = check_launch(build_recipe(LORA), bad)
    assert len(problems) == 1 and "fsdp_sync_module_states: true" in problems[0]


def test_lora_under_fsdp_needs_orig_params_and_transformer_wrap():
    cfg = launch("fsdp.yaml")
    assert check_launch(build_recipe(LORA), cfg) == []
    bad = {**cfg, "fsdp_config": {**cfg["fsdp_config"], "fsdp_use_orig_params": False,
                                  "fsdp_auto_wrap_policy": "SIZE_BASED_WRAP"}}
    problems = check_launch(build_recipe(LORA), bad)
    assert any("fsdp_use_orig_params: true" in p for p in problems)
    assert any("TRANSFORMER_BASED_WRAP" in p for p in problems)
    assert check_launch(build_recipe({k: v for k, v in LORA.items() if k != "lora"}), bad) == []


def test_double_activation_checkpointing_under_fsdp():
    cfg = launch("fsdp.yaml")
    cfg["fsdp_config"]["fsdp_activation_checkpointing"] = True
    problems = check_launch(build_recipe(LORA, ["model.gradient_checkpointing=true"]), cfg)
    assert any("checkpointing twice" in p for p in problems)


def test_bf16_on_hardware_without_it(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla V100")
    problems = check_launch(build_recipe(LORA), launch("single-gpu.yaml"))
    assert problems == [problems[0]] and "Tesla V100 has no bf16" in problems[0] and "fp16" in problems[0]


def test_global_batch_must_divide_over_processes():
    cfg = launch("fsdp.yaml")  # 8 processes
    assert check_launch(build_recipe(LORA, ["train.global_batch_size=64", "train.micro_batch_size=8"]), cfg) == []
    problems = check_launch(build_recipe(LORA, ["train.global_batch_size=60", "train.micro_batch_size=8"]), cfg)
    assert problems and "not divisible" in problems[0] and "multiple of 64" in problems[0]


def test_deepspeed_accumulation_must_be_left_to_tuneforge():
    cfg = launch("deepspeed-zero2.yaml")
    cfg["deepspeed_config"]["gradient_accumulation_steps"] = 4
    problems = check_launch(build_recipe(LORA), cfg)
    assert problems and "set it to 1" in problems[0]


def test_gradient_checkpointing_with_lora_is_non_reentrant_with_input_grads(pretrained):
    from transformers import AutoModelForCausalLM

    from pipelines import modeling

    model = modeling.load_model(str(pretrained), AutoModelForCausalLM)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    recipe = build_recipe(LORA)
    peft = modeling.apply_lora(model, recipe.lora, "CAUSAL_LM")
    peft.train()
    import torch

    out = peft(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]]))
    out.loss.backward()
    grads = [p.grad for n, p in peft.named_parameters() if "lora_B" in n]  # B starts at 0: A gets no grad yet
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_deepspeed_refuses_accumulation_that_would_step_each_micro_batch():
    cfg = launch("deepspeed-zero3.yaml")  # 8 processes
    problems = check_launch(build_recipe(LORA, ["train.gradient_accumulation_steps=2"]), cfg)
    assert len(problems) == 1 and "would each step the optimizer" in problems[0]
    problems = check_launch(build_recipe(LORA, ["train.global_batch_size=128", "train.micro_batch_size=8"]), cfg)
    assert len(problems) == 1 and "train.gradient_accumulation_steps: 2 " in problems[0]
    assert check_launch(build_recipe(LORA, ["train.global_batch_size=64", "train.micro_batch_size=8"]), cfg) == []
    assert check_launch(build_recipe(LORA, ["train.gradient_accumulation_steps=2"]), launch("fsdp.yaml")) == []


def test_select_best_needs_unsharded_parameters():
    recipe = build_recipe(SEQ2SEQ, ["train.eval_every=10", "train.select_best=chrf"])
    for name in ("fsdp.yaml", "deepspeed-zero3.yaml"):
        problems = check_launch(recipe, launch(name))
        assert len(problems) == 1 and problems[0].startswith("train.select_best: keeping the best step's weights")
    assert check_launch(recipe, launch("deepspeed-zero2.yaml")) == []
    no_shard = {**launch("fsdp.yaml")}
    no_shard["fsdp_config"] = {**no_shard["fsdp_config"], "fsdp_sharding_strategy": "NO_SHARD"}
    assert check_launch(recipe, no_shard) == []
