"""`tuneforge eval`: (re)score a finished run, or any model on a recipe's test split, into metrics.json.

A run is rescored with exactly its trained computation (LoRA adapters unmerged) on the test split its recipe
defines; its metrics.json keeps its training record and gets fresh scores. A model named with `--recipe`
is scored into a run-like folder (`runs/eval-<model>-<recipe>`) that comparison tables show as a row.
"""

from __future__ import annotations

import re
from pathlib import Path

from accelerate import Accelerator

from pipelines import build as build_lib
from pipelines import distributed, loop, runs
from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe, build_recipe, load_recipe
from pipelines.record import parse_record, scored_fields, write_result
from pipelines.runtime import is_main_process


def as_base(recipe: Recipe, model: str) -> Recipe:
    """The recipe with `model` as its base and nothing left to train (no LoRA, no scratch)."""
    update = {"model": recipe.model.model_copy(update={"base": model, "scratch": None}), "lora": None}
    return recipe.model_copy(update=update)


def score_model(recipe: Recipe, model: str) -> tuple[dict, object]:
    """Score `model` on `recipe`'s test split. Returns (metrics fields, Scored)."""
    accelerator = Accelerator()
    distributed.check_processes(accelerator)
    prep = build_lib.build(as_base(recipe, model), Path(model), accelerator, "resume", merge=False)
    result = loop.score(prep, recipe, accelerator, prep.model)
    fields = scored_fields(result, prep.task, recipe.data, prep.data["test"], recipe.train.seed,
                           runs.versions())
    return fields, result


def eval_main(target: str, *, recipe_path: str | None, out: str | None, overrides: list[str]) -> int:
    """Entry of `tuneforge eval`; prints the scores. Returns the exit code.

    A run folder is rescored in place. Scored another way (overrides that change its recipe, e.g.
    `data.splits.test=validation`, or `--out`), the scores go to a run-like folder of their own
    (default `<run>-on-<split>`, or `<run>-eval-<recipe hash>`) and the run's own scores stay as they are.

    Raises:
        TuneforgeError: a model without --recipe, a run without a saved model, a baseline folder, an --out folder
            that holds something else.
    """
    target_path = Path(target)
    if (target_path / "recipe.yaml").is_file() and recipe_path is None:
        recipe = trained = runs.load_run_recipe(target_path)
        if overrides:
            recipe = build_recipe(recipe.model_dump(mode="json"), overrides)
        if not (target_path / "model").is_dir():
            if runs.is_baseline(target_path):
                raise TuneforgeError(
                    f"{target!r} is a TF-IDF baseline (no model to score); rerun it with "
                    f"`tuneforge baseline {target_path / 'recipe.yaml'} --out {target} --overwrite`"
                )
            raise TuneforgeError(f"{target!r} has no model/: the run did not finish; resume or retrain it")
        fields, result = score_model(recipe, str(target_path / "model"))
        metrics = runs.read_metrics(target_path) or {}
        metrics.update(fields)
        if recipe.model.base and recipe.eval.score_base:  # the base on the very same split, not a stale score
            metrics["base_scores"] = score_model(recipe, recipe.model.base)[0]["scores"]
        dest = target_path
        if out or recipe.hash() != trained.hash():
            split = fields["dataset"]["split"]
            suffix = f"on-{split}" if split != "test" else f"eval-{recipe.hash()[7:15]}"
            dest = Path(out) if out else target_path.parent / f"{target_path.name}-{suffix}"
            if dest.exists() and (runs.read_metrics(dest) or {}).get("scored_from") is None:
                raise TuneforgeError(f"--out: {str(dest)!r} exists and is not an earlier `tuneforge eval` output; "
                                     "give another --out")
            metrics.update(run=dest.name, scored_from=str(target_path), recipe_hash=recipe.hash())
            if not (recipe.model.base and recipe.eval.score_base):
                metrics["base_scores"] = None  # the run's were on other rows
            if is_main_process():
                dest.mkdir(parents=True, exist_ok=True)
                (dest / "recipe.yaml").write_text(recipe.to_yaml())
    else:
        if recipe_path is None:
            raise TuneforgeError(f"eval: {target!r} is not a run folder; to score a model give --recipe RECIPE")
        recipe = load_recipe(recipe_path, overrides)
        fields, result = score_model(recipe, target)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", target.strip("/")).strip("-")
        dest = Path(out) if out else Path(recipe.output.dir) / f"eval-{slug}-{Path(recipe_path).stem}"
        metrics = {"schema": 1, "run": dest.name, "status": "finished", "task": recipe.task, "method": "base",
                   "base_model": target, "base_scores": None, "train": None, "params": None,
                   "recipe_hash": as_base(recipe, target).hash(), **fields}
    if is_main_process():
        dest.mkdir(parents=True, exist_ok=True)
        if not (dest / "recipe.yaml").exists():
            (dest / "recipe.yaml").write_text(as_base(recipe, target).to_yaml())
        # The artifacts (e.g. the confusion matrix) are redrawn from the new predictions.
        write_result(dest, parse_record(metrics, dest / "metrics.json"), result)
        primary = fields["primary_metric"]
        print(f"{dest}: {primary} {fields['scores'][primary]:.4g} on {fields['dataset']['name']} "
              f"{fields['dataset']['split']} ({fields['dataset']['num_examples']} examples)")
    return 0
