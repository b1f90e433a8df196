"""The recipe's `lora:` section: LoRA or another PEFT method, each taking only its own options.

Kept free of heavy imports (no torch, no peft) so that validating a recipe stays fast; `pipelines.peft_methods`
turns the section into a PEFT config.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

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


class LoraConfig(BaseModel):
    """A PEFT adapter: LoRA (Hu et al. 2021, arXiv:2106.09685) or another PEFT method (`method`).

    A recipe without `lora:` finetunes fully. Each method takes only its own options (`METHOD_OPTIONS`);
    docs/peft-methods.md compares them.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)  # as every recipe section
    # Keys hashed (Recipe.hash) only when set away from their defaults, so a plain LoRA run recorded before they
    # existed keeps its recipe hash.
    HASHED_WHEN_SET: ClassVar[tuple[str, ...]] = ("method", "init", "lr_ratio", "block_size")

    method: Literal[METHOD_NAMES] = Field("lora", description="lora | ia3 | vera | loha | oft (PEFT tuners)")
    r: int = Field(8, ge=1, description="rank (lora, loha; vera's shared random matrices' rank)")
    alpha: float = Field(16, gt=0, description="scaling numerator: update is (alpha / r) * B @ A (rsLoRA: sqrt(r))")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: Literal["auto"] | list[str] = Field(
        "auto", description="auto = every linear layer but the head (PEFT's all-linear); or leaf names of "
        "Linear/Conv1D/Embedding layers, e.g. [query, value] or [query, key, value, dense, word_embeddings]"
    )
    modules_to_save: Literal["auto"] | list[str] = "auto"
    use_dora: bool = False
    use_rslora: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default", description="LoRA initialisation: default (PEFT: Kaiming-uniform A, zero B), gaussian (A ~ "
        "N(0, 1/r)), pissa (principal singular vectors, arXiv:2404.02948), olora (QR, arXiv:2406.01775)")
    lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+ (Hayou et al. 2024, arXiv:2402.12354): the B matrices learn at "
        "lr_ratio x train.learning_rate; the paper suggests 16")
    block_size: int = Field(
        32, ge=1, description="oft: orthogonal block size (PEFT moves it to a divisor of each layer's width)")

    @model_serializer(mode="wrap")
    def _own_options(self, handler) -> dict:
        # Only the method's own options: a dump (recipe.yaml, overrides applied to a dumped recipe) must load back,
        # and another method's option is refused on load.
        return {k: v for k, v in handler(self).items() if k in method_options(self.method)}

    @model_validator(mode="after")
    def _options_fit_method(self) -> LoraConfig:
        problem = option_problem(self.method, set(self.model_fields_set))
        if problem:
            raise ValueError(problem)
        return self

    def label(self) -> str:
        """How tables name the method: 'lora', 'lora+ (pissa)', 'ia3', ... (options that change what trains)."""
        extras = [self.init] if self.init != "default" else []
        extras += [name for name in ("use_dora", "use_rslora") if getattr(self, name)]
        extras = [e.removeprefix("use_") for e in extras]
        name = "lora+" if self.lr_ratio else self.method
        return name + (f" ({', '.join(extras)})" if extras else "")
