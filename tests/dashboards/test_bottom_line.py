"""The report's bottom line: computed from the verdicts, it names what is decided and what is
not, and its next command is one the study accepts, on the setup the open claim was judged on,
with the planner's cost from the runs' own epoch times."""

from __future__ import annotations

import math
import shlex

import numpy as np
import pandas as pd
import pytest

from dashboards import claims as claims_mod
from dashboards.bottom_line import bottom_line
from dashboards.evaluate import Context, evaluate_claims
from study.options import options_from_args
from tests.dashboards.test_report import EXPERIMENT, synthetic
from trainables.contract import seconds_per_seed, study_hours


def judged(runs: pd.DataFrame, history: pd.DataFrame):
    rng = np.random.default_rng(0)
    ctx = Context(runs, history, rng, 200)
    claim_list = claims_mod.load_claims()
    return evaluate_claims(claim_list, runs, history, rng, None, context=ctx)


@pytest.fixture(scope="module", params=[{}, {"epochs": 30, "batches_per_epoch": 100}])
def four_seeds(request):
    """Four seeds at the paper's setups, and at a smaller one that no preset matches."""
    runs, history = synthetic(range(4), **request.param)
    return runs, history, judged(runs, history)


def test_the_paragraph_follows_the_verdicts():
    runs, history = synthetic(range(8))
    verdicts = judged(runs, history)
    by_id = {v.claim_id: v.verdict for v in verdicts}
    line = bottom_line(verdicts, runs, history, EXPERIMENT)
    assert line.ran.startswith(f"{len(runs)} runs of copying and pmnist on 8 seeds")
    assert "paper scale" in line.ran
    # Every decided claim is named on the side it was decided; no other claim is.
    for cid, verdict in by_id.items():
        named = f"{cid} (" in line.concluded
        assert named == (verdict in ("supported", "contradicted")), (cid, verdict)
    assert by_id["C2"] == "supported" and by_id["C5"] == "contradicted"
    support, contradict = line.concluded.split(" and contradict ")
    for cid, verdict in by_id.items():
        if verdict in ("supported", "contradicted"):
            assert f"{cid} (" in (support if verdict == "supported" else contradict), cid
    # Each open claim is the one the next command settles, or the last sentence says why not.
    for cid in (c for c, v in by_id.items() if v == "inconclusive"):
        chosen = line.next_run is not None and line.next_run.claim_id == cid
        assert chosen or f"{cid}: " in line.next_step, (cid, line.next_step)
    unmeasured = [cid for cid, v in by_id.items() if v in ("no runs yet", "no data")]
    assert f"No run here measures {', '.join(unmeasured[:-1])} and {unmeasured[-1]}." in line.open


def test_next_command_is_accepted_by_the_study_and_reproduces_the_setup(four_seeds):
    runs, history, verdicts = four_seeds
    line = bottom_line(verdicts, runs, history, EXPERIMENT)
    nxt = line.next_run
    assert nxt is not None and nxt.claim_id in line.next_step
    candidates = [v for v in verdicts if v.verdict == "inconclusive" and v.seeds_needed]
    assert nxt.seeds_per_arm == math.ceil(min(v.seeds_needed for v in candidates))
    assert nxt.more_seeds == max(nxt.seeds_per_arm - 4, 1)

    argv = shlex.split(nxt.command)
    assert argv[:2] == ["hdetach-study", "run"]
    options = options_from_args(argv[2:])
    claim = next(v for v in verdicts if v.claim_id == nxt.claim_id)
    setup = dict(claim.headline.setup.values)
    config = options.run_config().to_dict()
    for key, value in setup.items():
        if value is not None and key not in ("lr", "clip"):
            if isinstance(value, float):
                assert float(config[key]) == pytest.approx(value), key
            else:
                assert config[key] == value, key
    assert options.seed_values == list(range(4, 4 + nxt.more_seeds))  # fresh seeds
    assert options.experiment_name == EXPERIMENT

    # The cost: the planner's formula on these runs' mean seconds per epoch.
    mine = runs[(runs["seq_len"] == setup["seq_len"]) & (runs["task"] == setup["task"])]
    per_epoch = history.groupby("run_id")["epoch_seconds"].mean()
    costs = [seconds_per_seed(per_epoch[r.run_id], r.last_epoch, 1) for r in mine.itertuples()]
    assert nxt.hours == pytest.approx(study_hours(nxt.more_seeds, float(np.median(costs))))
    assert f"about {nxt.hours:.2g} compute hours" in line.next_step


def test_without_runs_or_epoch_times(four_seeds):
    runs, history, verdicts = four_seeds
    empty = bottom_line(verdicts, runs.iloc[:0], None, EXPERIMENT)
    assert empty.ran == "No runs yet." and empty.next_run is None
    untimed = bottom_line(verdicts, runs, None, EXPERIMENT)
    assert untimed.next_run is not None and math.isnan(untimed.next_run.hours)
    assert "cannot estimate" in untimed.next_step
