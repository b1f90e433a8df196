"""Model selection during training: the task's validation metrics at `train.eval_every`, the best checkpoint
(`train.select_best`) and early stopping (`train.early_stopping_patience`).

Validation is scored by the task's own `score` (the code that scores the test split): perplexity from the loss,
ROUGE / BLEU / chrF from batched generation with the recipe's `eval.generation` settings, accuracy / F1 from class
probabilities. Every score goes through `gather_for_metrics` per batch (generations as fixed-width token ids,
never logits), so it covers exactly the validation rows on any number of processes. The test split is never
looked at here: the chosen model is scored on it once, after training (`loop.finish`).

The best weights are kept in memory (the trainable parameters only: a LoRA adapter and its `modules_to_save`, or
the whole model when it all trains) and saved with every Accelerate checkpoint (`Keeper` is registered for
checkpointing), so a resumed run continues the same selection and patience count.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from pipelines import distributed, runs
from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe
from pipelines.record import read_record
from pipelines.scoring import ScoreContext, greater_is_better

logger = logging.getLogger(__name__)


def metric_problems(recipe: Recipe, task) -> list[str]:
    """`train.select_best` must name a scalar score the task reports under this recipe.

    Args:
        recipe: the resolved recipe.
        task: its `pipelines.tasks.Task`.

    Returns:
        One message per problem (empty when fine), with a did-you-mean over the task's metrics.
    """
    metric = recipe.train.select_best
    known = task.metric_names(recipe)
    if metric is None or metric in known:
        return []
    close = difflib.get_close_matches(metric, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return [f"train.select_best: task {recipe.task!r} does not report {metric!r} with this recipe; {hint}"
            f"its validation metrics: {', '.join(known)}"]


def validation_scores(prep, recipe: Recipe, accelerator: Accelerator, model) -> dict[str, float]:
    """Score the validation split (its first `train.eval_limit` rows when set) with the task's own metrics.

    Args:
        prep: the run's `build.Prepared` (validation rows and features, tokenizer, task).
        recipe: the resolved recipe.
        accelerator: the run's Accelerator (every process must call this: scoring gathers).
        model: the prepared model.

    Returns:
        `{"eval_<metric>": value}` for every metric of `task.metric_names(recipe)`, plus `validation_rows` (rows
        scored; packed causal-LM: windows) and `validation_total` (rows in the split).
    """
    rows, features = prep.data["validation"], prep.features["validation"]
    total = len(features)
    limit = recipe.train.eval_limit
    if limit is not None and limit < total:
        # The split's first rows (its order is deterministic): the same subset at every evaluation and launch.
        rows, features = rows.select(range(min(limit, len(rows)))), features.select(range(limit))
    ctx = ScoreContext(accelerator=accelerator, model=model, tokenizer=prep.tokenizer, recipe=recipe, rows=rows,
                       features=features, task=prep.task, batch_size=recipe.eval.batch_size)
    scores = prep.task.score(ctx).scores
    out = {f"eval_{name}": float(scores[name]) for name in prep.task.metric_names(recipe)}
    return {**out, "validation_rows": len(features), "validation_total": total}


@dataclass
class Keeper:
    """The best validation value so far, the trainable weights that reached it, and the patience count.

    Accelerate saves `state_dict()` with every checkpoint (`register_for_checkpointing`) and restores it on resume.
    Every process keeps the same state: the scores it sees are gathered over all processes.

    Attributes:
        metric: the score that decides (`train.select_best`, else "loss" for early stopping alone).
        keep_weights: keep the best weights (select_best); early stopping alone needs only the values.
        patience: evaluations without improvement before stopping (None: never stop early).
    """

    metric: str
    keep_weights: bool
    patience: int | None
    best_value: float | None = None
    best_step: int | None = None
    best_scores: dict | None = None
    since_best: int = 0
    evaluations: int = 0
    stopped_at: int | None = None
    weights: dict[str, torch.Tensor] | None = None

    @classmethod
    def for_run(cls, recipe: Recipe, accelerator: Accelerator) -> Keeper | None:
        """The keeper the recipe asks for, or None (no select_best, no early stopping).

        Raises:
            TuneforgeError: select_best under parameter sharding (FSDP, ZeRO-3), where each process holds only a
                shard of the weights to keep.
        """
        cfg = recipe.train
        if cfg.select_best is None and cfg.early_stopping_patience is None:
            return None
        if cfg.select_best is not None and distributed.sharded(accelerator):
            raise TuneforgeError("train.select_best: not supported with sharded parameters (FSDP, DeepSpeed "
                                 "ZeRO-3) yet; use DDP or ZeRO-2, or remove train.select_best")
        return cls(metric=cfg.select_best or "loss", keep_weights=cfg.select_best is not None,
                   patience=cfg.early_stopping_patience)

    @property
    def greater_is_better(self) -> bool:
        """The metric's direction (`scoring.greater_is_better`)."""
        return greater_is_better(self.metric)

    def improved(self, value: float) -> bool:
        """Whether `value` is strictly better than the best so far (a NaN never is)."""
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.greater_is_better else value < self.best_value

    def update(self, step: int, scores: dict, model: torch.nn.Module) -> bool:
        """Take one evaluation's scores; keep the weights when they are the best so far; count patience.

        Args:
            step: the optimizer step just finished.
            scores: `validation_scores` output.
            model: the model (unwrapped) whose trainable parameters are kept on improvement.

        Returns:
            True when training should stop now (patience used up).
        """
        self.evaluations += 1
        value = scores[f"eval_{self.metric}"]
        if self.improved(value):
            self.best_value, self.best_step, self.best_scores, self.since_best = value, step, dict(scores), 0
            if self.keep_weights:
                self.weights = {name: p.detach().to("cpu", copy=True)
                                for name, p in model.named_parameters() if p.requires_grad}
        else:
            self.since_best += 1
        if self.stopped_at is None and self.patience is not None and self.since_best >= self.patience:
            self.stopped_at = step
        return self.stopped_at is not None

    def restore(self, model: torch.nn.Module) -> None:
        """Copy the kept weights back into `model` (unwrapped), so it is the chosen checkpoint."""
        if not self.weights:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.weights.items():
                params[name].copy_(value.to(params[name].device))

    def summary(self, steps: int) -> dict:
        """What metrics.json records under `selection` (`record.Selection`).

        Args:
            steps: the optimizer steps trained (the last step, when model/ is not the best one).
        """
        return {"metric": self.metric, "greater_is_better": self.greater_is_better,
                "step": self.best_step if self.keep_weights else steps,
                "value": self.best_value if self.keep_weights else None,
                "best_step": self.best_step, "best_value": self.best_value, "validation": self.best_scores,
                "evaluations": self.evaluations, "early_stopping_patience": self.patience,
                "early_stopped_at_step": self.stopped_at}

    def state_dict(self) -> dict:
        """Everything needed to continue the selection on resume (Accelerate pickles it into the checkpoint)."""
        return {"metric": self.metric, "best_value": self.best_value, "best_step": self.best_step,
                "best_scores": self.best_scores, "since_best": self.since_best, "evaluations": self.evaluations,
                "stopped_at": self.stopped_at, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's `state_dict()`.

        Raises:
            TuneforgeError: the checkpoint selected on another metric.
        """
        if state["metric"] != self.metric:
            raise TuneforgeError(f"train.select_best: the checkpoint selects on {state['metric']!r}, the recipe on "
                                 f"{self.metric!r}; resume with the same recipe or start again with --overwrite")
        for key in ("best_value", "best_step", "best_scores", "since_best", "evaluations", "stopped_at", "weights"):
            setattr(self, key, state[key])


def evaluate(prep, recipe: Recipe, accelerator: Accelerator, model, run_dir: Path, step: int,
             keeper: Keeper | None) -> bool:
    """Score validation at `step`, log it (log.jsonl, TensorBoard `eval/<metric>`), update the keeper.

    Args:
        prep / recipe / accelerator / model: as for `validation_scores`.
        run_dir: the run folder (the main process appends to its log.jsonl).
        step: the optimizer step just finished.
        keeper: the run's selection state, or None.

    Returns:
        True when early stopping says to stop now.
    """
    scores = validation_scores(prep, recipe, accelerator, model)
    stop = keeper is not None and keeper.update(step, scores, accelerator.unwrap_model(model))
    if accelerator.is_main_process:
        row = {"step": step, **scores}
        if keeper is not None:
            row.update(best_step=keeper.best_step, **({"early_stop": True} if stop else {}))
        runs.append_log(run_dir, row)
        accelerator.log({f"eval/{k[5:]}": v for k, v in scores.items() if k.startswith("eval_")}, step=step)
        if stop:
            logger.warning("early stopping at step %d: %s has not improved on step %d's %.6g for %d evaluations",
                           step, keeper.metric, keeper.best_step, keeper.best_value, keeper.since_best)
    return stop


@dataclass(frozen=True)
class Chosen:
    """A finished run's validation value that model selection (and a sweep) compares runs by."""

    metric: str
    value: float
    greater_is_better: bool
    step: int | None


def chosen_validation(run_dir: str | Path) -> Chosen | None:
    """The validation value of the model a finished run kept, read from its metrics.json (never a test score).

    With `train.select_best` it is that metric at the chosen step (`selection.value`); otherwise the final
    validation loss (`validation.eval_loss`, lower is better).

    Args:
        run_dir: a run folder.

    Returns:
        The metric, its value, its direction and the step of the model it belongs to; None when the run has no
        finished record or no validation value.

    Raises:
        RecordError: metrics.json is unreadable (`record.read_record`).
    """
    record = read_record(run_dir)
    if record is None or record.status != "finished":
        return None
    chosen = record.selection
    if chosen is not None and chosen.value is not None:
        return Chosen(chosen.metric, chosen.value, chosen.greater_is_better, chosen.step)
    if record.validation and "eval_loss" in record.validation:
        return Chosen("loss", record.validation["eval_loss"], False, record.train.steps if record.train else None)
    return None
