"""Tiny finished runs for the demo tests, trained by the tests themselves with the shared loop.

`trained_runs` trains each tiny run once per test session (under pytest's session temp folder) on the tiny
corpus from conftest.py; `demo_root` copies them into a fresh runs folder per test module, so one module may
delete runs without disturbing another. Task families whose module does not exist yet are left out (the
tests that need them skip with the reason).
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import socket
from pathlib import Path

from conftest import tiny_lora_raw

# run name -> the task module it needs
RUN_TASKS = {
    "gpt-lora": "causal_lm",
    "chat-lora": "chat",
    "bart-denoise": "denoising",
    "bart-summarize": "seq2seq",
    "cls-lora": "classification",
}
LABELS = ("lists", "copies", "moves", "prints")
SMALL_EVAL = {"validation_limit": 8, "test_limit": 8}  # scoring is not what these runs are for


def has_task(name: str) -> bool:
    """Whether `pipelines.tasks.<name>` exists yet."""
    return importlib.util.find_spec(f"pipelines.tasks.{name}") is not None


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_chat_corpus(path: Path, n: int = 160) -> Path:
    """Short one-exchange conversations in the tiny corpus's vocabulary ("what does cmd3 do?" -> "cmd3 lists")."""
    rng = random.Random(1)
    rows = []
    for i in range(n):
        verb, noun = rng.choice(LABELS), rng.choice(["files", "lines", "bytes"])
        rows.append({"messages": [{"role": "user", "content": f"what does cmd{i} do"},
                                  {"role": "assistant", "content": f"cmd{i} {verb} {noun}."}]})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_label_corpus(path: Path, n: int = 200) -> Path:
    """Descriptions labelled by their verb, an easy 4-class problem."""
    rng = random.Random(2)
    rows = []
    for i in range(n):
        verb = LABELS[i % len(LABELS)]
        noun = rng.choice(["files", "lines", "bytes"])
        rows.append({"text": f"cmd{i} {verb} {noun} quickly", "label": verb})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tiny_bart_raw(corpus: Path, out: Path) -> dict:
    return {
        "task": "denoising",
        "model": {"scratch": {"architecture": "bart", "vocab_size": 300, "min_frequency": 1, "context_length": 64,
                              "hidden_size": 32, "layers": 1, "heads": 2}},
        "data": {"source": str(corpus), "columns": {"text": "description"}, "max_length": 48,
                 **SMALL_EVAL},
        "train": {"max_steps": 20, "micro_batch_size": 8, "learning_rate": 3e-3, "log_every": 5},
        "eval": {"batch_size": 16},
        "output": {"dir": str(out), "name": "bart-denoise"},
    }  # fmt: skip


def _summarize_raw(corpus: Path, out: Path, base: Path) -> dict:
    return {
        "task": "seq2seq",
        "model": {"base": str(base)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"source": str(corpus), "columns": {"source": "description", "target": "name_line"},
                 "max_length": 48, **SMALL_EVAL},
        "seq2seq": {"target_max_length": 16},
        "train": {"max_steps": 10, "micro_batch_size": 8, "learning_rate": 5e-3, "log_every": 5},
        "eval": {"batch_size": 16, "score_base": False, "generation": {"max_new_tokens": 12, "num_beams": 2},
                 "metrics": ["rouge"]},
        "output": {"dir": str(out), "name": "bart-summarize"},
    }  # fmt: skip


def _chat_raw(corpus: Path, out: Path, base: Path) -> dict:
    return {
        "task": "chat",
        "model": {"base": str(base)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "chat": {"template": "chatml"},
        "data": {"source": str(corpus), "columns": {"messages": "messages"}, "max_length": 48,
                 **SMALL_EVAL},
        "train": {"max_steps": 10, "micro_batch_size": 8, "learning_rate": 5e-3, "log_every": 5},
        "eval": {"batch_size": 16, "score_base": False, "generation": {"max_new_tokens": 8}},
        "output": {"dir": str(out), "name": "chat-lora"},
    }  # fmt: skip


def _classifier_raw(corpus: Path, out: Path) -> dict:
    return {
        "task": "classification",
        "model": {"base": "builtin:minilm-l6"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"source": str(corpus), "columns": {"text": "text", "label": "label"}, "max_length": 16,
                 **SMALL_EVAL},
        "train": {"max_steps": 6, "micro_batch_size": 8, "learning_rate": 5e-3, "log_every": 3},
        "eval": {"batch_size": 32, "score_base": False},
        "output": {"dir": str(out), "name": "cls-lora"},
    }  # fmt: skip


def trained_runs(tmp_path_factory, corpus: Path, pretrained: Path) -> Path:
    """Train every tiny demo run whose task module exists, once per session; returns the folder holding them."""
    from pipelines import loop
    from pipelines.recipe import build_recipe

    out = tmp_path_factory.getbasetemp() / "demo-trained"
    out.mkdir(exist_ok=True)
    data = tmp_path_factory.getbasetemp() / "demo-data"
    data.mkdir(exist_ok=True)

    def train(name: str, raw: dict) -> None:
        if not (out / name / "metrics.json").is_file() and has_task(RUN_TASKS[name]):
            loop.train(build_recipe(raw), out / name, overwrite=True)

    train("gpt-lora", tiny_lora_raw(corpus, out, pretrained, "gpt-lora"))
    train("chat-lora", _chat_raw(write_chat_corpus(data / "chat.jsonl"), out, pretrained))
    train("bart-denoise", _tiny_bart_raw(corpus, out))
    if (out / "bart-denoise" / "metrics.json").is_file():
        train("bart-summarize", _summarize_raw(corpus, out, out / "bart-denoise"))
    train("cls-lora", _classifier_raw(write_label_corpus(data / "labels.jsonl"), out))
    return out


def demo_root(dest: Path, trained: Path, pretrained: Path, extra: dict[str, str] | None = None) -> Path:
    """A runs folder for one app: the pretrained GPT, every trained tiny run, and an unfinished run.

    Args:
        dest: the folder to create.
        trained: from `trained_runs`.
        pretrained: conftest's finished tiny GPT pretraining run.
        extra: new run name -> existing run name to copy (a run a test may delete while the app is up).

    Returns:
        `dest`. `gpt-unfinished` has a recipe and a "running" metrics.json: the demo must not offer it.
    """
    dest.mkdir(parents=True)
    shutil.copytree(pretrained, dest / "gpt-tiny", ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    for run in sorted(p for p in trained.iterdir() if (p / "metrics.json").is_file()):
        shutil.copytree(run, dest / run.name, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    for name, source in (extra or {}).items():
        shutil.copytree(dest / source, dest / name)
        metrics = json.loads((dest / name / "metrics.json").read_text())
        (dest / name / "metrics.json").write_text(json.dumps({**metrics, "run": name}))
    unfinished = dest / "gpt-unfinished"
    unfinished.mkdir()
    shutil.copy(pretrained / "recipe.yaml", unfinished / "recipe.yaml")
    (unfinished / "metrics.json").write_text(json.dumps({"status": "running"}))
    return dest


def llama_chat_run(root: Path) -> Path:
    """A tiny random Llama chat checkpoint in SmolLM2's layout (ChatML template, `<|im_end|>` as EOS and pad; see
    tests/tiny_hub.py), LoRA-finetuned 3 steps into `root/runs/llama-chat`; returns the run folder (~5 s)."""
    from test_architectures import raw_recipe, write_data
    from tiny_hub import ARCHS, save_checkpoint

    from pipelines import loop
    from pipelines.recipe import build_recipe

    run = root / "runs" / "llama-chat"
    if not (run / "metrics.json").is_file():
        arch = ARCHS["llama"]
        base = save_checkpoint(arch, root / "llama-base")
        raw = raw_recipe(arch, base, write_data(root / "llama-rows.jsonl"), root / "runs")
        raw["output"]["name"] = "llama-chat"
        loop.train(build_recipe(raw), run, overwrite=True)
    return run


def smollm2_chat_run(root: Path) -> Path:
    """The real SmolLM2-135M-Instruct (`builtin:smollm2-135m-instruct`, materialized in the TUNEFORGE_CACHE the
    caller set) LoRA-finetuned with tiny settings, 2 steps on the chat corpus, into `root/runs/smollm2-chat`."""
    from pipelines import loop
    from pipelines.recipe import build_recipe

    run = root / "runs" / "smollm2-chat"
    raw = {
        "task": "chat",
        "model": {"base": "builtin:smollm2-135m-instruct"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "auto"},
        "chat": {"template": "tokenizer", "loss_on": "assistant", "system_prompt": "You explain Unix manual pages."},
        "data": {"source": str(write_chat_corpus(root / "smollm2-chat.jsonl", 40)),
                 "columns": {"messages": "messages"},
                 "max_length": 128, "train_limit": 16, "validation_limit": 2, "test_limit": 2},
        "train": {"max_steps": 2, "micro_batch_size": 4, "learning_rate": 1e-3, "log_every": 1, "save_every": 0},
        "eval": {"batch_size": 4, "score_base": False, "generation": {"max_new_tokens": 12}},
        "output": {"dir": str(root / "runs"), "name": "smollm2-chat"},
    }  # fmt: skip
    loop.train(build_recipe(raw), run, overwrite=True)
    return run
