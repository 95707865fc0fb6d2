"""Greedy decoding done the plainest way, to check the Generator and favor-run against."""

import numpy as np

from favor.runtime import Session


def greedy_by_recompute(
    session: Session, prompt: list[int], steps: int
) -> tuple[list[int], list[np.ndarray]]:
    """The ``steps`` greedy token ids after ``prompt``, and the logits ``(V,)`` each came from.

    Each step runs the whole sequence so far through :meth:`Session.run` from a zero state and
    takes numpy's argmax of the last position's logits: no carried state, no IO binding.
    """
    ids, chosen_from = list(prompt), []
    for _ in range(steps):
        logits = session.run(tokens=np.array([ids], np.int64), **session.initial_state(1))
        chosen_from.append(logits["logits"][0, -1])
        ids.append(int(np.argmax(chosen_from[-1])))
    return ids[len(prompt) :], chosen_from
