"""The names a study writes to MLflow: one place, read by the study driver and the exporter.

Per study: one MLflow experiment. Per configuration: one parent run (``run_kind=parent``)
with the seed-aggregate curves. Per (configuration, seed): one child run (``run_kind=child``,
nested with ``mlflow.parentRunId``) with everything below. Only these curated names are
logged: no Ray Tune ``config/...`` or ``time_...`` noise.

Accuracies are fractions in [0, 1]; epochs are 1-based and are the MLflow ``step``.
"""

from __future__ import annotations

# Per-epoch metrics of a child run (``step = epoch``), defined with the trainer. ``epoch``
# itself is also logged as a bookkeeping metric by ``study.tracking``, so a resumed driver
# knows what is already there.
from trainables.metrics import EPOCH_METRICS

#: Final metrics of a child run (logged once, when its trial ends). ``transfer_acc_T<d>`` are
#: added for copying runs, one per evaluated delay ``d``.
FINAL_METRICS = (
    "best_val_acc",
    "best_epoch",
    "test_acc_at_best",
    "epochs_to_threshold",
    "diverged",
    "diverged_epoch",
    "last_epoch",
    "max_grad_norm",
    "censored",
)
TRANSFER_PREFIX = "transfer_acc_T"

#: Per-epoch metrics of a parent run: the seed aggregate of ``val_acc``.
PARENT_EPOCH_METRICS = ("val_acc_mean", "val_acc_min", "val_acc_max", "seeds")

#: Tags of every child (and, without ``seed``, parent) run, so the MLflow UI can group by them.
#: ``config_id``, ``seed`` and ``run_kind`` are set by ``study.tracking`` itself.
RUN_TAGS = ("task", "arm", "p_detach", "c_detach", "lr", "clip", "study")

#: Arms of a comparison. The vanilla LSTM (p = 0) is the paired baseline of every h-detach
#: configuration with the same (lr, clip).
ARMS = ("h-detach", "vanilla", "c-detach", "damp")

#: Child-run params: every field of ``trainables.config.RunConfig`` except ``seeds`` (the
#: child's own seed is the ``seed`` param), plus ``seed``, ``seed_init``, ``seed_data`` and
#: ``seed_masks`` (the derived streams, see ``trainables/seeds.py``), ``config_id``,
#: ``members_per_trial`` and ``objective``.

__all__ = [
    "ARMS",
    "EPOCH_METRICS",
    "FINAL_METRICS",
    "PARENT_EPOCH_METRICS",
    "RUN_TAGS",
    "TRANSFER_PREFIX",
]
