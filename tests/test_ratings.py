"""Preference ratings (eval.ratings): Bradley–Terry on the Elo scale, checked against a direct likelihood fit."""

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from eval.ratings import INIT, PRIOR_GAMES, SCALE, bradley_terry, rate


def _votes(a: str, b: str, winner: str, n: int) -> list[dict]:
    return [{"a": a, "b": b, "winner": winner}] * n


def _direct_fit(k, a, b, score) -> np.ndarray:
    """The same model by maximising its log-likelihood numerically (the reference at log-strength 0)."""

    def nll(theta):
        diff = theta[a] - theta[b]
        ll = np.sum(score * -np.logaddexp(0, -diff) + (1 - score) * -np.logaddexp(0, diff))
        # one virtual tie per model against the reference: half a win and half a loss
        ll += PRIOR_GAMES * 0.5 * np.sum(-np.logaddexp(0, -theta) - np.logaddexp(0, theta))
        return -ll

    theta = minimize(nll, np.zeros(k), method="BFGS", options={"gtol": 1e-10}).x / math.log(10)
    return theta - theta.mean()


def test_mm_fit_equals_the_maximum_likelihood_fit():
    a, b = np.array([0, 0, 1, 2, 2, 0, 1]), np.array([1, 2, 2, 0, 1, 1, 0])
    score = np.array([1.0, 0.5, 1.0, 0.0, 1.0, 1.0, 0.0])
    assert bradley_terry(3, a, b, score)[0] == pytest.approx(_direct_fit(3, a, b, score), abs=1e-6)


def test_ratings_order_counts_and_elo_scale():
    votes = _votes("x", "y", "a", 8) + _votes("y", "x", "a", 2) + _votes("x", "z", "tie", 3)
    votes += [{"a": "x", "b": "x", "winner": "a"}, {"a": "x", "b": "y", "winner": "maybe"}]  # both ignored
    ratings = rate(votes)
    assert [r.name for r in ratings] == ["x", "z", "y"]
    x = ratings[0]
    assert (x.votes, x.wins, x.ties, x.losses) == (13, 8, 3, 2)
    assert sum(r.rating for r in ratings) / 3 == pytest.approx(INIT)  # geometric mean strength 1 -> mean 1000
    # 8:2 between x and y is odds 4 without the prior (+241 Elo); the prior pulls it towards even
    assert 100 < x.rating - ratings[2].rating < SCALE * math.log10(4)
    for r in ratings:
        assert r.interval[0] <= r.rating <= r.interval[1] and r.interval[1] - r.interval[0] > 10


def test_even_votes_rate_equally_and_intervals_are_seeded():
    votes = _votes("x", "y", "a", 5) + _votes("x", "y", "b", 5)
    first, second = rate(votes)
    assert first.rating == pytest.approx(INIT) and second.rating == pytest.approx(INIT)
    assert rate(votes)[0].interval == first.interval  # fixed seed: the same votes give the same interval
    assert rate([]) == [] and rate(_votes("x", "y", "both_bad", 1))[0].interval is None
