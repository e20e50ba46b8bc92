"""Seed streams: one run seed, separate random streams for each source of randomness.

A run seed ``s`` derives independent ``torch.Generator`` streams by hashing
``"hdetach-study/<stream>/<s>"`` (SHA-256, first 63 bits):

* ``init``  - weight initialisation of the LSTM and its output layer;
* ``data``  - the order of training examples (minibatch draws or epoch permutations);
* ``masks`` - the h-detach / c-detach Bernoulli draws;
* ``dropout`` - dropout masks (the language model's), apart so that they never shift the others.

Because the streams are separate, a vanilla run (p = 0, no mask draws) and an h-detach run
with the same seed start from identical weights and see identical minibatches, so the two arms
can be compared seed by seed. Datasets have their own seeds (``data_seed``,
``permutation_seed``) so every run seed trains on the same data.
"""

from __future__ import annotations

import hashlib

import torch

STREAMS = ("init", "data", "masks", "dropout")


def stream_seed(run_seed: int, stream: str) -> int:
    """The 63-bit seed of ``stream`` for ``run_seed``."""
    if stream not in STREAMS:
        raise ValueError(f"unknown seed stream {stream!r} (choose from {', '.join(STREAMS)})")
    digest = hashlib.sha256(f"hdetach-study/{stream}/{int(run_seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def stream_generator(run_seed: int, stream: str) -> torch.Generator:
    """A CPU generator seeded for ``stream`` (CPU so that any device draws the same numbers)."""
    return torch.Generator().manual_seed(stream_seed(run_seed, stream))


def stream_seeds(run_seed: int) -> dict[str, int]:
    """All stream seeds of a run, for logging."""
    return {f"seed_{name}": stream_seed(run_seed, name) for name in STREAMS}
