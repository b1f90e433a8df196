"""`tuneforge sweep`: parsing and checking the space, a 6-trial grid killed mid-trial and resumed, the summary.

The trials are the tiny BERT classifier of tests/test_classification.py, a few steps each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from eval.tables import collect_runs
from pipelines import checkpoints, runs
from pipelines.cli import main as cli
from pipelines.sweep import parse_param
from tests.conftest import ROOT
from tests.test_classification import data_file, raw_recipe, tiny_bert  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe_file(tiny_bert, data_file, tmp_path: Path) -> Path:  # noqa: F811
    raw = raw_recipe(tiny_bert, data_file, tmp_path / "runs", "cls")
    raw["lora"] = {"r": 2, "alpha": 4, "dropout": 0.0, "modules_to_save": ["classifier", "pooler"]}
    raw["train"].update({"max_steps": 4, "save_every": 2, "log_every": 2})
    raw["eval"]["score_base"] = False
    path = tmp_path / "cls.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("item, want", [
    ("lora.r=4,8,16", {"key": "lora.r", "values": [4, 8, 16]}),
    ("train.learning_rate=1e-4:1e-2:log", {"key": "train.learning_rate", "low": 1e-4, "high": 1e-2, "log": True,
                                            "integer": False}),
    ("train.warmup_steps=0:10", {"low": 0, "high": 10, "integer": True, "log": False}),
    ("lora={method: ia3},{method: vera, r: 64}", {"values": [{"method": "ia3"}, {"method": "vera", "r": 64}]}),
    ("lora.target_modules=[query, value],auto", {"values": [["query", "value"], "auto"]}),
])
def test_values_and_ranges_parse(item, want):
    param, problem = parse_param(item)
    assert problem is None
    assert {k: getattr(param, k) for k in want} == want


@pytest.mark.parametrize("item, message", [
    ("train.max_steps=5:5", "train.max_steps=5:5: empty range (low 5 must be below high 5)"),
    ("train.learning_rate=0:1:log", "a log range needs low > 0"),
    ("lora.r=", "lora.r=: empty list of values"),
    ("lora.r=4,4", "a value is listed twice"),
    ("output.name=a,b", "output.name: set by the sweep for each trial"),
    ("lora.r", "expected key=v1,v2,... or key=lo:hi[:log]"),
])
def test_bad_items_are_named(item, message):
    param, problem = parse_param(item)
    assert param is None and message in problem


def test_every_bad_key_and_value_is_reported_at_once_before_any_trial(tiny_bert, data_file, tmp_path,  # noqa: F811
                                                                       capsys):
    recipe = _recipe_file(tiny_bert, data_file, tmp_path)
    code = cli(["sweep", str(recipe), "train.learnig_rate=1e-3,1e-2", "lora.r=4,many", "train.max_steps=8:2",
                "lora.method=lora,ia3", "lora.use_dora=true"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "4 problem(s), no trial started" in err
    assert "train.learnig_rate=1e-3: train.learnig_rate: unknown key. did you mean 'train.learning_rate'?" in err
    assert "lora.r=many: lora.r: " in err and "(got \"many\")" in err
    assert "train.max_steps=8:2: empty range" in err
    assert "lora.method=ia3: lora: lora.method 'ia3' does not take" in err  # with the fixed lora.use_dora=true
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_a_range_cannot_be_a_grid_and_the_budget_fits_the_grid(tiny_bert, data_file, tmp_path, capsys):  # noqa: F811
    recipe = _recipe_file(tiny_bert, data_file, tmp_path)
    assert cli(["sweep", str(recipe), "train.learning_rate=1e-4:1e-2:log", "--sampler", "grid"]) == 2
    assert "a range cannot be a grid" in capsys.readouterr().err
    assert cli(["sweep", str(recipe), "lora.r=2,4", "--trials", "3"]) == 2
    assert "--trials: 3 is more than the grid's 2 combinations" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _study(folder: Path):
    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}")


def _kill_sweep_mid_trial(args: list[str], trial_dir: Path, cwd: Path, timeout: float = 600) -> None:
    """Run `tuneforge ARGS` in its own process group and SIGKILL the group once `trial_dir` has a complete
    checkpoint (the trial is mid-way); the trial is left unfinished."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not checkpoints.has_complete(trial_dir):
            assert proc.poll() is None and time.time() < deadline, f"the sweep ended before {trial_dir} checkpointed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not runs.is_finished(trial_dir)


def _files(*folders: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folders`: its bytes and modification time (ns)."""
    return {str(f): (f.read_bytes(), f.stat().st_mtime_ns) for d in folders for f in sorted(d.rglob("*"))
            if f.is_file()}


def test_six_trials_killed_mid_trial_resume_without_redoing_finished_ones(tiny_bert, data_file, tmp_path,  # noqa: F811
                                                                          capsys):
    recipe = _recipe_file(tiny_bert, data_file, tmp_path)
    # Grid order is command-line order: trials 0-2 take 4 steps, trials 3-5 take 12 (checkpointed every 2).
    args = ["sweep", str(recipe), "train.max_steps=4,12", "lora.r=2,4,8"]
    folder = tmp_path / "runs" / "cls-sweep"
    _kill_sweep_mid_trial(args, folder / "trial-003", tmp_path)
    states = [t.state.name for t in _study(folder).get_trials()]
    assert states[:4] == ["COMPLETE", "COMPLETE", "COMPLETE", "RUNNING"]
    finished = {n: (folder / f"trial-00{n}" / "metrics.json").read_bytes() for n in range(3)}

    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "resuming interrupted trial 3" in out
    assert all(f"sweep: trial {n} (" not in out for n in range(3))  # never started again
    for n, before in finished.items():
        assert (folder / f"trial-00{n}" / "metrics.json").read_bytes() == before
    metrics = [runs.read_metrics(folder / f"trial-00{n}") for n in range(6)]
    assert [m["status"] for m in metrics] == ["finished"] * 6
    assert metrics[3]["train"]["resumed_from_step"] >= 2
    assert [m["train"]["steps"] for m in metrics] == [4, 4, 4, 12, 12, 12]
    assert [t.state.name for t in _study(folder).get_trials()] == ["COMPLETE"] * 6

    # The winner is the lowest validation loss, read from the runs themselves; the test score is only shown.
    losses = [m["validation"]["eval_loss"] for m in metrics]
    best = losses.index(min(losses))
    summary = (folder / "summary.md").read_text()
    assert f"| **{best}** (best) |" in summary
    assert f"trial {best} ({folder / f'trial-00{best}'}); its test macro_f1: " in summary
    assert summary.count("(best)") == 1
    assert (folder / "sweep.png").stat().st_size > 10_000
    assert json.loads((folder / "sweep.json").read_text())["params"] == {"train.max_steps": "4,12",
                                                                         "lora.r": "2,4,8"}

    # Comparison tables name the trials as one sweep's runs.
    found, problems = collect_runs([tmp_path / "runs"])
    assert sorted(r.name for r in found) == [f"cls-sweep/trial-00{n}" for n in range(6)] and not problems

    # A rerun is a no-op that reprints the table; another space in the same folder is refused.
    assert cli(args) == 0 and "(best)" in capsys.readouterr().out
    assert [t.state.name for t in _study(folder).get_trials()] == ["COMPLETE"] * 6
    assert cli(["sweep", str(recipe), "lora.r=2,16"]) == 2
    assert "holds another sweep (different params)" in capsys.readouterr().err
    recipe.write_text(recipe.read_text().replace("learning_rate: 0.01", "learning_rate: 0.02"))
    assert cli(args) == 2
    assert "holds another sweep (different recipe_hash)" in capsys.readouterr().err


def test_cluster_commands_train_each_trial_and_the_sweep_collects_them(tiny_bert, data_file, tmp_path,  # noqa: F811
                                                                       capsys, monkeypatch):
    recipe = _recipe_file(tiny_bert, data_file, tmp_path)
    monkeypatch.chdir(tmp_path)
    folder = Path("runs") / "cls-sweep"
    assert cli(["sweep", str(recipe), "lora.r=2,4", "--commands", "tuneforge train"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert commands == [
        f"tuneforge train {recipe} lora.r={r} output.dir={tmp_path / folder} output.name=trial-00{n} "
        "train.resume=auto" for n, r in enumerate((2, 4))
    ] or commands == [
        f"tuneforge train {recipe} lora.r={r} output.dir={folder} output.name=trial-00{n} train.resume=auto"
        for n, r in enumerate((2, 4))
    ]
    assert [t.state.name for t in _study(tmp_path / folder).get_trials()] == ["RUNNING", "RUNNING"]
    # One job ran on the "cluster" (here: this process); the sweep trains only the other, then tabulates both.
    assert cli(commands[0].split()[1:]) == 0
    capsys.readouterr()
    assert cli(["sweep", str(recipe), "lora.r=2,4"]) == 0
    out = capsys.readouterr().out
    assert "sweep: trial 0 (" not in out and "sweep: trial 1 (lora.r=4)" in out
    assert [t.state.name for t in _study(tmp_path / folder).get_trials()] == ["COMPLETE", "COMPLETE"]
    assert runs.read_metrics(tmp_path / folder / "trial-000")["params"]["trainable"] < runs.read_metrics(
        tmp_path / folder / "trial-001")["params"]["trainable"]


def test_a_tpe_search_over_ranges_asks_its_budget_within_the_ranges(tiny_bert, data_file, tmp_path,  # noqa: F811
                                                                    capsys):
    recipe = _recipe_file(tiny_bert, data_file, tmp_path)
    args = ["sweep", str(recipe), "train.learning_rate=1e-4:1e-1:log", "lora.r=2:16", "--trials", "5",
            "--sampler", "tpe", "--commands", "tuneforge train"]
    assert cli(args) == 0
    commands = [dict(a.split("=", 1) for a in line.split()[3:]) for line in capsys.readouterr().out.splitlines()]
    assert len(commands) == 5
    rates = [float(c["train.learning_rate"]) for c in commands]
    assert all(1e-4 <= r <= 1e-1 for r in rates) and len(set(rates)) == 5
    assert all(2 <= int(c["lora.r"]) <= 16 for c in commands)
    assert [c["output.name"] for c in commands] == [f"trial-00{n}" for n in range(5)]
    # Asking again with the same budget asks nothing new; the same 5 trials are listed.
    assert cli(args) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5


SHIPPED = ROOT / "recipes" / "classifier" / "minilm-peft-methods.yaml"


@pytest.mark.slow
def test_shipped_method_sweep_on_builtin_task_killed_mid_trial_resumes(tmp_path, capsys, monkeypatch):
    """The shipped method-comparison recipe (builtin:minilm-l6 on debian-packages), cut down: 6 trials (3 PEFT
    methods x 4 or 12 steps), SIGKILLed in the middle of trial 4, rerun: finished trials untouched, trial 4 resumed
    from its checkpoint, the winner the lowest validation loss."""
    methods = "{r: 4, alpha: 8, dropout: 0.0},{method: ia3},{method: oft, block_size: 32}"
    args = ["sweep", str(SHIPPED), "train.max_steps=4,12", f"lora={methods}", "train.save_every=2",
            "train.log_every=2", "train.warmup_steps=0", "data.train_limit=64", "data.validation_limit=32",
            "data.test_limit=32"]
    folder = tmp_path / "runs" / "minilm-peft-methods-sweep"  # output.dir `runs`, relative to the working dir
    _kill_sweep_mid_trial(args, folder / "trial-004", tmp_path)
    assert [t.state.name for t in _study(folder).get_trials()][:5] == ["COMPLETE"] * 4 + ["RUNNING"]
    finished = [folder / f"trial-00{n}" for n in range(4)]
    before = _files(*finished)

    monkeypatch.chdir(tmp_path)
    assert cli(args) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "sweep: resuming interrupted trial 4" in out
    assert f"resuming trial-004 from {Path('runs') / folder.name / 'trial-004' / 'checkpoints'}" in out
    assert all(f"sweep: trial {n} (" not in out for n in range(4))  # never started again
    assert _files(*finished) == before  # every file, byte for byte, not even rewritten
    metrics = [runs.read_metrics(folder / f"trial-00{n}") for n in range(6)]
    assert [m["status"] for m in metrics] == ["finished"] * 6
    assert [m["train"]["steps"] for m in metrics] == [4, 4, 4, 12, 12, 12]
    assert metrics[4]["train"]["resumed_from_step"] >= 2
    assert [n for n, m in enumerate(metrics) if m["train"].get("resumed_from_step")] == [4]
    assert [m["method"] for m in metrics] == ["lora", "ia3", "oft"] * 2
    assert [t.state.name for t in _study(folder).get_trials()] == ["COMPLETE"] * 6

    # The winner: the lowest validation loss read from the runs; test scores are shown, never used to choose.
    losses = [m["validation"]["eval_loss"] for m in metrics]
    best = losses.index(min(losses))
    summary = (folder / "summary.md").read_text()
    assert summary.count("(best)") == 1 and f"| **{best}** (best) |" in summary
    assert f"Winner by validation only (lowest loss): trial {best} (" in summary
    assert summary.split("\n\n", 1)[1].strip() in captured.out  # the table is printed too
