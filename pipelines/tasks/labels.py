"""Classification labels: which column plays which role, the label set (top K, `other`), and the mapping of every
split's labels to class ids, with the checks that name the offending rows.
"""

from __future__ import annotations

import logging
from collections import Counter

import datasets

from pipelines.errors import TuneforgeError
from pipelines.recipe import ClassificationConfig, Recipe

logger = logging.getLogger("pipelines.tasks.classification")

LABEL_ID = "label_id"  # the column `prepare` adds to every split: the example's class id
OTHER = "other"  # the extra class that labels outside the top K map to when classification.other_labels is "other"
_LABEL_TYPES = (str, int, bool)
_SHOWN = 5  # how many offending rows / labels an error or log line names


# ---------------------------------------------------------------------------------------------------------------
# Columns and labels


def settings(recipe: Recipe) -> ClassificationConfig:
    """The recipe's `classification:` section, or its defaults when the recipe has none.

    Args:
        recipe: a classification recipe.

    Returns:
        The label and class-weight settings.
    """
    return recipe.classification if recipe.classification is not None else ClassificationConfig()


def role_column(recipe: Recipe, role: str) -> str | None:
    """The single column mapped to `role`, or None when the (optional) role is unmapped.

    Raises:
        TuneforgeError: the role is mapped to a list of columns.
    """
    col = recipe.data.columns.get(role)
    if isinstance(col, list):
        if len(col) != 1:
            hint = "; map a second text column to text_pair" if role == "text" else ""
            raise TuneforgeError(f"data.columns.{role}: one column, got {col}{hint}")
        col = col[0]
    return col


def _label_values(ds: datasets.Dataset, col: str, split: str) -> list:
    """The label column as Python values; a `ClassLabel` column gives its names (e.g. "positive", not 1).

    Raises:
        TuneforgeError: missing labels (None, or a ClassLabel's -1, e.g. GLUE test splits), floats, or a column
            mixing types (e.g. "3" and 3).
    """
    feature = ds.features[col]
    values = list(ds[col])
    if not values:
        return values
    missing = [i for i, v in enumerate(values) if v is None or (isinstance(feature, datasets.ClassLabel) and v < 0)]
    if missing:
        raise TuneforgeError(
            f"data.columns.label: {len(missing)} {split} row(s) have no label in column {col!r} (rows "
            f"{missing[:_SHOWN]}); fill them in or drop them (a Hub test split without labels: set "
            "data.splits.test to a labelled split, e.g. validation)"
        )
    if isinstance(feature, datasets.ClassLabel):
        return [feature.names[v] for v in values]
    types = Counter(type(v).__name__ for v in values)
    if len(types) > 1 or not isinstance(values[0], _LABEL_TYPES):
        example = {t: next(v for v in values if type(v).__name__ == t) for t in types}
        raise TuneforgeError(
            f"data.columns.label: column {col!r} of the {split} split holds {dict(types)} values (e.g. {example}); "
            "class labels must be all strings or all integers; convert the column to one type"
        )
    return values


def _check_texts(ds: datasets.Dataset, col: str, role: str, split: str) -> None:
    """Raises TuneforgeError for empty (or non-string) texts, naming the rows."""
    bad = [i for i, t in enumerate(ds[col]) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise TuneforgeError(
            f"data.columns.{role}: {len(bad)} {split} row(s) of column {col!r} are empty or not text (rows "
            f"{bad[:_SHOWN]}); remove those rows or map {role} to another column"
        )


def label_set(train_labels: list, top_k: int | None, other_labels: str) -> tuple[list, bool]:
    """The classes, from the training labels: most frequent first, ties by name (value).

    Args:
        train_labels: one label value per training example (all of one type).
        top_k: keep only the K most frequent labels (None: all).
        other_labels: "drop" or "other" (the labels beyond the top K become one extra class `other`, last).

    Returns:
        (kept label values in class-id order, whether the class `other` follows them).

    Raises:
        TuneforgeError: fewer than two classes, or a kept label named "other" clashing with the extra class.
    """
    counts = Counter(train_labels)
    ranked = sorted(counts, key=lambda v: (-counts[v], v))
    kept = ranked[:top_k] if top_k else ranked
    with_other = other_labels == "other" and len(kept) < len(ranked)
    if with_other and OTHER in {str(v) for v in kept}:
        raise TuneforgeError(
            f"classification.other_labels: the data already has a label {OTHER!r} among the top {top_k}; merging "
            "other labels into it would be ambiguous; set classification.other_labels=drop or rename that label"
        )
    if len(kept) + with_other < 2:
        raise TuneforgeError(
            f"data.columns.label: the training split has {len(ranked)} distinct label(s) {ranked[:_SHOWN]}; "
            "classification needs at least 2"
        )
    return kept, with_other


def map_labels(recipe: Recipe, data: datasets.DatasetDict) -> tuple[datasets.DatasetDict, list[str], dict]:
    """Validate texts and labels, build the label set from the training split, add a `label_id` column.

    Args:
        recipe: uses data.columns (text, text_pair, label), classification.top_k_labels, other_labels, num_labels.
        data: raw "train", "validation", "test" rows.

    Returns:
        (data with `label_id` and without the rows whose label was dropped, label names in id order,
        report {split: {"dropped": n, "to_other": n, "unseen": {label: n}}}: rows whose label is outside the
        label set, and among them the labels never seen in training).

    Raises:
        TuneforgeError: empty texts, missing or mixed-type labels, fewer than 2 classes, a split left empty,
            or classification.num_labels disagreeing with the label set.
    """
    cfg = settings(recipe)
    text_col, pair_col = role_column(recipe, "text"), role_column(recipe, "text_pair")
    label_col = role_column(recipe, "label")
    values = {}
    for split, ds in data.items():
        _check_texts(ds, text_col, "text", split)
        if pair_col is not None:
            _check_texts(ds, pair_col, "text_pair", split)
        values[split] = _label_values(ds, label_col, split)
    kinds = {split: type(v[0]).__name__ for split, v in values.items() if v}
    if len(set(kinds.values())) > 1:
        raise TuneforgeError(
            f"data.columns.label: column {label_col!r} has different types per split ({kinds}); "
            "class labels must be all strings or all integers"
        )
    kept, with_other = label_set(values["train"], cfg.top_k_labels, cfg.other_labels)
    names = [str(v) for v in kept] + ([OTHER] if with_other else [])
    if cfg.num_labels is not None and cfg.num_labels != len(names):
        raise TuneforgeError(
            f"classification.num_labels: {cfg.num_labels}, but the training split gives {len(names)} classes "
            f"({names[:_SHOWN]}{', ...' if len(names) > _SHOWN else ''}); set "
            f"classification.num_labels={len(names)} or classification.top_k_labels to the number of classes wanted"
        )
    ids = {v: i for i, v in enumerate(kept)}
    other_id = len(kept) if with_other else None
    seen = set(values["train"])
    out, report = {}, {}
    for split, ds in data.items():
        mapped = [ids.get(v, other_id) for v in values[split]]
        outside = Counter(v for v in values[split] if v not in ids)
        unseen = {str(v): n for v, n in sorted(outside.items(), key=lambda kv: (-kv[1], kv[0])) if v not in seen}
        n_out = sum(outside.values())
        report[split] = {"dropped": n_out if other_id is None else 0, "to_other": 0 if other_id is None else n_out,
                         "unseen": unseen}
        if n_out:
            what = "dropped" if other_id is None else f"mapped to {OTHER!r}"
            shown = ", ".join(f"{k} ({n})" for k, n in list(unseen.items())[:_SHOWN])
            logger.warning(
                "classification: %d %s row(s) have a label outside the %d classes (%s)%s",
                n_out, split, len(names), what, f"; never seen in training: {shown}" if unseen else "",
            )
        if LABEL_ID in ds.column_names:  # the label column itself may be called label_id; its values are read
            ds = ds.remove_columns(LABEL_ID)
        keep = [i for i, m in enumerate(mapped) if m is not None]
        if not keep:
            raise TuneforgeError(
                f"data: no {split} rows are left after dropping labels outside the {len(names)} classes; "
                "raise classification.top_k_labels or set classification.other_labels=other"
            )
        if len(keep) < len(mapped):
            ds, mapped = ds.select(keep), [mapped[i] for i in keep]
        out[split] = ds.add_column(LABEL_ID, mapped)
    return datasets.DatasetDict(out), names, report
