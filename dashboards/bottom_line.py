"""The report's bottom line: the one paragraph a reader sees first, computed from the verdicts.

It says what ran (runs, tasks, seeds, the scale the claims were judged at), what the data let
us conclude at that scale (claims supported or contradicted), what they do not (inconclusive
claims with the seeds per arm that would settle them, claims no run measured), and the next
command with its estimated compute. The next command settles the *most open* claim: of the
inconclusive h-detach-vs-vanilla claims whose headline check has a seeds-per-arm figure, the
one needing the fewest seeds, i.e. the cheapest to decide. It adds the missing seeds to the
same study (a new ``--run-name``, fresh seeds by ``--seed-offset``) on the setup that claim was
judged on, so the next report judges it on more seeds.

The cost is the planner's (``hdetach-study plan``): ``trainables.contract.seconds_per_seed``
and ``study_hours`` fed with the seconds per epoch these runs recorded; the report does not
import the study (layering).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dashboards.setups import PAPER, Setup, SetupIndex
from dashboards.verdicts import MAX_QUOTED_SEEDS, CheckVerdict, Verdict, fmt_seeds
from trainables.config import PRESETS, RunConfig
from trainables.contract import H_DETACH, VANILLA, seconds_per_seed, study_hours

DECIDED = ("supported", "contradicted")
#: Setup keys the command sets through its own options, not through ``--set``.
_OWN_OPTIONS = ("task", "lr", "clip")


@dataclass(frozen=True)
class NextRun:
    """The command that would settle the most open claim, and what it costs."""

    claim_id: str
    seeds_per_arm: int  # what the power computation asks for
    more_seeds: int  # beyond the seeds the setup already has in both arms
    command: str
    hours: float  # both arms, from these runs' seconds per epoch; NaN if none recorded one
    setup: str  # the setup in words


@dataclass(frozen=True)
class BottomLine:
    """The paragraph, sentence by sentence (each may be empty), and the next run behind it
    (whose command a page shows below the paragraph, ready to copy)."""

    ran: str
    concluded: str
    open: str
    next_step: str
    next_run: NextRun | None = None

    @property
    def paragraph(self) -> str:
        return " ".join(s for s in (self.ran, self.concluded, self.open, self.next_step) if s)

    @property
    def text(self) -> str:
        """The paragraph with the next command in it (for plain-text views)."""
        command = f" {self.next_run.command}" if self.next_run else ""
        return self.paragraph + command


def bottom_line(
    verdicts: Sequence[Verdict],
    runs: pd.DataFrame,
    history: pd.DataFrame | None,
    experiment: str,
) -> BottomLine:
    """The bottom line of a report on ``runs`` / ``history`` (the export's frames) whose
    claims were judged into ``verdicts``."""
    if runs.empty:
        return BottomLine(
            ran="No runs yet.",
            concluded="",
            open="",
            next_step="Start with hdetach-study run --task copying --preset smoke, then report.",
        )
    with_data = [v for v in verdicts if v.headline.has_data]
    scales = sorted({v.headline.scale for v in with_data if v.headline.scale})
    tasks = sorted(runs["task"].dropna().unique()) if "task" in runs else []
    seeds = int(runs["seed"].nunique()) if "seed" in runs else 0
    ran = f"{len(runs)} runs of {_join(tasks) or 'unknown tasks'} on {seeds} seeds" + (
        f", the claims judged at {_join(scales)}." if scales else "."
    )
    next_run = _next_run(verdicts, runs, history, experiment)
    return BottomLine(
        ran=ran,
        concluded=_concluded(with_data, scales),
        open=_open(verdicts),
        next_step=_next_sentence(next_run, verdicts),
        next_run=next_run,
    )


def _join(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _concluded(with_data: Sequence[Verdict], scales: Sequence[str]) -> str:
    decided = [v for v in with_data if v.verdict in DECIDED]
    if not decided:
        where = f"At {scales[0]}" if len(scales) == 1 else "At these scales"
        return f"{where} the data decide no claim either way."
    words = []
    for verdict in DECIDED:
        ids = [f"{v.claim_id} ({v.claim.title})" for v in decided if v.verdict == verdict]
        if ids:
            words.append(f"{'support' if verdict == 'supported' else 'contradict'} {_join(ids)}")
    decided_scales = sorted({v.headline.scale for v in decided if v.headline.scale})
    where = f"At {decided_scales[0]}" if len(decided_scales) == 1 else "At mixed scales"
    sentence = f"{where} the data {' and '.join(words)}."
    if PAPER not in decided_scales:
        sentence += (
            " A verdict below paper scale says what holds in that smaller setup; it neither "
            "reproduces nor refutes the paper's numbers."
        )
    return sentence


def _open(verdicts: Sequence[Verdict]) -> str:
    parts = []
    open_ = [v for v in verdicts if v.verdict == "inconclusive"]
    if open_:
        need = [
            f"{v.claim_id} ({fmt_seeds(v.seeds_needed)} seeds per arm)"
            if v.seeds_needed is not None
            else v.claim_id
            for v in open_
        ]
        verb = "is" if len(open_) == 1 else "are"
        parts.append(f"Not decided at this scale: {_join(need)} {verb} inconclusive.")
    unmeasured = [v.claim_id for v in verdicts if not v.headline.has_data]
    if unmeasured:
        parts.append(f"No run here measures {_join(unmeasured)}.")
    return " ".join(parts)


def _next_sentence(next_run: NextRun | None, verdicts: Sequence[Verdict]) -> str:
    if next_run is None:
        open_ = [v for v in verdicts if v.verdict == "inconclusive"]
        if open_:
            why = "; ".join(f"{v.claim_id}: {_why_no_command(v)}" for v in open_)
            return f"No command here would settle an open claim ({why})."
        return "Every claim with runs is decided at this scale."
    cost = (
        f"about {next_run.hours:.2g} compute hours (both arms, from these runs' seconds per epoch)"
        if math.isfinite(next_run.hours)
        else "a cost these runs cannot estimate (no epoch times recorded)"
    )
    return (
        f"Next: {next_run.claim_id} needs {fmt_seeds(next_run.seeds_per_arm)} seeds per arm on "
        f"the setup it was judged on ({next_run.setup}); {next_run.more_seeds} more per arm "
        f"there would cost {cost}, then report again:"
    )


def _why_no_command(verdict: Verdict) -> str:
    """Why the bottom line proposes no more seeds for an inconclusive claim."""
    if verdict.seeds_needed is None:
        return verdict.seeds_reason or "its headline check gives no seeds-per-arm figure"
    if verdict.seeds_needed > MAX_QUOTED_SEEDS:
        return f"the observed effect would need {fmt_seeds(verdict.seeds_needed)} seeds per arm"
    return "its arms are not h-detach against vanilla, which the study command runs"


def _next_run(
    verdicts: Sequence[Verdict],
    runs: pd.DataFrame,
    history: pd.DataFrame | None,
    experiment: str,
) -> NextRun | None:
    candidates = [
        v
        for v in verdicts
        if v.verdict == "inconclusive"
        and v.seeds_needed is not None
        and v.seeds_needed <= MAX_QUOTED_SEEDS
        and v.headline.setup is not None
        and v.headline.check.treatment == H_DETACH
        and v.headline.check.baseline == VANILLA
    ]
    if not candidates:
        return None
    verdict = min(candidates, key=lambda v: v.seeds_needed)
    check = verdict.headline
    setup_runs = _runs_of(check, runs)
    if setup_runs.empty or "seed" not in setup_runs:
        return None
    arms = [setup_runs[setup_runs["arm"] == arm] for arm in (H_DETACH, VANILLA)]
    have = min(int(a["seed"].nunique()) for a in arms)
    needed = int(math.ceil(verdict.seeds_needed))
    more = max(needed - have, 1)
    command = _command(check, setup_runs, arms[0], more, experiment, verdict.claim_id)
    per_seed = _seconds_per_seed(setup_runs, history)
    hours = study_hours(more, per_seed) if math.isfinite(per_seed) else math.nan
    return NextRun(verdict.claim_id, needed, more, command, hours, check.setup.words())


def _runs_of(check: CheckVerdict, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the setup a check was judged on (both arms; its filters aside)."""
    index = SetupIndex(runs, exclude=check.check.compared)
    codes = [i for i, setup in enumerate(index.setups) if setup == check.setup]
    mine = runs[index.codes.isin(codes)]
    return mine[mine["arm"].isin((H_DETACH, VANILLA))] if "arm" in mine else mine.iloc[:0]


def _values(frame: pd.DataFrame, column: str) -> list:
    if column not in frame:
        return []
    return sorted({v for v in frame[column].dropna().tolist()}, key=str)


def _command(
    check: CheckVerdict,
    setup_runs: pd.DataFrame,
    treatment: pd.DataFrame,
    more: int,
    experiment: str,
    claim_id: str,
) -> str:
    setup: Setup = check.setup
    presets = [p for p in _values(setup_runs, "preset") if p in PRESETS]
    preset = presets[0] if len(presets) == 1 else ("paper" if check.scale == PAPER else "reduced")
    task = setup.task
    parts = ["hdetach-study run", f"--task {task}", f"--preset {preset}", "--search grid"]
    p_values = [float(p) for p in _values(treatment, "p_detach")]
    lrs = [float(x) for x in _values(setup_runs, "lr")]
    clips = [str(c).lower() for c in _values(setup_runs, "clip")]
    if p_values:
        parts.append(f"--p-values {','.join(f'{p:g}' for p in p_values)}")
    if lrs:
        parts.append(f"--lr-values {','.join(f'{lr:g}' for lr in lrs)}")
    if clips:
        parts.append(f"--clip-values {','.join(clips)}")
    parts += _set_options(task, preset, setup)
    offset = int(np.nanmax(setup_runs["seed"].to_numpy(dtype=float))) + 1
    parts += [
        f"--seeds {more}",
        f"--seed-offset {offset}",
        f"--experiment {experiment}",
        f"--run-name more-seeds-{claim_id.lower()}",
    ]
    return " ".join(parts)


def _set_options(task: str, preset: str, setup: Setup) -> list[str]:
    """``--set KEY=VALUE`` for every setup value the preset does not already have."""
    base = RunConfig.from_preset(task, preset).to_dict()
    out = []
    for key, value in setup.values:
        # A value the runs did not record (None) is the preset's: nothing to override.
        if key in _OWN_OPTIONS or key not in base or value is None:
            continue
        ours = base[key]
        same = (
            isinstance(value, float)
            and isinstance(ours, int | float)
            and not isinstance(ours, bool)
            and math.isclose(value, float(ours), rel_tol=1e-9)
        ) or value == ours
        if not same:
            out.append(f"--set {key}={_yaml(value)}")
    return out


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return str(value)


def _seconds_per_seed(setup_runs: pd.DataFrame, history: pd.DataFrame | None) -> float:
    """Median over the setup's runs of what one seed cost (the planner's formula), from each
    run's mean seconds per epoch in ``history``."""
    if history is None or history.empty or "epoch_seconds" not in history:
        return math.nan
    per_epoch = history.groupby("run_id")["epoch_seconds"].mean()
    costs = []
    for row in setup_runs.itertuples(index=False):
        epoch = per_epoch.get(row.run_id, math.nan)
        members = _number(getattr(row, "members_per_trial", 1), 1.0)
        epochs = _number(getattr(row, "last_epoch", 1), 1.0)
        if math.isfinite(epoch):
            costs.append(seconds_per_seed(epoch, epochs, members))
    return float(np.median(costs)) if costs else math.nan


def _number(value, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


__all__ = ["BottomLine", "NextRun", "bottom_line"]
