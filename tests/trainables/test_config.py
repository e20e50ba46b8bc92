"""The run options as declared once (trainables/config.py through trainables/declare.py):
the checks, the per-task options and the command-line flags all come from the declaration."""

from __future__ import annotations

import dataclasses

import pytest

from trainables.config import ConfigError, RunConfig, preset_table
from trainables.contract import SETUP_KEYS, TASKS
from trainables.declare import spec_of
from trainables.train import _parser, config_from_args

FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"p_detach": 1.5}, "p_detach must be in [0, 1], got 1.5"),
        ({"lr": -1}, "lr must be > 0, got -1"),
        ({"lr": 1e308}, "lr must be <= 100, got 1e+308"),
        ({"epochs": 3.0}, "epochs must be an integer >= 1, got 3.0"),
        ({"epochs": "3"}, "epochs must be an integer >= 1, got '3'"),
        ({"epochs": True}, "epochs must be an integer >= 1, got True"),
        ({"hidden_size": 10**9}, "hidden_size must be <= 65,536, got 1000000000"),
        ({"seeds": (0, -1)}, "seed must be an integer >= 0, got -1"),
        ({"transfer_delays": (0,)}, "transfer delay must be an integer >= 1, got 0"),
        ({"clip_norm": float("inf")}, "clip_norm must be > 0, got inf"),
        ({"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
        ({"mask_scope": "x"}, "mask_scope must be 'shared' or 'per_layer', got 'x'"),
        ({"device": "gpu"}, "device must be auto, cpu or cuda[:N], got 'gpu'"),
        ({"seeds": (1, 1)}, "seeds must be distinct, got (1, 1)"),
    ],
)
def test_a_bad_value_is_one_line_naming_it(overrides, message):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_preset("copying", "smoke", **overrides)
    assert str(info.value) == message


def test_numbers_are_kept_as_given():
    # pydantic checks, it does not convert: an int learning rate stays an int (as logged).
    assert type(RunConfig.from_preset("copying", "smoke", lr=1).lr) is int


@pytest.mark.parametrize(
    "task,overrides,name",
    [
        ("captioning", {"num_layers": 2}, "num_layers"),
        ("captioning", {"mask_scope": "per_layer"}, "mask_scope"),
        ("captioning", {"seq_len": 40}, "seq_len"),
        ("copying", {"dropout": 0.1}, "dropout"),
        ("copying", {"test_size": 10}, "test_size"),
        ("seq_mnist", {"permutation": "per_seed"}, "permutation"),
        ("pmnist", {"transfer_delays": (10,)}, "transfer_delays"),
        ("language_model", {"decoder": "soft_attention"}, "decoder"),
    ],
)
def test_an_option_the_task_ignores_is_refused(task, overrides, name):
    with pytest.raises(ConfigError, match=f"^{name} is not used by task '{task}'"):
        RunConfig.from_preset(task, "smoke", **overrides)


@pytest.mark.parametrize("task", TASKS)
def test_options_a_task_ignores_never_split_its_setups(task):
    # Every preset of the task is accepted, and holds each setup key the task ignores at its
    # default: since any other value is refused, two runs of the task never differ there.
    for preset in preset_table()[task]:
        cfg = RunConfig.from_preset(task, preset)
        for key in SETUP_KEYS:
            tasks = spec_of(FIELDS[key]).tasks
            if tasks and task not in tasks:
                assert getattr(cfg, key) == FIELDS[key].default, (task, preset, key)


def test_every_flag_is_generated_from_its_option():
    parser = _parser()
    flags = {s for action in parser._actions for s in action.option_strings}
    before = {  # the flags of the hand-written parser this replaced: none may go
        "--task", "--preset", "--seed", "--seeds", "--p-detach", "--c-detach", "--damp", "--lr",
        "--optimizer", "--clip-norm", "--no-clip", "--epochs", "--hidden-size", "--num-layers",
        "--seq-len", "--batch-size", "--train-size", "--val-size", "--test-size", "--corpus",
        "--level", "--embedding-size", "--dropout", "--tie-weights", "--min-count", "--decoder",
        "--beam-size", "--max-caption-len", "--anneal-p", "--select", "--permutation",
        "--one-hot", "--data-dir", "--download", "--shuffle-seed", "--device", "--backend",
        "--precision", "--checkpoint", "--resume", "--json", "--quiet",
    }  # fmt: skip
    assert before <= flags
    args = parser.parse_args(
        ["--task", "copying", "--preset", "smoke", "--momentum", "0.5", "--one-hot"]
        + ["--transfer-delays", "7,9", "--no-clip", "--seeds", "3,4"]
    )
    cfg = config_from_args(args)
    assert (cfg.momentum, cfg.one_hot, cfg.transfer_delays) == (0.5, True, (7, 9))
    assert (cfg.clip, cfg.seeds) == (False, (3, 4))
    untouched = RunConfig.from_preset("copying", "smoke")
    assert cfg.replace(momentum=0.9, one_hot=False, transfer_delays=(10, 20)) == untouched.replace(
        clip=False, seeds=(3, 4)
    )
