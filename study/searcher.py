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
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from trainables.contract import H_DETACH, VANILLA, arm_of

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
    ):
        self.searcher = searcher
        self.seed_blocks = [list(b) for b in seed_blocks]
        self.max_configs = max_configs
        self.objective = objective
        self.configs: dict[str, dict[str, Any]] = {}  # config_id -> params + bookkeeping
        self.queue: list[tuple[str, int]] = []  # (config_id, block index) not yet a trial
        self.trials: dict[str, tuple[str, int]] = {}  # Tune trial id -> (config_id, block)
        self.suggested = 0  # configurations drawn from Optuna
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    # -- Tune's Searcher interface --------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | str | None:
        while not self.queue:
            if self.suggested >= self.max_configs:
                return Searcher.FINISHED
            optuna_id = f"config-{self.suggested}"
            params = self.searcher.suggest(optuna_id)
            if params is None:
                return None
            if params == Searcher.FINISHED:
                self.max_configs = self.suggested
                return Searcher.FINISHED
            self.suggested += 1
            self._add(params, optuna_id)
        cid, block = self.queue.pop(0)
        self.trials[trial_id] = (cid, block)
        c = self.configs[cid]
        return {
            "config_id": cid,
            "arm": c["arm"],
            "p_detach": c["p_detach"],
            "lr": c["lr"],
            "clip": c["clip"],
            "seeds": list(self.seed_blocks[block]),
            "block": block,
        }

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id not in self.trials:
            return
        cid, block = self.trials.pop(trial_id)
        result = result or {}
        # finals at the end; for a block stopped early by a scheduler (censored), its running
        # summary (best over the epochs it ran), or failing that its last validation accuracy.
        scored = result.get("finals") or result.get("summary")
        if scored:
            values = [f.get("best_val_acc", math.nan) for f in scored]
        else:
            members = result.get("members") or []
            values = [math.nan if m is None else m.get("val_acc", math.nan) for m in members]
        if error or len(values) != len(self.seed_blocks[block]):
            values = [math.nan] * len(self.seed_blocks[block])
        self.configs[cid]["done"][block] = values
        self._maybe_report(cid)

    # -- state (Tune saves wrappers with get_state, the inner searcher with save) ----------

    def get_state(self) -> dict:
        state = self.__dict__.copy()
        state.pop("searcher")
        return state

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    # -- internals ------------------------------------------------------------------------

    def _add(self, params: dict, optuna_id: str | None) -> None:
        p, lr, clip = float(params["p_detach"]), normalise_lr(params["lr"]), bool(params["clip"])
        arm = arm_of(p)
        cid = config_id(arm, p, lr, clip)
        if arm != VANILLA:
            base = config_id(VANILLA, 0.0, lr, clip)
            if base not in self.configs:  # the paired baseline, once per (lr, clip)
                self._register(base, VANILLA, 0.0, lr, clip, None)
        if cid in self.configs:  # asked again: Optuna hears the known result when it exists
            self.configs[cid]["optuna_ids"].append(optuna_id)
            self._maybe_report(cid)
            return
        self._register(cid, arm, p, lr, clip, optuna_id)

    def _register(self, cid, arm, p, lr, clip, optuna_id) -> None:
        self.configs[cid] = {
            "arm": arm,
            "p_detach": p,
            "lr": lr,
            "clip": clip,
            "optuna_ids": [optuna_id] if optuna_id else [],
            "reported": [],
            "done": {},
        }
        self.queue.extend((cid, b) for b in range(len(self.seed_blocks)))

    def _maybe_report(self, cid: str) -> None:
        c = self.configs[cid]
        if len(c["done"]) < len(self.seed_blocks):
            return
        values = [v for b in sorted(c["done"]) for v in c["done"][b]]
        c["objective"] = objective_value(values, self.objective)
        for optuna_id in c["optuna_ids"]:
            if optuna_id not in c["reported"]:
                self.searcher.on_trial_complete(optuna_id, {OBJECTIVE: c["objective"]})
                c["reported"].append(optuna_id)
