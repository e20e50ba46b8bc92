"""Reduced-scale check on real digits: pixel MNIST on a 5,000-digit IDX pair (e.g. mnist5k).

    python benchmarks/reduced_mnist.py --data-dir ../shared/data/mnist5k [--epochs 5]

Shuffles the digits (they are sorted by label), trains on 4,000 and validates on 1,000, with
the paper's pixel-MNIST model (100 units, Adam 1e-3, batch 100, clip 1.0): vanilla and h-detach
0.25 on the same seed (same initial weights, same batches), epochs interleaved. Prints the
validation accuracy curve and seconds per epoch of each arm, then the seconds of one epoch of
the authors' per-step loop (``trainables/oracle.py``: a hand-written cell with ``h.detach()``)
on the same data and batches.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from trainables.config import RunConfig
from trainables.oracle import oracle_lstm
from trainables.runtime import keep_freed_memory
from trainables.train import Trainer, load_task_for


def oracle_epoch_seconds(trainer: Trainer) -> float:
    """One training epoch of the authors' approach on the trainer's data and batches."""
    lstm, head = trainer.lstm.member(0), trainer.head.member(0)
    optimizer = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=trainer.cfg.lr)
    gen = torch.Generator().manual_seed(0)
    data = trainer.data
    start = time.perf_counter()
    for idx in trainer._batches():
        x = data.train.x[idx[0]].transpose(0, 1)
        masks = lstm.sample_masks(x.shape[0], x.shape[1], gen)
        out, _ = oracle_lstm(lstm, x, masks=masks)
        loss = F.cross_entropy(head(out[-1]), data.train.y[idx[0]])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*lstm.parameters(), *head.parameters()], 1.0)
        optimizer.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    keep_freed_memory()
    common = {
        "data_dir": str(args.data_dir),
        "shuffle_seed": 0,
        "train_size": 4000,
        "val_size": 1000,
        "epochs": args.epochs,
        "seeds": (args.seed,),
        "device": "cpu",
    }
    try:
        base = RunConfig.from_preset("seq_mnist", "paper", **common)
        data = load_task_for(base)
    except ValueError as err:
        parser.exit(2, f"reduced_mnist: error: {err}\n")
    arms = {
        "vanilla": Trainer(base, data),
        "h-detach 0.25": Trainer(base.replace(p_detach=0.25), data),
    }
    print(f"seq_mnist on {args.data_dir}: 4,000 train / 1,000 validation, seed {args.seed}")
    print(f"{'epoch':>5}  " + "  ".join(f"{name:>22}" for name in arms))
    for _ in range(args.epochs):
        cells = []
        for trainer in arms.values():
            record = trainer.train_epoch()[0]
            cells.append(f"{100 * record['val_acc']:6.2f}%  {record['epoch_seconds']:6.1f} s/ep")
        print(f"{trainer.epoch:>5}  " + "  ".join(f"{c:>22}" for c in cells), flush=True)
    seconds = oracle_epoch_seconds(arms["h-detach 0.25"])
    engine = [r["epoch_seconds"] for r in arms["h-detach 0.25"].history[0]]
    print(
        f"authors' per-step loop, h-detach 0.25, one epoch on the same batches: {seconds:.1f} s "
        f"(engine: {min(engine):.1f} s, {seconds / min(engine):.2f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
