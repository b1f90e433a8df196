"""The model card: one Hugging Face card per run, inside `model/`, whose load snippets run as written.

The card is a `huggingface_hub.ModelCard` (YAML front matter: base model, library, pipeline tag, license, datasets
and `model-index` results, the fields the Hub indexes) followed by what the run is, how it was made and how to
load it. Its ```python blocks are self-contained programs run from the folder holding the card (`model/`, or a
clone of its Hub repo after `tuneforge push`): they load the model with plain transformers / peft and print the
prediction for one test example, which `tests/test_card.py` runs in a fresh process and compares with the run's
own predictions. The run folder's README.md only points to it (`run_readme`).

Which snippet a run gets is decided by its task's facts (`Task.demo_feed`, `Task.peft_task_type`,
`Task.head_in_config`, `Task.auto_model`), never by the task's name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from pipelines.recipe import Recipe

# The Hub checkpoints that tuneforge's built-in aliases are local copies of, and their licenses (DESIGN.md).
HUB_IDS = {"builtin:minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
           "builtin:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
LICENSES = {"builtin:minilm-l6": "apache-2.0", "builtin:smollm2-135m-instruct": "apache-2.0"}
# demo_feed -> the Hub's pipeline tag (https://huggingface.co/docs/hub/models-widgets#widget-types).
PIPELINE_TAGS = {"continue": "text-generation", "turn": "text-generation", "source": "text2text-generation",
                 "classify": "text-classification"}
# PEFT TaskType -> the AutoPeftModel class that loads it (peft.auto; plain `AutoPeftModel` refuses a task type).
PEFT_AUTO = {"CAUSAL_LM": "AutoPeftModelForCausalLM", "SEQ_2_SEQ_LM": "AutoPeftModelForSeq2SeqLM",
             "SEQ_CLS": "AutoPeftModelForSequenceClassification"}
# The predictions.jsonl field that holds a row's input, per demo_feed.
INPUT_FIELD = {"continue": "prompt", "turn": "prompt", "source": "source", "classify": "text"}


def weights_fingerprint(model_dir: str | Path) -> str | None:
    """sha256 (first 16 hex digits) over a local checkpoint's weight files, in name order; None for a Hub id.

    Recorded in the card next to an adapter's absolute base path, so a user can check that the folder found there
    is still the base the adapter was trained on.
    """
    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()[:16]


def example_input(predictions: list[dict] | None, rows, recipe: Recipe, feed: str) -> str:
    """The card's example input: the first scored test row's input, else the first test row's (truncated).

    Args:
        predictions: the run's predictions.jsonl rows (None or empty for perplexity-only runs).
        rows: the test split.
        recipe: the run's recipe (`data.columns`).
        feed: the task's `demo_feed`.
    """
    if predictions and INPUT_FIELD[feed] in predictions[0]:
        return str(predictions[0][INPUT_FIELD[feed]])
    columns = recipe.data.columns
    try:
        if feed == "turn":
            users = [m for m in rows[0][columns["messages"]] if m.get("role") == "user"]
            return str(users[0]["content"]) if users else "Hello"
        role = {"continue": "prompt" if "prompt" in columns else "text", "source": "source",
                "classify": "text"}[feed]
        text = str(rows[0][columns.get(role, columns.get("text", "text"))])
    except (KeyError, IndexError, TypeError, AttributeError):  # a mixed or empty test split: any first string
        text = next((str(v) for v in (rows[0].values() if rows is not None and len(rows) else [])
                     if isinstance(v, str)), "Hello")
    return text if feed not in ("continue", "source") or "prompt" in columns else " ".join(text.split()[:8])


def _generate_kwargs(recipe: Recipe) -> str:
    g = recipe.eval.generation
    parts = [f"max_new_tokens={g.max_new_tokens}", f"num_beams={g.num_beams}", "do_sample=False"]
    if g.no_repeat_ngram_size:
        parts.append(f"no_repeat_ngram_size={g.no_repeat_ngram_size}")
    if g.length_penalty != 1.0:
        parts.append(f"length_penalty={g.length_penalty}")
    return ", ".join(parts)


def _load_lines(task, lora: bool) -> list[str]:
    """Import and load lines: `model` and `tokenizer` from `model_dir`."""
    auto = task.auto_model.__name__
    if lora and task.head_in_config:
        # AutoPeftModelForSequenceClassification sizes the head from the base's config (its labels are lost);
        # the run's config.json beside the adapter holds the label maps.
        return ["from peft import PeftConfig, PeftModel",
                f"from transformers import AutoConfig, AutoTokenizer, {auto}",
                "base_id = PeftConfig.from_pretrained(model_dir).base_model_name_or_path",
                f"base = {auto}.from_pretrained(base_id, config=AutoConfig.from_pretrained(model_dir))",
                "model = PeftModel.from_pretrained(base, model_dir).eval()"]
    if lora:
        peft_auto = PEFT_AUTO[task.peft_task_type]
        return [f"from peft import {peft_auto}", "from transformers import AutoTokenizer",
                f"model = {peft_auto}.from_pretrained(model_dir).eval()  # resizes embeddings to the tokenizer"]
    return [f"from transformers import AutoTokenizer, {auto}", f"model = {auto}.from_pretrained(model_dir).eval()"]


def _predict_lines(task, recipe: Recipe, example: str) -> list[str]:
    """Lines that print the model's prediction for `example`, computed as the run's scoring computes it."""
    feed, kwargs = task.demo_feed, _generate_kwargs(recipe)
    if feed == "classify":
        return [f"text = {example!r}",
                f"inputs = tokenizer(text, truncation=True, max_length={recipe.data.max_length}, return_tensors='pt')",
                "with torch.no_grad():",
                "    logits = model(**inputs).logits",
                "print(model.config.id2label[int(logits.argmax(-1))])"]
    if feed == "source":
        return [f"source = {example!r}",
                f"inputs = tokenizer(source, truncation=True, max_length={recipe.data.max_length}, "
                "return_tensors='pt')",
                f"out = model.generate(**inputs, {kwargs})",
                "print(tokenizer.decode(out[0], skip_special_tokens=True).strip())"]
    if feed == "turn":
        system = recipe.chat.system_prompt if recipe.chat is not None else None
        lines = [f"system_prompt = {system!r}  # the recipe's chat.system_prompt",
                 f"messages = [{{'role': 'user', 'content': {example!r}}}]",
                 "if system_prompt:",
                 "    messages.insert(0, {'role': 'system', 'content': system_prompt})",
                 "text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)",
                 "inputs = tokenizer(text, add_special_tokens=False, return_tensors='pt')"]
    else:  # "continue": [BOS] prompt + newline, the head of a training example
        lines = [f"prompt = {example!r}",
                 "ids = tokenizer(prompt + '\\n', add_special_tokens=False)['input_ids']",
                 "ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids",
                 f"ids = ids[:{recipe.data.max_length}]",
                 "inputs = {'input_ids': torch.tensor([ids]), "
                 "'attention_mask': torch.ones(1, len(ids), dtype=torch.long)}"]
    # The saved generation config holds the stop tokens (a chat run's end of turn); PEFT does not read it.
    return lines + ["generation_config = GenerationConfig.from_pretrained(model_dir)",
                    f"out = model.generate(**inputs, generation_config=generation_config, {kwargs})",
                    "new = out[0, inputs['input_ids'].shape[1]:]",
                    "print(tokenizer.decode(new, skip_special_tokens=True).strip())"]


def _plain_base_lines(task) -> list[str]:
    """PEFT's two-step load on the plain base, resizing its embeddings first when training added tokens."""
    auto = task.auto_model.__name__
    return ["from peft import PeftConfig, PeftModel",
            f"from transformers import AutoTokenizer, {auto}",
            f"base = {auto}.from_pretrained(PeftConfig.from_pretrained(model_dir).base_model_name_or_path)",
            "if len(AutoTokenizer.from_pretrained(model_dir)) > base.get_input_embeddings().num_embeddings:",
            "    base.resize_token_embeddings(len(AutoTokenizer.from_pretrained(model_dir)))  # e.g. chat markers",
            "model = PeftModel.from_pretrained(base, model_dir).eval()"]


def load_snippet(task, recipe: Recipe, example: str, *, plain_base: bool = False) -> str:
    """A self-contained program: load the run's model from `model_dir` and print its prediction for `example`.

    Args:
        task: the run's `Task` (its facts choose the loading class and the prediction code).
        recipe: the run's recipe (lengths, generation settings, system prompt).
        example: the input to predict for.
        plain_base: load a LoRA adapter onto its plain base with `PeftModel.from_pretrained` instead of the
            one-call `AutoPeftModelFor...`.
    """
    head = ["import torch"]
    if task.demo_feed in ("continue", "turn"):
        head.append("from transformers import GenerationConfig")
    load = _plain_base_lines(task) if plain_base else _load_lines(task, recipe.lora is not None)
    lines = head + ['model_dir = "."  # this folder (or its Hub repo id)', *load,
                    "tokenizer = AutoTokenizer.from_pretrained(model_dir)", *_predict_lines(task, recipe, example)]
    return "\n".join(lines)


def card_data(recipe: Recipe, task, metrics: dict) -> ModelCardData:
    """The card's front matter: base model, library, pipeline tag, license, datasets, model-index results."""
    base = recipe.model.base or ""
    hub_base = HUB_IDS.get(base, base if base and not Path(base).exists() and "/" in base else None)
    dataset = metrics["dataset"]
    scores = metrics.get("scores") or {}
    results = [
        EvalResult(task_type=PIPELINE_TAGS[task.demo_feed], dataset_type=dataset["name"],
                   dataset_name=dataset["name"], dataset_split=dataset["split"], metric_type=key,
                   metric_value=float(value), metric_name=key)
        for key, value in scores.items() if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    source = recipe.data.source
    return ModelCardData(
        base_model=hub_base, library_name="peft" if recipe.lora else "transformers",
        pipeline_tag=PIPELINE_TAGS[task.demo_feed], license=LICENSES.get(base),
        datasets=[source] if source and "/" in source and not Path(source).exists() else None,
        tags=["tuneforge", recipe.task, recipe.method] + (["lora"] if recipe.lora else []),
        model_name=metrics["run"], eval_results=results or None,
    )


def model_card(recipe: Recipe, task, metrics: dict, launch: str, example: str, base_path: str | None = None) -> str:
    """The run's model card (model/README.md).

    Args:
        recipe: the run's recipe.
        task: its `Task`.
        metrics: its metrics.json.
        launch: the command line that made it (`launch_line`).
        example: the input the snippets predict for (`example_input`).
        base_path: a LoRA adapter's recorded base (absolute path or Hub id), shown with its fingerprint.

    Returns:
        The card text (front matter + Markdown).
    """
    data = card_data(recipe, task, metrics)
    d, t, scores, base_scores = metrics["dataset"], metrics["train"], metrics.get("scores") or {}, \
        metrics.get("base_scores") or {}
    body = [f"# {metrics['run']}", "", (recipe.description or "").strip(), "",
            f"- task: `{recipe.task}`; method: `{recipe.method}`; base: `{metrics['base_model']}`"]
    if base_path is not None:
        fingerprint = weights_fingerprint(base_path)
        body.append(f"- the adapter's base (`base_model_name_or_path`): `{base_path}`"
                    + (f" (weights sha256 `{fingerprint}`)" if fingerprint else ""))
    body += [f"- data: `{d['name']}` split `{d['split']}` ({d.get('num_examples')} examples, fingerprint "
             f"`{d.get('fingerprint')}`)",
             f"- trained {t.get('steps')} steps in {t.get('seconds') or 0:.1f} s; parameters trainable/total: "
             f"{metrics['params']['trainable']:,}/{metrics['params']['total']:,}",
             f"- made with: `{launch}`", "", "| metric | this run | base |", "|---|---|---|"]
    for key, value in scores.items():
        if isinstance(value, (int, float)):
            base = base_scores.get(key)
            body.append(f"| {key} | {value:.4g} | {'' if base is None else f'{base:.4g}'} |")
    body += ["", "## Use it", "", "Run from this folder (or replace `model_dir` with its Hub repo id); it prints "
             "the model's answer for one test example, as the run's scoring computed it:", "",
             "```python", load_snippet(task, recipe, example), "```", ""]
    if recipe.chat is not None:
        body += ["The chat template is saved with the tokenizer (`tokenizer.chat_template`); the tokenizer's EOS "
                 "and `generation_config.json` end generation at the end of the assistant turn. System prompt: "
                 f"{recipe.chat.system_prompt!r}.", ""]
    if recipe.lora is not None and not task.head_in_config:
        body += ["Or load the adapter onto the plain base with PEFT:", "", "```python",
                 load_snippet(task, recipe, example, plain_base=True), "```", ""]
    body += ["With tuneforge: `pipelines.run_model.load_run_model(RUN_DIR)`; a standalone merged copy: "
             "`tuneforge export RUN_DIR --out DIR --merge`.", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(body)).content


def run_readme(metrics: dict) -> str:
    """The run folder's README.md: a pointer to the model card and the run's other files."""
    primary = metrics.get("primary_metric")
    score = (metrics.get("scores") or {}).get(primary)
    shown = f" ({primary} {score:.4g})" if isinstance(score, (int, float)) else ""
    return (f"# {metrics['run']}{shown}\n\nThe model card is [model/README.md](model/README.md) (the card a Hub "
            "upload shows). This folder also holds recipe.yaml (the resolved recipe), metrics.json, log.jsonl, "
            "predictions.jsonl where the task has them, and checkpoints/ (see docs/run-folder.md).\n")


def adapter_base(model_dir: str | Path) -> str | None:
    """The `base_model_name_or_path` an adapter folder records, or None for a full model."""
    path = Path(model_dir) / "adapter_config.json"
    return json.loads(path.read_text())["base_model_name_or_path"] if path.is_file() else None


def write_card(run_dir: str | Path, recipe: Recipe, task, metrics: dict, launch: str, predictions, rows) -> Path:
    """Write the run's model card to `run_dir/model/README.md` (replacing PEFT's empty template).

    Args:
        run_dir: the run folder (its `model/` is saved).
        recipe / task / metrics / launch: see `model_card`.
        predictions: the scored test rows (or None); rows: the test split (the example input when none).

    Returns:
        The card's path.
    """
    model_dir = Path(run_dir) / "model"
    example = example_input(predictions, rows, recipe, task.demo_feed)
    text = model_card(recipe, task, metrics, launch, example, base_path=adapter_base(model_dir))
    path = model_dir / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


LAUNCHERS = {"accelerate": "accelerate", "torchrun": "torchrun", "torch.distributed.run": "torchrun"}
LAUNCH_ENV = ("ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION", "CUDA_VISIBLE_DEVICES")


def launch_line(command: str, argv: list[str] | None = None, parent: list[str] | None = None,
                env: dict[str, str] | None = None) -> str:
    """The command line that really started this run, for the card.

    A worker started by `accelerate launch` or `torchrun` (directly, or torchrun inside accelerate) has the
    launcher as its parent process; its command line (with the launch-relevant environment variables) is the one
    to repeat. Otherwise `python -m pipelines.train ...` or the `tuneforge` command itself.

    Args:
        command: the `tuneforge ...` form, used when no launcher started the process.
        argv: this process's arguments (default `sys.argv`).
        parent: the parent process's arguments (default: read from /proc on Linux; [] elsewhere).
        env: the environment (default `os.environ`).

    Returns:
        A shell-quoted command line.
    """
    import os
    import shlex
    import sys

    argv = sys.argv if argv is None else argv
    env = os.environ if env is None else env
    if parent is None:
        try:
            raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
            parent = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
        except OSError:
            parent = []
    for i, word in enumerate(parent):
        launcher = LAUNCHERS.get(Path(word).name) or LAUNCHERS.get(word)
        if launcher is not None and (launcher == "torchrun" or parent[i + 1:i + 2] == ["launch"]):
            prefix = [f"{k}={env[k]}" for k in LAUNCH_ENV if k in env]
            return " ".join(prefix + [shlex.join([launcher, *parent[i + 1:]])])
    if argv and Path(argv[0]).name == "train.py" and Path(argv[0]).parent.name == "pipelines":
        return shlex.join(["python", "-m", "pipelines.train", *argv[1:]])
    return command
