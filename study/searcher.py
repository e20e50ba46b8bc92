"""From Optuna's configurations to Tune trials: every configuration on the same seeds, paired
with its vanilla baseline, and one seed-robust value per configuration back to Optuna.

``PairedSeedSearcher`` wraps Ray Tune's ``OptunaSearch``. For each configuration Optuna
suggests (p_detach, lr, clip) it emits one Tune trial per block of K seeds; for every
(lr, clip) it has not seen yet it also emits the vanilla baseline (p_detach = 0) on the same
seed blocks, first, so the pairs progress together. When every block of a configuration has
finished, it reports the configuration's objective (``objective_value``) to Optuna as that
Optuna trial's result. Baselines are not Optuna trials. A ``ConcurrencyLimiter`` around it
caps the trials running at once (Optuna alone would start them one at a time).

Config ids are derived from the parameters (``config_id``), so a repeated suggestion and a
restarted study find the same configuration, its runs and its results.

Resuming: Tune restores this searcher from its last periodic snapshot, which can predate the
last configurations drawn, while the Optuna storage recorded every draw as it happened. A
configuration drawn after the snapshot is an Optuna trial still RUNNING that the restored
``OptunaSearch`` does not know; it is taken up again (same parameters, same slot) before
anything new is drawn, rather than replaced by a fresh sample and left half-run.

With ``sequential`` (``--seeds auto``) the seeds are not fixed in advance: every configuration
and its baseline start on the design's first ``min_seeds`` seeds; whenever both have
finished the same stage, the paired comparison is analysed (``study/sequential.py``) and,
unless it is decided, at ``max_seeds`` or out of budget, both get the next ``seed_block``
seeds. A look decides only through the shape gate (``pairedstats/shape.py``): the skewness of
the decision metric's paired differences pooled over every configuration of the study held
at that moment (each against its baseline, one group), recorded with the configuration when
the look is first analysed, so a look analysed again or after a resume is gated as before.
Optuna hears a configuration's objective only once it has stopped. While
configurations wait for their looks, new ones are drawn from Optuna so that no slot idles.

The state is typed (``study/searcher_state.py``): a ``Configuration`` per config id holding
its ``Unit`` s (one Tune trial each: a block of seeds, its stage, its values once finished);
the sequential plan, the paired differences and a stopped configuration's ``Outcome`` live
beside the test in ``study/sequential.py``.
"""

from __future__ import annotations

import math

import numpy as np
from ray.tune.search import Searcher

from pairedstats.shape import Shape
from study import sequential as seq
from study.searcher_state import Configuration, Unit, from_dicts
from study.sequential import Comparison, Outcome, SequentialPlan, paired_differences
from study.shape_ledger import ShapeLedger
from trainables.contract import (
    EPOCH_SCORE,
    H_DETACH,
    LOWER_IS_BETTER,
    SCORE_METRIC,
    VANILLA,
    arm_of,
)

OBJECTIVE = "objective"


def config_id(arm: str, p_detach: float, lr: float, clip: bool) -> str:
    """Readable and unique, e.g. ``hd_p0.25_lr1.000e-03_clip`` (lr to 4 significant digits,
    the precision the searcher keeps, see ``normalise_lr``)."""
    short = {H_DETACH: "hd", VANILLA: "vanilla"}.get(arm, arm)
    return f"{short}_p{p_detach:g}_lr{lr:.3e}_{'clip' if clip else 'noclip'}"


def normalise_lr(lr: float) -> float:
    """Learning rates are kept to 4 significant digits: a continuous search then names each
    configuration once, and a finer difference is not a different configuration."""
    return float(f"{float(lr):.4g}")


def objective_value(values: list[float], kind: str = "mean-se") -> float:
    """The seed-robust value of one configuration from its per-seed best validation
    accuracies (NaN = diverged or failed, counted as 0: a run that blows up is no success).

    ``mean-se`` (default): mean minus one standard error; rewards configurations that are
    good on every seed, not lucky on one. ``mean``, ``iqm`` (25% trimmed mean), ``worst``.
    """
    x = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    if x.size == 0:
        return float("nan")
    if kind == "mean":
        return float(x.mean())
    if kind == "worst":
        return float(x.min())
    if kind == "iqm":
        from scipy.stats import trim_mean

        return float(trim_mean(x, 0.25))
    se = x.std(ddof=1) / math.sqrt(x.size) if x.size > 1 else 0.0
    return float(x.mean() - se)


class PairedSeedSearcher(Searcher):
    """See the module docstring. ``searcher`` is the inner ``OptunaSearch``."""

    def __init__(
        self,
        searcher: Searcher,
        *,
        seed_blocks: list[list[int]],
        max_configs: int,
        objective: str = "mean-se",
        sequential: SequentialPlan | None = None,
        key: str | None = None,
        ledger: str | None = None,
    ):
        self.searcher = searcher
        self.seed_blocks = [list(b) for b in seed_blocks]
        self.max_configs = max_configs
        self.objective = objective
        self.plan = sequential
        self.key = key
        #: the shape gate's ledger file (``study/shape_ledger.py``); None: no ledger
        self.ledger = ledger
        self._recorded: ShapeLedger | None = None  # opened on first use
        self.configs: dict[str, Configuration] = {}
        self.queue: list[tuple[str, int]] = []  # (config_id, unit) not yet a trial
        self.trials: dict[str, tuple[str, int]] = {}  # Tune trial id -> (config_id, unit)
        self.suggested = 0  # configurations drawn from Optuna
        self.trial_seconds = 0.0  # every finished unit's time, for the budget
        self.budget_spent = False
        self.stopped: list[str] = []  # configurations stopped, in order (for the callback)
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    # -- Tune's Searcher interface --------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | str | None:
        while not self.queue:
            if self.suggested >= self.max_configs or self.budget_spent:
                # Sequentially, a configuration still waiting for a look may need more seeds.
                return Searcher.FINISHED if self._all_stopped() else None
            optuna_id = f"config-{self.suggested}"
            params = self._take_up_orphan(optuna_id) or self.searcher.suggest(optuna_id)
            if params is None:
                return None
            if params == Searcher.FINISHED:
                self.max_configs = self.suggested
                return Searcher.FINISHED if self._all_stopped() else None
            self.suggested += 1
            self._add(params, optuna_id)
        cid, unit = self.queue.pop(0)
        self.trials[trial_id] = (cid, unit)
        c = self.configs[cid]
        return {
            "config_id": cid,
            "arm": c.arm,
            "p_detach": c.p_detach,
            "lr": c.lr,
            "clip": c.clip,
            "seeds": list(c.units[unit].seeds),
            "block": unit,
        }

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id not in self.trials:
            return
        cid, unit = self.trials.pop(trial_id)
        result = result or {}
        done = self.configs[cid].units[unit]
        seeds = done.seeds
        # finals at the end; for a block stopped early by a scheduler (censored), its running
        # summary (best over the epochs it ran), or failing that its last validation accuracy.
        scored = result.get("finals") or result.get("summary")
        members = result.get("members") or []
        values = _decision_values(SCORE_METRIC, scored, members)
        metric = self.plan.metric if self.plan else SCORE_METRIC
        chosen = _decision_values(metric, scored, members)
        if error or len(values) != len(seeds):
            values = [math.nan] * len(seeds)
        done.failed = done.failed or error  # Tune hands a failed trial no result
        if len(chosen) != len(seeds) or error:
            chosen = [math.nan] * len(seeds)
        seconds = float(result.get("time_total_s") or 0.0)
        done.values, done.metric, done.seconds = values, chosen, seconds
        self.trial_seconds += seconds
        if self.plan is None:
            self._maybe_report(cid)
            return
        if self.plan.budget_seconds is not None and self.trial_seconds >= self.plan.budget_seconds:
            if not self.budget_spent:
                self.budget_spent = True
                self.queue.clear()  # what has not started does not start
        for other in self._affected(cid):
            self._look(other)
        if self.budget_spent:
            for other in list(self.configs):
                self._look(other)

    # -- state (Tune saves wrappers with get_state, the inner searcher with save) ----------

    def get_state(self) -> dict:
        state = self.__dict__.copy()
        state.pop("searcher")
        state.pop("_recorded", None)  # read again from the ledger
        return state

    def set_state(self, state: dict) -> None:
        ledger = self.ledger  # where the resuming command keeps it, not where it was
        self.__dict__.update(state)
        self.ledger, self._recorded = ledger, None
        self.configs = {k: from_dicts(c) for k, c in self.configs.items()}

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    # -- what the driver's callback reads ------------------------------------------------

    def outcome(self, cid: str) -> dict | None:
        """A stopped configuration's sequential outcome (None while it may still run)."""
        c = self.configs.get(cid)
        if c is None or not c.stopped:
            return None
        return c.outcome.as_dict() if c.outcome is not None else {}

    # -- internals ------------------------------------------------------------------------

    def _take_up_orphan(self, optuna_id: str) -> dict | None:
        """The parameters of the oldest Optuna trial a killed driver drew after the snapshot
        this searcher was restored from (RUNNING in the storage, unknown to the restored
        ``OptunaSearch``), bound to ``optuna_id``; None if there is none (or the inner
        searcher is not an ``OptunaSearch``)."""
        study = getattr(self.searcher, "_ot_study", None)
        known = getattr(self.searcher, "_ot_trials", None)
        if study is None or known is None:
            return None
        import optuna

        numbers = {t.number for t in known.values()}
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        orphans = sorted((t for t in running if t.number not in numbers), key=lambda t: t.number)
        if not orphans:
            return None
        frozen = orphans[0]
        known[optuna_id] = optuna.trial.Trial(study, frozen._trial_id)
        return dict(frozen.params)

    def _add(self, params: dict, optuna_id: str | None) -> None:
        p, lr, clip = float(params["p_detach"]), normalise_lr(params["lr"]), bool(params["clip"])
        arm = arm_of(p)
        cid = config_id(arm, p, lr, clip)
        base = None
        if arm != VANILLA:
            base = config_id(VANILLA, 0.0, lr, clip)
            if base not in self.configs:  # the paired baseline, once per (lr, clip)
                self._register(base, VANILLA, 0.0, lr, clip, None, None)
        if cid in self.configs:  # asked again: Optuna hears the known result when it exists
            self.configs[cid].optuna_ids.append(optuna_id)
            self._maybe_report(cid)
            return
        self._register(cid, arm, p, lr, clip, optuna_id, base)

    def _register(self, cid, arm, p, lr, clip, optuna_id, base) -> None:
        self.configs[cid] = Configuration(
            arm, p, lr, clip, baseline=base, optuna_ids=[optuna_id] if optuna_id else []
        )
        if self.plan is None:
            for block in self.seed_blocks:
                self._queue_unit(cid, block, 0)
        elif base is not None:
            # the baseline's seeds first, so the pairs progress together (a baseline stopped
            # before this configuration came reopens for it)
            self._queue_stage(base, 0)
            self._queue_stage(cid, 0)
        elif arm == VANILLA and optuna_id is not None:
            self._queue_stage(cid, 0)  # vanilla asked for by Optuna itself: one stage at a time

    def _queue_unit(self, cid: str, seeds: list[int], stage: int) -> None:
        c = self.configs[cid]
        c.units.append(Unit(list(seeds), stage))
        self.queue.append((cid, len(c.units) - 1))

    def _queue_stage(self, cid: str, stage: int) -> None:
        """Queue the trials of stages up to ``stage`` that are not queued, running or done
        (each unit once; units dropped when their configuration stopped come back)."""
        c = self.configs[cid]
        c.stopped = False  # a baseline asked for more seeds by a new configuration reopens
        while c.stages <= stage and c.stages < self.plan.stages:
            seeds = self.plan.stage_seeds(c.stages)
            k = self.plan.seeds_per_trial
            for i in range(0, len(seeds), k):
                self._queue_unit(cid, seeds[i : i + k], c.stages)
            c.stages += 1
        for u, unit in enumerate(c.units):
            if unit.dropped and unit.stage <= stage:
                unit.dropped = False
                self.queue.append((cid, u))

    def _complete_stages(self, cid: str) -> int:
        """How many stages of this configuration have every trial finished."""
        c = self.configs[cid]
        n = 0
        for stage in range(c.stages):
            units = [unit for unit in c.units if unit.stage == stage]
            if not units or not all(unit.done for unit in units):
                break
            n += 1
        return n

    def _dependents(self, cid: str) -> list[str]:
        """The configurations paired with the baseline ``cid``."""
        return [k for k, c in self.configs.items() if c.baseline == cid]

    def _affected(self, cid: str) -> list[str]:
        if self.configs[cid].arm == VANILLA:
            return [*self._dependents(cid), cid]
        return [cid]

    def _running(self, cid: str) -> bool:
        return any(c == cid for c, _ in self.trials.values()) or any(
            c == cid for c, _ in self.queue
        )

    def _look(self, cid: str) -> None:
        """Sequential step of one configuration: analyse, then stop or ask for more seeds."""
        c = self.configs[cid]
        if c.stopped:
            return
        base = c.baseline
        if base is None:  # a baseline stops when every configuration paired with it has
            dependents = self._dependents(cid)
            alone = c.optuna_ids and not dependents
            if alone:  # vanilla as an Optuna configuration of its own: no comparison
                stages = self._complete_stages(cid)
                if stages >= self.plan.stages or self.budget_spent:
                    if not self._running(cid):
                        self._stop(
                            cid, seq.STOP_CAPPED if not self.budget_spent else seq.STOP_BUDGET, None
                        )
                else:
                    self._queue_stage(cid, stages)
                return
            if all(self.configs[k].stopped for k in dependents):
                self._drop_queued(cid)
                if not self._running(cid):
                    self._stop(cid, "baseline", None)
            return
        stages = min(self._complete_stages(cid), self._complete_stages(base))
        if stages == 0:
            if self.budget_spent and not self._running(cid):
                self._stop(cid, seq.STOP_BUDGET, None)
            return
        looks = self.plan.design.looks
        used = self.plan.seeds[: looks[stages - 1]]
        mine, theirs = c.seed_values(), self.configs[base].seed_values()
        diffs = paired_differences(
            [mine.get(s, math.nan) for s in used],
            [theirs.get(s, math.nan) for s in used],
            higher_is_better=self.plan.metric not in LOWER_IS_BETTER,
        )
        shapes = self._shapes(cid, stages)
        analysis = seq.analyse(diffs, self.plan.design, key=cid, gamma=[s.gamma for s in shapes])
        if analysis.decision != seq.UNDECIDED:
            reason = seq.STOP_DECIDED
        elif stages >= self.plan.stages:
            reason = seq.STOP_CAPPED
        elif self.budget_spent:
            reason = seq.STOP_BUDGET
        else:
            self._queue_stage(base, stages)
            self._queue_stage(cid, stages)
            return
        if reason == seq.STOP_DECIDED or not self._running(cid):
            self._stop(cid, reason, (analysis, diffs, shapes[len(analysis.looks) - 1]))
            if not self._running(base):
                self._look(base)

    def _shapes(self, cid: str, stages: int) -> list[Shape]:
        """The shape gate's pool for each of the first ``stages`` looks of ``cid``: recorded
        when a look is first analysed, so that analysing it again (a later trial of another
        configuration, a resumed driver) gates it as before."""
        c = self.configs[cid]
        if self._recorded is None:
            self._recorded = ShapeLedger(self.ledger)
        while len(c.shapes) < stages:
            look = len(c.shapes)
            pool = self._recorded.get(cid, look)
            if pool is None:
                pool = self._pool()
                self._recorded.record(cid, look, pool)
            c.shapes.append(pool)
        return c.shapes[:stages]

    def _pool(self) -> Shape:
        """The pooled shape of the decision metric's paired differences: every configuration
        of the study held now against its baseline (one group each, on the seeds both have
        finished; pairedstats/shape.py)."""
        higher = self.plan.metric not in LOWER_IS_BETTER
        groups = []
        for c in self.configs.values():
            if c.baseline is None:
                continue
            mine, theirs = c.seed_values(), self.configs[c.baseline].seed_values()
            common = [s for s in self.plan.seeds if s in mine and s in theirs]
            if len(common) >= 3:
                groups.append(
                    paired_differences(
                        [mine[s] for s in common],
                        [theirs[s] for s in common],
                        higher_is_better=higher,
                    )
                )
        return Shape.of(groups)

    def _drop_queued(self, cid: str) -> None:
        """Trials of this configuration not started yet are not run (it needs no more seeds)."""
        c = self.configs[cid]
        for k, u in self.queue:
            if k == cid:
                c.units[u].dropped = True
        self.queue = [(k, u) for k, u in self.queue if k != cid]

    def _stop(self, cid: str, reason: str, analysed) -> None:
        c = self.configs[cid]
        self._drop_queued(cid)
        c.stopped = True
        seconds = sum(unit.seconds for unit in c.units)
        comparison = None
        if analysed is not None:
            analysis, diffs, pool = analysed
            per_seed = c.per_seed_seconds() + self.configs[c.baseline].per_seed_seconds()
            comparison = Comparison.of(analysis, diffs, self.plan.design.alpha, per_seed, pool)
        c.outcome = Outcome(
            reason=reason,
            seeds=sorted(s for unit in c.done for s in unit.seeds),
            trial_seconds=seconds,
            gpu_seconds=seconds * self.plan.gpus_per_trial,
            metric=self.plan.metric,
            comparison=comparison,
        )
        self.stopped.append(cid)
        self._maybe_report(cid)

    def _all_stopped(self) -> bool:
        if self.plan is None:
            return True
        return all(c.stopped for c in self.configs.values())

    def _maybe_report(self, cid: str) -> None:
        c = self.configs[cid]
        if (len(c.done) < len(self.seed_blocks)) if self.plan is None else not c.stopped:
            return
        values = [v for unit in c.done for v in unit.values]
        # Every block failed: nothing was measured, so Optuna hears a failed trial, not the
        # 0.0 that failed seeds count as beside measured ones (issue 21).
        unmeasured = all(unit.failed for unit in c.done)
        c.objective = math.nan if unmeasured else objective_value(values, self.objective)
        for optuna_id in c.optuna_ids:
            if optuna_id not in c.reported:
                if unmeasured:
                    self.searcher.on_trial_complete(optuna_id, error=True)
                else:
                    self.searcher.on_trial_complete(optuna_id, {OBJECTIVE: c.objective})
                c.reported.append(optuna_id)


def _decision_values(metric: str, finals, members) -> list[float]:
    """Per seed: the metric from the seed's finals, else from its last epoch record (NaN for
    a member that diverged)."""
    if finals and metric in finals[0]:
        return [f.get(metric, math.nan) for f in finals]
    key = {SCORE_METRIC: EPOCH_SCORE, "best_val_acc": "val_acc"}.get(metric, metric)
    return [math.nan if m is None else m.get(key, math.nan) for m in members]
