"""Shared test setup: offline Hugging Face, quiet tokenizers, and a tiny GPT run factory."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# Nothing in the test suite may touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sat ran on under mat tree big small red blue quickly slowly and".split()


def write_corpus(path: Path, n: int = 240, seed: int = 0) -> Path:
    """A jsonl of man-page-like rows: `name_line` prompt and a templated `description` continuation."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cmd = f"cmd{i}"
        verb, noun = rng.choice(["lists", "copies", "moves", "prints"]), rng.choice(["files", "lines", "bytes"])
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24)))
        rows.append({
            "name_line": f"{cmd} - {verb} {noun}",
            "description": f"{cmd} {verb} {noun}. {body}. Use {cmd} to {verb[:-1]} {noun}.",
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_gpt_raw(corpus: Path, out_dir: Path, name: str, **train) -> dict:
    """A recipe dict for a tiny GPT-2 pretrained from scratch on `corpus` (seconds on a CPU)."""
    return {
        "task": "causal_lm",
        "model": {"scratch": {"architecture": "gpt2", "vocab_size": 300, "min_frequency": 1, "context_length": 64,
                              "hidden_size": 32, "layers": 2, "heads": 2}},
        "data": {"source": str(corpus), "columns": {"text": "description"}, "packing": True, "max_length": 32},
        "train": {"max_steps": 30, "micro_batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 3,
                  "log_every": 5, **train},
        "eval": {"batch_size": 8},
        "output": {"dir": str(out_dir), "name": name},
    }


def tiny_lora_raw(corpus: Path, out_dir: Path, base: Path, name: str, **train) -> dict:
    """A recipe dict for LoRA prompt->continuation finetuning of a tiny GPT run."""
    return {
        "task": "causal_lm",
        "model": {"base": str(base)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"source": str(corpus), "columns": {"prompt": "name_line", "text": "description"}, "max_length": 64},
        "train": {"max_steps": 20, "micro_batch_size": 8, "learning_rate": 5e-3, "log_every": 5, **train},
        "eval": {"batch_size": 8},
        "output": {"dir": str(out_dir), "name": name},
    }


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny models: a second thread only adds synchronisation (and stalls on a
    busy CPU). Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("data") / "corpus.jsonl")


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, corpus) -> Path:
    """A finished tiny GPT pretraining run, shared by the tests that need a base model."""
    from pipelines import loop
    from pipelines.recipe import build_recipe

    out = tmp_path_factory.mktemp("runs")
    recipe = build_recipe(tiny_gpt_raw(corpus, out, "gpt-tiny"))
    loop.train(recipe, out / "gpt-tiny")
    return out / "gpt-tiny"


def torchrun(raw: dict, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m pipelines.train RECIPE` (gloo), as the README says."""
    import yaml

    path = tmp_path / f"{raw['output']['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "pipelines.train", str(path), *overrides]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
