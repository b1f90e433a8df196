"""Precision through scikit-learn (an offline `evaluate` module). Precision = tp / (tp + fp).

Inputs (one entry per example):
    predictions (int): predicted class id.
    references (int): true class id.

Keyword arguments (as ``sklearn.metrics.precision_score``):
    average (str | None): "binary" (default, scores ``pos_label`` only), "micro" (global counts; equals accuracy
        for single-label multi-class), "macro" (unweighted mean over classes), "weighted" (mean weighted by
        support), or None (one score per class, in ``labels`` order).
    labels (list[int] | None): the classes to score and their order; pass every class id so classes absent from
        this split still count (as 0) in the macro average.
    pos_label (int): the positive class for "binary", default 1.
    sample_weight (list[float] | None): per-example weights.
    zero_division (float | str): value when a denominator is 0; default 0.0 (sklearn's "warn" prints warnings).

Outputs:
    precision (float | list[float]): 0-1; a list of per-class scores when ``average=None``.

Reference implementation: ``sklearn.metrics.precision_score``.
"""

import datasets
import evaluate
from sklearn.metrics import precision_score

_DESCRIPTION = "Precision (0-1) via sklearn.metrics.precision_score."
_CITATION = "Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids. references: true class ids.
    average: binary (default) | micro | macro | weighted | None. labels: class ids to score.
    pos_label: positive class for binary. sample_weight: per-example weights. zero_division: default 0.0.
Returns:
    precision: 0-1 (list per class when average=None).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Precision(evaluate.Metric):
    """Precision (see the module docstring)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_score.html"],
        )

    def _compute(
        self,
        predictions,
        references,
        average="binary",
        labels=None,
        pos_label=1,
        sample_weight=None,
        zero_division=0.0,
    ):
        score = precision_score(
            references,
            predictions,
            average=average,
            labels=labels,
            pos_label=pos_label,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        # Plain Python numbers so results go straight into metrics.json.
        return {"precision": score.tolist() if average is None else float(score)}
