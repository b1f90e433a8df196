"""The one training loop, for every task family, on one CPU, one GPU or many processes through Accelerate.

`train()` reads as its steps: prepare the run folder, build (data, model + LoRA, optimizer), fit (the step loop,
token-weighted gradient accumulation, checkpoints), finish (save, score, write the run record). Only the main
process writes files. Mixed precision comes from the launch config (`accelerate launch`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from pipelines import card, checkpoints, distributed, failures, flops, modeling, push, runs, selection, trackers
from pipelines.batching import StepBatches, accumulation_steps, pad_multiple
from pipelines.build import Prepared, build
from pipelines.errors import TuneforgeError
from pipelines.meter import Meter, peak_memory_mb, reset_peak_memory, utilisation
from pipelines.optim import make_optimizer, make_scheduler
from pipelines.preflight import preflight
from pipelines.recipe import Recipe
from pipelines.record import RunRecord, TrainStats, scored_fields, write_json, write_result
from pipelines.runtime import keep_freed_memory_mapped, make_accelerator
from pipelines.scoring import ScoreContext, Scored, example_losses, perplexity

__all__ = ["Fitted", "accumulate_gradients", "build", "fit", "score", "train", "validation_loss"]


def score(prep: Prepared, recipe: Recipe, accelerator: Accelerator, model, split: str = "test") -> Scored:
    """The task's scores on `split` (the test split unless told) for `model` (finetuned or base)."""
    ctx = ScoreContext(
        accelerator=accelerator, model=model, tokenizer=prep.tokenizer, recipe=recipe, rows=prep.data[split],
        features=prep.features[split], task=prep.task, batch_size=recipe.eval.batch_size,
    )
    scored = prep.task.score(ctx)
    if prep.task.scores_forgetting:  # the same general-English slice for the base and the run (eval.forgetting)
        from eval.forgetting import general_perplexity

        general = general_perplexity(model, prep.tokenizer, prep.task.loss, accelerator.device,
                                     recipe.eval.batch_size)
        if general is not None:
            scored.scores.update(general[0])
            scored.settings.update(general[1])
    return scored


def validation_loss(prep: Prepared, recipe: Recipe, accelerator: Accelerator, model) -> dict[str, float]:
    """Mean validation loss (nats per target) and, for token-level tasks, its perplexity."""
    ctx = ScoreContext(
        accelerator=accelerator, model=model, tokenizer=prep.tokenizer, recipe=recipe, rows=prep.data["validation"],
        features=prep.features["validation"], task=prep.task, batch_size=recipe.eval.batch_size,
    )
    scores = perplexity(*example_losses(ctx))
    if not prep.task.token_level:
        return {"eval_loss": scores["loss"]}
    return {"eval_loss": scores["loss"], "eval_perplexity": scores["perplexity"]}


def train(recipe: Recipe, run_dir: Path, *, overwrite: bool = False, launch: str = "") -> dict:
    """Train (or resume) one run end to end and write its run folder.

    Args:
        recipe: the resolved recipe.
        run_dir: `runs/<name>`; must not hold a run unless `overwrite` or `train.resume=auto`.
        overwrite: replace an existing run folder.
        launch: the command line, recorded in the model card.

    Returns:
        The metrics dict written to metrics.json (on every process), or {"status": "stopped", "step"} when
        `train.stop_after_steps` ended the run early.

    Raises:
        TuneforgeError: any user-fixable problem (including a full disk or a read-only folder); an error before
            the first complete checkpoint leaves no run folder behind (only what the user had there).
    """
    failures.check_output_dir(run_dir)
    accelerator = make_accelerator(run_dir, recipe.train.report_to)
    reset_peak_memory(accelerator.device)  # this run's peak, not that of an earlier run in the same process
    distributed.check_processes(accelerator)
    distributed.check_accumulation(accelerator, accumulation_steps(recipe.train, accelerator.num_processes))
    preflight(recipe)
    with owned_run_dir(recipe, run_dir, accelerator, overwrite=overwrite) as mode, failures.writing(run_dir):
        set_seed(recipe.train.seed)
        prep = build(recipe, run_dir, accelerator, mode)
        params = modeling.count_parameters(prep.model)
        fitted = fit(prep, recipe, run_dir, accelerator, mode)
        if fitted.stopped_at is not None:
            accelerator.end_training()
            return {"status": "stopped", "step": fitted.stopped_at}
        metrics = finish(prep, recipe, run_dir, accelerator, fitted, params, launch)
    accelerator.end_training()
    return metrics


@contextlib.contextmanager
def owned_run_dir(recipe: Recipe, run_dir: Path, accelerator: Accelerator, *, overwrite: bool) -> Iterator[str]:
    """Lock the run folder, decide fresh or resume, start a fresh folder; clean up a fresh run that fails early.

    One `tuneforge train` per run folder: the lock (`checkpoints.RunLock`) is taken by the main process before the
    folder is checked, so two starts within milliseconds cannot both pass the check; the others follow its verdict.
    If the body raises before the run has a complete checkpoint, a fresh run's folder is removed (a folder the user
    had made empty stays), so the corrected rerun is not blocked.

    Yields:
        "fresh" or "resume".
    """
    main = accelerator.is_main_process
    lock = checkpoints.RunLock(run_dir)
    refused = None
    if main:
        try:
            with failures.writing(run_dir.parent):
                lock.acquire()
        except TuneforgeError as exc:
            refused = str(exc)
    refused = distributed.main_decides(accelerator, lambda: refused)
    if refused is not None:
        raise TuneforgeError(refused)
    existed = run_dir.exists()
    was_empty = existed and run_dir.is_dir() and not any(run_dir.iterdir())
    mode = None
    try:
        mode = distributed.main_decides(
            accelerator, runs.check_run_dir, run_dir, overwrite=overwrite, resume=recipe.train.resume
        )
        accelerator.wait_for_everyone()
        if main and mode == "fresh":
            runs.clear_run_dir(run_dir)
            run_dir.mkdir(parents=True)
            (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
        if main and mode == "resume":  # a scratch run's tokenizer lives in model/; a crash may have moved it aside
            checkpoints.recover_dir(run_dir / "model")
        accelerator.wait_for_everyone()
        yield mode
    except BaseException:
        if main and mode == "fresh" and run_dir.exists() and not checkpoints.has_complete(run_dir):
            if not existed or overwrite or (run_dir / "recipe.yaml").is_file():
                runs.clear_run_dir(run_dir)
                if was_empty:  # the user's own empty folder stays
                    run_dir.mkdir()
        raise
    finally:
        if main:
            lock.release()


@dataclass
class Fitted:
    """What fitting leaves for finishing: the prepared model, the meter, the resume point, the base scores."""

    model: torch.nn.Module
    meter: Meter
    start_step: int
    last_loss: float
    base_scores: dict | None
    stopped_at: int | None = None  # train.stop_after_steps ended the run before max_steps
    keeper: selection.Keeper | None = None  # train.select_best / early_stopping_patience: the best step's state
    steps: int | None = None  # optimizer steps trained (fewer than max_steps when stopped early)


def fit(prep: Prepared, recipe: Recipe, run_dir: Path, accelerator: Accelerator, mode: str) -> Fitted:
    """The step loop: optimizer steps from the start (or the latest checkpoint) to `max_steps`.

    Token-weighted loss: every target token of the global batch (all micro-batches, all processes) has the same
    weight, so accumulation equals the full batch. DDP averages gradients over processes, hence the factor
    num_processes. This is Accelerate's documented recipe for variable-size batches ("Gradient accumulation ...
    on training samples of variable size"); `accumulate()` is skipped because its 1/accumulation loss scaling
    would be wrong for a global-count normaliser.

    Returns:
        The fitted state (`stopped_at` set when `train.stop_after_steps` stopped it early).
    """
    cfg, main, device = recipe.train, accelerator.is_main_process, accelerator.device
    optimizer = make_optimizer(prep.model, recipe)
    scheduler = make_scheduler(optimizer, recipe)
    model, optimizer = accelerator.prepare(prep.model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    distributed.trainable_only_checkpoints(accelerator, model)  # LoRA: the adapter, not the frozen base
    keeper = selection.Keeper.for_run(recipe, accelerator)
    if keeper is not None:  # the best weights and the patience count go into every checkpoint
        accelerator.register_for_checkpointing(keeper)
    features = prep.features["train"]
    batches = StepBatches(
        features["length"], cfg.micro_batch_size, accumulation_steps(cfg, accelerator.num_processes),
        accelerator.num_processes, accelerator.process_index, cfg.seed, cfg.group_by_length,
        features["length_tiebreak"] if "length_tiebreak" in features.column_names else None,
    )
    start_step, base_scores, restored = resume_or_score_base(prep, recipe, run_dir, accelerator, model, mode)
    trackers.start(accelerator, recipe, run_dir, start_step)
    model.train()
    keep_freed_memory_mapped(device)
    # This process's counters; a checkpoint saves them and a resume continues them (seconds: both parts summed).
    log_sums = torch.tensor(restored.get("log_sums", [0.0, 0.0]), device=device, dtype=torch.float64)
    meter, last_loss = Meter(), restored.get("last_loss", float("nan"))
    meter.load_state_dict(restored.get("meter", {}))
    throughput = trackers.Throughput(meter)
    stop_at = min(cfg.max_steps, cfg.stop_after_steps or cfg.max_steps)
    bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not main, desc=run_dir.name, dynamic_ncols=True)
    collate = partial(prep.task.collate, tokenizer=prep.tokenizer, recipe=recipe,
                      pad_to_multiple_of=pad_multiple(device))
    spec = flops.flop_spec(accelerator.unwrap_model(model))
    done = start_step
    with no_kv_cache(accelerator.unwrap_model(model)):
        for step in range(start_step, stop_at):
            if keeper is not None and keeper.stopped_at is not None:
                break  # resumed from the checkpoint written when early stopping ended the run
            t0 = time.perf_counter()
            micro = [collate([features[i] for i in b]) for b in batches.for_step(step)]
            # Global micro-batch k = i x processes + rank (StepBatches): its dropout masks do not depend on the launch.
            seeds = [micro_seed(cfg.seed, step, i * accelerator.num_processes + accelerator.process_index)
                     for i in range(len(micro))]
            accumulate_gradients(prep.task, model, accelerator, micro, meter, spec, log_sums, seeds)
            done = step + 1
            logs = done % cfg.log_every == 0 or done == stop_at
            # The norm before clipping, as Trainer logs it; without clipping it is measured on log steps only (a
            # max norm of inf scales every gradient by exactly 1.0).
            clip = cfg.max_grad_norm if cfg.max_grad_norm is not None else (math.inf if logs else None)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip) if clip is not None else None
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            meter.seconds += time.perf_counter() - t0
            bar.update(1)
            if logs:
                last_loss = log_step(run_dir, accelerator, log_sums, done, scheduler.get_last_lr()[0], meter,
                                     {"grad_norm": None if grad_norm is None else float(grad_norm)}, throughput)
                bar.set_postfix(loss=f"{last_loss:.4f}")
            early_stop = False
            # When selecting, the final model is a candidate too; otherwise finish scores it anyway.
            final = done == cfg.max_steps
            if cfg.eval_every and ((done % cfg.eval_every == 0 and not final) or (final and keeper is not None)):
                early_stop = selection.evaluate(prep, recipe, accelerator, model, run_dir, done, keeper)
            if (cfg.save_every and done % cfg.save_every == 0) or done == stop_at or early_stop:
                state = {"meter": meter.state_dict(), "log_sums": log_sums.tolist(), "last_loss": last_loss}
                with failures.writing(run_dir, needed=lambda: checkpoints.checkpoint_bytes(run_dir)):
                    checkpoints.save(accelerator, run_dir, done, cfg.keep_checkpoints, state)
            if early_stop:
                break
    bar.close()
    early = keeper is not None and keeper.stopped_at is not None
    stopped = stop_at if stop_at < cfg.max_steps and not early else None
    return Fitted(model, meter, start_step, last_loss, base_scores, stopped, keeper, done)


def micro_seed(seed: int, step: int, k: int) -> int:
    """The random seed of global micro-batch `k` of optimizer step `step` (its dropout masks)."""
    return (seed * 1_000_003 + step) * 65_537 + k


@contextlib.contextmanager
def seeded_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Draw random numbers (dropout masks) from `seed` inside, then restore the caller's generators.

    Seeding each micro-batch by its place in the global batch makes dropout the same whether a step runs as one
    process accumulating N micro-batches or N processes with one each (each process's own stream would differ).
    """
    if seed is None:
        yield
        return
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield


def accumulate_gradients(task, model, accelerator: Accelerator, micro: list[dict], meter: Meter, spec,
                         log_sums: torch.Tensor, seeds: list[int] | None = None) -> None:
    """Forward and backward over one optimizer step's micro-batches, with the token-weighted loss (see `fit`).

    Args:
        task: the run's task (its `loss` and `num_targets`).
        model: the prepared model.
        accelerator: the run's Accelerator.
        micro: this process's micro-batches of the step (host tensors).
        meter: counts every micro-batch.
        spec: the model's `flops.FlopSpec`.
        log_sums: [2] float64 on the device: summed loss (nats) and targets since the last log line; added to.
        seeds: one random seed per micro-batch (`micro_seed`), or None: the process's own random stream.
    """
    device = accelerator.device
    local_targets = sum(int(task.num_targets(b)) for b in micro)
    global_targets = local_targets
    if accelerator.num_processes > 1:
        global_targets = int(accelerator.reduce(torch.tensor(local_targets, device=device), "sum"))
    for i, batch in enumerate(micro):
        meter.count(batch, spec)  # on the host copy, so no step waits on the device for a number
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        sync = accelerator.no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext()
        with sync, seeded_rng(None if seeds is None else seeds[i], device):
            nll, _ = task.loss(model, batch)
            total = nll.sum()
            accelerator.backward(total * accelerator.num_processes / global_targets)
        log_sums[0] += total.detach().double()
    log_sums[1] += local_targets


def resume_or_score_base(prep: Prepared, recipe: Recipe, run_dir: Path, accelerator: Accelerator, model,
                         mode: str) -> tuple[int, dict | None, dict]:
    """Load the latest complete checkpoint (resume), or score the base before training (when the recipe asks).

    The base is scored before training: for LoRA this equals the adapter-disabled model, for full/head
    finetuning it is the only moment the base weights are in memory. Its scores are written at once (a
    "running" record), so a resumed run finds them. A resumed run cuts log.jsonl back to the rows written up
    to its checkpoint (the steps after it are logged again).

    Returns:
        (the step to start from, the base scores or None, the state the checkpoint saved for this process or {}).

    Raises:
        TuneforgeError: resuming, but no checkpoint is complete.
    """
    if mode == "resume":
        found = checkpoints.latest_complete(run_dir, accelerator.process_index)
        if found is None:
            raise TuneforgeError(
                f"train.resume: {run_dir / runs.CHECKPOINTS} holds no complete checkpoint (see the notes above); "
                "start again with --overwrite"
            )
        last, restored = found
        if accelerator.is_main_process:
            checkpoints.warn(f"resuming {run_dir.name} from {last}")
            checkpoints.truncate_log(run_dir, restored["log_rows"])
        accelerator.load_state(str(last))
        return restored["step"], (runs.read_metrics(run_dir) or {}).get("base_scores"), restored
    if not (recipe.eval.score_base and recipe.model.scratch is None):
        return 0, None, {}
    base_scores = score(prep, recipe, accelerator, model).scores
    if accelerator.is_main_process:
        write_json(run_dir / "metrics.json", RunRecord(status="running", base_scores=base_scores).as_dict())
    return 0, base_scores, {}


def log_step(run_dir: Path, accelerator: Accelerator, log_sums: torch.Tensor, done: int, lr: float,
             meter: Meter, extra: dict[str, float | None], throughput: trackers.Throughput) -> float:
    """One log line (log.jsonl, the trackers): the mean loss per target since the last line; resets the sums.

    One host sync per log line, not per step.

    Args:
        lr: the learning rate after step `done` (the next step's, as Trainer logs it).
        extra: more values for log.jsonl and the trackers (`train/<key>`), e.g. the step's grad_norm; None is left
            out.
        throughput: the rates since the last line (trackers only: log.jsonl has `seconds` and `tokens`).

    Returns:
        That mean loss (nats per target).
    """
    sums = accelerator.reduce(log_sums, "sum")
    loss = float(sums[0] / sums[1].clamp(min=1))
    log_sums.zero_()
    extra = {k: v for k, v in extra.items() if v is not None}
    rates = throughput.since_last(meter, accelerator.num_processes)
    if accelerator.is_main_process:
        runs.append_log(run_dir, {"step": done, "loss": loss, "lr": lr, **extra, "seconds": meter.seconds,
                                  "tokens": meter.tokens * accelerator.num_processes})
        accelerator.log({"train/loss": loss, "train/learning_rate": lr, **{f"train/{k}": v for k, v in extra.items()},
                         **rates, "train/peak_memory_mb": peak_memory_mb(accelerator.device)}, step=done)
    return loss


@contextlib.contextmanager
def no_kv_cache(model):
    """No KV cache while training: nothing reuses it, and building one copies every layer's keys and values at
    every step (transformers' advice: `config.use_cache = False` to train, back on for inference)."""
    config = getattr(model, "config", None)
    use_cache = bool(getattr(config, "use_cache", False))
    if use_cache:
        config.use_cache = False
    try:
        yield
    finally:
        if use_cache:
            config.use_cache = True


def finish(prep: Prepared, recipe: Recipe, run_dir: Path, accelerator: Accelerator, fitted: Fitted, params: dict,
           launch: str) -> dict:
    """Save the model, score it, and write the run record, predictions and model card.

    Returns:
        The metrics dict written to metrics.json.
    """
    mfu = utilisation(accelerator, fitted.meter.model_flops, fitted.meter.seconds)  # the matmul timed before scoring
    main = accelerator.is_main_process
    if fitted.keeper is not None:  # train.select_best: model/ and the test scores are the best step's
        fitted.keeper.restore(accelerator.unwrap_model(fitted.model))
    with checkpoints.atomic_dir(run_dir / "model") if main else contextlib.nullcontext() as model_dir:
        # Written aside and renamed when complete (a crash never leaves a half-written model/); gathered from
        # every rank first when sharded, and written by the main process only.
        unwrapped = distributed.save_model(accelerator, fitted.model, model_dir)
        if main:
            prep.tokenizer.save_pretrained(model_dir)
            if prep.task.on_save is not None:
                prep.task.on_save(model_dir, unwrapped, prep.tokenizer, recipe)
            distributed.make_readable(model_dir)
    val = validation_loss(prep, recipe, accelerator, fitted.model)
    result = score(prep, recipe, accelerator, fitted.model)
    record = RunRecord(
        run=run_dir.name, status="finished", task=recipe.task, method=recipe.method,
        base_model=recipe.model.base or f"scratch:{recipe.model.scratch.architecture}",
        **scored_fields(result, prep.task, recipe.data, prep.data["test"], recipe.train.seed,
                        runs.versions()),
        base_scores=fitted.base_scores, validation=val,
        train=TrainStats(
            steps=fitted.steps, **fitted.meter.summary(accelerator, mfu), final_loss=fitted.last_loss,
            processes=accelerator.num_processes, mixed_precision=accelerator.mixed_precision,
            resumed_from_step=fitted.start_step or None,
        ),
        params=params, recipe_hash=recipe.hash(),
        selection=fitted.keeper.summary(fitted.steps) if fitted.keeper is not None else None,
    )
    metrics = record.as_dict()
    accelerator.log(trackers.final_values(val, result.scores, fitted.base_scores), step=recipe.train.max_steps)
    if accelerator.is_main_process:
        card.write_card(run_dir, recipe, prep.task, metrics, launch, result.predictions, prep.data["test"])
        write_result(run_dir, record, result, card.run_readme(metrics))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and recipe.output.push_to_hub:
        push.push_finished(run_dir, recipe.output.push_to_hub)
    return metrics
