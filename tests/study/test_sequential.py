"""Sequential seed allocation (``--seeds auto``): the decision rule's error rate and savings
by simulation (statistics alone, no training), and the searcher's scheduling of seed stages
with a real Optuna searcher behind it (trial results fed in by hand, no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study import sequential as seq
from study.searcher import OBJECTIVE, PairedSeedSearcher, SequentialPlan, paired_differences

STUDIES = 500


def _binomial_ceiling(alpha: float, n: int) -> float:
    """alpha plus two binomial standard errors: an observed rate above it is evidence of
    an error rate above alpha (about 2.5% of the time when it is exactly alpha)."""
    return alpha + 2 * math.sqrt(alpha * (1 - alpha) / n)


@pytest.mark.parametrize("spending", seq.SPENDING)
def test_under_no_difference_wrong_decisions_stay_below_alpha(spending):
    design = seq.SequentialDesign(min_seeds=8, seed_block=4, max_seeds=32, spending=spending)
    normal = seq.simulate(design, 0.0, 1.0, studies=STUDIES, seed=11)
    # both arms from one skewed distribution of accuracies: the differences are symmetric
    beta = seq.simulate(
        design, 0.0, 0.0, studies=STUDIES, seed=12,
        sampler=lambda rng, n: rng.beta(2, 5, n) - rng.beta(2, 5, n),
    )  # fmt: skip
    for sim in (normal, beta):
        wrong = sim.better_rate + sim.worse_rate
        assert wrong <= _binomial_ceiling(design.alpha, STUDIES), (spending, sim)
        assert sim.mean_seeds > 30  # almost every study runs to the cap: nothing to find
    print(f"\n{spending}: wrong decisions under no difference: normal {normal.decided_rate:.3f}, "
          f"beta {beta.decided_rate:.3f} (alpha {design.alpha}, {STUDIES} studies)")  # fmt: skip


@pytest.mark.parametrize("effect", [0.8, 1.0, 1.5])
def test_under_a_real_difference_it_needs_fewer_seeds_than_a_fixed_design(effect):
    design = seq.SequentialDesign(min_seeds=8, seed_block=4, max_seeds=32)
    sim = seq.simulate(design, effect, 1.0, studies=STUDIES, seed=21)
    assert sim.worse_rate == 0.0
    power = min(sim.better_rate, 0.99)
    fixed = seq.fixed_seeds(effect, 1.0, design.alpha, power)
    assert fixed is not None and sim.mean_seeds < fixed, (sim, fixed)
    print(
        f"\neffect {effect} SD: sequential decides {sim.better_rate:.3f} with "
        f"{sim.mean_seeds:.1f} seeds on average; a fixed design of that power: {fixed}"
    )


def test_equivalence_is_decided_when_the_effect_is_surely_small_and_rarely_wrongly():
    design = seq.SequentialDesign(min_seeds=8, seed_block=4, max_seeds=32, margin=0.02)
    small = seq.simulate(design, 0.0, 0.01, studies=200, seed=31)
    assert small.equivalent_rate > 0.9 and small.mean_seeds < 16
    at_margin = seq.simulate(design, 0.02, 0.01, studies=STUDIES, seed=32)
    assert at_margin.equivalent_rate <= _binomial_ceiling(design.alpha, STUDIES)


def test_the_analysis_is_a_pure_function_of_the_data_seen():
    """A resumed driver re-derives the same decisions: the analysis of a prefix is the
    prefix of the analysis, and the sign patterns depend only on the configuration."""
    design = seq.SequentialDesign(min_seeds=4, seed_block=2, max_seeds=12)
    rng = np.random.default_rng(0)
    d = rng.normal(0.2, 1.0, 12)
    full = seq.analyse(d, design, "hd_p0.25")
    for n in (4, 6, 8, 10):
        part = seq.analyse(d[:n], design, "hd_p0.25")
        assert [(lk.seeds, lk.boundary) for lk in part.looks] == [
            (lk.seeds, lk.boundary) for lk in full.looks[: len(part.looks)]
        ]
    assert np.array_equal(design.signs("a"), design.signs("a"))
    big = seq.SequentialDesign(min_seeds=8, seed_block=4, max_seeds=32)
    assert not np.array_equal(big.signs("a"), big.signs("b"))


def test_a_large_effect_is_decided_at_the_first_look():
    design = seq.SequentialDesign(min_seeds=8, seed_block=4, max_seeds=16)
    result = seq.analyse(np.full(8, 0.1) + np.linspace(-0.01, 0.01, 8), design, "x")
    assert result.decision == seq.BETTER and result.decided_at == 0
    worse = seq.analyse(-np.full(8, 0.1), design, "x")
    assert worse.decision == seq.WORSE


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"min_seeds": 9, "max_seeds": 8}, "max_seeds (8) must be >= min_seeds (9)"),
        ({"seed_block": 0}, "seed_block must be an integer >= 1, got 0"),
        ({"alpha": 0}, "alpha must be in (0, 1), got 0"),
        ({"margin": -1.0}, "margin must be > 0, got -1.0"),
    ],
)
def test_bad_designs_are_rejected_naming_the_value(kwargs, needle):
    with pytest.raises(ValueError) as info:
        seq.SequentialDesign(**kwargs)
    assert needle in str(info.value)


def test_failed_runs_count_as_the_worst_value():
    d = paired_differences([0.9, math.nan, 0.5], [0.8, 0.7, math.nan])
    assert d.tolist() == pytest.approx([0.1, -0.7, 0.5])
    lower = paired_differences([3.0, math.nan], [4.0, 2.0], higher_is_better=False)
    assert lower.tolist() == pytest.approx([1.0, -2.0])  # NaN -> the worst (largest) seen


# -- the searcher: stages, looks, Optuna, budget, state ------------------------------------


def _optuna(points: list[dict]) -> OptunaSearch:
    space = {
        "p_detach": CategoricalDistribution(sorted({p["p_detach"] for p in points})),
        "lr": CategoricalDistribution(sorted({p["lr"] for p in points})),
        "clip": CategoricalDistribution([True]),
    }
    search = OptunaSearch(space=space, metric=OBJECTIVE, mode="max", points_to_evaluate=points)
    search.set_search_properties(OBJECTIVE, "max", {})
    return search


def _searcher(points, design, budget=None) -> PairedSeedSearcher:
    plan = SequentialPlan(
        design=design, seeds=tuple(range(design.max_seeds)), seeds_per_trial=2,
        budget_seconds=budget,
    )  # fmt: skip
    return PairedSeedSearcher(
        _optuna(points), seed_blocks=[], max_configs=len(points), sequential=plan
    )


def _finals(value: float) -> dict:
    """A seed's finals as the trainer reports them (the score is the accuracy here)."""
    return {"best_val_acc": value, "best_val_score": value}


def _value(config: dict, seed: int) -> float:
    """Simulated best validation accuracy: the large-effect configuration (lr 1e-2) is 10
    points above its baseline on every seed; the other (lr 1e-3) equals its baseline in
    distribution. The noise of seeds 2k and 2k+1 is antithetic, so every configuration's
    paired differences are symmetric on each look (4 seeds a block): the study's pooled
    skewness is 0 and the shape gate stays open (its own tests are below)."""
    rng = np.random.default_rng(hash((config["lr"], config["p_detach"], seed // 2)) % 2**32)
    z = rng.standard_normal() * (1 if seed % 2 == 0 else -1)
    if config["lr"] == 1e-2:
        return 0.5 + 0.01 * z + (0.1 if config["p_detach"] else 0.0)
    return 0.5 + 0.05 * z


def _drive(searcher: PairedSeedSearcher, slots: int = 3, stop_after: int | None = None):
    """Tune's loop in miniature: keep `slots` trials running, finish the oldest first."""
    running: list[tuple[str, dict]] = []
    started: list[tuple[str, int]] = []
    n, finished = 0, 0
    while True:
        while len(running) < slots:
            suggestion = searcher.suggest(f"t{n}")
            if suggestion is None or suggestion == Searcher.FINISHED:
                break
            running.append((f"t{n}", suggestion))
            started += [(suggestion["config_id"], s) for s in suggestion["seeds"]]
            n += 1
        if not running:
            assert searcher.suggest("final") == Searcher.FINISHED
            return started
        trial_id, config = running.pop(0)
        finals = [_finals(_value(config, s)) for s in config["seeds"]]
        searcher.on_trial_complete(trial_id, {"finals": finals, "time_total_s": 10.0})
        finished += 1
        if stop_after is not None and finished == stop_after:
            return started, running


POINTS = [
    {"p_detach": 0.25, "lr": 1e-2, "clip": True},
    {"p_detach": 0.25, "lr": 1e-3, "clip": True},
]


def test_the_searcher_stops_a_clear_configuration_early_and_caps_a_null_one():
    design = seq.SequentialDesign(min_seeds=8, seed_block=4, max_seeds=16)
    searcher = _searcher(POINTS, design)
    started = _drive(searcher)
    assert len(started) == len(set(started)), "a seed ran twice for one configuration"
    clear, null = "hd_p0.25_lr1.000e-02_clip", "hd_p0.25_lr1.000e-03_clip"
    assert searcher.outcome(clear)["decision"] == seq.BETTER
    assert searcher.outcome(clear)["decided_at_look"] == 1
    assert searcher.outcome(clear)["seeds"] == list(range(8))
    assert searcher.outcome(null)["reason"] == seq.STOP_CAPPED
    assert searcher.outcome(null)["seeds"] == list(range(16))
    # each baseline ran exactly the seeds its configuration needed
    assert sorted(s for c, s in started if c == "vanilla_p0_lr1.000e-02_clip") == list(range(8))
    assert sorted(s for c, s in started if c == "vanilla_p0_lr1.000e-03_clip") == list(range(16))
    # Optuna heard each configuration once, after it stopped, over all its seeds
    trials = searcher.searcher._ot_study.trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"]
    assert searcher.outcome(clear)["fixed_design_seeds"] >= 2
    # the stage-wise p-values the study's correction adjusts
    assert searcher.outcome(clear)["p_value"] <= design.alpha
    assert searcher.outcome(null)["p_value"] > design.alpha
    assert searcher.outcome(clear)["trial_seconds"] == pytest.approx(4 * 10.0)


def test_a_study_resumed_from_the_searcher_state_decides_the_same():
    design = seq.SequentialDesign(min_seeds=8, seed_block=4, max_seeds=16)
    straight = _searcher(POINTS, design)
    _drive(straight)

    first = _searcher(POINTS, design)
    _, running = _drive(first, stop_after=5)
    state = first.get_state()  # what Tune saves with the experiment
    resumed = _searcher(POINTS, design)
    resumed.set_state(state)
    resumed.searcher = first.searcher  # Tune restores Optuna's study through save/restore
    for trial_id, config in running:  # Tune resumes the trials that were running
        finals = [_finals(_value(config, s)) for s in config["seeds"]]
        resumed.on_trial_complete(trial_id, {"finals": finals, "time_total_s": 10.0})
    _drive(resumed)
    for cid in straight.configs:
        a, b = straight.outcome(cid), resumed.outcome(cid)
        assert (a["reason"], a["seeds"], a.get("decision")) == (
            b["reason"],
            b["seeds"],
            b.get("decision"),
        )


def test_a_spent_budget_stops_every_configuration_and_says_so():
    design = seq.SequentialDesign(min_seeds=4, seed_block=2, max_seeds=32)
    points = [{"p_detach": 0.25, "lr": 1e-3, "clip": True}]
    searcher = _searcher(points, design, budget=60.0)  # six 10-second trials
    started = _drive(searcher)
    outcome = searcher.outcome("hd_p0.25_lr1.000e-03_clip")
    assert outcome["reason"] == seq.STOP_BUDGET
    assert len(started) < 2 * 32 and searcher.budget_spent


def test_a_design_says_whether_its_first_look_can_decide():
    assert seq.SequentialDesign().can_decide_at(0)  # 8 of 32 seeds
    assert not seq.SequentialDesign(min_seeds=6).can_decide_at(0)  # too little alpha spent
    never = seq.SequentialDesign(min_seeds=6, seed_block=4, max_seeds=32)
    sure = seq.analyse(np.ones(6), never, "x")  # the clearest possible data, still undecided
    assert sure.decision == seq.UNDECIDED
