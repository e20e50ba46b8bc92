"""The searcher's typed state reads what an earlier version saved as string-keyed dicts, so a
study started before the upgrade resumes after it (study/searcher_state.py)."""

from __future__ import annotations

from study.searcher_state import Configuration, from_dicts

# What the dict-keeping searcher (before 3a798d0) saved for an h-detach configuration stopped
# at max_seeds after two looks (min_seeds 2, seed_block 1, max_seeds 3), as Tune pickled it.
LEGACY = {
    "arm": "h-detach", "baseline": "vanilla_p0_lr1.000e-02_clip", "clip": True,
    "done": {0: [0.5863546754138075, 0.5855893033775897], 1: [0.6075413452866048]},
    "lr": 0.01, "objective": 0.585968595366899, "optuna_ids": ["config-0"],
    "outcome": {
        "reason": "max_seeds", "seeds": [0, 1, 2], "trial_seconds": 20.0, "gpu_seconds": 0.0,
        "metric": "best_val_score", "decision": "undecided", "decided_at_look": None,
        "looks": 2, "pairs": 3, "mean_difference": 0.09027729697320558,
        "sd_difference": 0.012363797829131164, "p_value": 0.25,
        "pair_seconds_per_seed": 13.333333333333334, "fixed_design_seeds": 3,
        "fixed_design_seconds": 40.0,
    },
    "p_detach": 0.25, "reported": ["config-0"], "stages": 2, "stopped": True,
    "failed_units": [1],
    "units": [
        {"metric": [0.5863546754138075, 0.5855893033775897], "seconds": 10.0, "seeds": [0, 1],
         "stage": 0},
        {"metric": [0.6075413452866048], "seconds": 10.0, "seeds": [2], "stage": 1,
         "dropped": False},
    ],
}  # fmt: skip


def test_a_configuration_saved_as_dicts_reads_back_the_same():
    c = from_dicts(LEGACY)
    assert isinstance(c, Configuration) and from_dicts(c) is c
    assert (c.arm, c.p_detach, c.lr, c.clip, c.baseline) == (
        "h-detach",
        0.25,
        0.01,
        True,
        "vanilla_p0_lr1.000e-02_clip",
    )
    assert [u.values for u in c.units] == [LEGACY["done"][0], LEGACY["done"][1]]
    assert [u.failed for u in c.units] == [False, True]
    assert c.seed_values() == {0: 0.5863546754138075, 1: 0.5855893033775897, 2: 0.6075413452866048}
    assert c.per_seed_seconds() == 20.0 / 3
    # the callback receives exactly the record the earlier version handed it, keys in order
    assert list(c.outcome.as_dict().items()) == list(LEGACY["outcome"].items())
    assert (c.stages, c.stopped, c.objective, c.reported) == (
        2,
        True,
        0.585968595366899,
        ["config-0"],
    )


def test_a_baseline_saved_as_dicts_has_no_comparison():
    baseline = {
        **LEGACY, "arm": "vanilla", "baseline": None, "p_detach": 0.0, "optuna_ids": [],
        "reported": [], "failed_units": [],
        "outcome": {"gpu_seconds": 0.0, "metric": "best_val_score", "reason": "baseline",
                    "seeds": [0, 1, 2], "trial_seconds": 20.0},
    }  # fmt: skip
    c = from_dicts(baseline)
    assert c.outcome.comparison is None
    assert c.outcome.as_dict() == baseline["outcome"]
