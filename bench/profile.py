"""Profile tuneforge's SmolLM2 LoRA chat step: top operators, attention implementation, precision, loss memory.

    python -m bench.profile --out /tmp/tuneforge-bench/results/profile.json

Each variant runs in its own process (so its peak resident memory is its own) on the chat family's recipe
(`bench.families.FAMILIES["chat"]`: SmolLM2-135M-Instruct, LoRA r=16 all-linear, 8 packed 256-token windows per
step) with the loop's own step code (`pipelines.loop.accumulate_gradients`, gradient clipping, fused AdamW), one
warm-up step and then `--steps` timed steps:

* fp32 (SDPA attention, chunked loss): the configuration the benchmark trains; one more step after the timed ones
  is recorded with `torch.profiler` and the operators with the most self CPU time make the table;
* fp32 with eager attention (`model.attn_implementation: eager`): SDPA vs eager measured, not assumed;
* bf16 autocast (`ACCELERATE_MIXED_PRECISION=bf16`), profiled too;
* fp32 with the plain loss (all [B, T, vocab] logits at once): the peak-memory cost the chunked loss removes;
* fp32 with LoRA dropout 0.05 (the recipe and the family train with 0, PEFT's default): what the dropout masks
  cost (torch draws CPU random numbers on one thread, one fresh mask per adapted layer's input).

A variant reports seconds per step (median of the timed steps), non-padding tokens per step and the process's
peak resident memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "fp32": {"profile": True},
    "fp32_eager": {"attn_implementation": "eager"},
    "bf16": {"precision": "bf16", "profile": True},
    "fp32_plain_loss": {"plain_loss": True},
    "fp32_lora_dropout": {"lora_dropout": 0.05},
}
TOP = 12  # operators in the table


def plain_chat_loss(model, batch):
    """The reference loss with every logit at once (`pipelines.lm_loss.plain_losses`), for the memory comparison."""
    import torch.nn.functional as F

    from pipelines.lm_loss import IGNORE, plain_losses

    inputs = {"input_ids": batch["input_ids"]}
    inputs.update({"position_ids": batch["position_ids"]} if "position_ids" in batch
                  else {"attention_mask": batch["attention_mask"]})
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)
    return plain_losses(model, inputs, targets), (targets != IGNORE).sum(dim=1)


def run_variant(name: str, work: Path, steps: int, batch: int | None = None) -> dict:
    """One variant's warm-up, timed steps and (when asked) profile, in this process.

    Args:
        batch: windows per step (default: the chat family's 8).
    """
    spec = VARIANTS[name]
    if spec.get("precision") == "bf16":
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    from functools import partial

    import torch
    from accelerate import Accelerator

    from bench.families import FAMILIES, tuneforge_recipe
    from pipelines import flops
    from pipelines.batching import StepBatches
    from pipelines.build import build
    from pipelines.loop import accumulate_gradients
    from pipelines.meter import Meter
    from pipelines.optim import make_optimizer
    from pipelines.runtime import keep_freed_memory_mapped

    family = FAMILIES["chat"]
    family = dataclasses.replace(family, batch=batch or family.batch)
    recipe = tuneforge_recipe(family, work, f"profile-{name}")
    if "attn_implementation" in spec:
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(
            update={"attn_implementation": spec["attn_implementation"]})})
    if "lora_dropout" in spec:
        recipe = recipe.model_copy(update={"lora": recipe.lora.model_copy(update={"dropout": spec["lora_dropout"]})})
    accelerator = Accelerator(cpu=True)
    run_dir = work / "runs" / f"profile-{name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    prep = build(recipe, run_dir, accelerator, "fresh")
    task = dataclasses.replace(prep.task, loss=plain_chat_loss) if spec.get("plain_loss") else prep.task
    optimizer = make_optimizer(prep.model, recipe)
    model, optimizer = accelerator.prepare(prep.model, optimizer)
    model.train()
    model.config.use_cache = False
    keep_freed_memory_mapped(accelerator.device)  # the loop's CPU allocator setting, so peaks compare
    features = prep.features["train"]
    batches = StepBatches(features["length"], family.batch, 1, 1, 0, 0, True, None)
    collate = partial(task.collate, tokenizer=prep.tokenizer, recipe=recipe, pad_to_multiple_of=1)
    fspec = flops.flop_spec(model)
    meter = Meter()
    log_sums = torch.zeros(2, dtype=torch.float64)

    def step(i: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        micro = [collate([features[j] for j in b]) for b in batches.for_step(i)]
        accumulate_gradients(task, model, accelerator, micro, meter, fspec, log_sums)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, sum(int(m["attention_mask"].sum()) for m in micro)

    warm, _ = step(0)
    times, tokens = [], 0
    for i in range(1, steps + 1):
        took, tokens = step(i)
        times.append(took)
    table = []
    if spec.get("profile"):  # one more step under the profiler, kept out of the timing (the profiler slows it)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            took, _ = step(steps + 1)
        table = top_operators(prof)
    return {"variant": name, "warmup_seconds": warm, "step_seconds": statistics.median(times),
            "step_seconds_all": times, "nonpad_tokens_per_step": tokens,
            "nonpad_tokens_per_s": tokens / statistics.median(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(), "top_operators": table}


def top_operators(prof) -> list[dict]:
    """The `TOP` operators by self CPU time of one profiled step.

    Returns:
        [{"name", "calls", "self_ms", "total_ms", "self_share" (of the summed self time)}], largest first.
    """
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: -e.self_cpu_time_total)[:TOP]
    return [{"name": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3,
             "total_ms": e.cpu_time_total / 1e3, "self_share": e.self_cpu_time_total / total_self} for e in ranked]


def profile_all(work: Path, steps: int, logs: Path, batch: int | None = None) -> dict:
    """Every variant in its own `python -m bench.profile --variant` process.

    Returns:
        {"variants": {name: result or {"error"}}, "steps": steps}
    """
    root = Path(__file__).resolve().parent.parent
    out = {"steps": steps, "variants": {}, "batch": batch or 8}
    logs.mkdir(parents=True, exist_ok=True)
    for name in VARIANTS:
        target = work / "results" / f"profile-{name}.json"
        target.unlink(missing_ok=True)
        with open(logs / f"profile-{name}.log", "w") as log:
            code = subprocess.call([sys.executable, "-m", "bench.profile", "--variant", name, "--work", str(work),
                                    "--steps", str(steps), "--out", str(target),
                                    *(["--batch", str(batch)] if batch else [])], stdout=log, stderr=subprocess.STDOUT,
                                   cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)})
        out["variants"][name] = json.loads(target.read_text()) if code == 0 and target.is_file() else {
            "error": f"exit {code}"}
        print(f"[bench] profile {name}: {out['variants'][name].get('step_seconds', 'failed')}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default=None, help="run one variant in this process")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tuneforge-bench"))
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up step")
    parser.add_argument("--batch", type=int, default=None, help="windows per step (smoke runs; default 8)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    work = args.work.resolve()
    if args.variant:
        result = run_variant(args.variant, work, args.steps, args.batch)
    else:
        result = profile_all(work, args.steps, work / "logs", args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
