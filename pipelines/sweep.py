"""`tuneforge sweep`: a grid, or a budgeted Optuna search, over recipe keys; one run folder per trial.

    tuneforge sweep RECIPE key=v1,v2,... [key=lo:hi[:log]] [--trials N] [--sampler grid|random|tpe] [--name NAME]

Each `key=` is a recipe key with the values to try: a YAML flow sequence without its brackets
(`lora.r=4,8,16`, `lora={method: ia3},{method: vera, r: 256}`), or a numeric range `lo:hi` (`:log` for a log
scale; integers when both ends are). A key with a single value is a fixed override for every trial. The trials
train one after another into `<output.dir>/<sweep name>/trial-NNN/` (ordinary run folders), and are chosen by
the validation metric only (`objective`); the test split is reported, never used to choose.

The sweep folder holds `optuna.db` (Optuna's RDB storage in SQLite: which trials ran, their settings and
values), `sweep.json` (what the sweep is), `summary.md` and `sweep.png` (`pipelines.sweep_report`). Running the
same command again resumes: finished trials are never rerun, a trial that was interrupted (left RUNNING in the
storage) continues from its latest checkpoint (`train.resume=auto`; `train.save_every` sets how often).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines import runs, scoring, selection
from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe, build_recipe, load_recipe, read_yaml_file
from pipelines.sweep_report import error_file, flow, trial_rows
from pipelines.sweep_report import write as write_report

SAMPLERS = ("grid", "random", "tpe")
# The sweep decides where each trial goes and that it resumes; a recipe key among these would fight it.
MANAGED_KEYS = ("output.dir", "output.name", "train.resume", "train.stop_after_steps")
MAX_GRID = 10_000  # combinations checked one by one before any trial starts
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*:\s*({_NUMBER})\s*(?::\s*(log)\s*)?$")


@dataclass
class Param:
    """One swept recipe key: a list of values (categorical / grid) or a numeric range.

    Attributes:
        key: dotted recipe key, e.g. `train.learning_rate`.
        values: the values to try (YAML-parsed), or None for a range.
        low, high: the range's ends (inclusive), for a range.
        log: sample the range on a log scale.
        integer: the range holds integers (both ends were written as integers).
    """

    key: str
    values: list | None = None
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False

    def distribution(self):
        """The Optuna distribution; categorical values travel as JSON text (Optuna stores plain scalars only)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.values is not None:
            return CategoricalDistribution([json.dumps(v, sort_keys=True) for v in self.values])
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

    def decode(self, stored):
        """A trial's stored parameter back to the recipe value."""
        return json.loads(stored) if self.values is not None else stored

    def spec(self) -> str:
        """The parameter as the command line writes it."""
        if self.values is not None:
            return ",".join(flow(v) for v in self.values)
        return f"{self.low:g}:{self.high:g}" + (":log" if self.log else "")


def parse_param(item: str) -> tuple[Param | None, str | None]:
    """`key=v1,v2` / `key=lo:hi[:log]` into a `Param`, or the problem with it.

    Returns:
        (param, None) or (None, a message naming the item and the fix).
    """
    key, sep, spec = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        return None, f"{item!r}: expected key=v1,v2,... or key=lo:hi[:log], e.g. train.learning_rate=1e-4:1e-3:log"
    if key in MANAGED_KEYS:
        return None, f"{key}: set by the sweep for each trial; leave it out (use --name for the sweep's folder)"
    match = _RANGE.match(spec)
    if match:
        low, high = float(match[1]), float(match[2])
        integer = all(re.fullmatch(r"[-+]?\d+", match[i]) for i in (1, 2))
        if not low < high:
            return None, f"{key}={spec}: empty range (low {match[1]} must be below high {match[2]})"
        if match[3] and low <= 0:
            return None, f"{key}={spec}: a log range needs low > 0"
        return Param(key, low=low, high=high, log=bool(match[3]), integer=integer), None
    try:
        values = yaml.safe_load(f"[{spec}]")
    except yaml.YAMLError as exc:
        return None, f"{key}={spec}: not a comma-separated list of YAML values ({exc.problem})"
    if not values or any(v is None for v in values) and spec.strip() in ("", ","):
        return None, f"{key}=: empty list of values; give at least one, e.g. {key}=a,b"
    if len({flow(v) for v in values}) < len(values):
        return None, f"{key}={spec}: a value is listed twice"
    return Param(key, values=values), None


def _override(key: str, value) -> str:
    return f"{key}={flow(value)}"


def check_space(raw: dict, origin: str, fixed: list[str], params: list[Param], sampler: str, *,
                combinations: bool = True) -> list[str]:
    """Every problem of a sweep's keys and values, found before any trial starts.

    Each value is tried in the recipe alone (schema: unknown keys with did-you-mean, wrong types, impossible values;
    then the pre-flight checks that need files: targets the model lacks, a method its layers refuse); for a grid,
    every combination is schema-checked too (e.g. an option of another PEFT method).

    Args:
        raw: the recipe file's mapping.
        origin: the recipe's path, for messages.
        fixed: overrides every trial gets (`key=value` strings).
        params: the parsed sweep parameters.
        sampler: grid, random or tpe.
        combinations: also check each grid combination (once every key and value alone is fine).

    Returns:
        The problems, one per line (empty: the sweep may start).
    """
    from pipelines.preflight import check_recipe

    problems: list[str] = []
    keys = [p.key for p in params]
    problems += [f"{k}: swept twice; give all its values in one {k}=..." for k in sorted({k for k in keys
                                                                                          if keys.count(k) > 1})]
    if sampler == "grid":
        problems += [f"{p.key}={p.spec()}: a range cannot be a grid; list values ({p.key}=a,b,c) or use "
                     "--sampler tpe|random" for p in params if p.values is None]
    checked: dict[str, list[str]] = {}
    for p in params:
        tries = p.values if p.values is not None else [int(p.low) if p.integer else p.low,
                                                         int(p.high) if p.integer else p.high]
        for value in tries:
            try:
                recipe = build_recipe(raw, [*fixed, _override(p.key, value)], origin=origin)
            except TuneforgeError as exc:
                detail = str(exc).split(":\n  ", 1)[-1].replace("\n  ", "; ")
                if not any(line.endswith(f": {detail}") and line.startswith(f"{p.key}=") for line in problems):
                    problems.append(f"{p.key}={flow(value)}: {detail}")  # an unknown key once, not per value
                continue
            if recipe.hash() not in checked:
                checked[recipe.hash()] = check_recipe(recipe).errors
            problems += [f"{p.key}={flow(value)}: {e}" for e in checked[recipe.hash()]]
    if combinations and not problems and sampler == "grid":
        combos = grid(params)
        if len(combos) > MAX_GRID:
            return [f"the grid has {len(combos)} combinations (more than {MAX_GRID}); use --sampler tpe --trials N"]
        for combo in combos:
            try:
                build_recipe(raw, [*fixed, *(_override(k, v) for k, v in combo.items())], origin=origin)
            except TuneforgeError as exc:
                detail = str(exc).split(":\n  ", 1)[-1].replace("\n  ", "; ")
                problems.append(f"combination {' '.join(_override(k, v) for k, v in combo.items())}: {detail}")
    return problems


def grid(params: list[Param]) -> list[dict]:
    """Every combination of the parameters' values (a grid has values only), in command-line order."""
    combos: list[dict] = [{}]
    for p in params:
        combos = [{**c, p.key: v} for c in combos for v in p.values]
    return combos


def objective(recipe: Recipe) -> tuple[str, bool]:
    """The validation metric trials are chosen by, and whether greater is better.

    The recipe's `train.select_best` metric (its value at the kept checkpoint), else the final validation loss
    (every task has it): what `selection.chosen_validation` reads from a finished trial's metrics.json.
    """
    if recipe.train.select_best:
        return recipe.train.select_best, scoring.greater_is_better(recipe.train.select_best)
    return "loss", False


def validation_value(run_dir: Path, name: str) -> float | None:
    """A finished trial's value of the validation metric `name` (see `objective`), or None when it has none."""
    chosen = selection.chosen_validation(run_dir)
    if chosen is None or chosen.metric != name or not math.isfinite(chosen.value):
        return None
    return float(chosen.value)


@dataclass
class Sweep:
    """A sweep being run: where it lives, what it varies, and how it samples."""

    recipe_path: str
    raw: dict
    fixed: list[str]
    params: list[Param]
    sampler: str
    trials: int
    folder: Path
    metric: str
    greater_is_better: bool

    def trial_dir(self, number: int) -> Path:
        return self.folder / f"trial-{number:03d}"

    def trial_recipe(self, number: int, values: dict) -> Recipe:
        """The recipe of one trial: the file, the fixed overrides, the trial's values, its own run folder."""
        overrides = self.fixed + [_override(k, v) for k, v in values.items()]
        overrides += [f"output.dir={self.folder}", f"output.name={self.trial_dir(number).name}", "train.resume=auto"]
        return build_recipe(self.raw, overrides, origin=self.recipe_path)

    def launch(self, number: int, values: dict, prefix: str = "tuneforge train") -> str:
        """The command that trains one trial by itself (recorded in its card; what a cluster job runs).

        Args:
            number: the trial number.
            values: the trial's value of each swept key.
            prefix: the launcher, e.g. `accelerate launch --config_file accelerate_config.yaml -m pipelines.train`.
        """
        overrides = self.fixed + [_override(k, v) for k, v in values.items()]
        overrides += [f"output.dir={self.folder}", f"output.name={self.trial_dir(number).name}", "train.resume=auto"]
        return f"{prefix} " + shlex.join([self.recipe_path, *overrides])

    def description(self) -> dict:
        """What makes this sweep this sweep (`sweep.json`): a rerun must match it to resume.

        The recipe's hash is part of it: an edited recipe file would give the remaining trials another recipe.
        """
        recipe_hash = build_recipe(self.raw, self.fixed, origin=self.recipe_path).hash()
        return {"recipe": self.recipe_path, "recipe_hash": recipe_hash, "fixed": self.fixed,
                "params": {p.key: p.spec() for p in self.params}, "sampler": self.sampler, "metric": self.metric,
                "greater_is_better": self.greater_is_better}


def plan(recipe_path: str, items: list[str], *, trials: int | None, sampler: str | None, name: str | None) -> Sweep:
    """Parse and check a sweep command; nothing is written.

    Args:
        recipe_path: the recipe file.
        items: the `key=...` arguments.
        trials: the trial budget (default: the grid's size; 20 for a search over ranges).
        sampler: grid, random or tpe (default: grid when every key lists values, else tpe).
        name: the sweep's folder under `output.dir` (default: `<run name>-sweep`).

    Returns:
        The sweep, ready to run.

    Raises:
        TuneforgeError: every problem with the recipe, the keys and values, the budget, at once.
    """
    recipe = load_recipe(recipe_path)  # the file alone must be valid first
    raw = read_yaml_file(Path(recipe_path), f"recipe {recipe_path!r}:")
    parsed = [parse_param(item) for item in items]
    problems = [problem for _, problem in parsed if problem]
    swept = [p for p, _ in parsed if p is not None and (p.values is None or len(p.values) > 1)]
    fixed = [_override(p.key, p.values[0]) for p, _ in parsed if p is not None and p.values and len(p.values) == 1]
    if not items or (not swept and not problems):
        problems.append("nothing to sweep: give at least one key with several values (lora.r=4,8,16) or a range "
                        "(train.learning_rate=1e-4:1e-3:log)")
    sampler = sampler or ("grid" if all(p.values is not None for p in swept) else "tpe")
    if sampler not in SAMPLERS:
        problems.append(f"--sampler: unknown {sampler!r}; use one of {', '.join(SAMPLERS)}")
    if trials is not None and trials < 1:
        problems.append(f"--trials: {trials}; give a whole number >= 1")
    try:
        recipe = build_recipe(raw, fixed, origin=recipe_path)
    except TuneforgeError as exc:
        problems.append(str(exc))
    else:  # the keys that parsed are checked even when others did not: every problem is reported at once
        problems += check_space(raw, recipe_path, fixed, swept, sampler if sampler in SAMPLERS else "tpe",
                                combinations=not problems)
    if sampler == "grid" and not problems:
        size = len(grid(swept))
        if trials is not None and trials > size:
            problems.append(f"--trials: {trials} is more than the grid's {size} combinations; leave it out")
        trials = trials or size
    if problems:
        raise TuneforgeError(f"sweep {recipe_path}: {len(problems)} problem(s), no trial started:\n  "
                             + "\n  ".join(problems))
    metric, greater = objective(recipe)
    folder = Path(recipe.output.dir) / (name or f"{recipe.run_name(recipe_path)}-sweep")
    return Sweep(recipe_path, raw, fixed, swept, sampler, trials or 20, folder, metric, greater)


def _study(sweep: Sweep):
    """Create or reopen the sweep's Optuna study (SQLite storage in the sweep folder)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = 0  # the same suggestions on every machine and every rerun
    # A grid is every combination enqueued once, in command-line order (Optuna's GridSampler picks its points in
    # random order and stops the study from inside `tell`, which only `optimize` allows).
    sampler = optuna.samplers.TPESampler(seed=seed) if sweep.sampler == "tpe" else optuna.samplers.RandomSampler(seed)
    study = optuna.create_study(
        storage=f"sqlite:///{(sweep.folder / 'optuna.db').resolve()}", study_name=sweep.folder.name,
        sampler=sampler, direction="maximize" if sweep.greater_is_better else "minimize", load_if_exists=True,
    )
    if sweep.sampler == "grid" and not study.get_trials(deepcopy=False):
        for combo in grid(sweep.params):
            study.enqueue_trial({k: json.dumps(v, sort_keys=True) for k, v in combo.items()})
    return study


def _claim_folder(sweep: Sweep) -> None:
    """Make the sweep folder, or check that the one there holds this same sweep (so it may resume)."""
    record = sweep.folder / "sweep.json"
    wanted = sweep.description()
    if record.is_file():
        found = json.loads(record.read_text())
        if found != wanted:
            changed = sorted(k for k in wanted if found.get(k) != wanted[k])
            raise TuneforgeError(
                f"sweep: {str(sweep.folder)!r} holds another sweep (different {', '.join(changed)}); rerun it with "
                "its own arguments to resume it, or start a new one with --name NEW"
            )
        return
    if sweep.folder.exists() and any(sweep.folder.iterdir()):
        raise TuneforgeError(f"sweep: {str(sweep.folder)!r} exists and is not a sweep folder; choose --name NEW")
    sweep.folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(wanted, indent=2) + "\n")


def run_sweep(sweep: Sweep, *, say=print) -> list[dict]:
    """Run (or resume) every trial of `sweep`, then write its summary table and plot.

    Interrupted trials (RUNNING in the storage: the process was killed) continue first, in their own folders; then
    new trials are asked of the sampler until the budget is spent. A trial that fails with a user error is
    recorded as failed (its message in the table) and the sweep goes on.

    Args:
        sweep: from `plan`.
        say: where progress lines go.

    Returns:
        One row per trial (see `pipelines.sweep_report.trial_rows`).
    """
    import optuna

    _claim_folder(sweep)
    study = _study(sweep)
    distributions = {p.key: p.distribution() for p in sweep.params}
    by_key = {p.key: p for p in sweep.params}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        say(f"sweep: resuming interrupted trial {trial.number}")
        _run_trial(sweep, study, trial.number, {k: by_key[k].decode(v) for k, v in trial.params.items()}, say)
    started = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)
    while len(study.get_trials(deepcopy=False, states=started)) < sweep.trials:
        trial = study.ask(distributions)
        _run_trial(sweep, study, trial.number, {k: by_key[k].decode(v) for k, v in trial.params.items()}, say)
    rows = trial_rows(sweep, study)
    say(write_report(sweep, rows))
    return rows


def trial_commands(sweep: Sweep, launcher: str) -> list[str]:
    """Ask the sampler for the rest of the budget and return one training command per trial, training nothing.

    For a cluster: each command is one job (`accelerate launch` on any scheduler). The trials stay RUNNING in the
    storage; once the jobs are done, `tuneforge sweep` with the same arguments reads their run folders, tells the
    study their validation values and writes the table (a job that died is resumed there, from its checkpoint).
    TPE learns only from told trials: ask in rounds (`--trials 8`, collect, `--trials 16`, ...).

    Args:
        sweep: from `plan`.
        launcher: the command before the recipe.

    Returns:
        The commands of every trial that is RUNNING after the asking (earlier rounds' unfinished ones included).
    """
    import optuna

    _claim_folder(sweep)
    study = _study(sweep)
    distributions = {p.key: p.distribution() for p in sweep.params}
    started = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)
    while len(study.get_trials(deepcopy=False, states=started)) < sweep.trials:
        study.ask(distributions)
    by_key = {p.key: p for p in sweep.params}
    return [sweep.launch(t.number, {k: by_key[k].decode(v) for k, v in t.params.items()}, launcher)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]


def _run_trial(sweep: Sweep, study, number: int, values: dict, say) -> None:
    """Train (or finish, or just read) one trial and tell the study its validation value."""
    import optuna

    from pipelines import loop

    run_dir = sweep.trial_dir(number)
    shown = " ".join(_override(k, v) for k, v in values.items())
    start = time.time()
    result = None
    if not runs.is_finished(run_dir):  # finished already: a cluster job trained it, or we died after training
        say(f"sweep: trial {number} ({shown}) -> {run_dir}")
        try:
            result = loop.train(sweep.trial_recipe(number, values), run_dir, launch=sweep.launch(number, values))
        except TuneforgeError as exc:
            say(f"sweep: trial {number} failed: {exc}")
            error_file(run_dir).write_text(str(exc) + "\n")
            study.tell(number, state=optuna.trial.TrialState.FAIL)
            return
    if result is not None and result.get("status") == "stopped":  # the recipe's train.stop_after_steps
        raise TuneforgeError(f"sweep: trial {number} stopped at step {result['step']} (train.stop_after_steps in "
                             "the recipe); run the sweep again to continue it")
    value = validation_value(run_dir, sweep.metric)
    if value is None:
        say(f"sweep: trial {number} has no validation {sweep.metric}; recorded as failed")
        study.tell(number, state=optuna.trial.TrialState.FAIL)
        return
    study.tell(number, value)
    say(f"sweep: trial {number} validation {sweep.metric} {value:.4g} ({time.time() - start:.0f} s)")
