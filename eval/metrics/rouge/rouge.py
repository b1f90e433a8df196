"""ROUGE F-measures through Google's `rouge_score` package (an offline `evaluate` module).

Scale: 0-1 floats, the Hugging Face `evaluate` convention and what `rouge_score` itself returns (multiply by 100
for the percentages papers print). Aggregation is the plain mean of per-example F-measures over the split; HF's
hub module instead reports the mid point of a bootstrap (``BootstrapAggregator``), which is random and differs from
the mean in the 3rd-4th decimal.

``rougeLsum`` treats newlines as sentence boundaries (``rouge_score`` splits on "\\n", as HF's module does);
callers that want summary-level LCS must put one sentence per line. Without newlines it equals ``rougeL``.

The default ``rouge_score`` tokenizer lowercases and keeps only ``[a-z0-9]`` runs: non-ASCII letters (German
umlauts, accents, CJK) act as separators, so ROUGE is only meaningful for English-like text here.

Inputs (one entry per example):
    predictions (str): the generated text.
    references (str or list[str]): one reference, or several (then the best-scoring reference counts, as in
        ``RougeScorer.score_multi``).

Keyword arguments:
    rouge_types (list[str]): default ``["rouge1", "rouge2", "rougeL", "rougeLsum"]``.
    use_stemmer (bool): Porter stemming before matching; default True.

Outputs:
    {rouge_type: mean F-measure in [0, 1]} for each requested type.

Reference implementation: ``rouge_score.rouge_scorer.RougeScorer(rouge_types, use_stemmer=...)``.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE-1/2/L/Lsum F-measure (0-1), mean over examples, via rouge_score."
_CITATION = """@inproceedings{lin-2004-rouge, title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
author = "Lin, Chin-Yew", booktitle = "Text Summarization Branches Out", year = "2004"}"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, or list of lists of reference texts.
    rouge_types: which ROUGE variants (default rouge1, rouge2, rougeL, rougeLsum).
    use_stemmer: Porter stemmer on (default True).
Returns:
    {rouge_type: mean F-measure, 0-1}.
"""

DEFAULT_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    """Mean ROUGE F-measure over examples (see the module docstring)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Two accepted formats, as in HF's module: several references per example, or exactly one.
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, rouge_types=DEFAULT_TYPES, use_stemmer=True):
        if not predictions:
            raise ValueError("rouge: no examples to score")
        scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
        totals = dict.fromkeys(rouge_types, 0.0)
        for prediction, reference in zip(predictions, references, strict=True):
            if isinstance(reference, str):
                scores = scorer.score(reference, prediction)
            else:
                scores = scorer.score_multi(reference, prediction)
            for rouge_type in rouge_types:
                totals[rouge_type] += scores[rouge_type].fmeasure
        return {rouge_type: total / len(predictions) for rouge_type, total in totals.items()}
