"""Corpus perplexity from per-example summed negative log-likelihoods (an offline `evaluate` module).

Perplexity is a ratio of sums, not a mean of ratios: the module adds every example's summed NLL and token count
over the whole split and exponentiates once. Averaging per-batch perplexities would weight short batches as much
as long ones and make the score depend on batch size, padding and process count.

Inputs (one entry per scored example):
    nll_sum (float): the example's summed negative log-likelihood over its scored tokens, in nats (natural log),
        i.e. ``-sum(log p(token))``; positions with label -100 are not included.
    num_tokens (int): how many tokens contributed to ``nll_sum`` (the non -100 labels).

Outputs:
    perplexity (float): ``exp(total_nll / total_tokens)``, unitless, >= 1; ``inf`` when the exponent overflows.
    loss (float): ``total_nll / total_tokens``, mean NLL per token in nats (what the training loss reports).
    num_tokens (int): total scored tokens over the split.

Reference implementation: none needed; this is the definition (``math.exp(sum(nll) / sum(tokens))``), which is
what the Hugging Face language-modeling examples compute from the token-weighted eval loss.

Raises:
    ValueError: no tokens at all, or a negative token count or NLL.
"""

import math

import datasets
import evaluate

_DESCRIPTION = "Corpus perplexity exp(sum NLL / sum tokens) from per-example summed NLL in nats."
_CITATION = ""
_KWARGS_DESCRIPTION = """
Args:
    nll_sum: per-example summed negative log-likelihood, nats.
    num_tokens: per-example number of scored tokens.
Returns:
    perplexity: exp(loss).
    loss: mean NLL per token over the whole split, nats.
    num_tokens: total scored tokens.
Examples:
    >>> ppl = load_metric("perplexity")
    >>> ppl.compute(nll_sum=[2.0, 4.0], num_tokens=[1, 3])["loss"]
    1.5
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    """Corpus perplexity over every example of a split (see the module docstring)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"nll_sum": datasets.Value("float64"), "num_tokens": datasets.Value("int64")}),
        )

    def _compute(self, nll_sum, num_tokens):
        if any(n < 0 for n in num_tokens) or any(x < 0 for x in nll_sum):
            raise ValueError("perplexity: nll_sum and num_tokens must be >= 0 (NLL in nats, counts of tokens)")
        total_tokens = int(sum(num_tokens))
        if total_tokens == 0:
            raise ValueError("perplexity: no scored tokens (every num_tokens is 0); cannot compute a perplexity")
        # fsum: exact summation, so the result does not depend on the order examples arrive in.
        loss = math.fsum(nll_sum) / total_tokens
        try:
            perplexity = math.exp(loss)
        except OverflowError:  # an untrained model can have loss > 709 nats/token
            perplexity = math.inf
        return {"perplexity": perplexity, "loss": loss, "num_tokens": total_tokens}
