"""The run record: metrics.json as one typed model, and the one place a scored result is written.

metrics.json is the contract between training, eval, the baseline, compare and the demo (docs/run-folder.md is
generated from this module: `python -m pipelines.record > docs/run-folder.md`, kept in sync by a test). Writers
build a `RunRecord`; readers parse one with `parse_record`/`read_record`, which name the file and the field of a
malformed or older record instead of failing later with a KeyError. Unknown keys are kept (a newer minor field
survives a round trip through an older reader).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.checkpoints import write_text_atomic
from pipelines.errors import TuneforgeError

SCHEMA = 1


class RecordError(TuneforgeError):
    """A metrics.json that cannot be read as a run record; `reason` says why without the file name."""

    def __init__(self, path: Path | str, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True, populate_by_name=True)


class DatasetInfo(_Part):
    """The identity of the scored rows: comparison tables group runs by (task, name, split, fingerprint)."""

    name: str
    split: str
    num_examples: int | None = None
    fingerprint: str | None = None
    subset: str | None = None
    """how `data.test_limit` sampled the rows (`pipelines.subsets`); null when the whole split is scored"""


class TrainStats(_Part):
    """What training cost. Counts are over all processes; seconds are the step loop's (not set-up, not scoring).

    A baseline records only `examples`, `seconds` and `examples_per_s` (its fit time, every C of its grid).
    """

    steps: int | None = None
    examples: int | None = None
    tokens: int | None = None
    nonpad_tokens: int | None = None
    padding_fraction: float | None = None
    seconds: float | None = None
    tokens_per_s: float | None = None
    nonpad_tokens_per_s: float | None = None
    examples_per_s: float | None = None
    peak_memory_mb: float | None = None
    model_flops: float | None = None
    model_flops_per_s: float | None = None
    matmul_flops_per_s: float | None = None
    mfu: float | None = None
    final_loss: float | None = None
    processes: int | None = None
    mixed_precision: str | None = None
    resumed_from_step: int | None = None


class Params(_Part):
    """Parameter counts (tied weights once)."""

    trainable: int
    total: int


class Selection(_Part):
    """Model selection on the validation split during training (`train.select_best`, `early_stopping_patience`)."""

    metric: str
    """the validation score that decides (`train.select_best`; "loss" for early stopping alone)"""
    greater_is_better: bool
    """the metric's direction (loss and perplexity: lower is better)"""
    step: int | None = None
    """the step whose model is model/ (and was scored on test): the best one with select_best, else the last"""
    value: float | None = None
    """`metric` on validation at `step` (select_best); what a sweep compares trials by"""
    best_step: int | None = None
    """the step with the best validation `metric` (the first of equal values)"""
    best_value: float | None = None
    """`metric` at `best_step`"""
    validation: dict[str, Any] | None = None
    """every validation score at `best_step` (`eval_<metric>`, rows scored)"""
    evaluations: int | None = None
    """validation scorings during training"""
    early_stopping_patience: int | None = None
    """`train.early_stopping_patience` (null: never stops early)"""
    early_stopped_at_step: int | None = None
    """the step where early stopping ended training; null when it ran to max_steps"""


# Fields a finished record must have for compare and the demo to use it (besides scores).
REQUIRED_WHEN_FINISHED = ("task", "primary_metric", "greater_is_better", "dataset")


class RunRecord(_Part):
    """metrics.json. A "running" record (written after the base is scored, before training) holds only
    `status` and `base_scores`; a "failed" one `status` and `error`."""

    schema_version: int = Field(SCHEMA, alias="schema")
    """version of this layout (key `schema`)"""
    run: str | None = None
    """the run folder's name"""
    status: Literal["finished", "running", "failed"] | None = None
    """"failed" records hold the reason in `error`"""
    error: str | None = None
    task: str | None = None
    """the task plug-in that trained and scored it (`pipelines.tasks.TASKS`)"""
    method: str | None = None
    """lora, full, head, scratch, baseline or base"""
    base_model: str | None = None
    """as the recipe named it"""
    primary_metric: str | None = None
    """the headline score, a key of `scores`"""
    greater_is_better: bool | None = None
    dataset: DatasetInfo | None = None
    metric_settings: dict[str, Any] | None = None
    """e.g. the sacreBLEU signature, ROUGE stemming"""
    scores: dict[str, Any] | None = None
    base_scores: dict[str, Any] | None = None
    """the same scores for the base model; null when none was scored"""
    validation: dict[str, float] | None = None
    """final validation loss (and perplexity for token-level tasks)"""
    train: TrainStats | None = None
    selection: Selection | None = None
    """which checkpoint became model/ and why; null without select_best or early stopping"""
    params: Params | None = None
    seed: int | None = None
    recipe_hash: str | None = None
    """hash of the resolved recipe"""
    versions: dict[str, str] | None = None
    """library versions"""
    scored_from: str | None = None  # `tuneforge eval` into a folder of its own: the run it scored

    @model_validator(mode="after")
    def _known_schema(self) -> RunRecord:
        if self.schema_version > SCHEMA:
            raise ValueError(f"schema {self.schema_version} is newer than this tuneforge reads ({SCHEMA}); "
                             "upgrade tuneforge")
        return self

    def as_dict(self) -> dict:
        """The JSON object written to metrics.json: `schema` first, then the fields that were set (unknown keys
        kept)."""
        return {"schema": self.schema_version, **self.model_dump(mode="json", exclude_unset=True, by_alias=True)}


def parse_record(obj: object, path: Path | str = "metrics.json") -> RunRecord:
    """A run record from a parsed metrics.json.

    Args:
        obj: the parsed JSON.
        path: the file it came from (named in errors).

    Returns:
        The record; a finished one has every field of `REQUIRED_WHEN_FINISHED`.

    Raises:
        RecordError: not a JSON object, a field of the wrong type, a newer schema, or a finished record that
            lacks a required field (an older or hand-edited record).
    """
    if not isinstance(obj, dict):
        raise RecordError(path, "metrics.json unreadable: not a JSON object")
    absent = [key for key in REQUIRED_WHEN_FINISHED if obj.get(key) is None] if obj.get("status") == "finished" else []
    dataset = obj.get("dataset")
    if obj.get("status") == "finished":
        if isinstance(dataset, dict):
            absent += [f"dataset.{key}" for key in ("name", "split") if not dataset.get(key)]
        elif "dataset" not in absent:
            absent.append("dataset")
    if absent:
        raise RecordError(path, f"metrics.json lacks {', '.join(absent)}")
    try:
        return RunRecord.model_validate(obj)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(record)"
        raise RecordError(path, f"metrics.json field {field}: {first['msg']} (got {first.get('input')!r})") from None


def read_record(run_dir: Path | str) -> RunRecord | None:
    """The run record of `run_dir`, or None when it has no metrics.json.

    Raises:
        RecordError: metrics.json is not JSON or not a valid record (see `parse_record`).
    """
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(path, f"metrics.json unreadable: {error}") from None
    return parse_record(obj, path)


def write_json(path: Path, obj: dict) -> None:
    """Write JSON atomically (temp file, fsync, rename) so readers and a crash never see half a file."""
    write_text_atomic(Path(path), json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line (predictions.jsonl)."""
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_result(run_dir: Path, record: RunRecord, scored=None, card: str | None = None) -> dict:
    """Write a scored result into a run folder: predictions.jsonl, the task's artifacts, evidence.json, metrics.json,
    README.md.

    The same sequence for training, `tuneforge eval` and the baseline; call it on the main process only. metrics.json
    comes last and atomically, so a run whose record says "finished" has everything else written.

    Args:
        run_dir: the run folder (must exist).
        record: the run record.
        scored: the `pipelines.scoring.Scored` whose predictions, artifacts (e.g. the confusion matrix) and
            per-example evidence (evidence.json, for `tuneforge compare`'s intervals) are written; None writes
            metrics.json alone.
        card: the model card text, or None to leave README.md as it is.

    Returns:
        The dict written to metrics.json.
    """
    run_dir = Path(run_dir)
    if scored is not None:
        if scored.predictions:
            write_jsonl(run_dir / "predictions.jsonl", scored.predictions)
        for name, write in scored.artifacts.items():
            write(run_dir / name)
        evidence = run_dir / "evidence.json"
        if scored.evidence:
            write_json(evidence, scored.evidence)
        elif evidence.exists():  # rescored without loss evidence: an old file would pair with the new scores
            evidence.unlink()
    if card is not None:
        (run_dir / "README.md").write_text(card)
    out = record.as_dict()
    write_json(run_dir / "metrics.json", out)  # last: status "finished" means everything above is there
    return out


def scored_fields(scored, task, data_cfg, rows, seed: int, versions: dict[str, str]) -> dict:
    """The record fields every scored result has: headline metric, dataset identity, settings, scores.

    Args:
        scored: the `Scored` result.
        task: the task (its `primary_metric`/`greater_is_better` unless the result decides them).
        data_cfg: the recipe's `data` section.
        rows: the scored rows (their count and fingerprint are recorded).
        seed: the recipe's seed.
        versions: the library versions.

    Returns:
        A dict of `RunRecord` fields.
    """
    from pipelines.data import dataset_info

    return {
        "primary_metric": scored.primary_metric or task.primary_metric,
        "greater_is_better": task.greater_is_better if scored.greater_is_better is None else scored.greater_is_better,
        "dataset": dataset_info(data_cfg, rows, packed_view=task.scores_packed_windows,
                                stratify_role=task.stratify_role),
        "metric_settings": scored.settings,
        "scores": scored.scores,
        "seed": seed,
        "versions": versions,
    }


BEGIN, END = "<!-- fields: generated by `python -m pipelines.record` -->", "<!-- end of generated fields -->"


def _field_rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        kind = re.sub(r"<class '(\w+)'>", r"\1", str(info.annotation))
        kind = re.sub(r"Optional\[(.*)\]$", r"\1 | None", re.sub(r"[\w.]+\.(\w+)", r"\1", kind))
        what = (info.description or "").strip()
        rows.append(f"| `{prefix}{info.alias or name}` | {kind.replace('|', 'or')} | {what} |")
    return rows


def document_fields() -> str:
    """The field table of docs/run-folder.md, generated from the models above (a test keeps the file in sync)."""
    parts = [BEGIN, "", "| field | type | what |", "|---|---|---|"]
    parts += _field_rows(RunRecord)
    for key, model in (("dataset.", DatasetInfo), ("train.", TrainStats), ("selection.", Selection),
                       ("params.", Params)):
        parts += _field_rows(model, key)
    parts += ["", f"A finished record (schema {SCHEMA}) must have "
              f"{', '.join(f'`{k}`' for k in REQUIRED_WHEN_FINISHED)}, `dataset.name` and `dataset.split`; readers "
              "reject one that lacks any, naming the file and the field.", "", END]
    return "\n".join(parts)


def sync_doc(path: Path) -> None:
    """Rewrite the generated field table inside `path` (docs/run-folder.md)."""
    text = path.read_text()
    head, rest = text.split(BEGIN, 1) if BEGIN in text else (text.rstrip() + "\n\n", END)
    path.write_text(head + document_fields() + rest.split(END, 1)[1])


if __name__ == "__main__":
    sync_doc(Path(__file__).resolve().parents[1] / "docs" / "run-folder.md")
