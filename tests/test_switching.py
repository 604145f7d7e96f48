"""Switch alignment's matching: exact hand-built cases and brute force over small random ones."""

from __future__ import annotations

import numpy as np
import pytest

from analyses.switching import alignment_scores, match_count


def _arr(xs) -> np.ndarray:
    return np.asarray(xs, dtype=np.int64)


def brute_force(pred, true, tol: int) -> int:
    """Largest one-to-one matching within ``tol``, by trying every partner for each prediction."""

    def best(i: int, used: frozenset) -> int:
        if i == len(pred):
            return 0
        skip = best(i + 1, used)
        take = [
            1 + best(i + 1, used | {j})
            for j, t in enumerate(true)
            if j not in used and abs(pred[i] - t) <= tol
        ]
        return max([skip, *take])

    return best(0, frozenset())


@pytest.mark.parametrize(
    "pred, true, tol, hits",
    [
        ([1, 2], [2, 3], 1, 2),  # nearest-first pairs 2-2 and finds only 1
        ([2, 3], [1, 2], 1, 2),  # the same, roles swapped
        ([], [], 1, 0),
        ([], [3, 5], 2, 0),
        ([3, 5], [], 2, 0),
        ([4, 4, 4], [4], 0, 1),  # duplicates: one true time serves one prediction
        ([4], [4, 4, 4], 0, 1),
        ([4, 4], [4, 4], 0, 2),
        ([1, 3, 5], [2, 4, 6], 0, 0),  # tol 0: only equal times match
        ([1, 3, 5], [1, 4, 5], 0, 2),
        ([1, 3, 5], [2, 4, 6], 1, 3),
        ([5, 1, 3], [6, 2, 4], 1, 3),  # unsorted input
        ([10], [1], 2, 0),
        ([1, 2, 3, 4], [2, 3, 4, 5], 1, 4),  # a chain nearest-first would break
    ],
)  # fmt: skip
def test_match_count_on_hand_built_cases(pred, true, tol, hits):
    assert match_count(_arr(pred), _arr(true), tol) == hits
    assert brute_force(pred, true, tol) == hits


def test_match_count_equals_the_best_matching_on_random_small_cases():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        pred = rng.integers(0, 12, size=rng.integers(0, 7)).tolist()
        true = rng.integers(0, 12, size=rng.integers(0, 7)).tolist()
        tol = int(rng.integers(0, 4))
        assert match_count(_arr(pred), _arr(true), tol) == brute_force(pred, true, tol), (
            pred,
            true,
            tol,
        )


def test_alignment_scores_count_the_optimal_matching():
    sub = [np.array([0, 0, 1, 2, 2])]  # boundaries at t = 2 and 3
    beta = [np.array([1, 1, 1, 0, 0.0])]  # switches at t = 1 and 2
    precision, recall, f1, n_pred, n_true = alignment_scores(beta, sub)
    assert (n_pred, n_true) == (2, 2)
    assert precision == [0.5, 1.0, 1.0] and recall == [0.5, 1.0, 1.0]
