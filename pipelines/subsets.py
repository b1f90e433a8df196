"""Fair subsets of a split: `data.train_limit` / `validation_limit` / `test_limit` as seeded random samples.

Built-in sources are sorted by key (package name, page name), so the first N rows of a split are not a sample of
it: the classifier's first 500 test packages ran from `2ping` to `golang-...` and missed 5 of its 20 classes. A
limit therefore takes a random sample drawn with `random.Random(data.subset_seed)` (the Mersenne Twister, whose
`sample` gives the same indices on every platform, process and run for the same seed and split size), kept in the
split's own order. A task may name a column to stratify by (classification: the label): then every label of the
split gets at least one row when the limit allows, and the rest is shared in proportion to the labels' counts.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence


def sample_indices(n_rows: int, limit: int, seed: int, labels: Sequence | None = None) -> list[int]:
    """Row indices of a seeded random sample of `limit` rows out of `n_rows`, in ascending order.

    Args:
        n_rows: rows in the split.
        limit: rows wanted; at least `n_rows` keeps every row.
        seed: the sampling seed (`data.subset_seed`).
        labels: one label per row to stratify by, or None for a plain sample.

    Returns:
        Sorted indices, `min(limit, n_rows)` of them. Stratified: with L distinct labels and `limit >= L`, every
        label has at least one row; the other `limit - L` rows are shared in proportion to each label's remaining
        count by the largest-remainder (Hamilton) method, ties broken by label order.
    """
    if limit >= n_rows:
        return list(range(n_rows))
    rng = random.Random(seed)
    if labels is None:
        return sorted(rng.sample(range(n_rows), limit))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        groups[str(label)].append(i)
    order = sorted(groups)  # a fixed order, so the draws do not depend on which label appears first
    if limit < len(order):  # too few rows for one per label: a plain sample is the fair choice
        return sorted(rng.sample(range(n_rows), limit))
    spare = limit - len(order)
    rest = n_rows - len(order)
    shares = {label: spare * (len(groups[label]) - 1) / rest for label in order}
    quota = {label: 1 + int(shares[label]) for label in order}
    left = limit - sum(quota.values())
    by_remainder = sorted(order, key=lambda label: (-(shares[label] - int(shares[label])), label))
    for label in by_remainder[:left]:
        quota[label] += 1
    picked = [i for label in order for i in rng.sample(groups[label], quota[label])]
    return sorted(picked)


def describe(limit: int | None, seed: int, stratify: str | None) -> str | None:
    """How a scored split was subset, as the run record states it next to the fingerprint.

    Returns:
        e.g. "seeded sample of at most 500 (seed 0, stratified by section)", or None without a limit.
    """
    if limit is None:
        return None
    return f"seeded sample of at most {limit} (seed {seed}" + (f", stratified by {stratify})" if stratify else ")")
