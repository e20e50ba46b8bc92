"""The study options as declared once (study/options.py): YAML keys, checks and flags all come
from the fields of StudyOptions."""

from __future__ import annotations

import pytest

from study.options import OptionsError, build_parser, options_from_args, options_from_mapping

BEFORE = {  # the flags of the hand-written parser this replaced: none may go
    "--config", "--task", "--preset", "--search", "--trials", "--seeds", "--min-seeds",
    "--max-seeds", "--seed-block", "--alpha", "--alpha-spending", "--confirm-seeds",
    "--correction", "--margin", "--decision-metric", "--budget-hours", "--seed-offset",
    "--seeds-per-trial", "--cpus-per-trial", "--gpus-per-trial", "--max-concurrent",
    "--resource", "--address", "--tracking-uri", "--experiment", "--run-name", "--storage-path",
    "--optuna-storage", "--resume", "--data-dir", "--download", "--p-values", "--lr-range",
    "--lr-values", "--clip-values", "--objective", "--asha", "--asha-grace", "--epochs",
    "--backend", "--set", "--verbose",
}  # fmt: skip


def test_every_flag_of_before_is_still_there():
    flags = {s for action in build_parser()._actions for s in action.option_strings}
    assert BEFORE <= flags


def test_flags_reach_their_options():
    options = options_from_args(
        ["--task", "copying", "--p-values", "0.25,0.5", "--clip-values", "on,off"]
        + ["--seeds", "auto", "--resume", "--backend", "torch", "--set", "seq_len=7"]
        + ["--resource", "node=0.5", "--alpha", "0.1"]
    )
    assert options.p_values == [0.25, 0.5] and options.clip_values == [True, False]
    assert options.sequential and options.resume and options.alpha == 0.1
    assert options.set == {"seq_len": 7, "backend": "torch"}
    assert options.resources == {"node": 0.5}


@pytest.mark.parametrize(
    "values,message",
    [
        ({"trials": 2.0}, "trials must be an integer >= 1, got 2.0"),
        ({"seeds": "some"}, "seeds must be an integer >= 1, got 'some'"),
        ({"cpus_per_trial": "1"}, "cpus_per_trial must be > 0, got '1'"),
        ({"gpus_per_trial": 2000}, "gpus_per_trial must be in [0, 1024], got 2000"),
        ({"verbose": 4}, "verbose must be <= 3, got 4"),
        ({"p_values": [0.5, 0]}, "p value must be in (0, 1], got 0"),
        ({"lr_values": [1e3]}, "lr must be <= 100, got 1000.0"),
        ({"seed_list": [1, -2]}, "seed must be an integer >= 0, got -2"),
        ({"alpha": 1}, "alpha must be in (0, 1), got 1"),
        ({"confirm_seeds": 1}, "confirm_seeds must be 0 (off) or an integer >= 2, got 1"),
        ({"max_failures": 1}, "max_failures must be >= 2 (results are never lost), got 1"),
        ({"task": "captioning", "set": {"num_layers": 2}}, "num_layers is not used by task"),
    ],
)
def test_a_bad_option_is_one_line_naming_it(values, message):
    with pytest.raises(OptionsError) as info:
        options_from_mapping({"task": "copying", **values})
    assert str(info.value).startswith(message)
