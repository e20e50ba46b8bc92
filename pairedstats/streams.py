"""Random streams keyed by the quantity they resample, so a number does not move when
unrelated runs are added and two views of one quantity draw the same resamples.

A stream is ``numpy.random.default_rng([base, h...])`` where ``h`` is a SHA-256 of the
quantity's key (setup, arms, metric, statistic): the same key gives the same stream in any
order of evaluation; different keys give independent streams.
"""

from __future__ import annotations

import hashlib

import numpy as np


def keyed_rng(base: int, *key: object) -> np.random.Generator:
    """A generator for the quantity named by ``key`` (any values with a stable ``repr``)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng([int(base) & 0xFFFFFFFF, *words])
