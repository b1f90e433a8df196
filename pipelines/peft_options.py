"""Which `lora:` options each PEFT method takes: one table, read by the recipe schema and by `peft_methods`.

Kept free of heavy imports (no torch, no peft) so that validating a recipe stays fast.
"""

from __future__ import annotations

# Options every method takes.
COMMON = ("method", "target_modules", "modules_to_save")

# method -> the further options it takes. LoRA (Hu et al. 2021) with its variants: DoRA, rsLoRA, the PiSSA / OLoRA /
# Gaussian initialisations and LoRA+ (`lr_ratio`); IA3 (Liu et al. 2022, arXiv:2205.05638) learns only rescaling
# vectors; VeRA (Kopiczko et al. 2024, arXiv:2310.11454) shares frozen random matrices across layers and trains
# scaling vectors; LoHa (Hyeon-Woo et al. 2022, arXiv:2108.06098) is a Hadamard product of two low-rank updates;
# OFT (Qiu et al. 2023, arXiv:2306.07280) rotates the weights with block-diagonal orthogonal matrices.
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "lora": ("r", "alpha", "dropout", "use_dora", "use_rslora", "bias", "init", "lr_ratio"),
    "ia3": (),
    "vera": ("r", "dropout"),
    "loha": ("r", "alpha"),
    "oft": ("block_size",),
}

METHOD_NAMES = tuple(METHOD_OPTIONS)


def method_options(method: str) -> tuple[str, ...]:
    """Every `lora:` option that `method` takes, `method` itself included."""
    return COMMON + METHOD_OPTIONS[method]


def option_problem(method: str, given: set[str]) -> str | None:
    """The options set in a recipe's `lora:` section that its `method` does not take, in one message.

    Args:
        method: the section's `method` (one of METHOD_NAMES).
        given: the option names the recipe set explicitly (pydantic's `model_fields_set`).

    Returns:
        A message naming each misplaced option with the methods that take it, what `method` takes, and the fix;
        None when every option fits.
    """
    wrong = sorted(given - set(method_options(method)))
    if not wrong:
        return None
    owners = [f"{o} (an option of {' / '.join(m for m, opts in METHOD_OPTIONS.items() if o in opts)})" for o in wrong]
    return (f"lora.method {method!r} does not take {', '.join(owners)}; it takes "
            f"{', '.join(method_options(method)[1:])}. Remove {', '.join('lora.' + o for o in wrong)} or change "
            "lora.method")
