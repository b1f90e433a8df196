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


RESUME_TRAIN = {"max_steps": 12, "save_every": 4, "log_every": 2, "eval_every": 4, "keep_checkpoints": 2}


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
    tmp8 = run / "checkpoints" / ".tmp-step_8"
    assert kill_when(spawn_train(recipe), tmp8.exists), "the run ended before its step-8 save"
    assert tmp8.exists() and not (run / "checkpoints" / "step_8").exists()
    assert checkpoints.latest_complete(run)[0].name == "step_4"
    loop.train(build_recipe(raw, ["train.resume=auto"]), run)
    assert_same_run(run, uninterrupted)
    assert not tmp8.exists()


def test_kill_at_a_random_step_then_resume_is_bitwise_equal(uninterrupted, corpus, tmp_path):
    raw = tiny_gpt_raw(corpus, tmp_path, "killed", **RESUME_TRAIN)
    recipe = write_recipe(tmp_path / "killed.yaml", raw)
    run = tmp_path / "killed"
    # After the first checkpoint: a kill between log rows leaves rows the resume must drop and write again.
    rows = random.Random(os.getpid()).choice([3, 4, 5])

    def logged() -> bool:
        log = run / "log.jsonl"
        return (run / "checkpoints" / "step_4").is_dir() and log.is_file() and len(log.read_text().splitlines()) >= rows

    assert kill_when(spawn_train(recipe), logged)
    loop.train(build_recipe(raw, ["train.resume=auto"]), run)
    assert_same_run(run, uninterrupted)


def test_a_save_that_fails_midway_is_never_picked(uninterrupted, corpus, tmp_path, monkeypatch, capsys):
    raw = tiny_gpt_raw(corpus, tmp_path, "broken", **RESUME_TRAIN)
    run = tmp_path / "broken"
    real = checkpoints.fsync_tree

    def fail_at_step_8(root):  # every file of the save is written, then the machine "dies" before the rename
        if root.name == ".tmp-step_8":
            raise OSError(errno.EIO, "Input/output error")
        real(root)

    monkeypatch.setattr(checkpoints, "fsync_tree", fail_at_step_8)
    with pytest.raises(OSError):
        loop.train(build_recipe(raw), run)
    monkeypatch.setattr(checkpoints, "fsync_tree", real)
    # An older-style half checkpoint under the final name is skipped too, with the reason, and left in place.
    fake = run / "checkpoints" / "step_9"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"half")
    capsys.readouterr()
    loop.train(build_recipe(raw, ["train.resume=auto"]), run)
    err = capsys.readouterr().err
    assert "skipping incomplete checkpoint" in err and "step_9" in err and "no manifest" in err
    assert "resuming broken from" in err and "step_4" in err
    assert_same_run(run, uninterrupted)


def test_full_disk_is_one_message_and_the_run_resumes_after_space_is_freed(corpus, tmp_path, capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (the patched-writer test below covers the message)")
    try:
        raw = tiny_gpt_raw(corpus, mount, "full-disk", max_steps=12, save_every=2, keep_checkpoints=1)
        recipe = write_recipe(tmp_path / "r.yaml", raw)
        (mount / "ballast").write_bytes(b"\0" * 100_000)
        filler = mount / "filler"
        # Fill the disk once the first checkpoint is complete, so a later save runs out of space.
        proc = spawn_train(recipe)
        deadline = time.monotonic() + 120
        while not (mount / "full-disk" / "checkpoints" / "step_2").is_dir() and time.monotonic() < deadline:
            time.sleep(0.005)
        free = shutil.disk_usage(mount).free
        filler.write_bytes(b"\0" * max(0, free - 20_000))
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-2000:]
        assert "Traceback" not in err and "no space left" in err and "MB free" in err and "needs about" in err
        latest = checkpoints.latest_complete(mount / "full-disk")
        assert latest is not None
        filler.unlink()
        (mount / "ballast").unlink()
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
    recipe = write_recipe(tmp_path / "r.yaml", tiny_gpt_raw(corpus, tmp_path / "runs", "race", max_steps=6))
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
    first.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    first.path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "time": 0}))
    second = checkpoints.RunLock(run)
    second.acquire()
    assert "removing stale lock" in capsys.readouterr().err
    assert json.loads(first.path.read_text())["pid"] == os.getpid()
    second.release()
    assert not first.path.exists()
