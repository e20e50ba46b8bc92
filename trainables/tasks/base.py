"""What every task hands the trainer: whole splits as tensors, plus how to score them.

A task is data only. ``Split`` holds one split batch-major; ``TaskData`` bundles the splits
with the few facts the training loop needs to treat tasks alike (where the loss is taken,
over how many final steps accuracy is counted, how minibatches are drawn). Datasets are small
enough to live whole on the training device, so there is no ``DataLoader`` anywhere.

Randomness is explicit: every stream of data comes from its own ``torch.Generator`` whose seed
is derived from a user seed and a stream key (``stream_generator``), so the training set, the
validation set and each transfer set are independent of each other and of model/h-detach RNGs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

SAMPLING_MODES = ("with_replacement", "shuffle")


class DataNotFoundError(ValueError):
    """Task data is not on disk (and was not, or could not be, downloaded)."""


@dataclass(frozen=True)
class Split:
    """One split: ``x`` is ``(N, T, I)`` float32; ``y`` is int64 ``(N, T)`` or ``(N,)``.

    ``y`` is per step for copying (one target per time step) and one label per sequence for
    MNIST.
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        # Cheap shape checks here catch a transposed (time-major) tensor long before it turns
        # into a silently wrong loss.
        if self.x.ndim != 3 or self.x.dtype != torch.float32:
            raise ValueError(
                f"Split.x must be a float32 (N, T, I) tensor, got {self.x.dtype} "
                f"{tuple(self.x.shape)}"
            )
        if self.y.dtype != torch.int64 or self.y.ndim not in (1, 2):
            raise ValueError(
                f"Split.y must be an int64 (N, T) or (N,) tensor, got {self.y.dtype} "
                f"{tuple(self.y.shape)}"
            )
        if self.y.shape[0] != self.x.shape[0] or (
            self.y.ndim == 2 and self.y.shape[1] != self.x.shape[1]
        ):
            raise ValueError(
                f"Split.y {tuple(self.y.shape)} does not match Split.x {tuple(self.x.shape)}"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class TaskData:
    """A task's splits and how the trainer must score them.

    ``loss_every_step``: cross-entropy averaged over all steps (copying) or taken at the last
    step only (MNIST). ``acc_steps``: accuracy is counted over the last ``acc_steps`` steps
    (copying 10, MNIST 1). ``sampling``: ``"with_replacement"`` draws each minibatch
    independently (the reference copying code); ``"shuffle"`` walks a fresh permutation each
    epoch (MNIST). ``member_orders``: int64 ``(K, seq_len)``, a step order per seed member
    when members must see their steps in different orders (pMNIST with one permutation per
    seed), applied by ``in_member_order``; ``None``: every member sees the splits as they are.
    ``meta`` holds plain values worth logging (seeds, sizes, modes).
    """

    name: str
    train: Split
    val: Split
    test: Split | None
    input_size: int
    num_classes: int
    seq_len: int
    loss_every_step: bool
    acc_steps: int
    sampling: str
    member_orders: Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(
                f"sampling must be one of {', '.join(SAMPLING_MODES)}, got {self.sampling!r}"
            )
        if not 1 <= self.acc_steps <= self.seq_len:
            raise ValueError(f"acc_steps must be in [1, {self.seq_len}], got {self.acc_steps}")
        for split_name in ("train", "val", "test"):
            split = getattr(self, split_name)
            if split is None:
                continue
            if split.x.shape[1:] != (self.seq_len, self.input_size):
                raise ValueError(
                    f"{split_name}.x has shape {tuple(split.x.shape)}, expected "
                    f"(N, {self.seq_len}, {self.input_size})"
                )
        orders = self.member_orders
        if orders is not None and (
            orders.dtype != torch.int64 or orders.ndim != 2 or orders.shape[1] != self.seq_len
        ):
            raise ValueError(
                f"member_orders must be an int64 (K, {self.seq_len}) tensor, got {orders.dtype} "
                f"{tuple(orders.shape)}"
            )

    def to(self, device: torch.device | str) -> TaskData:
        """The same task with every split on ``device`` (whole datasets live there)."""
        return dataclasses.replace(
            self,
            train=self.train.to(device),
            val=self.val.to(device),
            test=None if self.test is None else self.test.to(device),
            member_orders=None if self.member_orders is None else self.member_orders.to(device),
        )

    def in_member_order(self, x: Tensor) -> Tensor:
        """Time-major member inputs ``x (T, K, B, I)`` with member k's steps in its order
        (``member_orders[k]``); ``x`` itself when the members share the splits' order."""
        if self.member_orders is None:
            return x
        if self.member_orders.shape[0] != x.shape[1]:
            raise ValueError(
                f"member_orders has {self.member_orders.shape[0]} members, the input {x.shape[1]}"
            )
        index = self.member_orders.t()[:, :, None, None].expand_as(x)
        return x.gather(0, index)


def stream_generator(seed: int, *key: int) -> torch.Generator:
    """A CPU generator for the data stream named by ``key`` under the user ``seed``.

    numpy's ``SeedSequence`` hashes (seed, key) into a well-mixed 64-bit seed, so streams with
    different keys are independent even for neighbouring user seeds (``manual_seed(s)`` and
    ``manual_seed(s + 1)`` are not guaranteed to be).
    """
    state = np.random.SeedSequence(entropy=seed, spawn_key=key).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def check_seed(name: str, value: object) -> int:
    """A seed must be a non-negative int (SeedSequence and numpy reject negatives)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)
