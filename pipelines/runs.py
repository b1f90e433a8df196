"""The run folder: the contract between training, eval, compare and demo (see docs/run-folder.md).

`runs/<name>/` holds recipe.yaml, model/, metrics.json, log.jsonl, predictions.jsonl, README.md and
checkpoints/. Everything after training reads only this folder; nothing is parsed from folder names.
"""

from __future__ import annotations

import json
import platform
import shutil
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe, build_recipe
from pipelines.record import RecordError, read_record

CHECKPOINTS = "checkpoints"
VERSIONED = ("tuneforge", "torch", "transformers", "tokenizers", "datasets", "peft", "accelerate", "evaluate")


def versions() -> dict[str, str]:
    """Library versions recorded with every score."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def read_metrics(run_dir: Path) -> dict | None:
    """A run folder's metrics.json, or None when it has none.

    Raises:
        TuneforgeError: metrics.json is not UTF-8 JSON (edited by hand, or cut short by an older tuneforge).
    """
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TuneforgeError(
            f"{str(path)!r} is not valid JSON ({exc}); restore it from a backup, or retrain the run with "
            "--overwrite"
        ) from None


def is_baseline(run_dir: Path) -> bool:
    """A `tuneforge baseline` folder (scores and predictions of TF-IDF + logistic regression, no model)."""
    return (read_metrics(run_dir) or {}).get("method") == "baseline"


def is_finished(run_dir: Path) -> bool:
    metrics = read_metrics(run_dir)
    return bool(metrics) and metrics.get("status") == "finished"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Accelerate checkpoints `checkpoints/step_<N>` sorted by step."""
    root = Path(run_dir) / CHECKPOINTS
    found = [p for p in root.glob("step_*") if p.is_dir() and p.name.removeprefix("step_").isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))


def check_run_dir(run_dir: Path, *, overwrite: bool, resume: str) -> str:
    """Decide what to do with an existing run folder, before anything is written.

    Returns:
        "fresh" (start a new run; an existing folder will be replaced only with overwrite) or "resume".

    Raises:
        TuneforgeError: the folder holds a finished run or an unfinished one with checkpoints, and the user
            asked neither `--overwrite` nor `train.resume=auto`.
    """
    run_dir = Path(run_dir)
    if overwrite or not run_dir.exists() or not any(run_dir.iterdir()):
        return "fresh"
    if not (run_dir / "recipe.yaml").is_file():  # not a tuneforge run: never replace someone's files
        raise TuneforgeError(
            f"output: {str(run_dir)!r} is a non-empty folder that is not a tuneforge run; choose another "
            "output.dir or output.name (or pass --overwrite to delete it)"
        )
    if resume == "auto":
        if is_finished(run_dir):
            raise TuneforgeError(
                f"train.resume: {str(run_dir)!r} already finished; nothing to resume. Use --overwrite to retrain"
            )
        return "resume" if checkpoint_dirs(run_dir) else "fresh"  # no checkpoint yet: our own half-made folder
    if is_finished(run_dir):
        raise TuneforgeError(
            f"output: {str(run_dir)!r} already holds a finished run; pass --overwrite to replace it, or "
            "output.name=NEW to write elsewhere"
        )
    raise TuneforgeError(
        f"output: {str(run_dir)!r} already holds an unfinished run; pass train.resume=auto to continue it, "
        "--overwrite to replace it, or output.name=NEW to write elsewhere"
    )


def clear_run_dir(run_dir: Path) -> None:
    if Path(run_dir).exists():
        shutil.rmtree(run_dir)


def append_log(run_dir: Path, row: dict) -> None:
    with open(Path(run_dir) / "log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def load_run_recipe(run_dir: Path) -> Recipe:
    """The resolved recipe saved in a run folder.

    Raises:
        TuneforgeError: not a run folder.
    """
    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        raise TuneforgeError(f"{str(run_dir)!r} is not a run folder (no recipe.yaml); give runs/<name>")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TuneforgeError(f"{str(path)!r} is not valid UTF-8 YAML ({exc}); restore the run's recipe.yaml") from None
    return build_recipe(raw, origin=str(path))


@dataclass
class RunInfo:
    """A finished run as the demo and compare see it."""

    path: Path
    name: str
    task: str
    base_model: str
    method: str
    primary_metric: str
    primary_score: float | None
    metrics: dict

    @property
    def label(self) -> str:
        score = "" if self.primary_score is None else f", {self.primary_metric} {self.primary_score:.4g}"
        return f"{self.name} ({self.task}, {self.method} on {self.base_model}{score})"


def list_runs(root: str | Path) -> list[RunInfo]:
    """Every finished run folder directly under `root` (or `root` itself), sorted by name.

    A folder whose metrics.json is not a valid run record is skipped with a warning naming the file and field.
    """
    root = Path(root)
    candidates = [root] if (root / "metrics.json").is_file() else sorted(p for p in root.iterdir() if p.is_dir())
    out = []
    for path in candidates:
        try:
            record = read_record(path)
        except RecordError as error:
            warnings.warn(str(error), stacklevel=2)
            continue
        if record is None or record.status != "finished" or not (path / "model").is_dir():
            continue
        primary = record.primary_metric or ""
        out.append(
            RunInfo(
                path=path,
                name=record.run or path.name,
                task=record.task or "?",
                base_model=str(record.base_model or "?"),
                method=record.method or "?",
                primary_metric=primary,
                primary_score=(record.scores or {}).get(primary),
                metrics=record.as_dict(),
            )
        )
    return out

