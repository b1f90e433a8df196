"""`tuneforge baseline RECIPE`: TF-IDF + logistic regression on a classification recipe's data, as a run-like folder.

The classical reference point for the encoder classifiers: the same splits, limits and label mapping as the
recipe (`classification.map_labels`), scored with the same metrics (`classification.score_log_probs`) on the same
test rows, so metrics.json carries the same dataset fingerprint and `tuneforge compare` puts it in the same table
(as method "baseline"). The folder holds recipe.yaml, metrics.json, predictions.jsonl, confusion_matrix.png and
README.md; there is no model/ (nothing for the demo to serve).

Model: word uni- and bigram TF-IDF with sublinear term frequency (Salton & Buckley 1988; scikit-learn's
`TfidfVectorizer`) and multinomial logistic regression (`LogisticRegression`, L2, lbfgs); the inverse
regularisation strength C is chosen on the validation split by macro-F1 from a log grid, the usual tuning of this
baseline (e.g. Wang & Manning 2012, "Baselines and Bigrams"). A text pair is joined with a space.
"""

from __future__ import annotations

import time
from importlib import metadata
from pathlib import Path

import datasets
import torch

from pipelines import data as data_lib
from pipelines import runs
from pipelines.errors import TuneforgeError
from pipelines.recipe import Recipe
from pipelines.record import Params, RunRecord, TrainStats, scored_fields, write_result
from pipelines.tasks import classification, get_task

VECTORIZER = {"sublinear_tf": True, "ngram_range": (1, 2), "min_df": 2}
C_GRID = (0.1, 1.0, 10.0, 100.0)
MAX_ITER = 1000


def _texts(recipe: Recipe, ds: datasets.Dataset) -> list[str]:
    """The classifier's input as one string: `text`, or `text` + " " + `text_pair`."""
    texts = list(ds[classification.role_column(recipe, "text")])
    pair_col = classification.role_column(recipe, "text_pair")
    return texts if pair_col is None else [f"{t} {p}" for t, p in zip(texts, ds[pair_col], strict=True)]


def fit_predict(train_texts: list[str], train_y: list[int], val_texts: list[str], val_y: list[int],
                test_texts: list[str], num_labels: int) -> tuple[torch.Tensor, dict]:
    """Fit the vectorizer on the training texts, pick C on validation macro-F1, predict the test split.

    Returns:
        (log class probabilities [N_test, num_labels] float32, settings {vectorizer, C grid, validation
        macro-F1 per C, chosen C, vocabulary size}). Classes absent from training get log-probability -inf.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from threadpoolctl import threadpool_limits

    vectorizer = TfidfVectorizer(**VECTORIZER)
    x_train = vectorizer.fit_transform(train_texts)
    x_val = vectorizer.transform(val_texts)
    fits, val_f1 = {}, {}
    # One BLAS/OpenMP thread: the products here are small, and extra threads only oversubscribe a busy CPU
    # (measured 12x slower with 2 threads on a loaded 2-core machine).
    with threadpool_limits(1):
        for c in C_GRID:
            fits[c] = LogisticRegression(C=c, max_iter=MAX_ITER).fit(x_train, train_y)
            val_f1[c] = float(f1_score(val_y, fits[c].predict(x_val), average="macro"))
    best = max(C_GRID, key=lambda c: (val_f1[c], -c))  # ties: the stronger regularisation
    model = fits[best]
    log_probs = torch.full((len(test_texts), num_labels), float("-inf"))
    log_probs[:, torch.as_tensor(model.classes_)] = torch.as_tensor(
        model.predict_log_proba(vectorizer.transform(test_texts)), dtype=torch.float32
    )
    settings = {
        "vectorizer": {k: list(v) if isinstance(v, tuple) else v for k, v in VECTORIZER.items()},
        "classifier": {"name": "LogisticRegression", "penalty": "l2", "solver": "lbfgs", "max_iter": MAX_ITER},
        "C_grid": list(C_GRID),
        "validation_macro_f1": {str(c): f for c, f in val_f1.items()},
        "C": best,
        "vocabulary_size": len(vectorizer.vocabulary_),
        "parameters": int(model.coef_.size + model.intercept_.size),
    }
    return log_probs, settings


def run_baseline(recipe: Recipe, run_dir: Path, *, overwrite: bool = False, launch: str = "") -> dict:
    """Fit, score and write the baseline folder for a classification recipe.

    Args:
        recipe: a classification recipe (its data section decides splits, limits and labels).
        run_dir: the folder to write (e.g. `runs/<recipe name>-baseline`).
        overwrite: replace an existing folder.
        launch: the command line, recorded in README.md.

    Returns:
        The metrics dict written to metrics.json.

    Raises:
        TuneforgeError: not a classification recipe, an existing folder without overwrite, or any data or label
            problem the classifier itself would report.
    """
    if get_task(recipe.task) is not classification.TASK:
        raise TuneforgeError(f"task: the TF-IDF baseline is for classification recipes, not {recipe.task!r}")
    runs.check_run_dir(run_dir, overwrite=overwrite, resume="never")
    raw = data_lib.load_data(recipe.data, classification.TASK.stratify_role)
    data, names, report = classification.map_labels(recipe, raw)
    t0 = time.perf_counter()
    log_probs, settings = fit_predict(
        _texts(recipe, data["train"]), list(data["train"][classification.LABEL_ID]),
        _texts(recipe, data["validation"]), list(data["validation"][classification.LABEL_ID]),
        _texts(recipe, data["test"]), len(names),
    )
    seconds = time.perf_counter() - t0
    text_col, pair_col = classification.role_column(recipe, "text"), classification.role_column(recipe, "text_pair")
    test = data["test"]
    result = classification.score_log_probs(
        log_probs, list(test[classification.LABEL_ID]), names, list(test[text_col]),
        list(test[pair_col]) if pair_col else None, settings={"baseline": settings, "labels": report},
    )
    n_train = len(data["train"])
    record = RunRecord(
        run=run_dir.name, status="finished", task="classification", method="baseline", base_model="tfidf+logreg",
        **scored_fields(result, classification.TASK, recipe.data, test, recipe.train.seed,
                        {**runs.versions(), "scikit-learn": metadata.version("scikit-learn")}),
        base_scores=None,
        # Fit time covers the vectorizer and every C of the grid (what it costs to get this model).
        train=TrainStats(examples=n_train, seconds=seconds, examples_per_s=n_train / max(seconds, 1e-9)),
        params=Params(trainable=settings["parameters"], total=settings["parameters"]),
        recipe_hash=recipe.hash(),
    )
    metrics = record.as_dict()
    runs.clear_run_dir(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    return write_result(run_dir, record, result, _card(metrics, launch))


def _card(metrics: dict, launch: str) -> str:
    s, ds, b = metrics["scores"], metrics["dataset"], metrics["metric_settings"]["baseline"]
    return "\n".join([
        f"# {metrics['run']}",
        "",
        "TF-IDF (word 1-2-grams, sublinear tf) + logistic regression baseline; C chosen on validation macro-F1.",
        "",
        f"- data: `{ds['name']}` split `{ds['split']}` ({ds['num_examples']} examples, fingerprint "
        f"`{ds['fingerprint']}`)",
        f"- C = {b['C']}, vocabulary {b['vocabulary_size']:,}; fit in {metrics['train']['seconds']:.1f} s on "
        f"{metrics['train']['examples']:,} training examples",
        f"- made with: `{launch}`",
        "",
        f"accuracy {s['accuracy']:.4f} · macro-F1 {s['macro_f1']:.4f} · weighted-F1 {s['weighted_f1']:.4f}",
        "",
    ])
