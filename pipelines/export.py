"""`tuneforge export RUN --out DIR [--merge] [--dtype bf16|fp32]`: a standalone model folder, verified before success.

The folder loads with plain `AutoModelFor...from_pretrained(DIR)` and no peft: a LoRA run's adapter is merged into
its base (`merge_and_unload`; the classifier head and label names come with the run's config, a chat run's added
token rows with the adapter), saved in the base's dtype unless `--dtype` asks otherwise, with the tokenizer (and
chat template), the generation config and a model card whose snippet loads it that way.

Merged weights that behave differently from the adapter are a known silent failure (peft#2368, peft#1836), so the
export is checked before it is reported: the exported model, loaded back from disk, must give the run's own logits
on the first N test examples within `TOLERANCE[dtype]` and reproduce the run's test metric within
`METRIC_TOLERANCE[dtype]`. The folder is written aside and renamed into place only when both hold; otherwise
nothing is left at DIR and the error (exit 2) names the largest difference.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from pipelines import build as build_lib
from pipelines import card, checkpoints, distributed, loop
from pipelines.data import load_data
from pipelines.errors import TuneforgeError
from pipelines.evaluation import as_base
from pipelines.run_model import load_run_model
from pipelines.runs import read_metrics

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# Largest |logit difference| allowed, relative to the largest |logit| of the run's own model on the same inputs.
# fp32: merging reorders the same arithmetic (W + BA instead of Wx + B(Ax)), ~1e-6 relative; 1e-4 leaves room for
# deep models. bf16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.004 per weight), which compounds over
# layers; 5e-2 of the largest logit flags a broken export (a corrupted or unmerged weight moves logits by far more).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}
# The primary test metric of the export may differ from the run's by at most this much (absolute, for 0-1 and
# 0-100 metrics alike; relative for perplexity). fp32 reproduces it to rounding; bf16 may flip a near-tied
# prediction, so it gets a few points.
METRIC_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2}


@dataclass
class Check:
    """The verification's numbers: logits compared, the largest difference and where, the metric both ways."""

    examples: int
    max_abs_diff: float
    max_abs_logit: float
    where: str
    metric: str
    run_score: float
    export_score: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def export_model(run_dir: str | Path, out: str | Path, *, merge: bool = False, dtype: str | None = None,
                 examples: int = 8, overwrite: bool = False) -> Check:
    """Write `run_dir`'s model as a standalone folder at `out` and verify it (see the module docstring).

    Args:
        run_dir: a finished run folder.
        out: the folder to create.
        merge: merge a LoRA adapter into its base (required for LoRA runs: an adapter is not standalone).
        dtype: "bf16" or "fp32"; None keeps the dtype the weights load in (the base's).
        examples: test examples whose logits are compared.
        overwrite: replace an existing `out`.

    Returns:
        The verification's numbers (also written to `out/export.json`).

    Raises:
        TuneforgeError: not a finished run, a LoRA run without --merge, `out` exists, or the verification failed
            (nothing is left at `out` then).
    """
    run_dir, out = Path(run_dir), Path(out)
    metrics = read_metrics(run_dir) or {}
    if metrics.get("status") != "finished":
        raise TuneforgeError(f"export: {str(run_dir)!r} is not a finished run (metrics.json status "
                             f"{metrics.get('status')!r}); train it to the end first")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TuneforgeError(f"--out: {str(out)!r} exists and is not empty; choose another folder or pass --overwrite")
    if dtype is not None and dtype not in DTYPES:
        raise TuneforgeError(f"--dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    recipe, task, model, tokenizer = load_run_model(run_dir)
    if recipe.lora is not None and not merge:
        raise TuneforgeError(f"export: {str(run_dir)!r} is a LoRA run; its adapter needs its base, so a standalone "
                             "folder holds the merged model: pass --merge")
    standalone = copy.deepcopy(model).merge_and_unload() if recipe.lora is not None else copy.deepcopy(model)
    if dtype is not None:
        standalone = standalone.to(DTYPES[dtype])
    with checkpoints.atomic_dir(out) as tmp:
        write_folder(run_dir, tmp, standalone, tokenizer, recipe, task, metrics)
        try:
            check = verify_export(run_dir, tmp, examples=examples, reference=model)
        except TuneforgeError as exc:
            raise TuneforgeError(f"{exc}; the export was refused and nothing was written to {str(out)!r}") from None
        (tmp / "export.json").write_text(json.dumps(check.as_dict(), indent=2) + "\n")
        distributed.make_readable(tmp)
    return check


def write_folder(run_dir: Path, out: Path, model, tokenizer, recipe, task, metrics: dict) -> None:
    """Save the standalone model, tokenizer, generation config and its model card into `out`."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    saved_generation = run_dir / "model" / "generation_config.json"
    if saved_generation.is_file():  # the run's stop tokens (chat: end of turn) and decoding defaults
        shutil.copy(saved_generation, out / "generation_config.json")
    predictions = run_dir / "predictions.jsonl"
    first = [json.loads(predictions.read_text(encoding="utf-8").splitlines()[0])] if predictions.is_file() else None
    rows = None if first else load_data(recipe.data)["test"]
    example = card.example_input(first, rows, recipe, task.demo_feed)
    standalone = recipe.model_copy(update={"lora": None})  # the card loads it as a full model
    text = card.model_card(standalone, task, metrics, f"tuneforge export {run_dir} --out DIR", example)
    (out / "README.md").write_text(text, encoding="utf-8")


def _logits(model, batch: dict) -> torch.Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
    if getattr(model.config, "is_encoder_decoder", False):
        inputs["labels"] = batch["labels"]  # teacher-forced decoder inputs
    with torch.no_grad():
        return model(**inputs).logits.float()


def verify_export(run_dir: str | Path, out: str | Path, *, examples: int = 8, reference=None) -> Check:
    """Check an exported folder against its run: logits on `examples` test examples and the test metric.

    The export is loaded back from disk through tuneforge's loader for a plain folder, i.e.
    `AutoModelFor...from_pretrained(out)` (no peft), and scored on the run's own test split.

    Args:
        run_dir: the run it was exported from.
        out: the exported folder.
        examples: test examples whose logits are compared.
        reference: the run's model as trained (loaded when not given).

    Returns:
        The numbers compared.

    Raises:
        TuneforgeError: the folder holds an adapter (not standalone), or a difference beyond the tolerance (the
            message names the largest one).
    """
    run_dir, out = Path(run_dir), Path(out)
    if (out / "adapter_config.json").is_file():
        raise TuneforgeError(f"export: {str(out)!r} holds a PEFT adapter, not a standalone model")
    recipe, task, ref_model, _ = load_run_model(run_dir) if reference is None else (*load_run_model(run_dir)[:2],
                                                                                    reference, None)
    metrics = read_metrics(run_dir) or {}
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    plain = as_base(recipe, str(out))
    prep = build_lib.build(plain, out, accelerator, "resume", merge=False)
    exported = prep.model.eval()
    dtype = next(exported.parameters()).dtype
    n = min(examples, len(prep.features["test"]))
    batch = task.collate([prep.features["test"][i] for i in range(n)], tokenizer=prep.tokenizer, recipe=recipe)
    ref, got = _logits(ref_model.eval(), batch), _logits(exported, batch)
    diff = (ref - got).abs()
    if "attention_mask" in batch and diff.dim() == 3 and not getattr(exported.config, "is_encoder_decoder", False):
        diff = diff * batch["attention_mask"][..., None]  # padding positions are never read
    worst = int(diff.argmax())
    index = [int(i) for i in torch.unravel_index(torch.tensor(worst), diff.shape)]
    where = f"test example {index[0]}" + (f", position {index[1]}" if diff.dim() == 3 else "") + \
        f", output {index[-1]}"
    scored = loop.score(prep, plain, accelerator, exported)
    primary = metrics["primary_metric"]
    check = Check(examples=n, max_abs_diff=float(diff.max()), max_abs_logit=float(ref.abs().max()), where=where,
                  metric=primary, run_score=float(metrics["scores"][primary]),
                  export_score=float(scored.scores[primary]))
    limit = TOLERANCE[dtype] * max(1.0, check.max_abs_logit)
    if check.max_abs_diff > limit:
        raise TuneforgeError(
            f"export: the exported model's logits differ from the run's by up to {check.max_abs_diff:.4g} at "
            f"{where} (tolerance {limit:.3g} for {str(dtype).removeprefix('torch.')}); check the run's model/ "
            "and the exported weights (or export in fp32)"
        )
    gap = abs(check.export_score - check.run_score)
    if primary == "perplexity":
        gap /= max(abs(check.run_score), 1e-12)
    if gap > METRIC_TOLERANCE[dtype]:
        raise TuneforgeError(
            f"export: the exported model's test {primary} is {check.export_score:.6g}, the run's "
            f"{check.run_score:.6g} (difference {gap:.3g} > {METRIC_TOLERANCE[dtype]})"
        )
    return check
