"""Corpus chrF / chrF++ through `sacrebleu` (an offline `evaluate` module).

Scale: 0-100, sacreBLEU's own scale. Character n-gram statistics are summed over the whole split (a corpus
score, not a mean of sentence scores). chrF works on characters, so it suits morphologically rich targets such as
German better than BLEU and needs no tokenizer.

Inputs (one entry per example):
    predictions (str): the system output.
    references (str or list[str]): the example's reference(s); the same number for every example (transposed to
        sacreBLEU's reference streams).

Keyword arguments (passed to ``sacrebleu.metrics.CHRF``):
    char_order (int): character n-gram order, default 6.
    word_order (int): word n-gram order, default 0 (chrF); 2 gives chrF++.
    beta (int): recall weight, default 2.
    lowercase (bool): default False.
    whitespace (bool): include whitespace in character n-grams, default False.

Outputs:
    score (float): chrF, 0-100.
    signature (str): sacreBLEU's signature, e.g. "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0".
    char_order, word_order, beta (int): the settings used.

Reference implementation: ``sacrebleu.metrics.CHRF(...).corpus_score(predictions, reference_streams)``.
"""

import datasets
import evaluate
from sacrebleu.metrics import CHRF

_DESCRIPTION = "Corpus chrF/chrF++ (0-100) with its signature, via sacrebleu."
_CITATION = """@inproceedings{popovic-2015-chrf, title = "chr{F}: character n-gram {F}-score for automatic {MT}
evaluation", author = "Popovi{\\'c}, Maja", booktitle = "Proceedings of the Tenth Workshop on Statistical Machine
Translation", year = "2015"}"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of system outputs.
    references: list of references, or list of lists (same number of references per example).
    char_order, word_order, beta, lowercase, whitespace: sacrebleu.metrics.CHRF options.
Returns:
    score (0-100), signature, char_order, word_order, beta.
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
    # Duplicated from bleu.py on purpose: evaluate copies each module script alone into its cache, so a shared
    # helper would need evaluate's relative-import machinery for five lines.
    per_example = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    counts = {len(refs) for refs in per_example}
    if len(counts) > 1:
        raise ValueError(f"sacrebleu needs the same number of references for every example; got {sorted(counts)}")
    return [list(stream) for stream in zip(*per_example, strict=True)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chrf(evaluate.Metric):
    """Corpus chrF (see the module docstring)."""

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

    def _compute(self, predictions, references, char_order=6, word_order=0, beta=2, lowercase=False, whitespace=False):
        if not predictions:
            raise ValueError("chrf: no examples to score")
        chrf = CHRF(
            char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase, whitespace=whitespace
        )
        result = chrf.corpus_score(list(predictions), reference_streams(references))
        return {
            "score": result.score,
            "signature": str(chrf.get_signature()),
            "char_order": char_order,
            "word_order": word_order,
            "beta": beta,
        }
