"""The paper's claims C1-C10 as checkable statements, and their verdicts on our runs.

``claims.yaml`` states each claim declaratively (its header documents the fields);
:func:`load_claims` validates it, :func:`evaluate_claims` judges every claim against the
study's results. The statistics come from :mod:`dashboards.stats`; nothing here reads files
except ``load_claims``.

Input schema (produced by the export module)
--------------------------------------------
``runs``: one row per (configuration, seed) run.

=====================  =========  ==============================================================
column                 type       meaning
=====================  =========  ==============================================================
experiment             str        study name
task                   str        "copying" | "seq_mnist" | "pmnist" | ...
run_id, config_id      str        run and configuration identifiers
arm                    str        "h-detach" | "vanilla" | "c-detach" | "damp"
p_detach, c_detach,    float      detach probabilities / damping factor (0 when unused)
damp
lr                     float      learning rate
clip, clip_norm        bool,      gradient-norm clipping on, and its bound
                       float
seed                   int        seed (vanilla and h-detach runs pair on it)
seq_len                int        copying delay T (784 for MNIST)
epochs, last_epoch     int        planned epochs, last epoch actually trained (1-based)
best_val_acc           float      best validation accuracy, fraction in [0, 1]
test_acc_at_best       float      test accuracy at the best validation epoch (NaN: no test set)
threshold              float      val acc used for ``epochs_to_threshold``
epochs_to_threshold    float      first epoch with val acc >= threshold (NaN: never)
diverged               bool       training diverged (NaN/inf loss)
diverged_epoch         float      epoch of divergence (NaN)
censored               bool       stopped early by a scheduler
max_grad_norm          float      largest gradient norm seen (before clipping)
transfer_acc_T{T}      float      copying only: accuracy of the best checkpoint at delay T
=====================  =========  ==============================================================

``history``: one row per (run_id, epoch): ``run_id``, ``epoch`` (1-based), ``train_loss``,
``val_loss``, ``val_acc``, ``grad_norm``, ``grad_norm_max``, ``detached_fraction``,
``epoch_seconds``. It is used to recompute epochs-to-threshold at a claim's own threshold
(vectorised ``groupby``) and to fill ``max_grad_norm`` when ``runs`` lacks it.

Runs of the two arms pair on (seq_len, lr, clip, clip_norm, seed) (lr left out when each arm
is taken at its own best learning rate). When every key is unique in both arms and at least
two keys match, the comparison is paired over the matching seeds; otherwise unpaired.

Decision rule
-------------
Every check turns into an *effect* oriented so that positive means "treatment better" (for
lower-is-better metrics such as epochs, divergence or grad norm the sign is flipped), with a
95% CI, and, where defined, P(treatment better than baseline) with a 95% bootstrap CI:

* mean: mean (paired) difference, percentile bootstrap; P(A>B) with ties 1/2.
* rate: difference of rates, Newcombe interval; P(A>B) on the 0/1 outcomes.
* time_to_threshold: epochs saved = restricted mean epochs-to-threshold (Kaplan-Meier,
  censored runs kept) of baseline minus treatment; P(treatment faster), Gehan scoring.
* lr_worst_case: worst mean over learning rates, treatment minus baseline (no P).
* seed_std: std over seeds, baseline minus treatment (no P).

A check is

* **better** (``min_effect`` m >= 0): *supported* when the effect CI lies above 0 or P(A>B)
  is significant (lower bound > 0.5); *contradicted* when the effect CI lies below m, or
  P(A>B)'s upper bound is below 0.5; if both the sign evidence and the support hold, the
  evidence conflicts and the check is *inconclusive*.
* **worse**: the same with the effect negated and P replaced by 1 - P.
* **not_worse** (margin d): *supported* when the effect CI lies above -d, *contradicted* when
  it lies below -d.
* **equivalent** (margin d): *supported* when the CI lies inside (-d, d), *contradicted* when
  it lies wholly outside.
* **below / above** (benchmarks, C9): *supported* when the figure (its CI if given) lies below
  / above ``value``, *contradicted* when it lies on the other side.
* otherwise, or when an arm has fewer than ``min_seeds`` runs, *inconclusive*; the check
  then reports the seeds per arm a two-sided t-test at alpha 0.05 would need for power 0.8
  at the observed effect (Colas et al. 2018; see ``stats.seeds_needed``).
* *no runs yet* when either arm has no selected runs (or the metric column is missing);
  *no data* for a benchmark claim whose figure was not given.

A claim is *contradicted* if any check is, *supported* if all checks are, *no runs yet* (or
*no data*) if no check has data, and *inconclusive* otherwise (its seeds-needed is the largest
among its inconclusive checks).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from dashboards import stats

VERDICTS = ("supported", "contradicted", "inconclusive", "no runs yet", "no data")
STATISTICS = ("mean", "rate", "time_to_threshold", "lr_worst_case", "seed_std", "benchmark")
COMPARISONS = ("better", "worse", "not_worse", "equivalent", "below", "above")
ARMS = ("h-detach", "vanilla", "c-detach", "damp")
LOWER_IS_BETTER = frozenset(
    {
        "epochs_to_threshold",
        "diverged",
        "max_grad_norm",
        "train_loss",
        "val_loss",
        "test_loss",
        "val_perplexity",
        "test_perplexity",
    }
)
BOOLEAN_METRICS = frozenset({"diverged", "censored"})
PAIR_KEYS = ("seq_len", "lr", "clip", "clip_norm", "seed")
SELECTION_METRIC = "best_val_acc"

_CLAIM_KEYS = {"id", "title", "source", "task", "filters", "checks", "min_seeds"}
_CHECK_KEYS = {
    "name",
    "task",
    "metric",
    "statistic",
    "comparison",
    "treatment",
    "baseline",
    "filters",
    "treatment_filters",
    "baseline_filters",
    "margin",
    "min_effect",
    "threshold",
    "success_at",
    "exceeds",
    "lower_is_better",
    "select_lr",
    "value",
    "unit",
    "paper",
}
_DEFAULT_ARMS = {"treatment": "h-detach", "baseline": "vanilla"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------------------------
# Claims: typed, validated once


@dataclass(frozen=True)
class Check:
    """One comparison that a claim makes (see the header of claims.yaml)."""

    name: str
    task: str | None
    metric: str
    statistic: str
    comparison: str
    treatment: str
    baseline: str
    filters: dict[str, Any]
    treatment_filters: dict[str, Any]
    baseline_filters: dict[str, Any]
    margin: float
    min_effect: float
    lower_is_better: bool
    threshold: float | None = None
    success_at: float | None = None
    exceeds: float | None = None
    select_lr: str | None = None
    value: float | None = None
    unit: str = ""
    paper: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A claim of the paper: id, where it is made, and the checks that test it."""

    id: str
    title: str
    source: str
    checks: tuple[Check, ...]
    min_seeds: int


def _fail(cid: str, name: str, problem: str) -> ValueError:
    return ValueError(f"claim {cid}: field '{name}': {problem}")


def _number(cid: str, name: str, value: Any, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise _fail(cid, name, f"must be a number, got {value!r}")
    return float(value)


def _filters(cid: str, name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(cid, name, f"must be a mapping column -> value(s), got {value!r}")
    out: dict[str, Any] = {}
    for col, want in value.items():
        if not isinstance(col, str) or not _IDENTIFIER.match(col):
            raise _fail(cid, name, f"column names must be identifiers, got {col!r}")
        items = want if isinstance(want, list) else [want]
        if not items or not all(isinstance(v, str | int | float | bool) for v in items):
            raise _fail(cid, f"{name}.{col}", f"must be a scalar or a list of scalars: {want!r}")
        out[col] = want
    return out


def _infer_statistic(metric: str, success_at: Any, exceeds: Any) -> str:
    if metric == "epochs_to_threshold":
        return "time_to_threshold"
    if success_at is not None or exceeds is not None or metric in BOOLEAN_METRICS:
        return "rate"
    return "mean"


def _parse_check(cid: str, i: int, raw: Any, claim: Mapping, defaults: Mapping) -> Check:
    where = f"checks[{i}]"
    if not isinstance(raw, Mapping):
        raise _fail(cid, where, f"must be a mapping, got {raw!r}")
    unknown = set(raw) - _CHECK_KEYS
    if unknown:
        raise _fail(cid, f"{where}.{sorted(unknown)[0]}", "unknown field")
    metric = raw.get("metric")
    if not isinstance(metric, str) or not _IDENTIFIER.match(metric):
        raise _fail(cid, f"{where}.metric", f"must be an identifier, got {metric!r}")
    success_at = _number(cid, f"{where}.success_at", raw.get("success_at"))
    exceeds = _number(cid, f"{where}.exceeds", raw.get("exceeds"))
    if success_at is not None and exceeds is not None:
        raise _fail(cid, f"{where}.exceeds", "give success_at or exceeds, not both")
    statistic = raw.get("statistic") or _infer_statistic(metric, success_at, exceeds)
    if statistic not in STATISTICS:
        raise _fail(cid, f"{where}.statistic", f"must be one of {STATISTICS}, got {statistic!r}")
    comparison = raw.get("comparison")
    if comparison not in COMPARISONS:
        raise _fail(cid, f"{where}.comparison", f"must be one of {COMPARISONS}: {comparison!r}")
    if (statistic == "benchmark") != (comparison in ("below", "above")):
        raise _fail(
            cid, f"{where}.comparison", f"'{comparison}' does not go with statistic '{statistic}'"
        )
    value = _number(cid, f"{where}.value", raw.get("value"))
    if statistic == "benchmark" and value is None:
        raise _fail(cid, f"{where}.value", "a benchmark check needs the value to compare with")
    task = raw.get("task", claim.get("task"))
    if statistic != "benchmark" and not isinstance(task, str):
        raise _fail(cid, f"{where}.task", f"a run-based check needs a task, got {task!r}")
    arms = {}
    for role in ("treatment", "baseline"):
        arm = raw.get(role, defaults.get(role, _DEFAULT_ARMS[role]))
        if statistic != "benchmark" and arm not in ARMS:
            raise _fail(cid, f"{where}.{role}", f"must be one of {ARMS}, got {arm!r}")
        arms[role] = arm or ""
    margin = _number(cid, f"{where}.margin", raw.get("margin", 0.0), allow_none=False)
    min_effect = _number(cid, f"{where}.min_effect", raw.get("min_effect", 0.0), allow_none=False)
    if margin < 0 or min_effect < 0:
        raise _fail(cid, f"{where}.margin", "margin and min_effect must be >= 0")
    if comparison == "equivalent" and margin == 0:
        raise _fail(cid, f"{where}.margin", "an equivalence check needs a margin > 0")
    threshold = _number(cid, f"{where}.threshold", raw.get("threshold"))
    if threshold is not None and statistic != "time_to_threshold":
        raise _fail(cid, f"{where}.threshold", "only epochs_to_threshold checks take one")
    select_lr = raw.get("select_lr")
    if select_lr not in (None, "best"):
        raise _fail(cid, f"{where}.select_lr", f"must be 'best' or absent, got {select_lr!r}")
    lower = raw.get("lower_is_better")
    if lower is None:
        lower = metric in LOWER_IS_BETTER or exceeds is not None
    if not isinstance(lower, bool):
        raise _fail(cid, f"{where}.lower_is_better", f"must be true or false, got {lower!r}")
    paper = raw.get("paper") or {}
    if not isinstance(paper, Mapping):
        raise _fail(cid, f"{where}.paper", f"must be a mapping arm -> number, got {paper!r}")
    for key, number in paper.items():
        if key == "note":
            if not isinstance(number, str):
                raise _fail(cid, f"{where}.paper.note", f"must be text, got {number!r}")
        else:
            _number(cid, f"{where}.paper.{key}", number)
    name = raw.get("name") or f"{arms['treatment']} {comparison} {arms['baseline']} on {metric}"
    return Check(
        name=str(name),
        task=task,
        metric=metric,
        statistic=statistic,
        comparison=comparison,
        treatment=arms["treatment"],
        baseline=arms["baseline"],
        filters={
            **_filters(cid, "filters", claim.get("filters")),
            **_filters(cid, f"{where}.filters", raw.get("filters")),
        },
        treatment_filters=_filters(cid, f"{where}.treatment_filters", raw.get("treatment_filters")),
        baseline_filters=_filters(cid, f"{where}.baseline_filters", raw.get("baseline_filters")),
        margin=margin,
        min_effect=min_effect,
        lower_is_better=lower,
        threshold=threshold,
        success_at=success_at,
        exceeds=exceeds,
        select_lr=select_lr,
        value=value,
        unit=str(raw.get("unit", "")),
        paper=dict(paper),
    )


def parse_claims(document: Mapping) -> list[Claim]:
    """Validate a claims document (the parsed YAML) into :class:`Claim` objects.

    Raises:
        ValueError: naming the claim id and the offending field.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("claims"), list):
        raise ValueError("claims file: top level needs a 'claims' list")
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise ValueError(f"claims file: 'defaults' must be a mapping, got {defaults!r}")
    claims: list[Claim] = []
    seen: set[str] = set()
    for k, raw in enumerate(document["claims"]):
        cid = raw.get("id") if isinstance(raw, Mapping) else None
        if not isinstance(cid, str) or not re.match(r"^C\d+$", cid):
            raise ValueError(f"claim #{k + 1}: field 'id': must look like 'C3', got {cid!r}")
        if cid in seen:
            raise _fail(cid, "id", "duplicate id")
        seen.add(cid)
        unknown = set(raw) - _CLAIM_KEYS
        if unknown:
            raise _fail(cid, sorted(unknown)[0], "unknown field")
        for key in ("title", "source"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise _fail(cid, key, f"must be non-empty text, got {raw.get(key)!r}")
        checks = raw.get("checks")
        if not isinstance(checks, list) or not checks:
            raise _fail(cid, "checks", "must be a non-empty list")
        min_seeds = raw.get("min_seeds", defaults.get("min_seeds", 5))
        if isinstance(min_seeds, bool) or not isinstance(min_seeds, int) or min_seeds < 2:
            raise _fail(cid, "min_seeds", f"must be an integer >= 2, got {min_seeds!r}")
        claims.append(
            Claim(
                id=cid,
                title=raw["title"],
                source=raw["source"],
                checks=tuple(_parse_check(cid, i, c, raw, defaults) for i, c in enumerate(checks)),
                min_seeds=min_seeds,
            )
        )
    return claims


def load_claims(path: str | Path | None = None) -> list[Claim]:
    """Read and validate a claims file (default: the packaged ``claims.yaml``).

    Raises:
        ValueError: naming the claim id and the offending field.
    """
    if path is None:
        text = resources.files("dashboards").joinpath("claims.yaml").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"claims file is not valid YAML: {err}") from err
    return parse_claims(document)


# --------------------------------------------------------------------------------------------
# Verdicts


@dataclass
class CheckVerdict:
    """The verdict on one check, with our numbers per arm and the paper's beside them."""

    name: str
    metric: str
    statistic: str
    comparison: str
    verdict: str
    reason: str
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    effect: dict[str, Any] = field(default_factory=dict)
    ours: dict[str, float] = field(default_factory=dict)
    paper: dict[str, Any] = field(default_factory=dict)
    unit: str = ""
    seeds_needed: float | None = None


@dataclass
class Verdict:
    """The verdict on one claim: the summary and every check behind it."""

    claim_id: str
    title: str
    source: str
    verdict: str
    reason: str
    checks: list[CheckVerdict]
    seeds_needed: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts/lists/floats (for JSON or a dashboard table)."""
        return dataclasses.asdict(self)


def _est(e: stats.Estimate) -> dict[str, float]:
    return {"value": float(e.value), "low": float(e.low), "high": float(e.high)}


def _flip(e: stats.Estimate) -> stats.Estimate:
    return stats.Estimate(-e.value, -e.high, -e.low)


def _fmt(x: float) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:+.4g}"


def _ci(e: stats.Estimate) -> str:
    return f"{_fmt(e.value)} [{_fmt(e.low)}, {_fmt(e.high)}]"


def _decide(
    check: Check, effect: stats.Estimate, p: stats.Estimate | None, n_min: int, min_seeds: int
) -> tuple[str, str]:
    """Apply the module's decision rule; ``effect`` and ``p`` are oriented treatment-better."""
    if n_min < min_seeds:
        return "inconclusive", f"only {n_min} runs in the smaller arm, {min_seeds} needed to judge"
    kind = check.comparison
    if kind == "worse":
        effect = _flip(effect)
        p = None if p is None else stats.Estimate(1 - p.value, 1 - p.high, 1 - p.low)
    if kind in ("better", "worse"):
        p_sig = p is not None and p.low > stats.SIGNIFICANT_ABOVE
        p_neg = p is not None and p.high < stats.SIGNIFICANT_ABOVE
        support = effect.low > 0 or p_sig
        wrong_sign = effect.high < 0 or p_neg
        too_small = effect.high < check.min_effect
        word = "better" if kind == "better" else "worse"
        if support and wrong_sign:
            return "inconclusive", "effect CI and P(A>B) point in opposite directions"
        if wrong_sign:
            return "contradicted", f"the data show the opposite: the treatment is not {word}"
        if too_small:
            return "contradicted", f"the effect is surely smaller than {check.min_effect:g}"
        if support:
            return "supported", f"the treatment is {word} (CI excludes no effect)"
        return "inconclusive", "the CI includes no effect"
    if kind == "not_worse":
        if effect.low > -check.margin:
            return "supported", f"not worse by more than {check.margin:g}"
        if effect.high < -check.margin:
            return "contradicted", f"worse by more than {check.margin:g}"
        return "inconclusive", f"the CI straddles the -{check.margin:g} margin"
    if kind == "equivalent":
        if -check.margin < effect.low and effect.high < check.margin:
            return "supported", f"within +-{check.margin:g}"
        if effect.low > check.margin or effect.high < -check.margin:
            return "contradicted", f"differs by more than {check.margin:g}"
        return "inconclusive", f"the CI straddles the +-{check.margin:g} margin"
    raise AssertionError(f"unhandled comparison {kind}")  # parse_claims rules this out


def _null_difference(check: Check, effect_value: float) -> float:
    if check.comparison == "not_worse":
        return -check.margin
    if check.comparison == "equivalent":
        return check.margin if effect_value >= 0 else -check.margin
    return 0.0


def _match(column: pd.Series, want: Any) -> np.ndarray:
    items = want if isinstance(want, list) else [want]
    hit = np.zeros(len(column), dtype=bool)
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    for item in items:
        if numeric and isinstance(item, int | float) and not isinstance(item, bool):
            vals = column.to_numpy(dtype=float, na_value=np.nan)
            hit |= np.isclose(vals, float(item), rtol=1e-9, atol=1e-12)
        else:
            hit |= (column == item).to_numpy(dtype=bool, na_value=False)
    return hit


def _select(runs: pd.DataFrame, filters: Mapping[str, Any]) -> tuple[pd.DataFrame, str | None]:
    mask = np.ones(len(runs), dtype=bool)
    for col, want in filters.items():
        if col not in runs.columns:
            return runs.iloc[:0], f"column '{col}' is not in the runs"
        mask &= _match(runs[col], want)
    return runs[mask], None


def _best_lr(arm_runs: pd.DataFrame) -> pd.DataFrame:
    if "lr" not in arm_runs.columns or SELECTION_METRIC not in arm_runs.columns:
        return arm_runs
    means = arm_runs.groupby("lr")[SELECTION_METRIC].mean()
    if means.dropna().empty:
        return arm_runs
    return arm_runs[np.isclose(arm_runs["lr"].to_numpy(float), means.idxmax())]


def _pairs(treat: pd.DataFrame, base: pd.DataFrame, check: Check) -> pd.DataFrame | None:
    """Inner join of the arms on the pairing key, or None when the runs cannot be paired."""
    keys = [k for k in PAIR_KEYS if k in treat.columns and k in base.columns]
    if check.select_lr == "best":
        keys = [k for k in keys if k != "lr"]
    if "seed" not in keys or treat.duplicated(keys).any() or base.duplicated(keys).any():
        return None
    merged = treat.merge(base, on=keys, suffixes=("_t", "_b"))
    return merged if len(merged) >= 2 else None


class _Context:
    """Per-call caches (history-derived columns) so nothing global is mutated."""

    def __init__(self, history: pd.DataFrame | None, rng: np.random.Generator, n_resamples: int):
        self.history = history
        self.rng = rng
        self.n_resamples = n_resamples
        self._reach: dict[float, pd.DataFrame] = {}

    def reach(self, threshold: float) -> pd.DataFrame | None:
        """Per run_id: first epoch with val_acc >= threshold (NaN if none), last epoch."""
        h = self.history
        if h is None or h.empty or not {"run_id", "epoch", "val_acc"} <= set(h.columns):
            return None
        if threshold not in self._reach:
            last = h.groupby("run_id")["epoch"].max()
            first = h.loc[h["val_acc"] >= threshold].groupby("run_id")["epoch"].min()
            self._reach[threshold] = pd.DataFrame(
                {"first": first.reindex(last.index), "last": last}
            )
        return self._reach[threshold]


def _prepare_runs(runs: pd.DataFrame, history: pd.DataFrame | None) -> pd.DataFrame:
    runs = runs.copy()
    needs_grad = "max_grad_norm" not in runs.columns or runs["max_grad_norm"].isna().all()
    if (
        needs_grad
        and history is not None
        and "run_id" in runs.columns
        and {"run_id", "grad_norm_max"} <= set(history.columns)
    ):
        per_run = history.groupby("run_id")["grad_norm_max"].max()
        runs["max_grad_norm"] = runs["run_id"].map(per_run)
    return runs


def _time_event(arm: pd.DataFrame, check: Check, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) per run at the check's threshold; NaN time for runs we cannot judge.

    With a threshold, history (when it covers the run) recomputes the first epoch reaching it;
    otherwise the runs' own column counts only if it was computed at that same threshold.
    """
    n = len(arm)
    nan = np.full(n, np.nan)
    last = arm["last_epoch"].to_numpy(float) if "last_epoch" in arm.columns else nan
    ett = arm["epochs_to_threshold"].to_numpy(float) if "epochs_to_threshold" in arm else nan
    if check.threshold is None:
        if "epochs_to_threshold" not in arm.columns:  # nothing says when anything was reached
            return nan, np.zeros(n, dtype=bool)
        return stats.censored_epochs(ett, last)
    known = np.zeros(n, dtype=bool)
    if "threshold" in arm.columns and "epochs_to_threshold" in arm.columns:
        known = np.isclose(arm["threshold"].to_numpy(float), check.threshold)
    ett = np.where(known, ett, np.nan)
    reach = ctx.reach(check.threshold)
    if reach is not None and "run_id" in arm.columns:
        r = reach.reindex(arm["run_id"].to_numpy())
        from_history = r["last"].notna().to_numpy()
        ett = np.where(from_history, r["first"].to_numpy(float), ett)
        last = np.where(from_history & np.isnan(last), r["last"].to_numpy(float), last)
        known |= from_history
    time, event = stats.censored_epochs(ett, last)
    return np.where(known, time, np.nan), event & known


def _finish(
    check: Check,
    verdict: str,
    reason: str,
    arms: dict[str, dict[str, Any]] | None = None,
    effect: dict[str, Any] | None = None,
    ours: dict[str, float] | None = None,
    seeds: float | None = None,
) -> CheckVerdict:
    return CheckVerdict(
        name=check.name,
        metric=check.metric,
        statistic=check.statistic,
        comparison=check.comparison,
        verdict=verdict,
        reason=reason,
        arms=arms or {},
        effect=effect or {},
        ours=ours or {},
        paper=dict(check.paper),
        unit=check.unit,
        seeds_needed=seeds,
    )


def _judged(
    check: Check,
    claim: Claim,
    effect: stats.Estimate,
    p: stats.Estimate | None,
    n_t: int,
    n_b: int,
    describe: str,
    seeds: float | None,
    arms: dict[str, dict[str, Any]],
    extra: dict[str, Any],
    ours: dict[str, float],
) -> CheckVerdict:
    verdict, why = _decide(check, effect, p, min(n_t, n_b), claim.min_seeds)
    p_text = "" if p is None else f", P(A>B) {p.value:.2f} [{p.low:.2f}, {p.high:.2f}]"
    reason = (
        f"{check.treatment} vs {check.baseline}: {describe} {_ci(effect)}{p_text} "
        f"({n_t} vs {n_b} runs): {why}."
    )
    if verdict == "inconclusive" and seeds is not None:
        seeds = max(float(seeds), float(claim.min_seeds))
        reason = reason[:-1] + f"; about {_fmt_seeds(seeds)} seeds per arm would settle it."
    effect_numbers = {"effect": _est(effect), **extra}
    if p is not None:
        effect_numbers["p_improve"] = _est(p)
        effect_numbers["significant"], effect_numbers["meaningful"] = stats.significance(p)
    return _finish(
        check,
        verdict,
        reason,
        arms,
        effect_numbers,
        ours,
        seeds if verdict == "inconclusive" else None,
    )


def _fmt_seeds(n: float) -> str:
    return "infinitely many" if math.isinf(n) else f"{int(n)}"


def _ours(check: Check, treatment: float, baseline: float) -> dict[str, float]:
    """Headline figures per arm (in percent for a "%" unit)."""
    scale = 100.0 if check.unit == "%" else 1.0
    return {check.treatment: float(treatment) * scale, check.baseline: float(baseline) * scale}


def _finite(arm: pd.DataFrame, col: str) -> np.ndarray:
    v = arm[col].to_numpy(float)
    return v[~np.isnan(v)]


def _summaries(
    check: Check, vt: np.ndarray, vb: np.ndarray, ctx: _Context
) -> tuple[stats.Summary, stats.Summary, dict[str, dict[str, Any]]]:
    """Bootstrap summaries of both arms and their ``arms`` entries."""
    st = stats.summarize(vt, ctx.rng, n_resamples=ctx.n_resamples)
    sb = stats.summarize(vb, ctx.rng, n_resamples=ctx.n_resamples)
    arms = {check.treatment: _summary_dict(st), check.baseline: _summary_dict(sb)}
    return st, sb, arms


def _summary_dict(s: stats.Summary) -> dict[str, Any]:
    return {
        "n": s.n,
        "mean": _est(s.mean),
        "std": _est(s.std),
        "median": _est(s.median),
        "iqm": _est(s.iqm),
    }


def _eval_mean(check, claim, treat, base, ctx) -> CheckVerdict:
    col = check.metric
    sign = -1.0 if check.lower_is_better else 1.0
    vt, vb = _finite(treat, col), _finite(base, col)
    if vt.size == 0 or vb.size == 0:
        return _finish(check, "no runs yet", f"no finite '{col}' values in one arm")
    pairs = _pairs(treat, base, check)
    if pairs is not None:
        a, b = pairs[f"{col}_t"].to_numpy(float), pairs[f"{col}_b"].to_numpy(float)
        ok = ~np.isnan(a) & ~np.isnan(b)
        a, b = a[ok], b[ok]
    paired = pairs is not None and a.size >= 2
    if not paired:
        a, b = vt, vb
    compare = stats.paired_comparison if paired else stats.unpaired_comparison
    cmp = compare(sign * a, sign * b, ctx.rng, n_resamples=ctx.n_resamples)
    st, sb, arms = _summaries(check, vt, vb, ctx)
    seeds = stats.seeds_needed(
        sign * vt, sign * vb, null_difference=_null_difference(check, cmp.difference.value)
    )
    extra = {
        "paired": paired,
        "n_pairs": int(a.size) if paired else 0,
        "welch_p": stats.welch_pvalue(vt, vb),
        "mann_whitney_p": stats.mann_whitney_pvalue(vt, vb),
    }
    ours = _ours(check, st.mean.value, sb.mean.value)
    what = "paired" if paired else "unpaired"
    describe = f"{what} mean difference in {col}{' (sign flipped)' if sign < 0 else ''}"
    n_t, n_b = a.size, b.size
    return _judged(
        check, claim, cmp.difference, cmp.p_improve, n_t, n_b, describe, seeds, arms, extra, ours
    )


def _flags(v: pd.Series, check: Check) -> np.ndarray:
    """The per-run 0/1 outcome a rate check counts (before orienting lower-is-better)."""
    if check.success_at is not None:
        return (v.to_numpy(float, na_value=np.nan) >= check.success_at).astype(bool)
    if check.exceeds is not None:
        # NaN/inf norms are overflows: count them as above the bound.
        return ~(v.to_numpy(float, na_value=np.nan) <= check.exceeds)
    return v.fillna(False).to_numpy(dtype=bool)


def _eval_rate(check, claim, treat, base, ctx) -> CheckVerdict:
    ft, fb = _flags(treat[check.metric], check), _flags(base[check.metric], check)
    good_t, good_b = ft ^ check.lower_is_better, fb ^ check.lower_is_better
    effect = stats.rate_difference(good_t, good_b)
    pairs = _pairs(treat, base, check)
    if pairs is None:
        pt, pb = good_t, good_b
        compare = stats.unpaired_comparison
    else:
        pt = _flags(pairs[f"{check.metric}_t"], check) ^ check.lower_is_better
        pb = _flags(pairs[f"{check.metric}_b"], check) ^ check.lower_is_better
        compare = stats.paired_comparison
    cmp = compare(pt.astype(float), pb.astype(float), ctx.rng, n_resamples=ctx.n_resamples)
    rt, rb = stats.rate(ft), stats.rate(fb)
    arms = {
        check.treatment: {"n": int(ft.size), "rate": _est(rt)},
        check.baseline: {"n": int(fb.size), "rate": _est(rb)},
    }
    if check.metric == "max_grad_norm" and check.exceeds is not None:
        for name, arm in ((check.treatment, treat), (check.baseline, base)):
            g = stats.grad_norm_summary(arm["max_grad_norm"].to_numpy(float), check.exceeds)
            arms[name].update(median=g["median"], max=g["max"])
    seeds = stats.seeds_needed(
        good_t.astype(float),
        good_b.astype(float),
        null_difference=_null_difference(check, effect.value),
    )
    ours = _ours(check, rt.value, rb.value)
    label = (
        f"{check.metric} >= {check.success_at:g}"
        if check.success_at is not None
        else f"{check.metric} > {check.exceeds:g}"
        if check.exceeds is not None
        else check.metric
    )
    flip = "1 - " if check.lower_is_better else ""
    describe = f"difference in rate of {flip}[{label}]"
    extra = {"paired": pairs is not None}
    return _judged(
        check, claim, effect, cmp.p_improve, ft.size, fb.size, describe, seeds, arms, extra, ours
    )


def _km_dict(time: np.ndarray, event: np.ndarray, horizon: int) -> dict[str, Any]:
    km = stats.kaplan_meier(time, event, horizon)
    med = stats.median_epochs(km)
    n = int(np.sum(~np.isnan(time)))
    return {
        "n": n,
        "median_epochs": _est(med),
        "reached_by_horizon": _est(stats.Estimate(km.reached[-1], km.low[-1], km.high[-1])),
        "reached_rate": _est(stats.wilson_interval(int(event.sum()), n)),
        "km_reached": km.reached.tolist(),
    }


def _eval_time(check, claim, treat, base, ctx) -> CheckVerdict:
    if "epochs_to_threshold" not in treat.columns and ctx.history is None:
        return _finish(check, "no runs yet", "no epochs_to_threshold column and no history")
    tt, et = _time_event(treat, check, ctx)
    tb, eb = _time_event(base, check, ctx)
    okt, okb = ~np.isnan(tt), ~np.isnan(tb)
    if not okt.any() or not okb.any():
        thr = "" if check.threshold is None else f" at threshold {check.threshold:g}"
        return _finish(check, "no runs yet", f"no runs with epochs-to-threshold{thr} in one arm")
    # The planned epochs set the horizon, so a run censored early is not mistaken for the end.
    observed = np.r_[tt[okt], tb[okb]]
    if "epochs" in treat.columns and "epochs" in base.columns:
        observed = np.r_[observed, treat["epochs"].to_numpy(float), base["epochs"].to_numpy(float)]
    horizon = max(int(np.nanmax(observed)), 1)
    dt = _km_dict(tt[okt], et[okt], horizon)
    db = _km_dict(tb[okb], eb[okb], horizon)
    pairs = _pairs(treat.assign(_t=tt, _e=et), base.assign(_t=tb, _e=eb), check)
    paired = False
    if pairs is not None:
        ok = pairs["_t_t"].notna() & pairs["_t_b"].notna()
        pairs = pairs[ok]
        paired = len(pairs) >= 2
    if paired:
        data = [pairs[c].to_numpy() for c in ("_t_t", "_e_t", "_t_b", "_e_b")]
    else:
        data = [tt[okt], et[okt], tb[okb], eb[okb]]
    cmp = stats.time_to_threshold_comparison(
        *data, ctx.rng, horizon=horizon, paired=paired, n_resamples=ctx.n_resamples
    )
    seeds = stats.seeds_needed(
        -tt[okt], -tb[okb], null_difference=_null_difference(check, cmp.epochs_saved.value)
    )
    arms = {check.treatment: dt, check.baseline: db}
    ours = {
        check.treatment: dt["median_epochs"]["value"],
        check.baseline: db["median_epochs"]["value"],
    }
    extra = {"paired": paired, "horizon": horizon}
    describe = f"epochs saved (restricted mean to {horizon} epochs)"
    return _judged(
        check,
        claim,
        cmp.epochs_saved,
        cmp.p_faster,
        cmp.n_a,
        cmp.n_b,
        describe,
        seeds,
        arms,
        extra,
        ours,
    )


def _eval_lr(check, claim, treat, base, ctx) -> CheckVerdict:
    col = check.metric
    higher = not check.lower_is_better
    lt, vt = treat["lr"].to_numpy(float), treat[col].to_numpy(float)
    lb, vb = base["lr"].to_numpy(float), base[col].to_numpy(float)
    common = np.intersect1d(lt[~np.isnan(vt)], lb[~np.isnan(vb)])
    if common.size < 2:
        return _finish(check, "no runs yet", f"needs >= 2 common learning rates, has {common.size}")
    rt = stats.lr_robustness(lt, vt, ctx.rng, higher_is_better=higher, n_resamples=ctx.n_resamples)
    rb = stats.lr_robustness(lb, vb, ctx.rng, higher_is_better=higher, n_resamples=ctx.n_resamples)
    effect = stats.lr_worst_case_difference(
        lt, vt, lb, vb, ctx.rng, higher_is_better=higher, n_resamples=ctx.n_resamples
    )
    arms = {}
    for name, r, lr in ((check.treatment, rt, lt), (check.baseline, rb, lb)):
        arms[name] = {
            "n": int(lr.size),
            "lrs": r.lrs.tolist(),
            "means": r.means.tolist(),
            "worst_lr": r.worst_lr,
            "worst": _est(r.worst),
            "spread": _est(r.spread),
        }
    at_worst_t = vt[np.isclose(lt, rt.worst_lr)]
    at_worst_b = vb[np.isclose(lb, rb.worst_lr)]
    sign = 1.0 if higher else -1.0
    seeds = stats.seeds_needed(
        sign * at_worst_t, sign * at_worst_b, null_difference=_null_difference(check, effect.value)
    )
    n_t = int(min(np.sum(np.isclose(lt, x)) for x in common))
    n_b = int(min(np.sum(np.isclose(lb, x)) for x in common))
    ours = _ours(check, rt.worst.value, rb.worst.value)
    describe = f"worst-case mean {col} over {common.size} learning rates, difference"
    extra = {"common_lrs": common.tolist()}
    return _judged(check, claim, effect, None, n_t, n_b, describe, seeds, arms, extra, ours)


def _eval_std(check, claim, treat, base, ctx) -> CheckVerdict:
    vt, vb = _finite(treat, check.metric), _finite(base, check.metric)
    if vt.size == 0 or vb.size == 0:
        return _finish(check, "no runs yet", f"no finite '{check.metric}' values in one arm")
    effect = stats.std_difference(vt, vb, ctx.rng, n_resamples=ctx.n_resamples)
    st, sb, arms = _summaries(check, vt, vb, ctx)
    ours = _ours(check, st.std.value, sb.std.value)
    describe = f"std of {check.metric} over seeds, baseline minus treatment"
    return _judged(check, claim, effect, None, vt.size, vb.size, describe, None, arms, {}, ours)


_EVALUATORS = {
    "mean": _eval_mean,
    "rate": _eval_rate,
    "time_to_threshold": _eval_time,
    "lr_worst_case": _eval_lr,
    "seed_std": _eval_std,
}


def _benchmark_figure(raw: Any) -> stats.Estimate | None:
    if isinstance(raw, stats.Estimate):
        return raw
    if isinstance(raw, Mapping) and "value" in raw:
        v = float(raw["value"])
        return stats.Estimate(v, float(raw.get("low", v)), float(raw.get("high", v)))
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return stats.Estimate(float(raw), float(raw), float(raw))
    return None


def _eval_benchmark(check: Check, benchmarks: Mapping[str, Any] | None) -> CheckVerdict:
    fig = _benchmark_figure((benchmarks or {}).get(check.metric))
    if fig is None:
        return _finish(check, "no data", f"no benchmark figure '{check.metric}' given")
    below = check.comparison == "below"
    if (fig.high < check.value) if below else (fig.low > check.value):
        verdict = "supported"
    elif (fig.low >= check.value) if below else (fig.high <= check.value):
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    side = "below" if below else "above"
    reason = f"{check.metric} = {_ci(fig)}, claimed {side} {check.value:g}: {verdict}."
    return _finish(
        check, verdict, reason, effect={"figure": _est(fig)}, ours={"benchmark": fig.value}
    )


def _evaluate_check(
    check: Check, claim: Claim, runs: pd.DataFrame, ctx: _Context, benchmarks
) -> CheckVerdict:
    if check.statistic == "benchmark":
        return _eval_benchmark(check, benchmarks)
    if "task" not in runs.columns or "arm" not in runs.columns:
        return _finish(check, "no runs yet", "the runs table has no task/arm columns")
    task_runs = runs[runs["task"] == check.task]
    if task_runs.empty:
        return _finish(check, "no runs yet", f"no runs of task '{check.task}'")
    if check.metric not in runs.columns and not (
        check.statistic == "time_to_threshold" and ctx.history is not None
    ):
        return _finish(check, "no runs yet", f"no '{check.metric}' column in the runs")
    selected, missing = _select(task_runs, check.filters)
    arms = {}
    for role, arm, extra in (
        ("treatment", check.treatment, check.treatment_filters),
        ("baseline", check.baseline, check.baseline_filters),
    ):
        sub, miss = _select(selected[selected["arm"] == arm], extra)
        missing = missing or miss
        if sub.empty:
            why = missing or f"no {arm} runs of '{check.task}' match {check.filters | extra}"
            return _finish(check, "no runs yet", why)
        arms[role] = _best_lr(sub) if check.select_lr == "best" else sub
    if check.statistic == "lr_worst_case" and "lr" not in runs.columns:
        return _finish(check, "no runs yet", "no 'lr' column in the runs")
    return _EVALUATORS[check.statistic](check, claim, arms["treatment"], arms["baseline"], ctx)


def _aggregate(claim: Claim, checks: list[CheckVerdict]) -> Verdict:
    verdicts = [c.verdict for c in checks]
    empty = {"no runs yet", "no data"}
    judged = [c for c in checks if c.verdict not in empty]
    if not judged:
        verdict = "no data" if all(v == "no data" for v in verdicts) else "no runs yet"
        reason = checks[0].reason if len(checks) == 1 else f"none of {len(checks)} checks has data"
    elif "contradicted" in verdicts:
        bad = [c.name for c in checks if c.verdict == "contradicted"]
        verdict, reason = "contradicted", f"contradicted by: {'; '.join(bad)}"
    elif all(v == "supported" for v in verdicts):
        verdict = "supported"
        reason = checks[0].reason if len(checks) == 1 else f"all {len(checks)} checks supported"
    else:
        verdict = "inconclusive"
        n_sup = verdicts.count("supported")
        n_empty = sum(v in empty for v in verdicts)
        reason = f"{n_sup} of {len(checks)} checks supported"
        if n_empty:
            reason += f", {n_empty} without data yet"
    seeds = [c.seeds_needed for c in checks if c.verdict == "inconclusive" and c.seeds_needed]
    seeds = [s for s in seeds if not math.isnan(s)]
    return Verdict(
        claim_id=claim.id,
        title=claim.title,
        source=claim.source,
        verdict=verdict,
        reason=reason,
        checks=checks,
        seeds_needed=max(seeds) if seeds and verdict == "inconclusive" else None,
    )


def evaluate_claims(
    claims: list[Claim],
    runs: pd.DataFrame,
    history: pd.DataFrame | None,
    rng: np.random.Generator | int,
    benchmarks: Mapping[str, Any] | None = None,
    *,
    n_resamples: int = stats.N_RESAMPLES,
) -> list[Verdict]:
    """Judge every claim on the study's runs (schema and decision rule: module docstring).

    Args:
        claims: from :func:`load_claims`.
        runs: one row per run; history: one row per (run, epoch), or None.
        rng: generator (or seed) driving every bootstrap, for reproducible verdicts.
        benchmarks: figures for benchmark claims (C9), e.g. ``{"backward_time_ratio": 0.8}``
            or ``{"backward_time_ratio": {"value": 0.8, "low": 0.75, "high": 0.86}}``.
        n_resamples: bootstrap resamples per interval.

    Returns:
        one :class:`Verdict` per claim, in order.
    """
    ctx = _Context(history, np.random.default_rng(rng), n_resamples)
    prepared = _prepare_runs(runs, history)
    return [
        _aggregate(
            claim, [_evaluate_check(c, claim, prepared, ctx, benchmarks) for c in claim.checks]
        )
        for claim in claims
    ]
