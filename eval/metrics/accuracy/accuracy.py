"""Accuracy through scikit-learn (an offline `evaluate` module).

Inputs (one entry per example):
    predictions (int): predicted class id.
    references (int): true class id.

Keyword arguments:
    normalize (bool): True (default) gives the fraction correct; False the count correct.
    sample_weight (list[float] | None): per-example weights.

Outputs:
    accuracy (float): fraction of examples predicted correctly, 0-1 (a count when ``normalize=False``).

Reference implementation: ``sklearn.metrics.accuracy_score``.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = "Accuracy (0-1) via sklearn.metrics.accuracy_score."
_CITATION = "Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids. references: true class ids.
    normalize: fraction (True, default) or count. sample_weight: optional per-example weights.
Returns:
    accuracy: 0-1.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Accuracy (see the module docstring)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        return {
            "accuracy": float(
                accuracy_score(references, predictions, normalize=normalize, sample_weight=sample_weight)
            )
        }
