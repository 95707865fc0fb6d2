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
