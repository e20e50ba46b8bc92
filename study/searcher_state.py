"""The searcher's state (``study/searcher.py``) as typed objects: a ``Configuration`` per
config id, holding its ``Unit`` s, one Tune trial each. Tune saves it with the experiment
(``PairedSeedSearcher.get_state``); ``from_dicts`` reads the string-keyed dicts an earlier
version saved, so a study started before the upgrade resumes after it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pairedstats.shape import Shape
from study.sequential import Comparison, Outcome


@dataclass
class Unit:
    """One Tune trial of a configuration: a block of seeds at a stage (always 0 without
    ``--seeds auto``), and once it finished its values (``values``: the score of each seed,
    what Optuna hears; ``metric``: the decision metric of each seed)."""

    seeds: list[int]
    stage: int = 0
    values: list[float] | None = None  # None: not finished
    metric: list[float] = field(default_factory=list)
    seconds: float = 0.0
    failed: bool = False  # Tune handed a failed trial no result: it measured nothing
    dropped: bool = False  # queued, then not run: its configuration stopped

    @property
    def done(self) -> bool:
        return self.values is not None


@dataclass
class Configuration:
    """One (p_detach, lr, clip) of the study, its paired baseline's id (None for vanilla)
    and the bookkeeping of its trials."""

    arm: str
    p_detach: float
    lr: float
    clip: bool
    baseline: str | None
    optuna_ids: list[str]  # the Optuna trials that asked for it
    reported: list[str] = field(default_factory=list)  # those that heard its objective
    units: list[Unit] = field(default_factory=list)
    stages: int = 0  # stages queued (sequential)
    stopped: bool = False
    outcome: Outcome | None = None
    objective: float | None = None
    #: the shape gate's pool at each look of this configuration, recorded when the look was
    #: first analysed (a look analysed again, or after a resume, is gated as it was then)
    shapes: list[Shape] = field(default_factory=list)

    @property
    def done(self) -> list[Unit]:
        return [unit for unit in self.units if unit.done]

    def seed_values(self) -> dict[int, float]:
        """The decision metric per seed over the finished units."""
        out: dict[int, float] = {}
        for unit in self.done:
            out.update(zip(unit.seeds, unit.metric, strict=False))
        return out

    def per_seed_seconds(self) -> float:
        seeds = sum(len(unit.seeds) for unit in self.done)
        return sum(unit.seconds for unit in self.done) / seeds if seeds else 0.0


def from_dicts(c: Configuration | dict) -> Configuration:
    """A configuration saved as the string-keyed dicts of an earlier version (a study started
    before the upgrade resumes after it)."""
    if isinstance(c, Configuration):
        return c
    failed, done = set(c.get("failed_units", [])), c["done"]
    units = [
        Unit(u["seeds"], u["stage"], done.get(i), u.get("metric", []), u.get("seconds", 0.0),
             i in failed, u.get("dropped", False))
        for i, u in enumerate(c["units"])
    ]  # fmt: skip
    outcome = c.get("outcome")
    if outcome is not None:
        names = [f.name for f in dataclasses.fields(Comparison)]
        compared = (
            Comparison(**{k: outcome.get(k) for k in names}) if "decision" in outcome else None
        )
        outcome = Outcome(*(outcome[k] for k in ("reason", "seeds", "trial_seconds")),
                          outcome["gpu_seconds"], outcome["metric"], compared)  # fmt: skip
    keep = ("arm", "p_detach", "lr", "clip", "baseline", "optuna_ids", "reported", "stages")
    return Configuration(
        **{k: c[k] for k in keep}, units=units, stopped=c["stopped"], outcome=outcome,
        objective=c.get("objective"),
    )  # fmt: skip
