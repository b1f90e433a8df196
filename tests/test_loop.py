"""The shared loop end to end on a tiny GPT: run-folder contract, LoRA, exact resume, accumulation, reload."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_gpt_raw, tiny_lora_raw
from safetensors.torch import load_file

from pipelines import loop, modeling
from pipelines.errors import TuneforgeError
from pipelines.recipe import build_recipe
from pipelines.run_model import load_run_model
from pipelines.runs import read_log


def test_pretrain_run_folder_contract(pretrained):
    metrics = json.loads((pretrained / "metrics.json").read_text())
    for name in ("recipe.yaml", "metrics.json", "log.jsonl", "README.md", "model/config.json",
                 "model/model.safetensors", "model/tokenizer.json"):
        assert (pretrained / name).is_file(), name
    assert metrics["status"] == "finished" and metrics["method"] == "scratch" and metrics["base_scores"] is None
    assert metrics["dataset"]["split"] == "test" and metrics["dataset"]["fingerprint"].startswith("sha256:")
    assert metrics["scores"]["perplexity"] == pytest.approx(2.718281828 ** metrics["scores"]["loss"], rel=1e-6)
    assert metrics["train"]["padding_fraction"] == 0.0  # packed windows never pad
    log = read_log(pretrained)
    losses = [row["loss"] for row in log if "loss" in row]
    assert losses[-1] < losses[0] - 1.0, losses  # it learned
    assert metrics["params"]["trainable"] == metrics["params"]["total"]
    assert (pretrained / "checkpoints" / "step_30").is_dir()


def test_lora_run_beats_base_and_reloads_exactly(pretrained, corpus, tmp_path):
    recipe = build_recipe(tiny_lora_raw(corpus, tmp_path, pretrained, "lora"))
    metrics = loop.train(recipe, tmp_path / "lora")
    assert metrics["scores"]["perplexity"] < metrics["base_scores"]["perplexity"]
    assert metrics["scores"]["num_tokens"] == metrics["base_scores"]["num_tokens"] > 0
    assert 0 < metrics["params"]["trainable"] < metrics["params"]["total"] / 5
    saved = load_file(tmp_path / "lora" / "model" / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    # The reloaded run (plain peft on top of plain transformers) scores exactly what training reported.
    _, task, model, tokenizer = load_run_model(tmp_path / "lora")
    ids = tokenizer("cmd3 - lists files\ncmd3 lists", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reloaded = model(input_ids=ids).logits
    recipe2 = build_recipe({**tiny_lora_raw(corpus, tmp_path, pretrained, "lora"), "eval": {"score_base": False}})
    rescored = loop.train(recipe2, tmp_path / "lora2")
    assert rescored["scores"]["perplexity"] == pytest.approx(metrics["scores"]["perplexity"], rel=1e-5)
    _, _, model2, _ = load_run_model(tmp_path / "lora2")
    with torch.no_grad():
        assert torch.equal(model2(input_ids=ids).logits, reloaded)  # same seed, same run -> same bits


def test_only_lora_parameters_receive_gradients(pretrained, corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = build_recipe(tiny_lora_raw(corpus, tmp_path, pretrained, "g"))
    model = modeling.apply_lora(modeling.load_model(str(pretrained), AutoModelForCausalLM), recipe.lora, "CAUSAL_LM")
    out = model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]]))
    out.loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name
        assert p.requires_grad == ("lora_" in name), name


def _weights(run_dir):
    return load_file(run_dir / "model" / "model.safetensors")


def test_exact_resume_matches_uninterrupted(corpus, tmp_path):
    raw = tiny_gpt_raw(corpus, tmp_path, "full", max_steps=12, save_every=0)
    raw["model"]["scratch"]["dropout"] = 0.1  # RNG state must be restored too
    loop.train(build_recipe(raw), tmp_path / "full")
    stopped = build_recipe({**raw, "output": {"dir": str(tmp_path), "name": "resumed"}}, ["train.stop_after_steps=5"])
    assert loop.train(stopped, tmp_path / "resumed") == {"status": "stopped", "step": 5}
    with pytest.raises(TuneforgeError, match="train.resume=auto"):
        loop.train(stopped, tmp_path / "resumed")  # never silently overwrites
    resumed = build_recipe({**raw, "output": {"dir": str(tmp_path), "name": "resumed"}}, ["train.resume=auto"])
    metrics = loop.train(resumed, tmp_path / "resumed")
    assert metrics["train"]["resumed_from_step"] == 5
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    full_log = [r["loss"] for r in read_log(tmp_path / "full") if "loss" in r]
    resumed_log = [r["loss"] for r in read_log(tmp_path / "resumed") if "loss" in r]
    assert resumed_log[-1] == full_log[-1]


def test_gradient_accumulation_equals_full_batch(pretrained, corpus, tmp_path):
    # 2 micro-batches of 4 accumulated == 1 batch of 8: token-weighted, not an average of micro-batch means.
    common = {"max_steps": 3, "learning_rate": 1e-2, "warmup_steps": 0, "max_grad_norm": None}
    one = tiny_lora_raw(corpus, tmp_path, pretrained, "one", micro_batch_size=8, **common)
    two = tiny_lora_raw(corpus, tmp_path, pretrained, "two", micro_batch_size=4, gradient_accumulation_steps=2,
                        **common)
    for raw in (one, two):
        raw["eval"]["score_base"] = False
        loop.train(build_recipe(raw), tmp_path / raw["output"]["name"])
    a = load_file(tmp_path / "one" / "model" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_existing_finished_run_is_not_overwritten(pretrained, corpus):
    recipe = build_recipe(tiny_gpt_raw(corpus, pretrained.parent, pretrained.name))
    before = (pretrained / "metrics.json").read_text()
    with pytest.raises(TuneforgeError, match="--overwrite"):
        loop.train(recipe, pretrained)
    assert (pretrained / "metrics.json").read_text() == before


def test_unknown_lora_target_lists_existing_modules(pretrained, corpus, tmp_path):
    raw = tiny_lora_raw(corpus, tmp_path, pretrained, "bad")
    raw["lora"]["target_modules"] = ["q_proj"]
    with pytest.raises(TuneforgeError, match=r"lora.target_modules: \['q_proj'\] not in GPT2LMHeadModel.*c_attn"):
        loop.train(build_recipe(raw), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_empty_dataset_after_limits_is_a_clear_error(corpus, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"description": "x"}\n')
    raw = tiny_gpt_raw(empty, tmp_path, "empty")
    with pytest.raises(TuneforgeError, match="empty"):
        loop.train(build_recipe(raw), tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("resume", ["never", "auto"])
def test_a_folder_that_is_not_a_run_is_never_deleted(pretrained, corpus, tmp_path, resume):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    raw = tiny_lora_raw(corpus, tmp_path, pretrained, "mine")
    raw["train"]["resume"] = resume
    with pytest.raises(TuneforgeError, match="not a tuneforge run"):
        loop.train(build_recipe(raw), folder)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_peak_memory_is_counted_per_run():
    """The main job trains every recipe in one process: a run's peak must not be an earlier, larger run's."""
    import sys

    from pipelines.meter import peak_memory_mb, reset_peak_memory

    if not sys.platform.startswith("linux"):
        pytest.skip("the CPU peak is reset through /proc/self/clear_refs (Linux)")
    import mmap

    cpu = torch.device("cpu")
    # 384 MiB made resident in an anonymous mapping of its own, so freeing it returns it to the OS whatever malloc's
    # settings (the loop keeps freed heap blocks mapped: runtime.keep_freed_memory_mapped).
    big = mmap.mmap(-1, 384 * 2**20)
    for offset in range(0, len(big), mmap.PAGESIZE):
        big[offset] = 1
    before = peak_memory_mb(cpu)
    big.close()
    reset_peak_memory(cpu)
    assert peak_memory_mb(cpu) < before - 300
