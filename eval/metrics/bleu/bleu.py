"""Corpus BLEU through `sacrebleu` (an offline `evaluate` module).

Scale: 0-100, sacreBLEU's own scale. BLEU is a corpus statistic: n-gram counts are summed over the whole split
before the geometric mean and brevity penalty, so it is not an average of sentence BLEUs.

Inputs (one entry per example):
    predictions (str): the system output for the example.
    references (str or list[str]): the example's reference(s). Every example needs the same number of references.
        The module transposes them into the reference *streams* ``sacrebleu.corpus_bleu`` expects
        (``refs[k][i]`` = k-th reference of example i).

Keyword arguments (passed to ``sacrebleu.metrics.BLEU``):
    tokenize (str): default "13a" (sacreBLEU's default for most languages; "intl" for Unicode punctuation,
        "zh"/"ja-mecab"/"flores200" for other scripts).
    lowercase (bool): default False.
    smooth_method (str): default "exp".

Outputs:
    score (float): BLEU, 0-100.
    signature (str): sacreBLEU's reproducibility signature, e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|
        version:2.6.0"; store it next to the score.
    counts, totals (list[int]): matched and total n-grams, n = 1..4.
    precisions (list[float]): n-gram precisions, 0-100.
    bp (float): brevity penalty, 0-1.
    sys_len, ref_len (int): hypothesis and effective reference length in tokens.

Reference implementation: ``sacrebleu.metrics.BLEU(...).corpus_score(predictions, reference_streams)``.
"""

import datasets
import evaluate
from sacrebleu.metrics import BLEU

_DESCRIPTION = "Corpus BLEU (0-100) with its signature, via sacrebleu."
_CITATION = """@inproceedings{post-2018-call, title = "A Call for Clarity in Reporting {BLEU} Scores",
author = "Post, Matt", booktitle = "Proceedings of the Third Conference on Machine Translation", year = "2018"}"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of system outputs.
    references: list of references, or list of lists (same number of references per example).
    tokenize, lowercase, smooth_method: sacrebleu.metrics.BLEU options.
Returns:
    score (0-100), signature, counts, totals, precisions, bp, sys_len, ref_len.
"""


def reference_streams(references):
    """Transposes per-example references into sacreBLEU's list of reference streams.

    Args:
        references: one str or list[str] per example.

    Returns:
        list[list[str]]: ``streams[k][i]`` is the k-th reference of example i.

    Raises:
        ValueError: examples have different numbers of references.
    """
    per_example = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    counts = {len(refs) for refs in per_example}
    if len(counts) > 1:
        raise ValueError(f"sacrebleu needs the same number of references for every example; got {sorted(counts)}")
    return [list(stream) for stream in zip(*per_example, strict=True)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    """Corpus BLEU (see the module docstring)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, tokenize="13a", lowercase=False, smooth_method="exp"):
        if not predictions:
            raise ValueError("bleu: no examples to score")
        bleu = BLEU(tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method)
        result = bleu.corpus_score(list(predictions), reference_streams(references))
        return {
            "score": result.score,
            "signature": str(bleu.get_signature()),
            "counts": list(result.counts),
            "totals": list(result.totals),
            "precisions": list(result.precisions),
            "bp": result.bp,
            "sys_len": result.sys_len,
            "ref_len": result.ref_len,
        }
