"""Matthews correlation coefficient through scikit-learn (an offline `evaluate` module).

MCC uses the whole confusion matrix, so unlike accuracy it stays informative on imbalanced classes: 0 for a
constant or random predictor, 1 for perfect predictions, -1 for total disagreement (binary case). The
multi-class generalisation (Gorodkin's R_K) is what scikit-learn computes.

Inputs (one entry per example):
    predictions (int): predicted class id.
    references (int): true class id.

Keyword arguments:
    sample_weight (list[float] | None): per-example weights.

Outputs:
    matthews_correlation (float): in [-1, 1]; 0.0 when undefined (e.g. only one class present).

Reference implementation: ``sklearn.metrics.matthews_corrcoef``.
"""

import datasets
import evaluate
from sklearn.metrics import matthews_corrcoef

_DESCRIPTION = "Matthews correlation coefficient (-1..1) via sklearn.metrics.matthews_corrcoef."
_CITATION = "Matthews, B. W. (1975). Biochimica et Biophysica Acta 405(2): 442-451."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids. references: true class ids. sample_weight: per-example weights.
Returns:
    matthews_correlation: -1..1.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MatthewsCorrelation(evaluate.Metric):
    """Matthews correlation coefficient (see the module docstring)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.matthews_corrcoef.html"
            ],
        )

    def _compute(self, predictions, references, sample_weight=None):
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions, sample_weight=sample_weight))}
