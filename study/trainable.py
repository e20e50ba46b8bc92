"""The Ray Tune trainable: one block of K seeds of one configuration, epoch by epoch.

A plain function of a config dict (Ray Tune's function API): it builds a ``Trainer``
(``trainables/train.py``), restores it from ``tune.get_checkpoint()`` when Tune restarts the
trial (after a killed worker or a resumed study), and calls ``tune.report`` once per epoch with
an epoch checkpoint. Nothing here talks to MLflow: the driver logs what is reported.

Each report carries the block's per-member epoch records (``members``, ``None`` for a member
that has diverged) and flat summary columns for the progress table and schedulers
(``epoch``, ``val_acc_mean``, ...). The last report also carries ``finals``: each member's
final metrics from its best-validation weights (test accuracy, transfer copying).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from study.searcher import OBJECTIVE, objective_value
from trainables.config import RunConfig
from trainables.contract import EPOCH_SCORE
from trainables.runtime import keep_freed_memory
from trainables.train import Trainer, trainer_for

CHECKPOINT_FILE = "trainer.pt"


def run_config_for(config: dict) -> RunConfig:
    """The block's ``RunConfig``: the study's base run options + this trial's parameters."""
    base = dict(config["run"])
    base.update(
        p_detach=float(config["p_detach"]),
        lr=float(config["lr"]),
        clip=bool(config["clip"]),
        seeds=tuple(int(s) for s in config["seeds"]),
    )
    return RunConfig.from_dict(base).validate()


def summary(records: list[dict | None], kind: str) -> dict:
    """Flat columns over the block's live members (for the table and schedulers)."""
    live = [r for r in records if r is not None and not r.get("diverged")]
    acc = [r["val_acc"] for r in live]
    # Tune insists on the searcher's metric in every result: the block's running value.
    # Optuna itself hears the configuration's value over all its seeds (study/searcher.py).
    objective = [math.nan if r is None or r.get("diverged") else r[EPOCH_SCORE] for r in records]
    return {
        OBJECTIVE: objective_value(objective, kind),
        "val_acc_mean": sum(acc) / len(acc) if acc else math.nan,
        "val_acc_min": min(acc) if acc else math.nan,
        "val_acc_max": max(acc) if acc else math.nan,
        "train_loss_mean": sum(r["train_loss"] for r in live) / len(live) if live else math.nan,
        "diverged_members": sum(1 for r in records if r is None or r.get("diverged")),
    }


def train_block(config: dict) -> None:
    """Train one seed block; resumable from Tune's epoch checkpoints."""
    keep_freed_memory()
    cpus = max(1, int(config["cpus_per_trial"]))
    torch.set_num_threads(cpus)
    cfg = run_config_for(config)
    trainer = trainer_for(cfg)
    kind = config["objective"]
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load(Path(directory) / CHECKPOINT_FILE)

    if trainer.done:  # restarted after its last epoch: only the finals are missing
        last = [h[-1] if h else None for h in trainer.history]
        _report(trainer, last, kind, finals=trainer.finish())
        return
    while not trainer.done:
        records = trainer.train_epoch()
        _report(trainer, records, kind, trainer.finish() if trainer.done else None)


def _report(trainer: Trainer, records: list, kind: str, finals: list[dict] | None) -> None:
    """One epoch to Tune. ``summary``: each member's final metrics on the epochs so far (what
    a run stopped early by a scheduler is scored on); ``finals``: the same from the
    best-validation weights with test/transfer accuracies, at the last epoch only."""
    metrics = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "epoch": trainer.epoch,
        "epochs": trainer.cfg.epochs,
        "members": records,
        "summary": [trainer.summary(k) for k in range(trainer.cfg.members)],
        **summary(records, kind),
    }
    if finals is not None:
        metrics["finals"] = finals
    with tempfile.TemporaryDirectory(prefix="hdetach-ckpt-") as directory:
        trainer.save(Path(directory) / CHECKPOINT_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
