"""Issue 21, failure 8: a checkpoint is data, never code.

Tune storage is shared by every node that resumes from it; a checkpoint that unpickles
arbitrary objects lets whoever can write there run code on all of them. ``Trainer.load`` reads
weights only (``torch.load(weights_only=True)``), and a real checkpoint still round-trips.
"""

from __future__ import annotations

import os

import pytest
import torch

from trainables.config import RunConfig
from trainables.train import Trainer


def _config() -> RunConfig:
    return RunConfig.from_preset(
        "copying", "smoke", epochs=2, batches_per_epoch=2, train_size=100, val_size=50,
        transfer_size=10, seeds=(0,), device="cpu",
    )  # fmt: skip


class _Payload:
    """Unpickling this runs ``os.system``: what a planted checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_carries_code_is_refused_without_running_it(tmp_path):
    trainer = Trainer(_config())
    trainer.train_epoch()
    state = trainer.state_dict()
    marker = tmp_path / "pwned"
    state["history"] = _Payload(str(marker))
    path = tmp_path / "trainer.pt"
    torch.save(state, path)

    with pytest.raises(Exception, match="(?i)weights.only|unsupported|not allowed"):
        Trainer(_config()).load(path)
    assert not marker.exists(), "loading the checkpoint ran its code"


def test_a_real_checkpoint_loads_with_weights_only(tmp_path):
    trainer = Trainer(_config())
    trainer.train_epoch()
    path = tmp_path / "trainer.pt"
    trainer.save(path)
    resumed = Trainer(_config())
    resumed.load(path)
    assert resumed.epoch == 1 and _measured(resumed) == _measured(trainer)
    resumed.train_epoch()
    trainer.train_epoch()
    assert _measured(resumed) == _measured(trainer)  # the same numbers as never stopped


def _measured(trainer: Trainer) -> list:
    return [
        [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h] for h in trainer.history
    ]
