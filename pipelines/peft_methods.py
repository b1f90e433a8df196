"""The PEFT config for a recipe's `lora:` section (LoRA and its initialisations, IA3, VeRA, LoHa, OFT), and LoRA+.

`modeling.apply_lora` decides the targets and the fully trained modules; this module turns them into the PEFT
config of the chosen method, refusing combinations PEFT cannot train (e.g. OFT on GPT-2's Conv1D layers) with a
message that names the fix, before any step runs.
"""

from __future__ import annotations

import torch
from peft import IA3Config, LoHaConfig, OFTConfig, PeftConfig, VeraConfig
from peft import LoraConfig as PeftLoraConfig
from peft.optimizers import create_loraplus_optimizer
from transformers.pytorch_utils import Conv1D

from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe
from pipelines.recipe_peft import LoraConfig

# PEFT's LoHa, OFT and OLoRA accept torch Linear (and Conv2d) layers only; GPT-2's Conv1D (weights stored (in, out))
# is refused by them (LoHa, OFT) or multiplies the wrong shapes (OLoRA's QR of the transposed weight).
LINEAR_ONLY = {"loha": "lora.method: loha", "oft": "lora.method: oft", "olora": "lora.init: olora"}


def peft_config(
    cfg: LoraConfig,
    task_type: str,
    *,
    modules_to_save: list[str] | None,
    exclude_modules: list[str] | None,
    trainable_token_indices: list[int] | None,
    conv1d: bool,
) -> PeftConfig:
    """The PEFT config of the method `cfg.method`, with the targets and saved modules `apply_lora` chose.

    Args:
        cfg: the recipe's `lora:` section.
        task_type: PEFT task type (CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS).
        modules_to_save: modules trained in full and saved with the adapter (a classifier head), or None.
        exclude_modules: modules that must get no adapter (the head's own linear layers), or None.
        trainable_token_indices: embedding rows to train (tokens a task added), or None.
        conv1d: the model has GPT-2 Conv1D layers (weights stored (in, out): PEFT's `fan_in_fan_out`).

    Returns:
        A `peft` config for `get_peft_model`.

    Raises:
        TuneforgeError: a method or initialisation PEFT cannot apply to Conv1D layers, or a non-LoRA method on a task
            that added tokens (only LoRA trains single embedding rows).
    """
    problem = conv1d_problem(cfg, conv1d)
    if problem:
        raise TuneforgeError(problem)
    if trainable_token_indices and cfg.method != "lora":
        raise TuneforgeError(
            f"lora.method: {cfg.method!r} cannot train the {len(trainable_token_indices)} token(s) this task added "
            "to the vocabulary (e.g. chat markers); only LoRA trains single embedding rows. Use lora.method: lora"
        )
    targets = "all-linear" if cfg.target_modules == "auto" else list(cfg.target_modules)
    common = {"task_type": task_type, "modules_to_save": modules_to_save}
    if cfg.method == "ia3":
        # `auto`: PEFT's per-architecture IA3 targets (keys, values and the feed-forward output, as Liu et al.
        # 2022); a list names the targets, all of them scaled on their input side except attention's.
        if cfg.target_modules == "auto":
            return IA3Config(**common, exclude_modules=exclude_modules, fan_in_fan_out=conv1d)
        return IA3Config(**common, target_modules=targets, feedforward_modules=[], exclude_modules=exclude_modules,
                         fan_in_fan_out=conv1d)
    if cfg.method == "vera":
        # VeRA has no exclude_modules: the head's layers are left out through target_modules by PEFT's all-linear,
        # which skips the output layer; a classifier head is saved in full through modules_to_save.
        return VeraConfig(**common, r=cfg.r, vera_dropout=cfg.dropout, target_modules=targets,
                          fan_in_fan_out=conv1d)
    if cfg.method == "loha":
        return LoHaConfig(**common, r=cfg.r, alpha=cfg.alpha, target_modules=targets, exclude_modules=exclude_modules)
    if cfg.method == "oft":
        # A block size that does not divide a layer's width is moved by PEFT to the nearest divisor (it warns).
        return OFTConfig(**common, r=0, oft_block_size=cfg.block_size, target_modules=targets,
                         exclude_modules=exclude_modules)
    return PeftLoraConfig(
        **common,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        exclude_modules=exclude_modules,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        bias=cfg.bias,
        # PEFT's `True` is Kaiming-uniform A and zero B (Microsoft's reference implementation).
        init_lora_weights=True if cfg.init == "default" else cfg.init,
        trainable_token_indices=list(trainable_token_indices) if trainable_token_indices else None,
        fan_in_fan_out=conv1d,
    )


def conv1d_problem(cfg: LoraConfig, conv1d: bool) -> str | None:
    """Why PEFT cannot apply the recipe's method to a model with GPT-2 Conv1D layers, or None.

    Args:
        cfg: the recipe's `lora:` section.
        conv1d: the model has Conv1D layers (`has_conv1d`).
    """
    linear_only = "olora" if cfg.method == "lora" and cfg.init == "olora" else cfg.method
    if not conv1d or linear_only not in LINEAR_ONLY:
        return None
    return (f"{LINEAR_ONLY[linear_only]}: PEFT applies it to nn.Linear layers only, and this model's layers are "
            "GPT-2 Conv1D; use lora.method: lora (default init), ia3 or vera for GPT-2-style models")


def has_conv1d(model: torch.nn.Module) -> bool:
    """Whether `model` has GPT-2 Conv1D layers (weights stored (in, out): PEFT's `fan_in_fan_out`)."""
    return any(isinstance(m, Conv1D) for m in model.modules())


def loraplus_optimizer(model: torch.nn.Module, recipe: Recipe, fused: bool) -> torch.optim.Optimizer:
    """AdamW with LoRA+'s learning rates: the B matrices at `lora.lr_ratio` x the rest.

    Built by PEFT's `create_loraplus_optimizer` (Hayou et al. 2024, arXiv:2402.12354): B matrices and, as in the
    paper's reference code, every 1-D parameter (biases of a trained head) at lr x ratio; A matrices and the other
    fully trained weights at lr; weight decay off for biases and norms (as Trainer decides), and
    LoRA embedding A/B at PEFT's `loraplus_lr_embedding` (1e-6, the paper's code). The schedule scales every
    group's rate by the same factor, so the ratio holds at every step.

    Args:
        model: the PEFT-wrapped model.
        recipe: the run's recipe (`train.learning_rate`, `weight_decay`, `adam_betas`, `lora.lr_ratio`).
        fused: use the fused AdamW kernel.
    """
    train = recipe.train
    return create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=train.learning_rate, loraplus_lr_ratio=recipe.lora.lr_ratio,
        weight_decay=train.weight_decay, betas=train.adam_betas, fused=fused,
    )
