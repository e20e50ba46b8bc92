"""The Ray Tune trainable: one block of K seeds of one configuration, epoch by epoch.

A plain function of a config dict (Ray Tune's function API): it builds a ``Trainer``
(``trainables/train.py``), restores it from ``tune.get_checkpoint()`` when Tune restarts the
trial (after a killed worker or a resumed study), and calls ``tune.report`` once per epoch with
an epoch checkpoint. Nothing here talks to MLflow: the driver logs what is reported.

Each report carries the block's per-member epoch records (``members``, ``None`` for a member
that has diverged) and flat summary columns for the progress table and schedulers
(``epoch``, ``val_acc_mean``, ...). The last report also carries ``finals``: each member's
final metrics from its best-validation weights (test accuracy, transfer copying).

Tune retries a failed trial up to ``--max-failures`` times, which helps with what comes and
goes (a killed worker, a lost node, storage that hiccups) and never with an error a retry
cannot fix: a full disk, a corrupt checkpoint, an invalid configuration. The trainable names
those (:class:`DeterministicTrialError`) in one last result (``DETERMINISTIC``) before raising,
and the driver's :class:`FailDeterministicErrorsOnce` then lets Tune fail the trial at once.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from study.searcher import OBJECTIVE, objective_value
from trainables.causes import disk_full
from trainables.config import RunConfig
from trainables.contract import EPOCH_SCORE
from trainables.runtime import keep_freed_memory
from trainables.train import Trainer, trainer_for

CHECKPOINT_FILE = "trainer.pt"


#: Run options that say where things are, not what is computed: a resumed study takes them
#: from the resuming command line (``train_block``'s ``locations``), also for the trials Tune
#: restores with the configuration saved when they were created.
LOCATIONS = ("data_dir",)


def run_config_for(config: dict, locations: dict | None = None) -> RunConfig:
    """The block's ``RunConfig``: the study's base run options + this trial's parameters,
    with ``locations`` (the driver's, now) over the ones saved in the trial's config."""
    base = dict(config["run"])
    base.update({k: v for k, v in (locations or {}).items() if k in LOCATIONS})
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


#: The result key of a trial's last report before an error a retry cannot fix: the cause.
DETERMINISTIC = "deterministic_error"


class DeterministicTrialError(RuntimeError):
    """A trial error that a retry would meet again (full disk, corrupt checkpoint, invalid
    configuration): the trial fails without being retried."""


def train_block(config: dict, locations: dict | None = None) -> None:
    """Train one seed block; resumable from Tune's epoch checkpoints. An error a retry
    cannot fix is reported (``DETERMINISTIC``, its cause) and raised as
    :class:`DeterministicTrialError`; any other error is raised as it is (Tune retries it).
    ``locations``: the driver's :data:`LOCATIONS` (``tune.with_parameters``)."""
    try:
        _train_block(config, locations)
    except Exception as err:
        cause = str(err) if isinstance(err, DeterministicTrialError) else disk_full(err)
        if cause is None:
            raise
        try:  # tell the driver first: it fails the trial on this error instead of retrying
            tune.report(
                {
                    DETERMINISTIC: cause,
                    "node_id": ray.get_runtime_context().get_node_id(),
                    OBJECTIVE: math.nan,  # Tune wants the searcher's and scheduler's metrics
                    "val_acc_mean": math.nan,
                }
            )
        except Exception:  # noqa: S110 - without the report Tune retries, as before
            pass
        if isinstance(err, DeterministicTrialError):
            raise
        raise DeterministicTrialError(cause) from err


def _train_block(config: dict, locations: dict | None) -> None:
    keep_freed_memory()
    cpus = max(1, int(config["cpus_per_trial"]))
    torch.set_num_threads(cpus)
    try:
        cfg = run_config_for(config, locations)
    except (KeyError, TypeError, ValueError) as err:
        raise DeterministicTrialError(f"invalid configuration: {err}") from err
    trainer = trainer_for(cfg)
    kind = config["objective"]
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            _load(trainer, Path(directory) / CHECKPOINT_FILE)

    if trainer.done:  # restarted after its last epoch: only the finals are missing
        last = [h[-1] if h else None for h in trainer.history]
        _report(trainer, last, kind, finals=trainer.finish())
        return
    while not trainer.done:
        records = trainer.train_epoch()
        _report(trainer, records, kind, trainer.finish() if trainer.done else None)


def _load(trainer: Trainer, path: Path) -> None:
    """Restore from ``path``; a file that is there and does not load is corrupt (an I/O
    error other than a full disk may be storage that comes back, and stays retried)."""
    try:
        trainer.load(path)
    except OSError:
        raise
    except Exception as err:
        why = (str(err).strip().splitlines() or [""])[0][:200]
        raise DeterministicTrialError(
            f"corrupt checkpoint {path} ({type(err).__name__}: {why})"
        ) from err


class FailDeterministicErrorsOnce(tune.Callback):
    """The driver's half of the retry policy. Tune decides a retry from the trial's
    ``max_failures`` alone (``FailureConfig``); a trial whose last result names an error a
    retry cannot fix (``DETERMINISTIC``) gets no retry left for the error that follows, and
    its budget back once Tune has failed it (a resumed study retries it as any other)."""

    def __init__(self):
        self._budgets: dict[str, int] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(DETERMINISTIC):
            self._budgets.setdefault(trial.trial_id, trial.max_failures)
            trial.max_failures = trial.num_failures  # the coming failure is one too many

    def on_trial_error(self, iteration, trials, trial, **info):
        if trial.trial_id in self._budgets:
            trial.max_failures = self._budgets.pop(trial.trial_id)


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
