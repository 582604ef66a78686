"""Integer apportionment shared by the partitioner (client kinds) and the synthetic generator
(cluster sizes)."""

from collections.abc import Sequence

import numpy as np


def apportion(total: int, weights: Sequence[float], minimum: int = 0) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (largest-remainder method).

    Every entry with a positive weight gets at least ``minimum``; entries with weight 0 get 0.
    Ties go to the earlier entry. Raises ``ValueError`` when ``total`` cannot give every
    positive-weight entry its minimum.
    """
    weight = np.asarray(weights, dtype=np.float64)
    positive = weight > 0
    if weight.ndim != 1 or np.any(weight < 0) or not positive.any():
        raise ValueError(f"weights must be non-negative with at least one positive, got {weights}")
    if total < minimum * int(positive.sum()):
        raise ValueError(f"{total} cannot give {int(positive.sum())} entries at least {minimum} each")
    quota = total * weight / weight.sum()
    counts = np.floor(quota).astype(np.int64)
    remainder = np.where(positive, quota - counts, -1.0)
    counts[np.argsort(-remainder, kind="stable")[: total - int(counts.sum())]] += 1
    for short in np.flatnonzero(positive & (counts < minimum)):
        while counts[short] < minimum:
            surplus = np.where(positive, counts - minimum, counts)
            counts[int(np.argmax(surplus))] -= 1
            counts[short] += 1
    return counts
