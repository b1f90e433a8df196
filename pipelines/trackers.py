"""Experiment tracking through Accelerate's trackers (`train.report_to`): what a run logs, and to where.

Every tracker gets what `transformers.Trainer` logs, under the same names where Trainer has one: per log line
`train/loss`, `train/learning_rate`, `train/grad_norm` (the gradient's global L2 norm before clipping),
`train/tokens_per_s` and `train/examples_per_s` (over the steps since the previous line, all processes),
`train/peak_memory_mb`; `eval/loss` (and `eval/perplexity`) at `eval_every` and at the end; the final test
scores as `test/<metric>` and the base model's as `test_base/<metric>`; and the recipe's flattened settings as
hyperparameters (`train.learning_rate`, `lora.r`, ..., plus `recipe_hash`).

Runs are grouped as project "tuneforge" (TensorBoard: `run/tensorboard/tuneforge/`; W&B project, MLflow
experiment) and named after the run folder. MLflow writes where `MLFLOW_TRACKING_URI` points (mlflow's default
otherwise), as it does for Trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.errors import TuneforgeError

PROJECT = "tuneforge"
# train.report_to values: Accelerate's tracker names (accelerate.tracking.LOGGER_TYPE_TO_CLASS), each with the
# package that provides it.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim", "trackio": "trackio",
            "comet_ml": "comet_ml", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab"}
# The run's name, as each tracker takes it (its tracker class's `__init__` keyword).
RUN_NAME_KWARG = {"wandb": "name", "mlflow": "run_name", "trackio": "name", "swanlab": "experiment_name"}


def check_report_to(names: list[str]) -> None:
    """Every tracker named in `train.report_to` is installed (Accelerate would skip a missing one silently).

    Raises:
        TuneforgeError: the first tracker whose package is missing, with the pip command.
    """
    from accelerate.utils import imports

    for name in names:
        if not getattr(imports, f"is_{name}_available")():
            raise TuneforgeError(
                f"train.report_to: {name!r} needs the {TRACKERS[name]!r} package, which is not installed; "
                f"pip install {TRACKERS[name]}, or drop {name!r} from train.report_to"
            )


def hparams(recipe) -> dict[str, bool | int | float | str]:
    """The recipe's settings flattened to `section.key` -> a scalar (lists, mappings and None as JSON text), the
    form every tracker's hyperparameter table takes, plus `recipe_hash`."""
    flat: dict[str, bool | int | float | str] = {}

    def walk(prefix: str, node) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(f"{name}.", value)
            elif isinstance(value, bool | int | float | str):
                flat[name] = value
            else:
                flat[name] = json.dumps(value)

    walk("", recipe.model_dump(mode="json", exclude={"description"}))
    return {**flat, "recipe_hash": recipe.hash()}


def start(accelerator, recipe, run_dir: Path, start_step: int) -> None:
    """Start the run's trackers with its hyperparameters; a resumed run continues the same TensorBoard log
    (`purge_step` hides events at or after the resume step written before the crash: they are logged again)."""
    init_kwargs = {name: {key: run_dir.name} for name, key in RUN_NAME_KWARG.items()
                   if name in recipe.train.report_to}
    if start_step and "tensorboard" in recipe.train.report_to:
        init_kwargs["tensorboard"] = {"purge_step": start_step + 1}
    accelerator.init_trackers(PROJECT, config=hparams(recipe), init_kwargs=init_kwargs)


class Throughput:
    """Tokens and examples per second over the steps since the last log line (a meter's totals at two moments)."""

    def __init__(self, meter):
        self.tokens, self.examples, self.seconds = meter.nonpad_tokens, meter.examples, meter.seconds

    def since_last(self, meter, processes: int) -> dict[str, float]:
        """{"train/tokens_per_s" (non-padding), "train/examples_per_s"} since the previous call, all processes.

        Args:
            meter: the loop's `pipelines.meter.Meter` (this process's totals; every process runs the same steps).
            processes: the number of processes.
        """
        seconds = max(meter.seconds - self.seconds, 1e-9)
        rates = {"train/tokens_per_s": (meter.nonpad_tokens - self.tokens) * processes / seconds,
                 "train/examples_per_s": (meter.examples - self.examples) * processes / seconds}
        self.tokens, self.examples, self.seconds = meter.nonpad_tokens, meter.examples, meter.seconds
        return rates


def final_values(validation: dict[str, float], scores: dict, base_scores: dict | None) -> dict[str, float]:
    """The end-of-run values: `eval/<name>` of the final validation, `test/<metric>` and `test_base/<metric>`
    (numbers only; e.g. per-class reports stay in metrics.json)."""
    out = {f"eval/{key.removeprefix('eval_')}": value for key, value in validation.items()}
    for prefix, values in (("test", scores), ("test_base", base_scores or {})):
        out.update({f"{prefix}/{k}": float(v) for k, v in values.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)})
    return out
