"""The copying task (Arjovsky et al. 2016) as the h-detach authors generate it, vectorised.

Tokens, as in the reference ``generator.py``: blank ``0``, data symbols ``1..n_symbols``
(uniform), delimiter ``n_symbols + 1``. With the default ``n_symbols=8`` that is the reference
code's 8 symbols and delimiter ``9``; the paper's appendix says symbols come from 10 tokens,
which ``n_symbols=10`` gives (delimiter ``11``).

For a delay ``T`` every sequence has ``T + 20`` steps (index ``t``, 0-based)::

    input   t = 0..9        the 10 data symbols
            t = 10..T+8     blank (T - 1 steps)
            t = T+9         delimiter
            t = T+10..T+19  blank
    target  t = 0..T+9      blank
            t = T+10..T+19  the 10 data symbols, in order

The input feature is the token value as one float (input size 1, the reference) or a one-hot
over the ``n_symbols + 2`` tokens. Outputs are the ``n_symbols + 1`` classes blank and data
symbols (the delimiter is never a target).

The reference generates with numpy's global RNG; here every set comes from its own
``torch.Generator`` (``base.stream_generator``), so the distribution matches the reference but
not its bit stream.
"""

from __future__ import annotations

import torch

from .base import Split, TaskData, check_positive, check_seed, stream_generator

N_COPY = 10  # symbols to remember; fixed by the task definition (and the "+20" in T+20)
DEFAULT_N_SYMBOLS = 8  # the reference code; the paper's appendix says 10
TRANSFER_DELAYS = (200, 400, 500, 1000, 2000, 5000)  # paper Table 1
TRANSFER_SEED = 555  # the seed of the authors' transfer_copy.py

# Stream keys for stream_generator: distinct first elements keep train, val and transfer
# sets independent even when the data seed and the transfer seed are equal.
_TRAIN, _VAL, _TRANSFER = 0, 1, 2


def generate_copying(
    n: int,
    T: int,
    generator: torch.Generator,
    one_hot: bool = False,
    n_symbols: int = DEFAULT_N_SYMBOLS,
) -> Split:
    """``n`` copying sequences with delay ``T``: ``x`` ``(n, T+20, 1 or n_symbols+2)``,
    ``y`` int64 ``(n, T+20)``."""
    n = check_positive("n", n)
    T = check_positive("T", T)
    n_symbols = check_positive("n_symbols", n_symbols)
    seq_len = T + 2 * N_COPY
    delimiter = n_symbols + 1

    symbols = torch.randint(1, n_symbols + 1, (n, N_COPY), generator=generator)
    tokens = torch.zeros(n, seq_len, dtype=torch.int64)
    tokens[:, :N_COPY] = symbols
    tokens[:, N_COPY + T - 1] = delimiter
    targets = torch.zeros(n, seq_len, dtype=torch.int64)
    targets[:, T + N_COPY :] = symbols

    if one_hot:
        # Scatter straight into float32: F.one_hot would first build an int64 tensor twice the
        # size of the result (gigabytes at T=300 with 100,000 sequences).
        x = torch.zeros(n, seq_len, n_symbols + 2, dtype=torch.float32)
        x.scatter_(2, tokens.unsqueeze(-1), 1.0)
    else:
        x = tokens.to(torch.float32).unsqueeze(-1)
    return Split(x=x, y=targets)


def load_copying(
    T: int,
    train_size: int = 100_000,
    val_size: int = 5_000,
    data_seed: int = 0,
    one_hot: bool = False,
    n_symbols: int = DEFAULT_N_SYMBOLS,
) -> TaskData:
    """The paper's copying data: ``train_size`` training and ``val_size`` validation sequences
    generated once from ``data_seed`` (independent streams), no test split."""
    T = check_positive("T", T)
    train_size = check_positive("train_size", train_size)
    val_size = check_positive("val_size", val_size)
    data_seed = check_seed("data_seed", data_seed)
    n_symbols = check_positive("n_symbols", n_symbols)

    def make(size: int, stream: int) -> Split:
        gen = stream_generator(data_seed, stream)
        return generate_copying(size, T, gen, one_hot=one_hot, n_symbols=n_symbols)

    return TaskData(
        name="copying",
        train=make(train_size, _TRAIN),
        val=make(val_size, _VAL),
        test=None,
        input_size=n_symbols + 2 if one_hot else 1,
        num_classes=n_symbols + 1,
        seq_len=T + 2 * N_COPY,
        loss_every_step=True,
        acc_steps=N_COPY,
        sampling="with_replacement",
        meta={
            "T": T,
            "data_seed": data_seed,
            "train_size": train_size,
            "val_size": val_size,
            "one_hot": one_hot,
            "n_symbols": n_symbols,
        },
    )


def transfer_sets(
    delays: tuple[int, ...] = TRANSFER_DELAYS,
    size: int = 5_000,
    seed: int = TRANSFER_SEED,
    one_hot: bool = False,
    n_symbols: int = DEFAULT_N_SYMBOLS,
) -> dict[int, Split]:
    """Fresh sequences at longer delays for transfer copying (paper Table 1), keyed by delay.

    Each delay has its own stream derived from ``seed``, so ``transfer_sets(delays=(d,))``
    returns exactly the set for ``d`` that the full call does: callers short of memory can
    evaluate one delay at a time (T=5000 at 5,000 sequences is ~300 MB with scalar inputs).
    """
    if not delays:
        raise ValueError(f"delays must name at least one delay, got {delays!r}")
    delays = tuple(check_positive("delay", d) for d in delays)
    size = check_positive("size", size)
    seed = check_seed("seed", seed)
    return {
        d: generate_copying(
            size, d, stream_generator(seed, _TRANSFER, d), one_hot=one_hot, n_symbols=n_symbols
        )
        for d in delays
    }
