"""The sample's synthetic task: which of three marker tokens is most frequent in a sequence.

Sequences have random lengths, so batches are padded and the key padding mask matters. Shared by
the training script and (through the saved .npz test set) the torch-free serving script.
"""

from __future__ import annotations

import numpy as np

VOCAB = 16
MARKERS = (1, 2, 3)  # label i means MARKERS[i] occurs most often
PAD = 0
MIN_LENGTH, MAX_LENGTH = 24, 96


def make_dataset(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tokens (count, MAX_LENGTH) int64, mask (count, MAX_LENGTH) bool, labels (count,))``.

    ``mask`` is True at padding. Ties between markers are broken by adding one more of the
    label's marker, so every label is unambiguous.
    """
    rng = np.random.default_rng(seed)
    tokens = np.full((count, MAX_LENGTH), PAD, dtype=np.int64)
    mask = np.ones((count, MAX_LENGTH), dtype=bool)
    labels = rng.integers(0, len(MARKERS), count)
    for row, label in enumerate(labels):
        length = int(rng.integers(MIN_LENGTH, MAX_LENGTH + 1))
        sequence = rng.integers(len(MARKERS) + 1, VOCAB, length)
        counts = rng.multinomial(length // 3, [1 / len(MARKERS)] * len(MARKERS))
        counts[label] = counts.max() + 1 + int(rng.integers(0, 3))
        markers = np.repeat(np.array(MARKERS), counts)[:length]
        positions = rng.choice(length, size=markers.size, replace=False)
        sequence[positions] = markers
        tokens[row, :length] = sequence
        mask[row, :length] = False
    return tokens, mask, labels
