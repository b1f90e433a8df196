"""The one training loop, for every task family, on one CPU, one GPU or many processes through Accelerate.

Read top to bottom: set up the run folder, data, model (+ LoRA), optimizer; score the base; train with
token-weighted gradient accumulation; checkpoint; save; score the finetuned model; write metrics.json.
Only the main process writes files. Mixed precision comes from the launch config (`accelerate launch`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import resource
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from pipelines import checkpoints, distributed, failures, flops, modeling, runs
from pipelines import data as data_lib
from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe
from pipelines.scoring import ScoreContext, Scored, example_losses, perplexity, write_jsonl
from pipelines.tasks import Task, get_task

# ---------------------------------------------------------------------------------------------------------------
# Batches: a global micro-batch schedule that does not depend on the number of processes

MEGA_BATCHES = 50  # global batches per length-sorted chunk (transformers' LengthGroupedSampler: megabatch_mult=50)


class StepBatches:
    """Which examples each process trains on at each optimizer step.

    Each epoch the training examples are shuffled with `seed + epoch`. With length grouping they are cut into
    mega-batches of `MEGA_BATCHES` global batches and sorted by length inside each, so a micro-batch holds similar
    lengths (little padding), as transformers' `LengthGroupedSampler` does with the same 50; the steps are then
    shuffled (lengths do not trend through the epoch) and the one holding the longest example is moved to the
    front (an out-of-memory batch fails at the first step, not mid-run; LengthGroupedSampler does the same).
    Equal lengths are ordered by `tiebreak` when given (seq2seq: source + target tokens, so pairs whose longer side
    is as long but whose shorter side differs do not share a batch: 11.1% -> 9.9% padding on gettext en-de).
    The epoch's micro-batches form one global list; optimizer step s uses the next `accumulation * world_size` of
    them and process r takes every world_size-th one. The global batch of a step is therefore the same whether it
    runs as 2 processes x 1 micro-batch or 1 process x 2 micro-batches, and a resumed run continues at exactly
    the step it stopped at. Incomplete steps at an epoch's end are dropped so no process ever sees a duplicated
    batch.
    """

    def __init__(self, lengths: list[int], micro_batch: int, accumulation: int, world: int, rank: int,
                 seed: int, group_by_length: bool, tiebreak: list[int] | None = None):
        self.lengths = np.asarray(lengths)
        self.tiebreak = np.asarray(tiebreak) if tiebreak is not None else np.zeros_like(self.lengths)
        self.micro_batch, self.accumulation, self.world, self.rank = micro_batch, accumulation, world, rank
        self.seed, self.group_by_length = seed, group_by_length
        self.per_step = accumulation * world
        self.steps_per_epoch = (len(lengths) // micro_batch) // self.per_step
        if self.steps_per_epoch == 0:
            raise TuneforgeError(
                f"train.micro_batch_size: {len(lengths)} training examples cannot fill one global batch of "
                f"{micro_batch} x {accumulation} accumulation x {world} processes; lower the batch or add data"
            )
        self._cache: tuple[int, list[list[int]]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._cache and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(len(self.lengths))
        if self.group_by_length:
            mega = self.micro_batch * self.per_step * MEGA_BATCHES  # depends only on the global batch size
            chunks = [order[i : i + mega] for i in range(0, len(order), mega)]
            order = np.concatenate([c[np.lexsort((-self.tiebreak[c], -self.lengths[c]))] for c in chunks])
        n = self.steps_per_epoch * self.per_step * self.micro_batch
        batches = [order[i : i + self.micro_batch].tolist() for i in range(0, n, self.micro_batch)]
        if self.group_by_length:
            # Shuffle whole steps (not micro-batches), so the global batch of a step stays the same set of examples
            # however it is split into micro-batches and processes.
            steps = [batches[i : i + self.per_step] for i in range(0, n // self.micro_batch, self.per_step)]
            steps = [steps[i] for i in rng.permutation(len(steps))]
            longest = int(np.argmax([max(self.lengths[b].max() for b in step) for step in steps]))
            steps[0], steps[longest] = steps[longest], steps[0]
            batches = [b for step in steps for b in step]
        self._cache = (epoch, batches)
        return batches

    def for_step(self, step: int) -> list[list[int]]:
        """The `accumulation` micro-batches (example indices) this process trains on at optimizer step `step`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        batches = self.epoch_batches(epoch)[within * self.per_step : (within + 1) * self.per_step]
        return batches[self.rank :: self.world]


def lr_lambda(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate: linear warmup, then cosine / linear decay to 0, or constant.

    Cosine decay as in Loshchilov & Hutter 2017 (SGDR) without restarts, the schedule GPT-style pretraining uses.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019); no weight decay on biases and norms (1-D parameters), as in nanoGPT.

    The fused kernel (one pass over each parameter instead of a chain of element-wise ops; `Trainer`'s default
    `adamw_torch_fused` since torch 2.8) whenever every parameter is a floating-point tensor on CPU or CUDA.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=recipe.train.learning_rate, betas=recipe.train.adam_betas, fused=fused)


def accumulation_steps(cfg, world: int) -> int:
    """Micro-batches per process per optimizer step: the recipe's, or derived from `train.global_batch_size`.

    Raises:
        TuneforgeError: the global batch is not a multiple of micro_batch_size x processes.
    """
    if cfg.global_batch_size is None:
        return cfg.gradient_accumulation_steps
    per_pass = cfg.micro_batch_size * world
    if cfg.global_batch_size % per_pass:
        raise TuneforgeError(
            f"train.global_batch_size: {cfg.global_batch_size} is not divisible by micro_batch_size "
            f"{cfg.micro_batch_size} x {world} processes; pick a multiple of {per_pass}"
        )
    return cfg.global_batch_size // per_pass


def pad_multiple(device: torch.device) -> int:
    """Training batches are padded to a multiple of this: 8 on CUDA GPUs, 1 elsewhere.

    transformers recommends `pad_to_multiple_of=8` so half-precision matmuls map onto Tensor Cores (NVIDIA compute
    capability >= 7.0). A CPU gains nothing from it, and rounding 20-token rows up to 24 is 20% more work.
    """
    return 8 if device.type == "cuda" else 1


def utilisation(accelerator: Accelerator, model_flops: float, seconds: float) -> dict[str, float]:
    """Model FLOPs of this run's training steps and their utilisation of a matmul timed now (`pipelines.flops`).

    Args:
        model_flops: this process's training FLOPs (real tokens only).
        seconds: training seconds (the loop's step time).

    Returns:
        {"model_flops", "model_flops_per_s", "matmul_flops_per_s" (per process), "mfu" (0-1)} over all processes.
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    total = float(accelerator.reduce(torch.tensor(model_flops, device=accelerator.device, dtype=torch.float64),
                                     "sum"))
    peak = flops.matmul_flops_per_s(accelerator.device, dtype)
    rate = total / max(seconds, 1e-9)
    return {"model_flops": total, "model_flops_per_s": rate, "matmul_flops_per_s": peak,
            "mfu": rate / (peak * accelerator.num_processes)}


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc <malloc.h>


def keep_freed_memory_mapped(device: torch.device) -> None:
    """On CPU with glibc, let freed large blocks be reused instead of unmapped (no page faults every step).

    glibc's malloc serves blocks above its mmap threshold with fresh `mmap`s and unmaps them on free, so each
    step page-faults and zero-fills its large activations again (the logits alone are batch x length x vocab
    floats): ~70k page faults and ~5% of the CPU time per step of the tiny GPT here. PyTorch's CPU performance
    tuning guide swaps in jemalloc/tcmalloc for this; raising glibc's mmap and trim thresholds (`mallopt`) gets the
    same reuse from the C library already loaded. Freed blocks stay mapped, so peak resident memory grows a little.
    Does nothing on GPUs, other platforms, or C libraries without `mallopt` (musl).
    """
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 2**30)
        libc.mallopt(M_TRIM_THRESHOLD, 2**30)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU (ru_maxrss, KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------------
# Setup


@dataclass
class Prepared:
    """A model ready to train with its tokenizer and tokenized splits."""

    task: Task
    model: torch.nn.Module
    tokenizer: object
    data: datasets.DatasetDict  # raw rows
    features: dict[str, datasets.Dataset]  # tokenized rows per split


def build(recipe: Recipe, run_dir: Path, accelerator: Accelerator, mode: str, *, merge: bool = True) -> Prepared:
    """Load data, the tokenizer (training one for scratch models) and the model, then wrap it with LoRA.

    Args:
        mode: "fresh" or "resume" (a resumed scratch run reuses the tokenizer it trained).
        merge: a LoRA run named as base is merged into its base (to train on); False keeps the adapter
            separate, exactly the trained computation (for scoring).
    """
    task = get_task(recipe.task)
    missing = [r for r in task.roles if r not in recipe.data.columns]
    if missing:
        raise TuneforgeError(
            f"data.columns: task {task.name!r} needs role(s) {missing}, e.g. data.columns.{missing[0]}=COLUMN"
        )
    data = data_lib.load_data(recipe.data)
    model_dir = run_dir / "model"
    if recipe.model.scratch is not None:
        from pipelines import scratch

        if accelerator.is_main_process and mode == "fresh":
            texts = data["train"].select(range(min(len(data["train"]), recipe.model.scratch.tokenizer_max_texts)))
            column = "text" if recipe.data.mix else recipe.data.columns["text"]
            tokenizer = scratch.train_tokenizer((t for t in texts[column] if t), recipe.model.scratch)
            tokenizer.save_pretrained(model_dir)
        accelerator.wait_for_everyone()
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:
        tokenizer = modeling.load_tokenizer(recipe.model.base)
    modeling.check_tokenizer_fits(tokenizer, sample_texts(recipe, data["train"]),
                                  "model.scratch" if recipe.model.scratch is not None else "model.base")
    model_kwargs = {}
    vocab_before = len(tokenizer)
    if task.prepare is not None:
        data, model_kwargs = task.prepare(recipe, data, tokenizer)
    added_tokens = list(range(vocab_before, len(tokenizer)))  # e.g. chat markers; their embedding rows must train
    set_seed(recipe.train.seed)  # identical initial weights on every process and every resume
    if recipe.model.scratch is not None:
        from pipelines import scratch

        config = scratch.build_config(recipe.model.scratch, tokenizer)
        config._attn_implementation = recipe.model.attn_implementation
        model = task.auto_model.from_config(config)
    else:
        model = modeling.load_model(
            recipe.model.base, task.auto_model, merge=merge, attn_implementation=recipe.model.attn_implementation,
            **model_kwargs,
        )
    if added_tokens:
        modeling.fit_embeddings(model, len(tokenizer))
    if recipe.model.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if recipe.lora is not None:
            model.enable_input_require_grads()  # LoRA + checkpointing: frozen embeddings need grad-carrying inputs
    if recipe.lora is not None:
        model = modeling.apply_lora(model, recipe.lora, task.peft_task_type, trainable_token_indices=added_tokens)
    elif recipe.train.trainable == "head":
        modeling.freeze_all_but_head(model)
    features = {s: tokenize_cached(task, data[s], tokenizer, recipe, s) for s in data}
    return Prepared(task, model, tokenizer, data, features)


def sample_texts(recipe: Recipe, rows: datasets.Dataset, n: int = 64) -> list[str]:
    """Up to `n` training rows' texts (every string column the recipe's `data.columns` names), for tokenizer checks."""
    columns = ["text"] if recipe.data.mix else [
        c for cols in recipe.data.columns.values() for c in ([cols] if isinstance(cols, str) else cols)
    ]
    head = rows.select(range(min(n, len(rows))))
    return [v for c in columns if c in head.column_names for v in head[c] if isinstance(v, str)]


def tokenize_cached(task: Task, rows: datasets.Dataset, tokenizer, recipe: Recipe, split: str) -> datasets.Dataset:
    """Tokenize a split, or load the identical result an earlier run saved (no repeated tokenization across runs).

    Saved under `$TUNEFORGE_CACHE/tokenized/<key>` (default `~/.cache/tuneforge/tokenized`) with `save_to_disk`
    and memory-mapped back with `load_from_disk`. The key covers everything the result depends on: the rows'
    content fingerprint, the tokenizer's full serialized state (vocabulary, merges, special and added tokens, chat
    template, max length), the source code of the task modules, the recipe's task, data and chat sections, the seed
    (denoising derives its noise seeds from it), the split and the library versions. Slow (Python) tokenizers have
    no serialized state to hash, so they are not cached. Processes write to a private folder and rename it into
    place, so concurrent runs never see a half-written entry.
    """
    key = _tokenized_cache_key(task, rows, tokenizer, recipe, split)
    if key is None:
        return task.tokenize(rows, tokenizer, recipe, split)
    path = _tokenized_cache_root() / key
    if (path / "dataset_info.json").is_file():
        os.utime(path)  # last use, for the least-recently-used pruning below
        return datasets.load_from_disk(str(path))
    features = task.tokenize(rows, tokenizer, recipe, split)
    tmp = path.with_name(f"{key}.tmp-{os.getpid()}")
    try:
        features.save_to_disk(str(tmp))
        os.replace(tmp, path)
    except OSError:  # another process finished the same entry first, or the cache is not writable
        shutil.rmtree(tmp, ignore_errors=True)
        return features
    _prune_tokenized_cache(path.parent, keep=path)
    return datasets.load_from_disk(str(path))


TOKENIZED_CACHE_BYTES = 2 * 2**30  # least recently used entries beyond this are deleted


def _prune_tokenized_cache(root: Path, keep: Path) -> None:
    """Delete the least recently used tokenized splits until the cache holds at most `TOKENIZED_CACHE_BYTES`."""
    entries = []
    for entry in root.iterdir():
        if entry.is_dir() and ".tmp-" not in entry.name:
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            entries.append((entry.stat().st_mtime, size, entry))
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries):
        if total <= TOKENIZED_CACHE_BYTES:
            break
        if entry != keep:
            shutil.rmtree(entry, ignore_errors=True)
            total -= size


def _tokenized_cache_root() -> Path:
    """$TUNEFORGE_CACHE/tokenized, else $XDG_CACHE_HOME/tuneforge/tokenized, else ~/.cache/tuneforge/tokenized."""
    if os.environ.get("TUNEFORGE_CACHE"):
        return Path(os.environ["TUNEFORGE_CACHE"]).expanduser() / "tokenized"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuneforge" / "tokenized"


def _tokenized_cache_key(task: Task, rows: datasets.Dataset, tokenizer, recipe: Recipe, split: str) -> str | None:
    """The cache key of a tokenized split (see `tokenize_cached`), or None for a tokenizer that cannot be hashed."""
    import hashlib

    from pipelines import sources, tasks

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    task_code = [f.read_bytes() for f in sorted(Path(tasks.__file__).parent.glob("*.py"))]
    tokenizer_state = [backend.to_str(), type(tokenizer).__name__, str(tokenizer.special_tokens_map),
                       getattr(tokenizer, "chat_template", None), tokenizer.model_max_length,
                       tokenizer.padding_side, tokenizer.truncation_side]
    parts = [
        task.name, split, sources.fingerprint(rows), hashlib.sha256(b"\n".join(task_code)).hexdigest(),
        hashlib.sha256(json.dumps(tokenizer_state, default=str).encode()).hexdigest(),
        recipe.data.model_dump(mode="json"), recipe.chat.model_dump(mode="json") if recipe.chat else None,
        recipe.train.seed, runs.versions(),
    ]
    return f"{task.name}-{split}-{data_lib.cache_key(*parts)}"


def preflight(recipe: Recipe) -> None:
    """`tuneforge validate`'s checks, run before anything is written.

    Raises:
        TuneforgeError: every problem found, one per line (a base that is not trained yet is one here).
    """
    from pipelines.validate import check_recipe

    if recipe.model.base:
        modeling.resolve_base(recipe.model.base)
    report = check_recipe(recipe)
    if report.errors:
        raise TuneforgeError("\n".join(report.errors))


# ---------------------------------------------------------------------------------------------------------------
# Scoring


def score(prep: Prepared, recipe: Recipe, accelerator: Accelerator, model) -> Scored:
    """The task's scores on the test split for `model` (finetuned or base)."""
    ctx = ScoreContext(
        accelerator=accelerator, model=model, tokenizer=prep.tokenizer, recipe=recipe, rows=prep.data["test"],
        features=prep.features["test"], task=prep.task, batch_size=recipe.eval.batch_size,
    )
    return prep.task.score(ctx)


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


# ---------------------------------------------------------------------------------------------------------------
# The loop


def train(recipe: Recipe, run_dir: Path, *, overwrite: bool = False, launch: str = "") -> dict:
    """Train (or resume) one run end to end and write its run folder.

    Args:
        recipe: the resolved recipe.
        run_dir: `runs/<name>`; must not hold a run unless `overwrite` or `train.resume=auto`.
        overwrite: replace an existing run folder.
        launch: the command line, recorded in the model card.

    Returns:
        The metrics dict written to metrics.json (on every process).

    Raises:
        TuneforgeError: any user-fixable problem (including a full disk or a read-only folder); an error before
            the first checkpoint leaves no run folder behind (only what was there before).
    """
    failures.check_output_dir(run_dir)
    accelerator = Accelerator(
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        step_scheduler_with_optimizer=False,
    )
    distributed.check_processes(accelerator)
    distributed.check_accumulation(accelerator, accumulation_steps(recipe.train, accelerator.num_processes))
    main = accelerator.is_main_process
    if main and accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu":
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # oneDNN's check for AVX512-BF16 / AMX
            warnings.warn(
                "mixed_precision bf16 on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated and slower "
                "than fp32; launch without --mixed_precision bf16",
                stacklevel=2,
            )
    preflight(recipe)
    # One `tuneforge train` per run folder: the lock is taken before the folder is checked, so two starts within
    # milliseconds cannot both pass the check. Only the main process takes it; the others follow its verdict.
    lock = checkpoints.RunLock(run_dir)
    refused = None
    if main:
        try:
            with failures.writing(run_dir.parent):
                lock.acquire()
        except TuneforgeError as exc:
            refused = str(exc)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refused = broadcast_object_list([refused])[0]
    if refused is not None:
        raise TuneforgeError(refused)
    existed = run_dir.exists()
    was_empty = existed and run_dir.is_dir() and not any(run_dir.iterdir())
    mode = None
    try:
        mode = distributed.main_decides(
            accelerator, runs.check_run_dir, run_dir, overwrite=overwrite, resume=recipe.train.resume
        )
        with failures.writing(run_dir):
            return _train(recipe, run_dir, accelerator, mode, launch)
    except BaseException:
        # Leave no half-made folder that would block the corrected rerun: a fresh run that has no complete
        # checkpoint yet is removed, unless the folder was there before and is not one we (re)made.
        if main and mode == "fresh" and run_dir.exists() and not checkpoints.has_complete(run_dir):
            if not existed or overwrite or (run_dir / "recipe.yaml").is_file():
                runs.clear_run_dir(run_dir)
                if was_empty:  # the user's own empty folder stays
                    run_dir.mkdir()
        raise
    finally:
        if main:
            lock.release()


def _train(recipe: Recipe, run_dir: Path, accelerator: Accelerator, mode: str, launch: str) -> dict:
    """`train` once the run folder is locked and checked; `mode` is "fresh" or "resume"."""
    cfg = recipe.train
    main = accelerator.is_main_process
    accelerator.wait_for_everyone()
    if main and mode == "fresh":
        runs.clear_run_dir(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    if main and mode == "resume":  # a scratch run's tokenizer lives in model/; a crash may have moved it aside
        checkpoints.recover_dir(run_dir / "model")
    accelerator.wait_for_everyone()

    set_seed(cfg.seed)
    prep = build(recipe, run_dir, accelerator, mode)
    model = prep.model
    params = modeling.count_parameters(model)
    optimizer = make_optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.max_steps, cfg.lr_schedule)
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    train_features = prep.features["train"]
    batches = StepBatches(
        train_features["length"], cfg.micro_batch_size, accumulation_steps(cfg, accelerator.num_processes),
        accelerator.num_processes, accelerator.process_index, cfg.seed, cfg.group_by_length,
        train_features["total_length"] if "total_length" in train_features.column_names else None,
    )

    start_step, base_scored, restored = 0, None, {}
    if mode == "resume":
        found = checkpoints.latest_complete(run_dir, accelerator.process_index)
        if found is None:
            raise TuneforgeError(
                f"train.resume: {run_dir / runs.CHECKPOINTS} holds no complete checkpoint (see the notes above); "
                "start again with --overwrite"
            )
        last, restored = found
        if main:
            checkpoints.warn(f"resuming {run_dir.name} from {last}")
        accelerator.load_state(str(last))
        start_step = restored["step"]
        base_scored = runs.read_metrics(run_dir) or {}
        if main:  # rows logged after the checkpoint are logged again by the steps that follow
            checkpoints.truncate_log(run_dir, restored["log_rows"])
    elif recipe.eval.score_base and recipe.model.scratch is None:
        # Score the base before training: for LoRA this equals the adapter-disabled model, for full/head
        # finetuning it is the only moment the base weights are in memory.
        result = score(prep, recipe, accelerator, model)
        base_scored = {"base_scores": result.scores}
        if main:
            runs.write_json(run_dir / "metrics.json", {"status": "running", **base_scored})
    # purge_step: TensorBoard hides events at or after this step written before a crash (they are logged again).
    accelerator.init_trackers("tb", config={"recipe_hash": recipe.hash()},
                              init_kwargs={"tensorboard": {"purge_step": start_step + 1}} if start_step else {})

    model.train()
    device = accelerator.device
    keep_freed_memory_mapped(device)
    # No KV cache while training: nothing reuses it, and building one copies every layer's keys and values at
    # every step (transformers' advice: `config.use_cache = False` to train, back on for inference).
    config = getattr(accelerator.unwrap_model(model), "config", None)
    use_cache = bool(getattr(config, "use_cache", False))
    if use_cache:
        config.use_cache = False
    # This process's counters; a checkpoint saves them and a resume continues them (seconds: both parts summed).
    log_loss = torch.tensor(restored.get("log_loss", 0.0), device=device, dtype=torch.float64)
    log_targets = torch.tensor(restored.get("log_targets", 0.0), device=device, dtype=torch.float64)
    tokens, nonpad, examples = restored.get("tokens", 0), restored.get("nonpad", 0), restored.get("examples", 0)
    train_seconds = restored.get("seconds", 0.0)
    last_loss = restored.get("last_loss", float("nan"))
    stop_at = min(cfg.max_steps, cfg.stop_after_steps or cfg.max_steps)
    bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not main, desc=run_dir.name, dynamic_ncols=True)
    collate = partial(prep.task.collate, tokenizer=prep.tokenizer, recipe=recipe,
                      pad_to_multiple_of=pad_multiple(device))
    spec = flops.flop_spec(accelerator.unwrap_model(model))
    model_flops = restored.get("model_flops", 0.0)
    for step in range(start_step, stop_at):
        t0 = time.perf_counter()
        micro = [collate([train_features[i] for i in b]) for b in batches.for_step(step)]
        # Token-weighted loss: every target token of the global batch (all micro-batches, all processes) has the
        # same weight, so accumulation equals the full batch. DDP averages gradients over processes, hence the
        # factor num_processes. This is Accelerate's documented recipe for variable-size batches
        # ("Gradient accumulation ... on training samples of variable size"); we skip `accumulate()` because its
        # 1/accumulation loss scaling would be wrong for a global-count normaliser.
        local_targets = sum(int(prep.task.num_targets(b)) for b in micro)
        global_targets = local_targets
        if accelerator.num_processes > 1:
            global_targets = int(accelerator.reduce(torch.tensor(local_targets, device=device), "sum"))
        for i, batch in enumerate(micro):
            # Counted on the host copy of the batch, so no step waits on the device for a number.
            tokens += batch["input_ids"].numel()
            nonpad += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
            examples += batch["input_ids"].size(0)
            model_flops += float(flops.batch_flops(spec, batch))
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            last_micro = i == len(micro) - 1
            with accelerator.no_sync(model) if not last_micro else contextlib.nullcontext():
                nll, _ = prep.task.loss(model, batch)
                total = nll.sum()
                accelerator.backward(total * accelerator.num_processes / global_targets)
            log_loss += total.detach().double()
        log_targets += local_targets
        if cfg.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - t0
        done = step + 1
        bar.update(1)

        if done % cfg.log_every == 0 or done == stop_at:
            # One host sync per log line, not per step.
            sums = accelerator.reduce(torch.stack([log_loss, log_targets]), "sum")
            last_loss = float(sums[0] / sums[1].clamp(min=1))
            log_loss.zero_()
            log_targets.zero_()
            row = {"step": done, "loss": last_loss, "lr": scheduler.get_last_lr()[0], "seconds": train_seconds,
                   "tokens": tokens * accelerator.num_processes}
            bar.set_postfix(loss=f"{last_loss:.4f}")
            if main:
                runs.append_log(run_dir, row)
                accelerator.log({"train/loss": last_loss, "train/lr": row["lr"]}, step=done)
        if cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.max_steps:
            val = validation_loss(prep, recipe, accelerator, model)
            if main:
                runs.append_log(run_dir, {"step": done, **val})
                accelerator.log({"eval/loss": val["eval_loss"]}, step=done)
        if (cfg.save_every and done % cfg.save_every == 0) or done == stop_at:
            counters = {"tokens": tokens, "nonpad": nonpad, "examples": examples, "seconds": train_seconds,
                        "model_flops": model_flops, "log_loss": float(log_loss), "log_targets": float(log_targets),
                        "last_loss": last_loss}
            with failures.writing(run_dir, needed=lambda: checkpoints.checkpoint_bytes(run_dir)):
                checkpoints.save(accelerator, run_dir, done, cfg.keep_checkpoints, counters)
    bar.close()
    if use_cache:
        config.use_cache = True

    if stop_at < cfg.max_steps:
        accelerator.end_training()
        return {"status": "stopped", "step": stop_at}

    mfu = utilisation(accelerator, model_flops, train_seconds)
    main_dir = checkpoints.atomic_dir(run_dir / "model") if main else contextlib.nullcontext()
    with main_dir as model_dir:  # written aside and renamed when complete: a crash never leaves a half model/
        unwrapped = distributed.save_model(accelerator, model, model_dir)  # gathered if sharded; main writes
        if main:
            prep.tokenizer.save_pretrained(model_dir)
            if prep.task.on_save is not None:
                prep.task.on_save(model_dir, unwrapped, prep.tokenizer, recipe)
    val = validation_loss(prep, recipe, accelerator, model)
    result = score(prep, recipe, accelerator, model)
    ntok = tokens * accelerator.num_processes
    nonpad_all = nonpad * accelerator.num_processes
    metrics = {
        "schema": 1,
        "run": run_dir.name,
        "status": "finished",
        "task": recipe.task,
        "method": recipe.method,
        "base_model": recipe.model.base or f"scratch:{recipe.model.scratch.architecture}",
        "primary_metric": result.primary_metric or prep.task.primary_metric,
        "greater_is_better": (
            prep.task.greater_is_better if result.greater_is_better is None else result.greater_is_better
        ),
        "dataset": data_lib.dataset_info(recipe.data, recipe.task, prep.data["test"]),
        "metric_settings": result.settings,
        "scores": result.scores,
        "base_scores": (base_scored or {}).get("base_scores"),
        "validation": val,
        "train": {
            "steps": cfg.max_steps,
            "examples": examples * accelerator.num_processes,
            "tokens": ntok,
            "nonpad_tokens": nonpad_all,
            "padding_fraction": 1 - nonpad_all / max(ntok, 1),
            "seconds": train_seconds,
            "tokens_per_s": ntok / max(train_seconds, 1e-9),
            "nonpad_tokens_per_s": nonpad_all / max(train_seconds, 1e-9),
            "examples_per_s": examples * accelerator.num_processes / max(train_seconds, 1e-9),
            "peak_memory_mb": peak_memory_mb(device),
            **mfu,
            "final_loss": last_loss,
            "processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "resumed_from_step": start_step or None,
        },
        "params": params,
        "seed": cfg.seed,
        "recipe_hash": recipe.hash(),
        "versions": runs.versions(),
    }
    if main:
        if result.predictions:
            write_jsonl(run_dir / "predictions.jsonl", result.predictions)
        for name, write in result.artifacts.items():
            write(run_dir / name)
        (run_dir / "README.md").write_text(runs.model_card(recipe, metrics, launch))
        runs.write_json(run_dir / "metrics.json", metrics)  # last: "finished" means everything above is there
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics

