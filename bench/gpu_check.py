"""The GPU check: every family's recipe, short, in bf16 on one GPU, then sharded (FSDP, DeepSpeed ZeRO-2/3).

    python -m bench.gpu_check [--out docs/gpu-check.md] [--steps 40] [--work /tmp/tuneforge-gpu-check]

On a CUDA machine, for each launch (one GPU; DDP, FSDP and, when `deepspeed` is installed, ZeRO-2 and ZeRO-3 with
as many processes as GPUs, each through `accelerate launch` with the shipped configs) and each family recipe
(GPT-2 from scratch, GPT-2 LoRA, chat LoRA with added tokens, BART denoising, BART LoRA translation with
generation-based scoring, MiniLM LoRA classifier with its head), it

1. trains the recipe for `--steps` steps (validation every half, checkpoints at the half and the end);
2. trains it again stopped at the half (`train.stop_after_steps`) and resumed (`train.resume=auto`), and compares
   the two saved models: "exact" when every tensor is equal, else the largest absolute difference;
3. rescores the saved model from disk on one GPU (`tuneforge eval RUN --out ...`, bf16 like the run) and compares
   with the scores (and generated predictions) the run computed with the model in memory;
4. reports non-padding tokens/s, peak memory and model FLOP utilisation: the run's own (against the bf16 matmul
   the loop times on its device) and against a bf16 matmul this script times once at the start.

A row passes when resume is exact or within 1e-3, the reloaded scores agree within 1% relative and at least 95% of
generated predictions are identical (sharded bf16 compute and a one-GPU rescore round differently). Exit 0 when
every row passes (or when there is no GPU: it prints why and checks nothing), 1 otherwise. Never part of CI.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "recipes" / "accelerate"


@dataclass(frozen=True)
class Family:
    """One recipe to check; `base_from` names the family whose single-GPU run is this one's base."""

    label: str
    recipe: str
    base_from: str | None = None


FAMILIES = (
    Family("gpt full", "recipes/gpt/pretrain-tiny.yaml"),
    Family("gpt LoRA", "recipes/gpt/lora-manpages.yaml", base_from="gpt full"),
    Family("chat LoRA", "recipes/gpt/chat-lora-manpages.yaml", base_from="gpt full"),
    Family("bart denoising", "recipes/bart/pretrain-tiny.yaml"),
    Family("bart LoRA translate", "recipes/bart/lora-translate-en-de.yaml", base_from="bart denoising"),
    Family("classifier LoRA", "recipes/classifier/minilm-lora-sections.yaml"),
)


def launches(gpus: int) -> list[tuple[str, Path, int]]:
    """(name, accelerate config, processes): one GPU first, then every multi-process way, each on all GPUs."""
    out = [("1 GPU", CONFIGS / "single-gpu.yaml", 1)]
    if gpus > 1:
        out.append(("DDP", ROOT / "accelerate_config.yaml", gpus))
    out.append(("FSDP", CONFIGS / "fsdp.yaml", gpus))
    if importlib.util.find_spec("deepspeed") is not None:
        out += [("ZeRO-2", CONFIGS / "deepspeed-zero2.yaml", gpus), ("ZeRO-3", CONFIGS / "deepspeed-zero3.yaml", gpus)]
    return out


def accelerate(config: Path, processes: int, module: str, *args: str, log: Path) -> None:
    """`accelerate launch --config_file CONFIG --num_processes N -m MODULE ARGS`, output appended to `log`.

    Raises:
        RuntimeError: the launch failed (the log's tail is in the message).
    """
    port = str(29500 + (os.getpid() + int(time.time())) % 1000)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes",
           str(processes), "--main_process_port", port, "-m", module, *args]
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    if code:
        raise RuntimeError(f"exit {code}: {log.read_text()[-1500:]}")


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(f).items()})
    return out


def resume_gap(a: Path, b: Path) -> float:
    """Largest absolute difference between two saved models' tensors (0.0: identical); inf if keys differ."""
    wa, wb = weights(a), weights(b)
    if wa.keys() != wb.keys() or not wa:
        return float("inf")
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def predictions(run: Path) -> list[str]:
    path = run / "predictions.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line).get("prediction") for line in path.read_text().splitlines() if line.strip()]


def check_one(family: Family, launch: tuple[str, Path, int], work: Path, steps: int, bases: dict[str, Path],
              matmul: float) -> dict:
    """Train, stop + resume, reload one family under one launch. Returns the report row."""
    name, config, processes = launch
    slug = name.lower().replace(" ", "-")
    out_dir = work / slug
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / f"{family.label.replace(' ', '-')}.log"
    run = family.label.replace(" ", "-")
    common = [f"train.max_steps={steps}", f"train.save_every={steps // 2}", f"train.eval_every={steps // 2}",
              f"train.log_every={max(1, steps // 8)}", "train.warmup_steps=2", "data.train_limit=4000",
              "data.validation_limit=64", "data.test_limit=64", "eval.score_base=false", f"output.dir={out_dir}"]
    if family.base_from:
        common.append(f"model.base={bases[family.base_from]}")
    row = {"family": family.label, "launch": name, "processes": processes}
    try:
        accelerate(config, processes, "pipelines.train", family.recipe, *common, f"output.name={run}", "--overwrite",
                   log=log)
        accelerate(config, processes, "pipelines.train", family.recipe, *common, f"output.name={run}-resumed",
                   f"train.stop_after_steps={steps // 2}", "--overwrite", log=log)
        accelerate(config, processes, "pipelines.train", family.recipe, *common, f"output.name={run}-resumed",
                   "train.resume=auto", log=log)
        reloaded = out_dir / f"{run}-reloaded"
        accelerate(CONFIGS / "single-gpu.yaml", 1, "pipelines.cli", "eval", str(out_dir / run), "--out",
                   str(reloaded), log=log)
    except RuntimeError as exc:
        return {**row, "status": "FAIL", "note": str(exc).splitlines()[0]}
    if name == "1 GPU":
        bases[family.label] = out_dir / run
    metrics = json.loads((out_dir / run / "metrics.json").read_text())
    again = json.loads((reloaded / "metrics.json").read_text())
    gap = resume_gap(out_dir / run / "model", out_dir / f"{run}-resumed" / "model")
    primary = metrics["primary_metric"]
    score, rescored = metrics["scores"][primary], again["scores"][primary]
    score_gap = abs(rescored - score) / max(abs(score), 1e-12)
    mine, theirs = predictions(out_dir / run), predictions(reloaded)
    same = sum(a == b for a, b in zip(mine, theirs, strict=False)) / len(mine) if mine else 1.0
    train = metrics["train"]
    ok = gap <= 1e-3 and score_gap <= 0.01 and same >= 0.95
    return {**row, "status": "ok" if ok else "FAIL",
            "nonpad_tokens_per_s": train["nonpad_tokens_per_s"], "peak_memory_mb": train["peak_memory_mb"],
            "mfu_run": train["mfu"], "mfu_here": train["model_flops_per_s"] / (matmul * processes),
            "resume": "exact" if gap == 0 else f"max diff {gap:.2e}",
            "reload": f"{primary} {score:.4g} -> {rescored:.4g}" + (f", {same:.0%} same predictions" if mine else ""),
            "note": ""}


def table(rows: list[dict], device: str, matmul: float) -> str:
    lines = [f"GPU check on {device}; bf16 matmul timed here: {matmul / 1e12:.1f} TFLOP/s per GPU.", "",
             "| family | launch | procs | non-pad tokens/s | MFU (run / here) | peak MB | resume | reload | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "FAIL" and "resume" not in r:
            lines.append(f"| {r['family']} | {r['launch']} | {r['processes']} | | | | | | FAIL: {r['note']} |")
            continue
        lines.append(
            f"| {r['family']} | {r['launch']} | {r['processes']} | {r['nonpad_tokens_per_s']:.0f} | "
            f"{r['mfu_run']:.1%} / {r['mfu_here']:.1%} | {r['peak_memory_mb']:.0f} | {r['resume']} | {r['reload']} | "
            f"{r['status']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this markdown file (e.g. docs/gpu-check.md)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (even; default 40)")
    parser.add_argument("--work", default="/tmp/tuneforge-gpu-check", help="where the check's runs go")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_check: skipped: no CUDA GPU on this machine (torch {torch.__version__}, "
              "torch.cuda.is_available() is False); nothing was checked. Run `python -m bench.gpu_check` on a "
              "machine with NVIDIA GPUs.")
        return 0
    from pipelines.flops import matmul_flops_per_s

    gpus = torch.cuda.device_count()
    device = f"{gpus} x {torch.cuda.get_device_name(0)}"
    matmul = matmul_flops_per_s("cuda", torch.bfloat16)
    work = Path(args.work)
    rows, bases = [], {}
    if importlib.util.find_spec("deepspeed") is None:
        print("gpu_check: DeepSpeed is not installed; ZeRO-2/3 are skipped (pip install deepspeed)")
    for launch in launches(gpus):
        for family in FAMILIES:
            if family.base_from and family.base_from not in bases:
                rows.append({"family": family.label, "launch": launch[0], "processes": launch[2], "status": "FAIL",
                             "note": f"its base ({family.base_from}, 1 GPU) did not train"})
                continue
            print(f"gpu_check: {family.label} / {launch[0]} ...", flush=True)
            rows.append(check_one(family, launch, work, args.steps, bases, matmul))
    report = table(rows, device, matmul)
    print(report)
    if args.out:
        Path(args.out).write_text("# GPU check\n\n`python -m bench.gpu_check --out docs/gpu-check.md`\n\n" + report)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
