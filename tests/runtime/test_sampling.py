import numpy as np
import pytest

from favor.runtime.sampling import sample_token

LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05]))


def _draws(n=4000, **kwargs):
    rng = np.random.default_rng(0)
    return np.bincount([sample_token(LOGITS, rng=rng, **kwargs) for _ in range(n)], minlength=4) / n


def test_greedy_is_argmax():
    assert sample_token(LOGITS) == 0


def test_temperature_one_follows_the_distribution():
    # 4000 draws: the standard error of each frequency is at most 0.008; 0.04 is 5 of them.
    np.testing.assert_allclose(_draws(temperature=1.0), [0.5, 0.3, 0.15, 0.05], atol=0.04)


@pytest.mark.parametrize(
    ("kwargs", "allowed"),
    [({"top_k": 2}, 2), ({"top_p": 0.75}, 2), ({"top_p": 0.9}, 3)],
    ids=["top_k=2", "top_p=0.75", "top_p=0.9"],
)
def test_truncation_keeps_only_the_head(kwargs, allowed):
    frequencies = _draws(temperature=1.0, **kwargs)
    assert np.all(frequencies[allowed:] == 0) and np.all(frequencies[:allowed] > 0)
    head = np.array([0.5, 0.3, 0.15, 0.05])[:allowed]
    np.testing.assert_allclose(frequencies[:allowed], head / head.sum(), atol=0.04)


@pytest.mark.parametrize(
    "kwargs", [{}, {"top_k": 2}, {"top_p": 0.5}], ids=["plain", "top_k", "top_p"]
)
@pytest.mark.parametrize("logits", [LOGITS, LOGITS - 1e3], ids=["mixed", "all-negative"])
def test_a_temperature_that_overflows_the_scores_is_greedy(logits, kwargs):
    assert sample_token(logits, temperature=1e-310, rng=np.random.default_rng(0), **kwargs) == 0


def test_nan_logits_are_refused():
    with pytest.raises(ValueError, match="logits hold NaN"):
        sample_token(np.array([0.1, np.nan, 0.3]), temperature=1.0)
