"""The optimizer (`train.optim`) and the learning-rate schedule (`train.lr_schedule`) of a run.

The schedule is `transformers.get_scheduler`'s, the one `Trainer` steps, so a recipe's learning rates match
Trainer's step for step: during warmup step s (counted from 0) runs at `s / warmup_steps` of the peak rate.
"""

from __future__ import annotations

import importlib.util

import torch
from transformers import get_scheduler
from transformers.optimization import Adafactor

from pipelines import peft_methods
from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe

# train.optim values -> what they build; docs in `make_optimizer`.
OPTIMIZERS = ("adamw", "adamw_8bit", "adafactor", "sgd", "rmsprop")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters in two groups: weight decay on matrices, none on biases and norms (1-D
    parameters), as in nanoGPT and Trainer (`get_decay_parameter_names`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def check_optimizer(optim: str, device: torch.device | None = None) -> None:
    """Refuse an optimizer this machine cannot run, before anything is built.

    Args:
        optim: the `train.optim` value.
        device: the training device, or None to judge from CUDA availability (`validate`).

    Raises:
        TuneforgeError: `adamw_8bit` without bitsandbytes installed or without a CUDA device to run it on.
    """
    if optim != "adamw_8bit":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TuneforgeError("train.optim: 'adamw_8bit' needs the bitsandbytes package (pip install bitsandbytes, "
                             "CUDA only); use train.optim=adamw")
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if not on_cuda:
        raise TuneforgeError("train.optim: 'adamw_8bit' runs on CUDA GPUs only (bitsandbytes' 8-bit states); this "
                             "run is on the CPU; use train.optim=adamw")


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over the model's trainable parameters.

    - adamw: `torch.optim.AdamW` (Loshchilov & Hutter 2019) with `train.adam_betas`; the fused kernel (one pass
      over each parameter; Trainer's default `adamw_torch_fused` since torch 2.8) whenever every parameter is a
      floating-point tensor on CPU or CUDA.
    - adamw_8bit: bitsandbytes' `AdamW8bit` (Dettmers et al. 2022), CUDA only.
    - adafactor: transformers' `Adafactor` (Shazeer & Stern 2018) with the recipe's learning rate and schedule
      (`relative_step=False, scale_parameter=False`, as transformers advises with an external schedule).
    - sgd: `torch.optim.SGD` with `train.momentum` (Nesterov off).
    - rmsprop: `torch.optim.RMSprop` with `train.momentum`.

    Raises:
        TuneforgeError: see `check_optimizer`.
    """
    cfg = recipe.train
    groups = param_groups(model, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    check_optimizer(cfg.optim, params[0].device if params else None)
    if recipe.lora is not None and recipe.lora.lr_ratio is not None and cfg.optim != "adamw":
        raise TuneforgeError(f"lora.lr_ratio: LoRA+ is built on AdamW (PEFT's create_loraplus_optimizer), not "
                             f"train.optim={cfg.optim!r}; use train.optim=adamw or drop lora.lr_ratio")
    if cfg.optim == "adamw":
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        if recipe.lora is not None and recipe.lora.lr_ratio is not None:
            return peft_methods.loraplus_optimizer(model, recipe, fused)
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.adam_betas, fused=fused)
    if cfg.optim == "adamw_8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, lr=cfg.learning_rate, betas=cfg.adam_betas)
    if cfg.optim == "adafactor":
        return Adafactor(groups, lr=cfg.learning_rate, relative_step=False, scale_parameter=False,
                         warmup_init=False)
    if cfg.optim == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum)
    return torch.optim.RMSprop(groups, lr=cfg.learning_rate, momentum=cfg.momentum)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler:
    """`transformers.get_scheduler(train.lr_schedule, ...)` over `train.max_steps` optimizer steps.

    "constant" with `warmup_steps > 0` is transformers' "constant_with_warmup" (its plain "constant" ignores the
    warmup, which a recipe that sets one never means).
    """
    cfg = recipe.train
    name = "constant_with_warmup" if cfg.lr_schedule == "constant" and cfg.warmup_steps else cfg.lr_schedule
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)
