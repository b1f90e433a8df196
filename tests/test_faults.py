"""Fault injection: kills at random steps and inside a checkpoint save, a full disk, read-only folders, a run lock
raced by two starts, and a table of bad inputs that must each end in exit 2, one message, no traceback, and no
change on disk."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, tiny_gpt_raw, tiny_lora_raw

from pipelines import checkpoints, cli, loop
from pipelines.errors import TuneforgeError
from pipelines.recipe import build_recipe
from pipelines.runs import read_log, read_metrics

# ---------------------------------------------------------------------------------------------------------------
# Helpers


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under `roots`: path -> (size, sha256) (folders: (-1, ""))."""
    out = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_dir():
                out[str(path)] = (-1, "")
            else:
                out[str(path)] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


# Fields of metrics.json "train" that measure time or the machine rather than the run: they differ between any two
# runs. "seconds" of a resumed run is the sum of both parts (its own assertion below).
TIMED = {"seconds", "tokens_per_s", "nonpad_tokens_per_s", "examples_per_s", "peak_memory_mb", "model_flops_per_s",
         "matmul_flops_per_s", "mfu", "resumed_from_step"}


def record(run_dir: Path) -> tuple[dict, list[dict]]:
    """metrics.json's training record without timings, and log.jsonl without timings."""
    train = {k: v for k, v in read_metrics(run_dir)["train"].items() if k not in TIMED}
    log = [{k: v for k, v in row.items() if k != "seconds"} for row in read_log(run_dir)]
    return train, log


RESUME_TRAIN = {"max_steps": 8, "save_every": 2, "log_every": 1, "eval_every": 3, "keep_checkpoints": 2}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("full")
    loop.train(build_recipe(tiny_gpt_raw(corpus, out, "full", **RESUME_TRAIN)), out / "full")
    return out / "full"


def assert_same_run(resumed: Path, full: Path) -> None:
    assert same_weights(resumed, full)
    assert record(resumed) == record(full)
    assert read_metrics(resumed)["scores"] == read_metrics(full)["scores"]
    steps = [r["step"] for r in read_log(resumed)]
    assert steps == [r["step"] for r in read_log(full)]  # no duplicated or missing rows
    seconds = read_metrics(resumed)["train"]["seconds"]
    assert seconds >= max(r.get("seconds", 0) for r in read_log(resumed))  # both parts summed, never restarted


def write_recipe(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def spawn_train(recipe: Path, *overrides: str) -> subprocess.Popen:
    import torch

    # The same thread count as this process: the bitwise comparisons are against runs made in-process.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "train", str(recipe), *overrides], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen, appeared, timeout: float = 120) -> bool:
    """kill -9 `proc` as soon as `appeared()` is true; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if appeared():
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    return False


# ---------------------------------------------------------------------------------------------------------------
# Crashes and resume


def test_kill_inside_a_checkpoint_save_then_resume_is_bitwise_equal(uninterrupted, corpus, tmp_path):
    raw = tiny_gpt_raw(corpus, tmp_path, "killed", **RESUME_TRAIN)
    recipe = write_recipe(tmp_path / "killed.yaml", raw)
    run = tmp_path / "killed"
    tmp4 = run / "checkpoints" / ".tmp-step_4"
    assert kill_when(spawn_train(recipe), tmp4.exists), "the run ended before its step-4 save"
    assert tmp4.exists() and not (run / "checkpoints" / "step_4").exists()
    assert checkpoints.latest_complete(run)[0].name == "step_2"
    loop.train(build_recipe(raw, ["train.resume=auto"]), run)
    assert_same_run(run, uninterrupted)
    assert not tmp4.exists()


def test_kill_at_a_random_step_then_resume_is_bitwise_equal(uninterrupted, corpus, tmp_path):
    raw = tiny_gpt_raw(corpus, tmp_path, "killed", **RESUME_TRAIN)
    recipe = write_recipe(tmp_path / "killed.yaml", raw)
    run = tmp_path / "killed"
    # After the first checkpoint: a kill between log rows leaves rows the resume must drop and write again.
    rows = random.Random(os.getpid()).choice([3, 4, 5])

    def logged() -> bool:
        log = run / "log.jsonl"
        ready = (run / "checkpoints" / "step_2").is_dir() and log.is_file()
        return ready and len(log.read_text().splitlines()) >= rows

    assert kill_when(spawn_train(recipe), logged)
    loop.train(build_recipe(raw, ["train.resume=auto"]), run)
    assert_same_run(run, uninterrupted)


def test_a_save_that_fails_midway_is_never_picked(uninterrupted, corpus, tmp_path, monkeypatch, capsys):
    raw = tiny_gpt_raw(corpus, tmp_path, "broken", **RESUME_TRAIN)
    run = tmp_path / "broken"
    real = checkpoints.fsync_tree

    def fail_at_step_4(root):  # every file of the save is written, then the machine "dies" before the rename
        if root.name == ".tmp-step_4":
            raise OSError(errno.EIO, "Input/output error")
        real(root)

    monkeypatch.setattr(checkpoints, "fsync_tree", fail_at_step_4)
    with pytest.raises(OSError):
        loop.train(build_recipe(raw), run)
    monkeypatch.setattr(checkpoints, "fsync_tree", real)
    # An older-style half checkpoint under the final name is skipped too, with the reason, and left in place.
    fake = run / "checkpoints" / "step_5"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"half")
    capsys.readouterr()
    loop.train(build_recipe(raw, ["train.resume=auto"]), run)
    err = capsys.readouterr().err
    assert "skipping incomplete checkpoint" in err and "step_5" in err and "no manifest" in err
    assert "resuming broken from" in err and "step_2" in err
    assert_same_run(run, uninterrupted)


def test_full_disk_is_one_message_and_the_run_resumes_after_space_is_freed(corpus, tmp_path, capsys, monkeypatch):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (the patched-writer test below covers the message)")
    try:
        raw = tiny_gpt_raw(corpus, mount, "full-disk", max_steps=8, save_every=2, keep_checkpoints=1)
        recipe = write_recipe(tmp_path / "r.yaml", raw)
        filler = mount / "filler"
        real_save = checkpoints.save

        def save_then_fill_the_disk(accelerator, run_dir, step, keep, state):
            path = real_save(accelerator, run_dir, step, keep, state)
            if step == 2:  # a real ENOSPC from the file system at the next save
                filler.write_bytes(b"\0" * max(0, shutil.disk_usage(mount).free - 20_000))
            return path

        monkeypatch.setattr(checkpoints, "save", save_then_fill_the_disk)
        assert cli.main(["train", str(recipe)]) == 2
        err = capsys.readouterr().err
        assert "no space left" in err and "MB free" in err and "needs about" in err and "Traceback" not in err
        assert checkpoints.latest_complete(mount / "full-disk")[0].name == "step_2"
        monkeypatch.setattr(checkpoints, "save", real_save)
        filler.unlink()
        assert cli.main(["train", str(recipe), "train.resume=auto"]) == 0
        assert read_metrics(mount / "full-disk")["status"] == "finished"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_and_read_only_from_a_patched_writer(corpus, tmp_path, monkeypatch, capsys):
    """Where mounting is not allowed: the same messages from writers that fail as the OS would."""
    raw = tiny_gpt_raw(corpus, tmp_path, "patched", max_steps=4, save_every=2)
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    for code, words in [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only file system")]:
        def fail(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code), str(tmp_path / "patched" / "checkpoints"))

        monkeypatch.setattr(checkpoints, "fsync_tree", fail)
        before = snapshot(tmp_path)
        assert cli.main(["train", str(recipe)]) == 2
        err = capsys.readouterr().err
        assert words in err and "output.dir" in err and "Traceback" not in err
        assert snapshot(tmp_path) == before  # no half-made run folder (no complete checkpoint yet)


def test_read_only_output_dir(corpus, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("mounting a read-only tmpfs needs root (root ignores chmod; see the patched-writer test)")
    try:
        recipe = write_recipe(tmp_path / "r.yaml", tiny_gpt_raw(corpus, ro / "runs", "x", max_steps=2))
        assert cli.main(["train", str(recipe)]) == 2
        err = capsys.readouterr().err
        assert "read-only file system" in err and str(ro) in err and "Traceback" not in err
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_an_error_before_the_first_checkpoint_leaves_no_folder(corpus, tmp_path, capsys):
    # micro_batch larger than the data: raised after the folder is made (by StepBatches)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_gpt_raw(corpus, tmp_path / "runs", "big", micro_batch_size=4096))
    (tmp_path / "runs").mkdir()
    assert cli.main(["train", str(recipe)]) == 2
    assert "cannot fill one global batch" in capsys.readouterr().err
    assert list((tmp_path / "runs").iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# The run lock


def test_two_starts_within_milliseconds_exactly_one_proceeds(corpus, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_gpt_raw(corpus, tmp_path / "runs", "race", max_steps=2))
    procs = [spawn_train(recipe), spawn_train(recipe)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    refused = [err for code, err in results if code == 2]
    assert codes == [0, 2], results
    assert ("in use by another tuneforge run" in refused[0] or "already holds a finished run" in refused[0])
    assert "Traceback" not in refused[0]
    assert read_metrics(tmp_path / "runs" / "race")["status"] == "finished"
    assert not (tmp_path / "runs" / ".race.lock").exists()


def test_lock_is_exclusive_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    first = checkpoints.RunLock(run)
    first.acquire()
    with pytest.raises(TuneforgeError, match=f"in use by another tuneforge run \\(PID {os.getpid()}"):
        checkpoints.RunLock(run).acquire()
    first.path.write_text("")  # the instant between a holder's flock and its write: still refused, not "stale"
    with pytest.raises(TuneforgeError, match="in use by another tuneforge run \\(starting now\\)"):
        checkpoints.RunLock(run).acquire()
    first.release()
    assert not first.path.exists()
    # A holder killed with SIGKILL leaves its file; the kernel dropped its flock, so the next start takes it over.
    code = (f"import os, signal; from pipelines import checkpoints; checkpoints.RunLock({str(run)!r}).acquire(); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", code], cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL and first.path.exists()
    second = checkpoints.RunLock(run)
    second.acquire()
    assert "taking over the lock" in capsys.readouterr().err
    assert json.loads(first.path.read_text())["pid"] == os.getpid()
    second.release()
    assert not first.path.exists()


def test_lock_released_between_open_and_flock_is_not_held_on_the_unlinked_file(tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = checkpoints.RunLock(run)
    first.acquire()
    real_open, calls = os.open, []

    def open_then_holder_releases(*args, **kwargs):  # the holder ends between the second start's open and flock
        fd = real_open(*args, **kwargs)
        calls.append(fd)
        if len(calls) == 1:
            first.release()
        return fd

    monkeypatch.setattr(checkpoints.os, "open", open_then_holder_releases)
    second = checkpoints.RunLock(run)
    second.acquire()
    monkeypatch.undo()
    assert len(calls) == 2 and second.path.exists()  # retried on a new file, not held on the unlinked one
    with pytest.raises(TuneforgeError, match="in use by another tuneforge run"):
        checkpoints.RunLock(run).acquire()
    second.release()


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: every row ends with exit 2, one message with these words, no traceback, nothing on disk changed.

ADAPTER = "adapter_config.json"


def word_tokenizer(folder: Path, words: list[str]) -> None:
    """Replace a model folder's tokenizer by a word-level one knowing only `words` (others -> [UNK])."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    for f in folder.glob("tokenizer*"):
        f.unlink()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[UNK]").save_pretrained(folder)


def char_tokenizer(folder: Path, chars: list[str]) -> None:
    """Replace a model folder's tokenizer by a BPE over `chars` without an unknown token: other text encodes to []."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(chars)}, [], unk_token=None))
    for f in folder.glob("tokenizer*"):
        f.unlink()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=chars[0]).save_pretrained(folder)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, corpus, pretrained) -> Path:
    """A workspace of bad inputs next to good ones: models, data files, launch configs and recipes."""
    ws = tmp_path_factory.mktemp("ws")
    (ws / "runs").mkdir()
    good = pretrained / "model"

    def model(name: str, change) -> None:
        shutil.copytree(good, ws / "models" / name)
        change(ws / "models" / name)

    model("good", lambda d: None)
    model("garbage-weights", lambda d: (d / "model.safetensors").write_bytes(b"not a safetensors file" * 10))
    model("truncated-weights", lambda d: (d / "model.safetensors").write_bytes(
        (good / "model.safetensors").read_bytes()[:5000]))
    model("empty-weights", lambda d: (d / "model.safetensors").write_bytes(b""))
    model("config-not-json", lambda d: (d / "config.json").write_text("{ this is not json"))
    model("config-no-type", lambda d: (d / "config.json").write_text('{"hidden_size": 4}'))
    model("no-weights", lambda d: (d / "model.safetensors").unlink())
    model("no-tokenizer", lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")])
    model("adapter-not-json", lambda d: (d / ADAPTER).write_text("{broken"))
    model("tokenizer-4-tokens", lambda d: word_tokenizer(d, ["the", "a", "cat"]))
    model("tokenizer-mostly-unknown", lambda d: word_tokenizer(d, [f"w{i}" for i in range(30)] + ["the"]))
    model("tokenizer-drops-everything", lambda d: char_tokenizer(d, [chr(0x3B1 + i) for i in range(20)]))

    data = ws / "data"
    data.mkdir()
    (data / "empty.jsonl").write_text("")
    (data / "latin1.jsonl").write_bytes('{"name_line": "caf\xe9", "description": "d\xe9j\xe0 vu"}\n'.encode("latin-1"))
    rows = corpus.read_text().splitlines()
    (data / "truncated.jsonl").write_text("\n".join(rows[:50]) + "\n" + rows[50][:25] + "\n")
    (data / "mixed.jsonl").write_text("\n".join(rows[:30] + ['{"name_line": 5, "description": ["a", "b"]}']) + "\n")
    (data / "empty.csv").write_text("")
    (data / "latin1.csv").write_bytes("name_line,description\ncaf\xe9,d\xe9j\xe0\n".encode("latin-1"))
    (data / "garbage.parquet").write_bytes(b"PAR1 not really parquet")
    (data / "empty.txt").write_text("")
    (data / "folder.jsonl").mkdir()
    (data / "array.json").write_text('["just", "strings"]')
    (data / "blank-texts.jsonl").write_text("".join(json.dumps({"name_line": " ", "description": " "}) + "\n"
                                                   for _ in range(200)))

    launch = ws / "launch"
    launch.mkdir()
    base_launch = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "mixed_precision": "no",
                   "num_machines": 1, "machine_rank": 0, "num_processes": 2, "main_process_port": 29500}
    bad_launch = {
        "zero-procs": {"num_processes": 0}, "neg-procs": {"num_processes": -2}, "str-procs": {"num_processes": "two"},
        "rank-too-big": {"num_machines": 2, "machine_rank": 2, "num_processes": 4},
        "neg-rank": {"machine_rank": -1}, "zero-machines": {"num_machines": 0},
        "fewer-procs-than-machines": {"num_machines": 4, "num_processes": 2},
        "port-out-of-range": {"main_process_port": 70000}, "precision": {"mixed_precision": "fp12"},
        "dist-type": {"distributed_type": "BANANA"},
        "procs-not-multiple": {"num_machines": 2, "num_processes": 3},
    }
    for name, change in bad_launch.items():
        (launch / f"{name}.yaml").write_text(yaml.safe_dump({**base_launch, **change}))
    (launch / "not-yaml.yaml").write_text("distributed_type: [MULTI_GPU\nnum_processes: 2\n")
    (launch / "latin1.yaml").write_bytes("distributed_type: MULTI_GPU # caf\xe9\n".encode("latin-1"))
    (launch / "list.yaml").write_text("- distributed_type\n- MULTI_GPU\n")
    (launch / "empty.yaml").write_text("")

    for name, file, text in [("broken-metrics", "metrics.json", '{"status": "fini'),
                             ("broken-recipe", "recipe.yaml", "task: [causal_lm\n")]:
        shutil.copytree(pretrained, ws / "runs-bad" / name, ignore=shutil.ignore_patterns("checkpoints"))
        (ws / "runs-bad" / name / file).write_text(text)

    recipes = ws / "recipes"
    recipes.mkdir()

    def recipe(name: str, raw: dict) -> None:
        (recipes / f"{name}.yaml").write_text(yaml.safe_dump(raw))

    lora = tiny_lora_raw(corpus, ws / "runs", ws / "models" / "good", "lora", max_steps=2)
    recipe("good", lora)
    for name in ("garbage-weights", "truncated-weights", "empty-weights", "config-not-json", "config-no-type",
                 "no-weights", "no-tokenizer", "adapter-not-json", "tokenizer-4-tokens", "tokenizer-mostly-unknown",
                 "tokenizer-drops-everything"):
        recipe(f"base-{name}", {**lora, "model": {"base": str(ws / "models" / name)}})
    for name in ("empty.jsonl", "latin1.jsonl", "truncated.jsonl", "mixed.jsonl", "empty.csv", "latin1.csv",
                 "garbage.parquet", "empty.txt", "folder.jsonl", "array.json", "blank-texts.jsonl"):
        recipe(f"data-{name}", {**lora, "data": {**lora["data"], "source": str(data / name)}})
    (ws / "a-file").write_text("not a folder")
    recipe("output-dir-is-file", {**lora, "output": {"dir": str(ws / "a-file"), "name": "x"}})
    recipe("output-under-file", {**lora, "output": {"dir": str(ws / "a-file" / "sub"), "name": "x"}})
    (recipes / "not-yaml.yaml").write_text("task: causal_lm\nmodel: {base: [\n")
    (recipes / "latin1.yaml").write_bytes("task: causal_lm # caf\xe9\n".encode("latin-1"))
    (recipes / "list.yaml").write_text("- task\n")
    (recipes / "empty.yaml").write_text("")
    tiny_vocab = tiny_gpt_raw(corpus, ws / "runs", "tiny-vocab")
    tiny_vocab["model"]["scratch"]["vocab_size"] = 2
    recipe("tiny-vocab", tiny_vocab)
    return ws


W = "{ws}"
GOOD = f"{W}/recipes/good.yaml"
# (id, argv, words of the message): "{ws}" is the workspace above.
BAD_INPUTS = [
    # recipes and overrides
    ("recipe-missing", ["train", f"{W}/recipes/nope.yaml"], ["no such file"]),
    ("recipe-is-folder", ["train", f"{W}/recipes"], ["is a folder"]),
    ("recipe-not-yaml", ["train", f"{W}/recipes/not-yaml.yaml"], ["not valid YAML"]),
    ("recipe-not-utf8", ["train", f"{W}/recipes/latin1.yaml"], ["not UTF-8"]),
    ("recipe-a-list", ["train", f"{W}/recipes/list.yaml"], ["expected a YAML mapping"]),
    ("recipe-empty", ["train", f"{W}/recipes/empty.yaml"], ["expected a YAML mapping"]),
    ("override-unknown-key", ["train", GOOD, "train.max_setps=3"], ["train.max_setps", "did you mean"]),
    ("override-not-a-number", ["train", GOOD, "train.max_steps=abc"], ["train.max_steps"]),
    ("override-zero-steps", ["train", GOOD, "train.max_steps=0"], ["train.max_steps"]),
    ("override-negative-lr", ["train", GOOD, "train.learning_rate=-1"], ["train.learning_rate"]),
    ("override-zero-batch", ["train", GOOD, "train.micro_batch_size=0"], ["train.micro_batch_size"]),
    ("override-no-section", ["train", GOOD, "max_steps=3"], ["max_steps", "unknown key"]),
    ("override-unknown-task", ["train", GOOD, "task=poetry"], ["task"]),
    ("override-batch-too-big", ["train", GOOD, "train.micro_batch_size=100000"], ["cannot fill one global batch"]),
    ("override-indivisible-global", ["train", GOOD, "train.global_batch_size=7", "train.micro_batch_size=2"],
     ["train.global_batch_size", "not divisible"]),
    ("override-lora-target", ["train", GOOD, "lora.target_modules=[nope]"], ["lora.target_modules", "nope"]),
    ("override-column-missing", ["train", GOOD, "data.columns.text=nope"], ["no column 'nope'"]),
    ("override-max-length", ["train", GOOD, "data.max_length=100000"], ["data.max_length", "positions"]),
    ("output-dir-is-file", ["train", f"{W}/recipes/output-dir-is-file.yaml"], ["is a file", "output.dir"]),
    ("output-dir-under-file", ["train", f"{W}/recipes/output-under-file.yaml"], ["is a file", "output.dir"]),
    ("scratch-vocab-too-small", ["train", f"{W}/recipes/tiny-vocab.yaml"], ["vocab_size", "256"]),
    ("tokenizer-4-tokens", ["train", f"{W}/recipes/base-tokenizer-4-tokens.yaml"], ["4 token(s)", "cannot spell"]),
    ("tokenizer-mostly-unknown", ["train", f"{W}/recipes/base-tokenizer-mostly-unknown.yaml"],
     ["unknown token", "does not cover"]),
    ("tokenizer-drops-everything", ["train", f"{W}/recipes/base-tokenizer-drops-everything.yaml"],
     ["to no tokens at all"]),
    # models
    ("base-garbage-weights", ["train", f"{W}/recipes/base-garbage-weights.yaml"],
     ["model.safetensors", "corrupted"]),
    ("base-truncated-weights", ["train", f"{W}/recipes/base-truncated-weights.yaml"],
     ["model.safetensors", "corrupted"]),
    ("base-empty-weights", ["train", f"{W}/recipes/base-empty-weights.yaml"], ["model.safetensors", "corrupted"]),
    ("base-config-not-json", ["train", f"{W}/recipes/base-config-not-json.yaml"], ["config.json", "not valid JSON"]),
    ("base-config-no-type", ["train", f"{W}/recipes/base-config-no-type.yaml"], ["config.json", "model_type"]),
    ("base-no-weights", ["train", f"{W}/recipes/base-no-weights.yaml"], ["model.base", "safetensors"]),
    ("base-no-tokenizer", ["train", f"{W}/recipes/base-no-tokenizer.yaml"], ["tokenizer", "model.base"]),
    ("base-adapter-not-json", ["train", f"{W}/recipes/base-adapter-not-json.yaml"],
     ["adapter_config.json", "not valid JSON"]),
    ("base-missing", ["train", GOOD, f"model.base={W}/models/nope"], ["does not exist"]),
    ("base-is-file", ["train", GOOD, f"model.base={W}/a-file"], ["is a file"]),
    ("base-unknown-alias", ["train", GOOD, "model.base=builtin:nope"], ["unknown alias"]),
    ("eval-recipe-garbage-weights", ["eval", f"{W}/models/garbage-weights", "--recipe", GOOD,
                                     "--out", f"{W}/runs/ev"], ["model.safetensors", "corrupted"]),
    ("eval-recipe-config-not-json", ["eval", f"{W}/models/config-not-json", "--recipe", GOOD,
                                     "--out", f"{W}/runs/ev"], ["config.json", "not valid JSON"]),
    ("eval-not-a-run", ["eval", f"{W}/data"], ["not a run folder"]),
    ("eval-run-recipe-not-yaml", ["eval", f"{W}/runs-bad/broken-recipe"], ["recipe.yaml", "not valid UTF-8 YAML"]),
    ("eval-run-metrics-not-json", ["eval", f"{W}/runs-bad/broken-metrics"], ["metrics.json", "not valid JSON"]),
    ("resume-run-metrics-not-json", ["train", GOOD, f"output.dir={W}/runs-bad", "output.name=broken-metrics",
                                     "train.resume=auto"], ["metrics.json", "not valid JSON"]),
    ("eval-missing", ["eval", f"{W}/nope"], ["nope"]),
    # data files
    ("data-empty-jsonl", ["train", f"{W}/recipes/data-empty.jsonl.yaml"], ["empty.jsonl", "no rows"]),
    ("data-not-utf8", ["train", f"{W}/recipes/data-latin1.jsonl.yaml"], ["latin1.jsonl", "UTF-8"]),
    ("data-truncated-line", ["train", f"{W}/recipes/data-truncated.jsonl.yaml"], ["truncated.jsonl", "JSON"]),
    ("data-mixed-types", ["train", f"{W}/recipes/data-mixed.jsonl.yaml"],
     ["data.columns.prompt", "'name_line'", "mixes value types (int, str)"]),
    ("data-empty-csv", ["train", f"{W}/recipes/data-empty.csv.yaml"], ["empty.csv", "no rows"]),
    ("data-csv-not-utf8", ["train", f"{W}/recipes/data-latin1.csv.yaml"], ["latin1.csv", "UTF-8"]),
    ("data-garbage-parquet", ["train", f"{W}/recipes/data-garbage.parquet.yaml"], ["garbage.parquet"]),
    ("data-empty-txt", ["train", f"{W}/recipes/data-empty.txt.yaml"], ["empty.txt"]),
    ("data-folder", ["train", f"{W}/recipes/data-folder.jsonl.yaml"], ["folder.jsonl", "is a folder"]),
    ("data-json-array-of-strings", ["train", f"{W}/recipes/data-array.json.yaml"], ["array.json"]),
    ("data-all-rows-identical", ["train", f"{W}/recipes/data-blank-texts.jsonl.yaml"], ["split", "is empty"]),
    ("data-unknown-builtin", ["train", GOOD, "data.source=manpagez"], ["did you mean 'manpages'"]),
    ("data-missing-file", ["train", GOOD, f"data.source={W}/data/nope.jsonl"], ["does not exist"]),
    # launch configs
    *[(f"launch-{name}", ["validate", GOOD, "--launch-config", f"{W}/launch/{name}.yaml"], words) for name, words in [
        ("zero-procs", ["num_processes", "0"]), ("neg-procs", ["num_processes", "-2"]),
        ("str-procs", ["num_processes", "two"]), ("rank-too-big", ["machine_rank", "num_machines"]),
        ("neg-rank", ["machine_rank"]), ("zero-machines", ["num_machines"]),
        ("fewer-procs-than-machines", ["num_processes", "num_machines"]),
        ("port-out-of-range", ["main_process_port", "70000"]), ("precision", ["mixed_precision", "fp12"]),
        ("dist-type", ["distributed_type", "BANANA"]), ("procs-not-multiple", ["num_processes", "num_machines"]),
        ("not-yaml", ["not valid YAML"]), ("latin1", ["UTF-8"]), ("list", ["not an Accelerate config"]),
        ("empty", ["not an Accelerate config"]), ("nope", ["does not exist"]),
    ]],
    # other commands and flags
    ("data-unknown-name", ["data", "nope"], ["nope"]),
    ("compare-missing-dir", ["compare", f"{W}/nope"], ["nope"]),
    ("demo-port-out-of-range", ["demo", f"{W}/runs", "--port", "99999"], ["--port", "99999"]),
    ("demo-port-zero", ["demo", f"{W}/runs", "--port", "-1"], ["--port", "-1"]),
    ("demo-port-in-use", ["demo", f"{W}/runs", "--port", "{busy_port}"], ["--port", "in use"]),
    ("demo-runs-missing", ["demo", f"{W}/nope"], ["nope"]),
]


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("argv", "words"), [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_is_one_clear_error(argv, words, ws, pretrained, busy_port, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = [a.replace(W, str(ws)).replace("{busy_port}", str(busy_port)) for a in argv]
    before = snapshot(ws, pretrained)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    text = out + err
    if os.environ.get("FAULTS_REPORT"):  # the table of messages for a report: FAULTS_REPORT=FILE pytest ...
        with open(os.environ["FAULTS_REPORT"], "a") as f:
            f.write(json.dumps({"argv": argv, "code": code, "message": text[text.find("error:"):].strip()}) + "\n")
    assert code == 2, text[-3000:]
    assert "Traceback" not in text
    assert all(w in text for w in words), text[-3000:]
    assert snapshot(ws, pretrained) == before


@pytest.mark.parametrize(("settings", "words"), [
    ({"max_new_tokens": "abc"}, "expected numbers"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 8, "temperature": "hot"}, "expected numbers"), ({"max_new_tokens": 8, "top_p": 0}, "top_p"),
    ({"max_new_tokens": 8, "num_beams": 0}, "num_beams"), ({"max_new_tokens": 8, "top_p": None}, "expected numbers"),
], ids=["tokens-not-number", "tokens-zero", "temperature-not-number", "top-p-zero", "beams-zero", "top-p-none"])
def test_bad_demo_api_values_are_one_message(settings, words):
    from demo.inference import decoding

    with pytest.raises(TuneforgeError, match=f"generation settings: .*{words}"):
        decoding(**settings)


def test_the_real_command_exits_2_without_traceback(ws):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "validate", str(ws / "recipes" / "good.yaml"),
                             "--launch-config", str(ws / "launch" / "zero-procs.yaml")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "num_processes: 0 must be a whole number >= 1" in result.stderr


def test_an_internal_error_is_named_a_bug_and_keeps_its_traceback(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setitem(cli.COMMANDS, "compare", broken)
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["compare"])
    assert "internal error (RuntimeError): this is a bug in tuneforge" in capsys.readouterr().err


def test_atomic_dir_and_json_never_leave_half_a_folder_or_file(tmp_path, monkeypatch):
    final = tmp_path / "model"
    final.mkdir()
    (final / "weights").write_text("old")
    with pytest.raises(RuntimeError), checkpoints.atomic_dir(final) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("crash while writing")
    assert (final / "weights").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with checkpoints.atomic_dir(final) as tmp:
        (tmp / "weights").write_text("new")
    assert (final / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # A crash between replace_dir's two renames: the old folder is put back on resume.
    os.rename(final, tmp_path / ".tmp-old-model")
    checkpoints.recover_dir(final)
    assert (final / "weights").read_text() == "new"

    target = tmp_path / "metrics.json"
    target.write_text("old")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError):
        checkpoints.write_text_atomic(target, "new")
    assert target.read_text() == "old" and not (tmp_path / ".tmp-metrics.json").exists()


def test_a_checkpoint_whose_files_do_not_match_its_manifest_is_skipped(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        (root / f"step_{step}").mkdir(parents=True)
        (root / f"step_{step}" / "model.safetensors").write_bytes(b"x" * 10)
        (root / f"step_{step}" / "tuneforge-state-0.json").write_text(json.dumps({"tokens": step}))
        files = {"model.safetensors": 10, "tuneforge-state-0.json": 13}
        (root / f"step_{step}" / checkpoints.MANIFEST).write_text(
            json.dumps({"step": step, "processes": 1, "log_rows": step, "files": files}))
    (root / "step_4" / "model.safetensors").write_bytes(b"x" * 3)  # cut short after the manifest was written
    path, state = checkpoints.latest_complete(tmp_path)
    assert path.name == "step_2" and state == {"tokens": 2, "step": 2, "log_rows": 2}
    assert "model.safetensors has 3 bytes, the manifest says 10" in capsys.readouterr().err
    assert (root / "step_4").is_dir()  # never deleted without saying so
    with pytest.raises(TuneforgeError, match="same number of processes"):
        checkpoints.latest_complete(tmp_path, rank=1)
