"""Preference ratings from pairwise votes: Bradley–Terry strengths on the Elo scale, with bootstrap intervals.

Bradley–Terry (1952): P(i beats j) = p_i / (p_i + p_j). The strengths are fitted by Hunter's (2004) MM iteration,
p_i <- W_i / sum_j n_ij / (p_i + p_j), where W_i is i's wins and n_ij the comparisons of i and j. A tie (and a
"both bad" vote) counts half a win for each side, as in Chatbot Arena's BT fit (Chiang et al. 2024). So that a
model with only wins (or only losses) keeps a finite strength, every model also plays one virtual tie against a
fixed reference of strength 1 (a weak prior towards the average; its weight, `PRIOR_GAMES`, is one vote).

Ratings are reported on the Elo scale as Chatbot Arena does: 400 * log10(p_i) + 1000 with the strengths'
geometric mean 1 (1000 = average; +400 = ten-to-one odds). The 95% interval is a percentile bootstrap over the
votes (votes resampled with replacement, the model refitted), with a fixed seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SCALE, BASE, INIT = 400.0, 10.0, 1000.0  # Elo points per factor of BASE in odds; the average model's rating
PRIOR_GAMES = 1.0  # virtual tie games against the reference per model
RESAMPLES = 200
SEED = 12345
OUTCOMES = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # score of side A


@dataclass
class Rating:
    """One model's preference rating.

    Attributes:
        name: the model.
        rating: Elo-scale Bradley–Terry rating (1000 = average of the rated models).
        interval: 95% bootstrap interval of the rating, or None with fewer than 2 votes in all.
        votes: votes it took part in.
        wins, ties, losses: from its side ("both bad" counts as a tie).
    """

    name: str
    rating: float
    interval: tuple[float, float] | None
    votes: int
    wins: int
    ties: int
    losses: int


def bradley_terry(k: int, a: np.ndarray, b: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None,
                  iterations: int = 2000, tol: float = 1e-9) -> np.ndarray:
    """Bradley–Terry log10-strengths by Hunter's MM iteration with a virtual tie per model against a reference.

    Several weightings of the same votes (bootstrap resamples) are fitted at once.

    Args:
        k: number of models; `a` and `b` index them.
        a, b: [V] int indices of the two sides of each vote.
        score: [V] side A's score: 1 win, 0 loss, 0.5 tie.
        weights: [R, V] how often each vote counts in each of R fits (bootstrap draw counts); default one fit
            with every vote once.
        iterations, tol: stop after this many MM steps or when no strength moves by more than `tol` (relative).

    Returns:
        [R, k] log10 strengths, each row with mean 0 (geometric mean strength 1).
    """
    weights = np.ones((1, len(a))) if weights is None else np.asarray(weights, dtype=np.float64)
    one_hot_a, one_hot_b = np.eye(k)[a], np.eye(k)[b]  # [V, k]
    wins = 0.5 * PRIOR_GAMES + (weights * score) @ one_hot_a + (weights * (1.0 - score)) @ one_hot_b  # [R, k]
    games = np.einsum("rv,vi,vj->rij", weights, one_hot_a, one_hot_b)
    games = games + games.transpose(0, 2, 1)  # n_ij per fit, symmetric [R, k, k]
    p = np.ones_like(wins)
    for _ in range(iterations):
        denominator = (games / (p[:, :, None] + p[:, None, :])).sum(axis=2) + PRIOR_GAMES / (p + 1.0)
        new = wins / denominator  # the virtual games against the reference (strength 1) fix the scale
        done = np.max(np.abs(new - p) / p) < tol
        p = new
        if done:
            break
    logs = np.log10(p)
    return logs - logs.mean(axis=1, keepdims=True)  # 1000 is the average of the rated models


def rate(votes: Sequence[dict], resamples: int = RESAMPLES, seed: int = SEED) -> list[Rating]:
    """Ratings of every model in `votes`, best first.

    Args:
        votes: dicts with "a", "b" (model names) and "winner" (a key of `OUTCOMES`); others are ignored.
        resamples: bootstrap resamples for the intervals.
        seed: numpy Generator seed (the same votes always give the same intervals).

    Returns:
        One `Rating` per model that took part in a valid vote, highest rating first.
    """
    votes = [v for v in votes if v.get("winner") in OUTCOMES and v.get("a") and v.get("b") and v["a"] != v["b"]]
    if not votes:
        return []
    names = sorted({v["a"] for v in votes} | {v["b"] for v in votes})
    index = {name: i for i, name in enumerate(names)}
    a = np.array([index[v["a"]] for v in votes])
    b = np.array([index[v["b"]] for v in votes])
    score = np.array([OUTCOMES[v["winner"]] for v in votes])
    point = SCALE * bradley_terry(len(names), a, b, score)[0] + INIT
    intervals: list[tuple[float, float] | None] = [None] * len(names)
    if len(votes) >= 2:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(votes), size=(resamples, len(votes)))
        counts = np.stack([np.bincount(row, minlength=len(votes)) for row in draws])  # [resamples, V]
        boot = SCALE * bradley_terry(len(names), a, b, score, counts) + INIT  # [resamples, models]
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
        intervals = [(float(x), float(y)) for x, y in zip(lo, hi, strict=True)]
    out = []
    for i, name in enumerate(names):
        as_a, as_b = score[a == i], score[b == i]
        mine = np.concatenate([as_a, 1.0 - as_b])
        out.append(Rating(name, float(point[i]), intervals[i], int(mine.size), int((mine == 1).sum()),
                          int((mine == 0.5).sum()), int((mine == 0).sum())))
    return sorted(out, key=lambda r: -r.rating)
