"""Scaling out: gather-then-save equals today's saves, a misconfigured launch stops cleanly, two nodes on loopback.

The two-node test starts two `torchrun --nnodes 2 --nproc_per_node 1` launches (c10d rendezvous on 127.0.0.1,
`ACCELERATE_USE_CPU=true`), each in a folder of its own (its own cwd and HOME, a relative output.dir), as two
machines that share no filesystem: the run must equal the single-node 2-process run, only global rank 0 may write
the run folder, and a run stopped mid-way resumes exactly once its checkpoint is on both nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, tiny_lora_raw, torchrun
from safetensors.torch import load_file

from pipelines.runs import read_log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def test_save_model_writes_what_plain_save_wrote_on_one_process(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from distributed_save_check import cases, main

    assert main(tmp_path) == 0
    for name in cases():  # the check compared something: every case wrote weights both ways
        assert list((tmp_path / "new" / name).glob("*.safetensors")), name


def test_save_model_writes_what_plain_save_wrote_on_two_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "tests/distributed_save_check.py"), str(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, env=cpu_env(ACCELERATE_USE_CPU="true"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "identical: full-gpt2, lora-gpt2, lora-chat-tokens, lora-classifier-head, head-only-classifier on 2 " \
           "process(es)" in result.stdout


def test_torchrun_without_cpu_flag_stops_every_rank_before_writing(corpus, tmp_path):
    raw = tiny_lora_raw(corpus, tmp_path, Path("unused"), "nocpu", max_steps=2)
    raw["model"] = {"scratch": {"architecture": "gpt2", "vocab_size": 300, "min_frequency": 1,
                                "context_length": 64, "hidden_size": 32, "layers": 2, "heads": 2}}
    raw.pop("lora")
    work = tmp_path / "work"
    work.mkdir()
    (work / "r.yaml").write_text(yaml.safe_dump(raw))
    env = cpu_env()
    env.pop("ACCELERATE_USE_CPU", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "pipelines.train", "r.yaml"]
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    # Each rank exits 2 with the message and no traceback of its own; torchrun then reports the failed children
    # (its ChildFailedError summary, exit 1), which no child can silence. torchrun stops the other rank as soon as
    # one fails, so the second message may or may not make it out.
    assert result.returncode == 1
    assert result.stderr.count("error: launch: the launcher started 2 processes (WORLD_SIZE=2)") >= 1
    assert "ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2" in result.stderr
    assert "exitcode  : 2" in result.stderr
    assert "pipelines/" not in result.stderr  # no traceback frame of tuneforge's (torchrun's own names run.py)
    assert sorted(p.name for p in work.iterdir()) == ["r.yaml"]
    assert not (tmp_path / "nocpu").exists()


def test_train_entry_exits_2_when_the_launcher_world_is_bigger(corpus, tmp_path):
    raw = tiny_lora_raw(corpus, tmp_path, Path("unused"), "nocpu1", max_steps=2)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    # The launcher's world size without LOCAL_RANK: Accelerate then does not even open a process group (under
    # torchrun it opens one and still runs undistributed), so this one process shows what each rank does.
    env = cpu_env(WORLD_SIZE="4", RANK="0")
    for name in ("ACCELERATE_USE_CPU", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "pipelines.train", str(tmp_path / "r.yaml")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "--nproc_per_node 4" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def launch_two_nodes(recipe: Path, nodes: list[Path], *overrides: str) -> None:
    """Two `torchrun --nnodes 2 --nproc_per_node 1` launches on loopback, node 0 first, each in its own folder.

    c10d ranks nodes in the order (host, launcher pid), so node 0 (started first) is global rank 0.
    """
    port = free_port()
    procs = []
    for rank, node in enumerate(nodes):
        home = node.parent / f"{node.name}-home"
        home.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(rank), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
               "--rdzv_id", "tuneforge-test", "-m", "pipelines.train", str(recipe), *overrides]
        env = cpu_env(ACCELERATE_USE_CPU="true", HOME=str(home))
        procs.append(subprocess.Popen(cmd, cwd=node, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
        time.sleep(0.5)
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_two_nodes_on_loopback_equal_one_node_write_once_and_resume(pretrained, corpus, tmp_path):
    raw = tiny_lora_raw(corpus, tmp_path, pretrained, "lora2", max_steps=8, micro_batch_size=4, log_every=2,
                        save_every=4)
    raw["lora"]["dropout"] = 0.1  # each process's RNG must come back on resume
    raw["eval"]["score_base"] = False
    torchrun(raw, tmp_path)  # the single-node 2-process reference
    one = tmp_path / "lora2"

    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    recipe = tmp_path / "two-nodes.yaml"
    recipe.write_text(yaml.safe_dump({**raw, "output": {"dir": "runs", "name": "lora2"}}))
    launch_two_nodes(recipe, nodes, "train.stop_after_steps=4")
    # Only global rank 0 wrote the run folder; node 1 holds only what every process saves into a checkpoint (its
    # own RNG state and counters), on its own disk.
    assert files_under(nodes[1]) == ["runs/lora2/checkpoints/step_4/random_states_1.pkl",
                                     "runs/lora2/checkpoints/step_4/tuneforge-state-1.json"]
    assert (nodes[0] / "runs/lora2/recipe.yaml").is_file()
    assert not (nodes[0] / "runs/lora2/checkpoints/step_4/random_states_1.pkl").exists()

    # No shared filesystem: copy the run folder (checkpoints included) so every node holds all of it, then resume.
    shutil.copytree(nodes[1] / "runs", nodes[0] / "runs", dirs_exist_ok=True)
    shutil.rmtree(nodes[1] / "runs")
    shutil.copytree(nodes[0] / "runs", nodes[1] / "runs")
    before = files_under(nodes[1])
    launch_two_nodes(recipe, nodes, "train.resume=auto")
    after = files_under(nodes[1])
    assert [f for f in after if f not in before] == ["runs/lora2/checkpoints/step_8/random_states_1.pkl",
                                                     "runs/lora2/checkpoints/step_8/tuneforge-state-1.json"]

    two = nodes[0] / "runs/lora2"
    m1, m2 = json.loads((one / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
    assert m2["train"]["processes"] == 2 and m2["train"]["resumed_from_step"] == 4
    assert [r["loss"] for r in read_log(two) if "loss" in r] == [r["loss"] for r in read_log(one) if "loss" in r]
    assert [r["step"] for r in read_log(two) if "loss" in r] == [2, 4, 6, 8]
    assert m2["scores"] == m1["scores"]
    a = load_file(one / "model/adapter_model.safetensors")
    b = load_file(two / "model/adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_gpu_check_skips_cleanly_without_a_gpu(tmp_path):
    assert not torch.cuda.is_available()  # the default test run is CPU-only; on a GPU this test does not apply
    result = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path / "gpu.md")], cwd=ROOT,
                            env=cpu_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("gpu_check: skipped: no CUDA GPU on this machine")
    assert "nothing was checked" in result.stdout
    assert not (tmp_path / "gpu.md").exists()


def test_generation_under_fsdp_full_shard_equals_unsharded():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "tests/fsdp_generation_check.py")]
    result = subprocess.run(cmd, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same generations" in result.stdout


def test_deepspeed_accumulation_is_refused_at_run_time_too():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from pipelines.distributed import check_accumulation
    from pipelines.errors import TuneforgeError

    deepspeed = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)  # what the check reads
    check_accumulation(deepspeed, 1)
    check_accumulation(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), 4)
    with pytest.raises(TuneforgeError, match="4 micro-batches per process per step under DeepSpeed"):
        check_accumulation(deepspeed, 4)
