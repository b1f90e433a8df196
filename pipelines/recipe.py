"""Recipe schema: YAML -> typed config, `section.key=value` overrides, one error listing every problem.

A recipe is strict: unknown keys, wrong types and impossible values are all reported together, each with the
field, the value and the fix (did-you-mean for misspelled keys), in one `TuneforgeError` (exit code 2).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import TuneforgeError
from pipelines.recipe_errors import format_errors
from pipelines.recipe_peft import LoraConfig
from pipelines.tasks.names import TASK_NAMES, TASK_SECTIONS

TaskName = Literal[TASK_NAMES]  # the task registry's names (pipelines.tasks)
TRACKER_NAMES = ("tensorboard", "wandb", "mlflow", "aim", "trackio", "comet_ml", "clearml", "dvclive", "swanlab")
FILES_SOURCE = "files"  # data.source of a recipe that gives its own splits in data.files


class _Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, never silently dropped."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ScratchConfig(_Section):
    """A model pretrained from scratch: its architecture and the BPE tokenizer trained for it.

    Sizes are tiny on purpose (CPU); the names follow the Hugging Face configs they fill.
    """

    architecture: Literal["gpt2", "bart"]
    vocab_size: int = Field(8192, ge=256, le=262144, description="BPE vocabulary size, special tokens included")
    min_frequency: int = Field(2, ge=1, description="minimum pair count for a BPE merge")
    tokenizer_max_texts: int = Field(200_000, ge=100, description="training texts used to learn the BPE merges")
    context_length: int = Field(256, ge=8, description="n_positions / max_position_embeddings, in tokens")
    hidden_size: int = Field(256, ge=8, description="n_embd / d_model")
    layers: int = Field(4, ge=1, description="decoder layers (GPT-2); encoder and decoder layers each (BART)")
    heads: int = Field(4, ge=1, description="attention heads; must divide hidden_size")
    ffn_size: int | None = Field(None, ge=8, description="feed-forward width; default 4 x hidden_size")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide(self) -> ScratchConfig:
        if self.hidden_size % self.heads:
            raise ValueError(f"heads={self.heads} must divide hidden_size={self.hidden_size}")
        return self


class ModelConfig(_Section):
    """The base checkpoint: a Hub id, a local directory, a finished run folder or a built-in alias."""

    base: str | None = Field(None, description="Hub id, local dir, run folder, or builtin:minilm-l6")
    scratch: ScratchConfig | None = None
    gradient_checkpointing: bool = False
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.base is None) == (self.scratch is None):
            raise ValueError("set exactly one of model.base (a checkpoint) or model.scratch (pretrain from scratch)")
        return self


class SourceSpec(_Section):
    """One data source: a built-in corpus, a Hub dataset id or a local json/jsonl/csv/parquet/txt file."""

    source: str
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    columns: dict[str, str | list[str]] = Field(
        default_factory=dict, description="task role -> column name(s), e.g. {prompt: name_line, text: description}"
    )
    near_duplicates: Literal["drop", "keep"] = Field(
        "drop", description="built-in manpages/manpages-chat: drop pages whose DESCRIPTION nearly repeats another "
        "page's (pipelines/sources/near_duplicates.py), or keep them; other sources have none to drop"
    )


class DataConfig(SourceSpec):
    """Where the examples come from and how they become token sequences."""

    mix: list[SourceSpec] = Field(default_factory=list, description="more corpora added to every split (pretraining)")
    splits: dict[Literal["train", "validation", "test"], str] = Field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"}
    )
    max_length: int = Field(256, ge=8, description="input tokens per example (or per packed window)")
    packing: bool = Field(
        False, description="causal LM and chat: concatenate documents (conversations) into fixed windows (no "
        "padding)")
    files: dict[Literal["train", "validation", "test"], str] | None = Field(
        None, description="your own splits instead of data.source: {train: a.jsonl, validation: b.csv, test: "
        "c.parquet} (json/jsonl/csv/parquet/txt, any mix; all three)")
    train_limit: int | None = Field(None, ge=1, description="train on a seeded random sample of N examples")
    validation_limit: int | None = Field(None, ge=1, description="a seeded random sample of N validation examples "
                                         "(stratified by label for classification)")
    test_limit: int | None = Field(None, ge=1, description="score a seeded random sample of N test examples "
                                   "(stratified by label for classification)")
    subset_seed: int = Field(0, description="seed of the limits' samples (pipelines/subsets.py)")

    @model_validator(mode="before")
    @classmethod
    def _files_or_source(cls, raw: Any) -> Any:
        # data.files replaces data.source; the source then names the files for error messages and tables (a
        # resolved recipe.yaml has both, the source being FILES_SOURCE).
        if isinstance(raw, dict) and isinstance(raw.get("files"), dict):
            if raw.get("source") not in (None, FILES_SOURCE):
                raise ValueError("give data.source or data.files, not both")
            missing = [s for s in ("train", "validation", "test") if s not in raw["files"]]
            if missing:
                raise ValueError(f"data.files: missing {missing}; give a file for each of train, validation, test")
            raw = {**raw, "source": FILES_SOURCE}
        return raw


class ClassificationConfig(_Section):
    """Classification: which labels become classes and how each class weighs in the loss."""

    top_k_labels: int | None = Field(None, ge=2, description="keep the K most frequent labels")
    other_labels: Literal["drop", "other"] = "drop"
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="'balanced' weights each training example's loss by n / (K x count of its label), "
        "scikit-learn's class_weight='balanced', so rare classes count as much as frequent ones (for macro-F1)")
    num_labels: int | None = Field(None, ge=2, description="expected class count, checked on the data")


class Seq2SeqConfig(_Section):
    """Sequence-to-sequence: the target side of each pair (the source side is data.max_length)."""

    target_max_length: int = Field(64, ge=1, description="target tokens per example, special tokens included")


# Keys that moved from the shared `data:` section into their task's own section: (section, key) -> new path. The
# schema rejects the old place with a did-you-mean to the new one. `data.packing` stays shared on purpose: it is
# how documents become token windows for two tasks (causal_lm and chat), and both read it the same way.
MOVED_KEYS = {
    ("data", "top_k_labels"): "classification.top_k_labels",
    ("data", "other_labels"): "classification.other_labels",
    ("data", "class_weights"): "classification.class_weights",
    ("data", "num_labels"): "classification.num_labels",
    ("data", "target_max_length"): "seq2seq.target_max_length",
}


class GenerationSettings(_Section):
    """Decoding settings for generation-based evaluation and the demo (never a library default length)."""

    max_new_tokens: int = Field(64, ge=1)
    num_beams: int = Field(1, ge=1)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = Field(0, ge=0)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)


# Model-selection keys of `train`, added after runs were recorded: left unset, they do not change a recipe's hash.
SELECTION_KEYS = ("eval_limit", "select_best", "early_stopping_patience")


class TrainConfig(_Section):
    """Optimisation: the optimizer (AdamW by default), transformers' warmup + decay schedules, clipping,
    accumulation, checkpoints, logging."""

    seed: int = 0
    max_steps: int = Field(100, ge=1, description="optimizer steps")
    micro_batch_size: int = Field(8, ge=1, description="examples per process per forward pass")
    gradient_accumulation_steps: int = Field(1, ge=1)
    global_batch_size: int | None = Field(
        None, ge=1, description="examples per optimizer step over all processes; sets the accumulation at launch"
    )
    learning_rate: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optim: Literal["adamw", "adamw_8bit", "adafactor", "sgd", "rmsprop"] = Field(
        "adamw", description="adamw (torch, fused where supported), adamw_8bit (bitsandbytes, CUDA only), adafactor "
        "(transformers), sgd, rmsprop (torch); pipelines/optim.py")
    adam_betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop only")
    warmup_steps: int = Field(0, ge=0, description="linear warmup from 0 (transformers.get_scheduler)")
    lr_schedule: Literal["cosine", "linear", "constant", "cosine_with_restarts", "polynomial", "inverse_sqrt"] = Field(
        "cosine", description="transformers.get_scheduler's schedule after the warmup; constant keeps the warmup")
    max_grad_norm: float | None = Field(1.0, gt=0)
    trainable: Literal["all", "head"] = Field("all", description="head: train only the task head (linear probe)")
    group_by_length: bool = True
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(
        0, ge=0, description="validation scores (loss and the task's metrics) every N steps (0: loss at the end only)"
    )
    eval_limit: int | None = Field(
        None, ge=1, description="score only the first N validation rows at eval_every (data.validation_limit sizes "
                                "the split itself; the final validation loss uses all of it)"
    )
    select_best: str | None = Field(
        None, description="a validation metric (e.g. chrf, rougeL, macro_f1, perplexity): its best eval_every "
                          "checkpoint becomes model/"
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after N evaluations without improving select_best (else the loss)"
    )
    report_to: list[Literal[TRACKER_NAMES]] = Field(
        default_factory=lambda: ["tensorboard"], description="Accelerate trackers to log to (tensorboard, wandb, "
        "mlflow, aim, trackio, ...; installed); none: only log.jsonl. pipelines/trackers.py")
    save_every: int = Field(0, ge=0, description="Accelerate checkpoint every N steps (0: final only)")
    keep_checkpoints: int = Field(2, ge=1)
    resume: Literal["auto", "never"] = Field("never", description="auto: continue from the latest checkpoint")
    stop_after_steps: int | None = Field(None, ge=1, description="stop (checkpointed) after N steps, to resume later")

    @field_validator("report_to", mode="before")
    @classmethod
    def _tracker_list(cls, value: Any) -> Any:
        # One name is a list of one (train.report_to=mlflow); "none" is no tracker, as in Trainer's report_to.
        if isinstance(value, str):
            return [] if value == "none" else [value]
        return value


class EvalConfig(_Section):
    """Final scoring on the test split, for the finetuned model and (optionally) its base."""

    batch_size: int = Field(16, ge=1)
    score_base: bool = True
    generate: bool = Field(True, description="generation-based metrics (seq2seq, chat)")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    metrics: list[Literal["rouge", "bleu", "chrf"]] = Field(
        default_factory=list,
        description="generation metrics (seq2seq); the first is the primary metric; empty: all of them",
    )


class ChatConfig(_Section):
    """Chat SFT: template and which tokens carry the loss."""

    template: Literal["tokenizer", "chatml"] = "chatml"
    loss_on: Literal["assistant", "last_assistant", "all"] = "assistant"
    system_prompt: str | None = None


class OutputConfig(_Section):
    dir: str = "runs"
    name: str | None = Field(None, description="run folder name; default: the recipe file's stem")
    push_to_hub: str | None = Field(None, description="Hub repo id (user/name) to upload model/ to when the run "
                                    "finishes (`tuneforge push`)")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        # The name is one folder under output.dir: a path here would write (or refuse) somewhere else entirely.
        if name is not None and (not name.strip() or name in (".", "..") or "/" in name or "\\" in name):
            raise ValueError("must be one folder name (no '/', not '.' or '..'); put the parent folder in output.dir")
        return name

    @field_validator("push_to_hub")
    @classmethod
    def _repo_id(cls, repo: str | None) -> str | None:
        # The Hub's repo id form (huggingface_hub.utils.validate_repo_id): owner/name of letters, digits, -_.
        if repo is not None and not re.fullmatch(r"[\w.-]{1,96}/[\w.-]{1,96}", repo):
            raise ValueError(f"{repo!r} is not a Hub repo id; give user/name or org/name")
        return repo


class Recipe(_Section):
    """A whole run: what to train, on what, how, and where it goes."""

    task: TaskName
    model: ModelConfig
    lora: LoraConfig | None = None
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    chat: ChatConfig | None = None
    classification: ClassificationConfig | None = None
    seq2seq: Seq2SeqConfig | None = None
    output: OutputConfig = Field(default_factory=OutputConfig)
    description: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        problems = []
        if self.model.scratch is not None and self.lora is not None:
            problems.append("lora: a model pretrained from scratch trains in full; remove the lora section")
        if self.lora is not None and self.train.trainable == "head":
            problems.append("train.trainable: 'head' (linear probe) and a lora section exclude each other")
        if self.train.global_batch_size is not None and "gradient_accumulation_steps" in self.train.model_fields_set:
            problems.append("train: set global_batch_size or gradient_accumulation_steps, not both")
        needs_eval = [f"train.{key}" for key in SELECTION_KEYS if getattr(self.train, key) is not None]
        if needs_eval and not self.train.eval_every:
            problems.append(f"{', '.join(needs_eval)}: validation during training is off; set train.eval_every (e.g. "
                            f"train.eval_every={max(self.train.max_steps // 5, 1)})")
        for section, owner in TASK_SECTIONS.items():
            if getattr(self, section) is not None and self.task != owner:
                problems.append(f"{section}: only used with task: {owner} (task is {self.task!r})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def method(self) -> str:
        """lora | full | head | scratch, as comparison tables show it."""
        if self.model.scratch is not None:
            return "scratch"
        if self.lora is not None:
            return self.lora.label()
        return "head" if self.train.trainable == "head" else "full"

    def run_name(self, recipe_path: str | Path | None = None) -> str:
        if self.output.name:
            return self.output.name
        if recipe_path is None:
            raise TuneforgeError("output.name: not set and no recipe file to take it from; add output.name")
        return Path(recipe_path).stem

    def to_yaml(self) -> str:
        """The resolved recipe as YAML (recipe.yaml of a run); it loads back as the same recipe."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def hash(self) -> str:
        """sha256 of the resolved recipe (everything that defines the run), as recorded in metrics.json."""
        # How a run is driven (resumed, stopped early, which folder) does not change what it computes.
        spec = self.model_dump(mode="json", exclude={"train": {"resume", "stop_after_steps", "report_to"},
                                                       "output": True})
        # The moved keys hash at their old place (defaults where the section is absent), so a run recorded before
        # the move keeps its recipe hash.
        sections = {"classification": ClassificationConfig, "seq2seq": Seq2SeqConfig}
        for (_, key), new_path in MOVED_KEYS.items():
            section, field = new_path.split(".")
            values = spec.get(section) or {}
            spec["data"][key] = values[field] if field in values else sections[section].model_fields[field].default
        for section in sections:
            spec.pop(section, None)
        # Keys added after runs were recorded hash only when set away from their defaults: those runs keep their hash.
        for section, config, keys in (("train", TrainConfig, SELECTION_KEYS),
                                      ("lora", LoraConfig, LoraConfig.HASHED_WHEN_SET)):
            values = spec.get(section) or {}
            for key in keys:
                if key in values and values[key] == config.model_fields[key].default:
                    del values[key]
        blob = json.dumps(spec, sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Loading and overrides


def parse_overrides(overrides: list[str]) -> dict:
    """Turn `section.key=value` strings into a nested dict; values are parsed as YAML (`1e-4`, `true`, `[a, b]`).

    Raises:
        TuneforgeError: an override without `=` or with an empty key.
    """
    nested: dict = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(not p for p in key.split(".")):
            raise TuneforgeError(f"override {item!r}: expected section.key=value, e.g. train.max_steps=50")
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TuneforgeError(f"override {item!r}: {part} is set twice, once as a value")
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    return nested


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class LaunchConfigNotRecipe(TuneforgeError):
    """An Accelerate launch config where a recipe was expected (`validate recipes/*/*.yaml` skips these)."""


def is_launch_config(raw: object) -> bool:
    """True for a mapping that `accelerate config` wrote (it names a compute environment or distributed type)."""
    return isinstance(raw, dict) and bool({"compute_environment", "distributed_type"} & set(raw))


def build_recipe(raw: dict, overrides: list[str] | None = None, *, origin: str = "recipe") -> Recipe:
    """Validate a raw recipe dict (plus overrides) into a `Recipe`.

    Raises:
        TuneforgeError: every schema problem at once, one per line, each naming field, value and fix.
    """
    if not isinstance(raw, dict):
        raise TuneforgeError(f"{origin}: expected a YAML mapping of sections (task, model, data, ...)")
    if is_launch_config(raw):
        raise LaunchConfigNotRecipe(
            f"{origin}: this is an Accelerate launch config, not a recipe; pass it as "
            "`accelerate launch --config_file` (or `tuneforge validate RECIPE --launch-config` it)"
        )
    merged = _merge(raw, parse_overrides(overrides or []))
    try:
        return Recipe.model_validate(merged)
    except ValidationError as exc:
        lines = format_errors(exc.errors(), Recipe, MOVED_KEYS)
        raise TuneforgeError(f"{origin}: {len(lines)} problem(s):\n  " + "\n  ".join(lines)) from None


def read_yaml_file(path: Path, subject: str) -> Any:
    """Parse a YAML file that exists, with one clear error for text that is not UTF-8 or not YAML.

    Args:
        path: the file (its existence is checked by the caller, whose message names what the file is for).
        subject: the start of each error message, naming the file, e.g. "recipe 'r.yaml':" or
            "--launch-config: 'c.yaml' is".

    Returns:
        The parsed document (any YAML value; the caller checks its shape).

    Raises:
        TuneforgeError: the file is not UTF-8 text or not valid YAML.
    """
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise TuneforgeError(
            f"{subject} not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        raise TuneforgeError(f"{subject} not valid YAML: {exc}") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML file and apply `section.key=value` overrides.

    Raises:
        TuneforgeError: missing file, YAML syntax error, or schema problems (all listed together).
    """
    path = Path(path)
    if path.is_dir():
        inside = [str(p) for p in sorted(path.glob("*.yaml"))[:3]] or ["recipes/gpt/lora-manpages.yaml"]
        raise TuneforgeError(f"recipe {str(path)!r} is a folder; give a recipe file, e.g. {', '.join(inside)}")
    if not path.is_file():
        raise TuneforgeError(f"recipe {str(path)!r}: no such file; recipes live under recipes/ (e.g. recipes/gpt/)")
    raw = read_yaml_file(path, f"recipe {str(path)!r}:")
    return build_recipe(raw, overrides, origin=str(path))
