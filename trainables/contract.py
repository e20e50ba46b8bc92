"""The data contract of a study: every name a run writes and every quantity derived from it.

Training (``trainables``) produces the records, the study (``study``) logs them to MLflow,
the reports (``dashboards``) read them back from Parquet. Each name, tag, arm and derived
quantity is defined here once and imported by all three; nothing here imports torch, Ray or
MLflow, so any step (and a notebook) can read it cheaply.

MLflow layout of one study: one experiment; per configuration one *parent* run
(``run_kind=parent``) with the seed-aggregate curves; per (configuration, seed) one *child* run
(``run_kind=child``, nested under its parent) with the per-epoch metrics (``step = epoch``)
and the final metrics; reports are logged as ``run_kind=report`` runs, which nothing reads
back. Accuracies are fractions in [0, 1]; epochs are 1-based.
"""

from __future__ import annotations

import re

import numpy as np

# -- tasks and arms ------------------------------------------------------------------------

TASKS = ("copying", "seq_mnist", "pmnist", "captioning", "language_model")
#: Tasks whose output is text (their own data, trainers and metrics), and the others: the
#: sequence classifications of ``trainables.tasks.load_task``.
TEXT_TASKS = ("captioning", "language_model")
CLASSIFICATION_TASKS = tuple(t for t in TASKS if t not in TEXT_TASKS)
#: MNIST images are 28 x 28; ``pixel_pool`` averages k x k blocks for a k dividing 28.
PIXEL_POOLS = (1, 2, 4, 7, 14, 28)

VANILLA, H_DETACH, C_DETACH, DAMP = "vanilla", "h-detach", "c-detach", "damp"
#: The arms of a comparison. The vanilla LSTM (p = 0) is the paired baseline of every other
#: arm with the same setup, learning rate and clipping.
ARMS = (VANILLA, H_DETACH, C_DETACH, DAMP)


def arm_of(p_detach: float = 0.0, c_detach: float = 0.0, damp: float = 0.0) -> str:
    """The arm a run belongs to, from its gradient-mode parameters (NaN counts as 0)."""
    if c_detach > 0:
        return C_DETACH
    if damp > 0:
        return DAMP
    return H_DETACH if p_detach > 0 else VANILLA


# -- engine options (the kernels and the run configuration both read these) --------------

#: Engine backends (``trainables/kernels``); ``auto`` picks the fastest that runs here.
BACKENDS = ("auto", "cpp", "torch", "triton", "persistent")
#: Precisions of the LSTM's recurrent products: fp32, or TF32 tensor cores (persistent
#: backend only). A setup key: arms compare only within one precision.
PRECISIONS = ("fp32", "tf32")
#: The C++ backend's CPU kernel sets, chosen per process by this environment variable
#: (``trainables/kernels``; default auto: ``avx2`` on AVX2 CPUs without AVX-512).
CPU_KERNELS_ENV = "HDETACH_CPU_KERNELS"
CPU_KERNELS = ("auto", "avx2", "generic")


# -- metrics -------------------------------------------------------------------------------

#: Per-epoch metrics of a child run (MLflow ``step = epoch``).
EPOCH_METRICS = (
    "train_loss",  # mean training loss over the epoch's minibatches
    "val_loss",  # mean validation loss
    "val_acc",  # validation accuracy in [0, 1]
    "grad_norm",  # mean gradient norm before clipping
    "grad_norm_max",  # max gradient norm before clipping
    "detached_fraction",  # fraction of steps whose h_{t-1} was blocked
    "epoch_seconds",  # wall-clock seconds of the epoch's training
)
#: Per-epoch metrics of the tasks that have them besides EPOCH_METRICS: validation perplexity
#: (language model) and greedy-decoded validation CIDEr-D and BLEU-4 (captioning).
EXTRA_EPOCH_METRICS = {"language_model": ("val_ppl",), "captioning": ("val_cider", "val_bleu4")}
TASK_EPOCH_METRICS = tuple(m for names in EXTRA_EPOCH_METRICS.values() for m in names)


def epoch_metrics_of(task: str | None) -> tuple[str, ...]:
    """Every per-epoch metric a run of `task` logs (EPOCH_METRICS and the task's own)."""
    return (*EPOCH_METRICS, *EXTRA_EPOCH_METRICS.get(task or "", ()))


#: Bookkeeping metric logged with every epoch (value = step = epoch) in the same batch as its
#: values: the latest one says exactly which epochs MLflow holds.
EPOCH_MARKER = "epoch"

#: Final metrics of a child run, logged once when its trial ends (``TRANSFER_PREFIX<T>`` are
#: added for copying runs, one per evaluated delay T).
FINAL_METRICS = (
    "best_val_acc",  # validation accuracy at the best epoch
    # the model-selection value at the best epoch, higher is better: validation accuracy
    # (copying, MNIST), validation CIDEr-D (captioning), 1 / perplexity (language model)
    "best_val_score",
    "best_epoch",  # first epoch reaching it
    "test_acc_at_best",  # test accuracy of the best-validation weights (NaN: no test set)
    "epochs_to_threshold",  # first epoch with val_acc >= the run's threshold (NaN: never)
    "diverged",  # 1 if the loss or gradient turned non-finite
    "diverged_epoch",  # the epoch it did (NaN: never)
    "last_epoch",  # last epoch trained (planned end, early stop or divergence)
    "max_grad_norm",  # largest gradient norm before clipping
    "censored",  # 1 if a scheduler stopped the run before its planned epochs
)
#: Final metrics of the tasks that have them besides FINAL_METRICS.
TASK_FINAL_METRICS = {
    "language_model": ("test_loss", "test_perplexity", "best_val_perplexity"),
    "captioning": (
        *(f"test_bleu{n}" for n in range(1, 5)),
        "test_meteor",
        "test_rouge_l",
        "test_cider",
        "best_val_cider",
    ),
}
#: The final metric that summaries and report sentences compare per task (default
#: ``best_val_acc``): what the paper's tables report for that task.
HEADLINE_METRICS = {"language_model": "test_perplexity", "captioning": "test_cider"}


def headline_metric(task: str | None) -> str:
    return HEADLINE_METRICS.get(task or "", "best_val_acc")


#: The search's objective comes from this final metric of each seed (and from this record
#: key of each epoch while a block runs).
SCORE_METRIC, EPOCH_SCORE = "best_val_score", "val_score"
TRANSFER_PREFIX = "transfer_acc_T"
_TRANSFER = re.compile(rf"^{TRANSFER_PREFIX}(\d+)$")


def transfer_metric(delay: int) -> str:
    """The final metric of the best checkpoint's accuracy at copying delay ``delay``."""
    return f"{TRANSFER_PREFIX}{int(delay)}"


def transfer_delay(metric: str) -> int | None:
    """The delay of a transfer metric name, or None for any other name."""
    match = _TRANSFER.match(metric)
    return int(match.group(1)) if match else None


#: Transfer accuracy at k times the training delay (``transfer_acc_x2`` is T=200 for a run
#: trained at T=100, T=10 for one trained at T=5): what transfer copying means at any scale.
TRANSFER_RATIO_PREFIX = "transfer_acc_x"
_TRANSFER_RATIO = re.compile(rf"^{TRANSFER_RATIO_PREFIX}(\d+)$")


def transfer_ratio_metric(ratio: int) -> str:
    return f"{TRANSFER_RATIO_PREFIX}{int(ratio)}"


def transfer_ratio(metric: str) -> int | None:
    """The k of a ``transfer_acc_x<k>`` name, or None for any other name."""
    match = _TRANSFER_RATIO.match(metric)
    return int(match.group(1)) if match else None


#: Per-epoch metrics of a parent run: the seed aggregate of ``val_acc``.
PARENT_EPOCH_METRICS = ("val_acc_mean", "val_acc_min", "val_acc_max", "seeds")
#: Final metrics where lower is better (every other comparison metric: higher is better).
LOWER_IS_BETTER = frozenset(
    {"test_perplexity", "test_loss", "best_val_perplexity", "epochs_to_threshold", "val_ppl"}
)
#: Final metrics of a parent run of a sequential study (``--seeds auto``): the seeds it ran,
#: the look that decided it, its stage-wise p-value, its compute, and what a fixed design
#: with 80% power at the observed effect would have needed (seeds and the pair's seconds).
SEQUENTIAL_METRICS = (
    "seeds_used",
    "trial_seconds",
    "gpu_seconds",
    "looks",
    "decided_at_look",
    "mean_difference",
    "sd_difference",
    "p_value",
    "fixed_design_seeds",
    "fixed_design_seconds",
    "pair_seconds_per_seed",
    "pair_seconds",
)
#: Tags of such a parent: the decision (better, worse, equivalent, undecided) and why it
#: stopped (decided, max_seeds, budget; "baseline" for a baseline).
DECISION_TAG, STOP_TAG, DECISION_METRIC_TAG = "decision", "stopped_by", "decision_metric"
#: The same outcome on each child run of the configuration, as metrics (the report's data
#: are the child runs): ``sequential_decision`` +1 better, -1 worse, 0 equivalent (absent:
#: undecided); ``sequential_stop`` 0 decided, 1 max_seeds, 2 budget.
SEQUENTIAL_DECISIONS = {"better": 1.0, "worse": -1.0, "equivalent": 0.0}
SEQUENTIAL_STOPS = {"decided": 0.0, "max_seeds": 1.0, "budget": 2.0}
#: A study's family of "better / worse than vanilla" tests (issue 20): on each h-detach
#: parent run, ``p_value`` (raw, two-sided, of the configuration against its paired baseline)
#: and ``p_adjusted`` (after the study's correction across its configurations, tag
#: ``correction``: holm, bh or none); ``decision_adjusted`` (tag) is better, worse or
#: undecided at alpha after the correction.
P_VALUE_METRIC, P_ADJUSTED_METRIC = "p_value", "p_adjusted"
CORRECTION_TAG, ADJUSTED_DECISION_TAG = "correction", "decision_adjusted"
#: The same family figures on each child run of the configuration (the report's data are the
#: child runs), as metrics: raw and adjusted p, and the decision after the correction as
#: ``SEQUENTIAL_DECISIONS`` codes (absent: undecided); the correction is the child's
#: ``CORRECTION_TAG`` tag.
FAMILY_CHILD_METRICS = {
    "family_p_value": P_VALUE_METRIC,
    "family_p_adjusted": P_ADJUSTED_METRIC,
    "family_decision_adjusted": ADJUSTED_DECISION_TAG,
}
#: Stage of a study's runs (tag on parents and children): the search, or the confirmation of
#: the selected configuration(s) and vanilla on fresh seeds (``--confirm-seeds N``), which
#: lives in its own MLflow experiment ``<study experiment>`` + ``CONFIRM_SUFFIX``.
STAGE_TAG, SEARCH_STAGE, CONFIRM_STAGE = "study_stage", "search", "confirmation"
CONFIRM_SUFFIX = "-confirm"
#: Tag on the search's parent runs of the selected configuration(s): ``confirmed`` when a
#: confirmation on fresh seeds exists (the verdict rests on it), ``selection-biased`` when
#: ``--confirm-seeds 0`` (the search-stage effect is biased upward by the selection).
SELECTION_TAG, CONFIRMED, SELECTION_BIASED = "selection", "confirmed", "selection-biased"
#: The shape gate (``pairedstats/shape.py``) behind a configuration's test against vanilla:
#: on its parent run ``skewness`` (of the decision metric's paired differences, pooled over
#: the study's configurations), ``skewness_pairs`` (the paired differences pooled),
#: ``pairs_needed`` (what a verdict needs at that skewness) and ``withheld`` (1: the test
#: reached a decision the gate held back, for too few pairs; 0: it did not); the skewness and
#: the pairs needed are absent where the skewness is undefined (no spread: the gate is open).
#: Written by the driver with a sequential outcome (``--seeds auto``) and by the summary for
#: a fixed-seed study's test; on each child run under ``GATE_CHILD_METRICS``' names.
GATE_METRICS = ("skewness", "skewness_pairs", "pairs_needed", "withheld")
GATE_CHILD_METRICS = {
    "gate_skewness": "skewness",
    "gate_pairs_needed": "pairs_needed",
    "gate_withheld": "withheld",
}
SEQUENTIAL_CHILD_METRICS = {
    "sequential_decision": "decision",
    "sequential_stop": "reason",
    "sequential_look": "decided_at_look",
    "sequential_seeds": "seeds_used",
    "sequential_pair_seconds": "pair_seconds",
    "sequential_fixed_seeds": "fixed_design_seeds",
    "sequential_fixed_seconds": "fixed_design_seconds",
}

# -- runs: kinds, tags, statuses -----------------------------------------------------------

RUN_KIND_TAG = "run_kind"
PARENT, CHILD, REPORT = "parent", "child", "report"
CONFIG_ID_TAG = "config_id"
SEED_TAG = "seed"
#: Tag of an h-detach parent run naming the configuration of its paired vanilla baseline.
BASELINE_TAG = "baseline_config_id"
#: Tags of every child and parent run, so the MLflow UI can group by them.
RUN_TAGS = ("task", "arm", "p_detach", "lr", "clip", "study")
#: MLflow statuses of a run that will not change any more.
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")

#: A run's *setup*: everything that defines the experiment except the arm (p_detach, c_detach,
#: damp and how masks are drawn) and the seed. Runs are comparable only inside one setup,
#: and there arms pair by seed. ``seq_len`` is the copying delay T (the number of steps for
#: MNIST), ``pixel_pool`` and ``one_hot`` the input encoding, the sizes and epochs the budget.
SETUP_KEYS = (
    "task",
    "seq_len",
    "one_hot",
    "pixel_pool",
    "permutation",
    "hidden_size",
    "num_layers",
    "optimizer",
    "momentum",
    "batch_size",
    "epochs",
    "batches_per_epoch",
    "train_size",
    "val_size",
    "test_size",
    "anneal_p",
    "select",
    "lr",
    "clip",
    "clip_norm",
    # fp32 or tf32 recurrent products: rounding that training amplifies, so arms of different
    # precisions never pair (issue 24)
    "precision",
)
#: Setup keys that only some tasks have: the corpus and tokens of the language model, the
#: decoder of captioning. A run of any other task counts them as absent (every run logs
#: every option, and these must not split the setups of tasks that ignore them).
_LM, _CAPTIONING = ("language_model",), ("captioning",)
TASK_SETUP_KEYS = {
    "corpus": (*_LM, *_CAPTIONING),
    "level": _LM,
    "dropout": _LM,
    "tie_weights": _LM,
    "decoder": _CAPTIONING,
    "max_caption_len": _CAPTIONING,
    "beam_size": _CAPTIONING,
    "embedding_size": (*_LM, *_CAPTIONING),
    "min_count": (*_LM, *_CAPTIONING),
}
SETUP_KEYS = (*SETUP_KEYS, *TASK_SETUP_KEYS)
#: Runs of two arms compare seed by seed when these columns match (the seed last). Built from
#: the whole SETUP_KEYS, task-specific keys included: two language-model runs of different
#: corpora must not pair.
PAIR_KEYS = (*SETUP_KEYS, "seed")

# -- derived quantities (one definition each) ----------------------------------------------


def epochs_to_threshold(val_acc, threshold: float):
    """First epoch (1-based) whose validation accuracy is >= ``threshold``; NaN if none.

    Args:
        val_acc: ``num_epochs`` accuracies of one run, or ``num_runs x num_epochs`` (NaN after
            a run's last epoch).

    Returns:
        a float for one run, an array of ``num_runs`` floats otherwise.
    """
    acc = np.asarray(val_acc, dtype=float)
    if acc.shape[-1] == 0:
        out = np.full(acc.shape[:-1], np.nan)
    else:
        with np.errstate(invalid="ignore"):
            hit = acc >= threshold
        out = np.where(hit.any(axis=-1), np.argmax(hit, axis=-1) + 1.0, np.nan)
    return float(out) if out.ndim == 0 else out


def prob_better(a, b, axis: int = -1):
    """P(A > B) over seed pairs: the mean of 1[a > b] + 1/2 1[a = b] along ``axis``.

    Args:
        a, b: same shape, ``... x num_seeds``; element i of both comes from seed i.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    return np.mean((a > b) + 0.5 * (a == b), axis=axis)


def seconds_per_seed(epoch_seconds: float, epochs: float, members: float = 1) -> float:
    """What one seed costs to train: its trial's seconds per epoch times its epochs, shared
    by the trial's ``members`` seed members (trained together, they share each epoch). The
    planner (``hdetach-study plan``) and the report's bottom line both estimate cost with it."""
    return float(epoch_seconds) * max(float(epochs), 1.0) / max(float(members), 1.0)


def study_hours(seeds_per_arm: float, per_seed_seconds: float, arms: int = 2) -> float:
    """Compute hours of a paired comparison: ``seeds_per_arm`` seeds in each of ``arms``."""
    return arms * float(seeds_per_arm) * float(per_seed_seconds) / 3600.0
