"""The shape gate on the study's decisions (``pairedstats/shape.py`` applied in
``study/sequential.py``, the searcher and the fixed-seed summary): a decision at n seeds is
taken only when n reaches what the skewness of the metric's paired differences, pooled over
the study's configurations, asks for; a look it holds back goes on to the next; a resumed
searcher gates each look as it was first gated; and the sequential null rate on lognormal
differences stays at alpha."""

from __future__ import annotations

import math
import pickle

import numpy as np

from pairedstats import shape
from study import sequential as seq
from study.summary import _fixed_test
from tests.study.test_sequential import _finals, _optuna

DESIGN = seq.SequentialDesign(min_seeds=8, seed_block=4, max_seeds=32)


def _pools(seed: int = 5, groups: int = 12, n: int = 32) -> tuple[float, float]:
    """Pooled skewness of a study's normal and of its lognormal paired differences."""
    rng = np.random.default_rng(seed)
    normal = float(shape.pooled_skewness(rng.normal(size=(groups, n))))
    skewed = float(shape.pooled_skewness(rng.lognormal(0.0, 1.0, (groups, n))))
    return normal, skewed


def test_the_gate_holds_back_on_skewed_differences_what_it_lets_through_on_normal_ones():
    normal, skewed = _pools()
    assert shape.allows(8, normal) and not shape.allows(32, skewed)
    d = np.random.default_rng(6).normal(3.0, 1.0, 32)  # a clear effect
    bare = seq.analyse(d, DESIGN, "hd", gamma=None)
    assert bare.decision == seq.BETTER and bare.decided_at == 0
    through = seq.analyse(d, DESIGN, "hd", gamma=normal)
    assert (through.decision, through.decided_at, through.withheld) == (seq.BETTER, 0, False)
    held = seq.analyse(d, DESIGN, "hd", gamma=skewed)
    assert held.decision == seq.UNDECIDED and held.withheld
    assert held.seeds == 32 and len(held.looks) == len(DESIGN.looks)  # ran on to max_seeds
    assert all(look.held for look in held.looks) and held.looks[0].gamma == skewed
    # the p-value is the design's, gate or not (the gate removes decisions, nothing else)
    assert held.looks[0].boundary == bare.looks[0].boundary
    # a look the gate holds back goes on: open from the third look (16 seeds) on
    gamma = math.sqrt(16 / shape.K)  # needs exactly 16 pairs
    later = seq.analyse(d, DESIGN, "hd", gamma=gamma)
    assert later.decision == seq.BETTER and later.looks[-1].seeds == 16
    assert [look.held for look in later.looks] == [True, True, False]
    # per look: the skewness each look was first gated with
    per_look = seq.analyse(d, DESIGN, "hd", gamma=[skewed, normal])
    assert per_look.decision == seq.BETTER and per_look.decided_at == 1


def test_run_design_gates_each_study_with_its_own_skewness():
    rng = np.random.default_rng(7)
    d = rng.normal(3.0, 1.0, (4, 32))
    normal, skewed = _pools()
    signs = DESIGN.signs("x")
    run = seq.run_design(d, DESIGN, signs, np.array([normal, skewed, normal, skewed]))
    assert run.code.tolist() == [1, 0, 1, 0]
    assert run.held.tolist() == [False, True, False, True]
    assert run.seeds.tolist()[1::2] == [32, 32]
    bare = seq.run_design(d, DESIGN, signs)
    assert bare.code.tolist() == [1, 1, 1, 1] and not bare.held.any()


def test_equivalence_is_gated_too():
    design = seq.SequentialDesign(min_seeds=8, seed_block=4, max_seeds=32, margin=1.0)
    d = np.random.default_rng(8).normal(0.0, 0.1, 32)
    normal, skewed = _pools()
    assert seq.analyse(d, design, "hd", gamma=normal).decision == seq.EQUIVALENT
    held = seq.analyse(d, design, "hd", gamma=skewed)
    assert held.decision == seq.UNDECIDED and held.withheld and held.looks[0].held


def test_a_fixed_seed_study_s_test_is_gated_by_the_study_s_pool():
    d = np.random.default_rng(9).normal(3.0, 1.0, 8)
    normal, skewed = _pools(n=8)
    assert _fixed_test(d, "hd", 0.05, normal)[0] == seq.BETTER
    decision, p, withheld = _fixed_test(d, "hd", 0.05, skewed)
    assert decision == seq.UNDECIDED and withheld and p <= 0.05  # the test decided; gate held


# -- the searcher: the pool, and a resume that keeps each look's gate ----------------------

A, B = "hd_p0.25_lr1.000e-02_clip", "hd_p0.25_lr1.000e-03_clip"
BASE_A = "vanilla_p0_lr1.000e-02_clip"
POINTS = [
    {"p_detach": 0.25, "lr": 1e-2, "clip": True},
    {"p_detach": 0.25, "lr": 1e-3, "clip": True},
]
#: A's first 8 differences: all better, one far better (skewness 2.8: a t verdict needs
#: hundreds of pairs); B's: far better, symmetric and wide (skewness 0: it swamps A's in the pool)
A_DIFFS = [1.0] * 7 + [3.0]
B_DIFFS = [10.0 + 3.0 * (-1) ** i for i in range(8)]


def _searcher(ledger: str | None = None):
    from study.searcher import PairedSeedSearcher, SequentialPlan

    design = seq.SequentialDesign(min_seeds=8, seed_block=4, max_seeds=16)
    plan = SequentialPlan(design=design, seeds=tuple(range(16)), seeds_per_trial=8)
    return PairedSeedSearcher(
        _optuna(POINTS), seed_blocks=[], max_configs=2, sequential=plan, ledger=ledger
    )


def _complete(searcher, trial_id, values):
    searcher.on_trial_complete(trial_id, {"finals": [_finals(v) for v in values]})


def _resumed(searcher):
    """A driver restarted from the searcher's saved state (pickled, as Tune keeps it)."""
    out = _searcher()
    out.set_state(pickle.loads(pickle.dumps(searcher.get_state())))
    out.searcher = searcher.searcher  # Tune restores Optuna's study through save/restore
    return out


def test_a_resumed_searcher_keeps_each_look_s_gate_and_every_decision_taken():
    first = _searcher()
    trials = {first.suggest(f"t{i}")["config_id"]: f"t{i}" for i in range(4)}
    assert set(trials) == {BASE_A, A, "vanilla_p0_lr1.000e-03_clip", B}
    _complete(first, trials[BASE_A], [0.0] * 8)
    _complete(first, trials[A], A_DIFFS)  # A's first look: its own pairs are the whole pool
    assert first.outcome(A) is None  # held back: A goes on to the next look
    recorded = first.configs[A].shapes
    assert len(recorded) == 1 and not recorded[0].allows(8)

    resumed = _resumed(first)
    _complete(resumed, trials["vanilla_p0_lr1.000e-03_clip"], [0.0] * 8)
    _complete(resumed, trials[B], B_DIFFS)
    b = resumed.outcome(B)  # B decided through the gate, with A and B in the pool
    assert (b["decision"], b["decided_at_look"], b["withheld"]) == (seq.BETTER, 1, False)
    assert b["skewness_groups"] == 2 and b["skewness_pairs"] == 16 and b["pairs_needed"] <= 8
    # the pool now lets 8 pairs through, but A's first look was gated when it was analysed:
    # taken again (a trial of its baseline finishes), it is gated the same and A goes on
    assert resumed._pool().allows(8)
    base_trial = resumed.suggest("t5")
    assert base_trial["config_id"] == BASE_A and base_trial["block"] == 1
    _complete(resumed, "t5", [0.0] * 4)
    assert resumed.outcome(A) is None
    assert resumed.configs[A].shapes == recorded

    again = _resumed(resumed)  # and a decision taken stays taken, with its gate
    assert again.outcome(B) == b and again.configs[B].shapes == resumed.configs[B].shapes


def test_a_driver_killed_before_tune_saved_the_searcher_gates_a_look_with_the_ledgers_pool(
    tmp_path,
):
    """Tune saves the searcher every few seconds; a look's decision reaches MLflow at once.
    A driver resumed from a save older than A's first look, where B's seeds finish before A's
    this time, must gate that look with the pool it had (A's pairs alone: held back), not with
    today's pool of A and B (which lets it through): the ledger beside the Optuna journal
    keeps it. Without the ledger the resumed driver decides the look the first one held."""
    ledger = str(tmp_path / "study.journal.shape-gate.jsonl")
    first = _searcher(ledger)
    trials = {first.suggest(f"t{i}")["config_id"]: f"t{i}" for i in range(4)}
    saved = pickle.dumps(first.get_state())  # Tune's last save before the kill
    _complete(first, trials[BASE_A], [0.0] * 8)
    _complete(first, trials[A], A_DIFFS)
    assert first.outcome(A) is None  # held back, and (had it decided) logged at once

    def resume(path):
        out = _searcher(path)
        out.set_state(pickle.loads(saved))
        out.searcher = first.searcher
        _complete(out, trials["vanilla_p0_lr1.000e-03_clip"], [0.0] * 8)
        _complete(out, trials[B], B_DIFFS)
        _complete(out, trials[BASE_A], [0.0] * 8)
        _complete(out, trials[A], A_DIFFS)
        return out

    resumed = resume(ledger)
    assert resumed._pool().allows(8)  # today's pool would let A's first look through
    assert resumed.outcome(A) is None
    assert resumed.configs[A].shapes[:1] == first.configs[A].shapes[:1]
    assert resume(None).outcome(A)["decision"] == seq.BETTER  # what the ledger prevents
    # a line cut short by a kill is skipped, and the next record starts on its own line
    with open(ledger, "a") as f:
        f.write('{"config": "x", "lo')
    again = _searcher(ledger)
    again.set_state(pickle.loads(saved))
    again.searcher = first.searcher
    _complete(again, trials[BASE_A], [0.0] * 8)
    _complete(again, trials[A], A_DIFFS)
    assert again.outcome(A) is None
    from study.shape_ledger import ShapeLedger

    ShapeLedger(ledger).record("y", 0, shape.Shape(0.5, 8, 1))
    lines = open(ledger).read().splitlines()
    assert lines[-2] == '{"config": "x", "lo' and lines[-1].startswith('{"config": "y"')
    assert ShapeLedger(ledger).get("y", 0) == shape.Shape(0.5, 8, 1)


# -- calibration: the sequential null rate on lognormal differences ------------------------


def test_the_gated_sequential_test_keeps_alpha_on_lognormal_differences():
    studies, configs = 400, 12
    rng = np.random.default_rng(10)
    d = rng.lognormal(0.0, 1.0, (studies, configs, 32)) - math.exp(0.5)  # mean 0, skewness 6
    design = seq.SequentialDesign(min_seeds=8, seed_block=4, max_seeds=32, patterns=512)
    signs = design.signs("null")
    # per study and look: the skewness of its 12 configurations' differences so far, pooled
    gamma = np.stack([shape.pooled_skewness(d[..., :n]) for n in design.looks], axis=-1)
    gated = seq.run_design(d[:, 0], design, signs, gamma)
    bare = seq.run_design(d[:, 0], design, signs)
    ceiling = design.alpha + 3 * math.sqrt(design.alpha * (1 - design.alpha) / studies)
    rate, bare_rate = float(np.mean(gated.code != 0)), float(np.mean(bare.code != 0))
    assert bare_rate > ceiling  # what the gate is for
    assert rate <= ceiling, (rate, bare_rate)


# -- the fixed-seed summary: the pool is every configuration of the study ------------------


def _tracker(differences: dict[str, list[float]]):
    """A stand-in for the study's MLflow tracker: per configuration its parent and one child
    per seed (best_val_acc = the difference; vanilla at 0)."""
    from types import SimpleNamespace

    from trainables.contract import BASELINE_TAG, CHILD, PARENT

    base = "vanilla_p0_lr1.000e-02_clip"
    parents = [SimpleNamespace(config_id=base, params={"arm": "vanilla"}, tags={}, metrics={})]
    children = []
    for cid, d in differences.items():
        tags = {BASELINE_TAG: base}
        parents.append(SimpleNamespace(config_id=cid, params={"arm": "h-detach"}, tags=tags,
                                       metrics={"objective": float(np.mean(d))}))  # fmt: skip
        children += [SimpleNamespace(config_id=cid, seed=s, metrics={"best_val_acc": v})
                     for s, v in enumerate(d)]  # fmt: skip
    n = len(next(iter(differences.values())))
    children += [SimpleNamespace(config_id=base, seed=s, metrics={"best_val_acc": 0.0})
                 for s in range(n)]  # fmt: skip
    runs = {PARENT: parents, CHILD: children}
    return SimpleNamespace(find_runs=lambda kind: runs[kind])


def test_a_fixed_seed_summary_gates_every_configuration_with_the_study_s_pooled_skewness():
    from study.summary import ranked_summary

    rng = np.random.default_rng(11)
    clear = (3.0 + rng.normal(0.0, 1.0, 8)).tolist()  # better on its own pairs' shape
    symmetric = {"hd_clear": clear, **{f"hd_{i}": rng.normal(0, 1, 8).tolist() for i in range(5)}}
    rows, text = ranked_summary(_tracker(symmetric), correction="none")
    row = next(r for r in rows if r["config_id"] == "hd_clear")
    assert row["decision"] == seq.BETTER and not row["withheld"]
    assert row["skewness_pairs"] == 48 and "Shape gate: skewness" in text
    skewed = {"hd_clear": clear, **{f"hd_{i}": (rng.lognormal(0, 1.5, 8) - 3).tolist()
                                    for i in range(5)}}  # fmt: skip
    rows, text = ranked_summary(_tracker(skewed), correction="none")
    row = next(r for r in rows if r["config_id"] == "hd_clear")
    assert row["decision"] == seq.UNDECIDED and row["withheld"] == 1.0
    assert row["pairs_needed"] > 8 and "withheld by the gate" in text and "hd_clear" in text
