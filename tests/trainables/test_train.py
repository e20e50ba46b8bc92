"""The training loop: it learns, resumes bit for bit, trains members exactly, records
divergence, and its command line rejects bad values with exit code 2."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainables.idx_files import write_mnist_raw
from trainables.config import ConfigError, RunConfig
from trainables.contract import EPOCH_METRICS, SETUP_KEYS
from trainables.seeds import stream_seed
from trainables.train import Trainer

ROOT = Path(__file__).resolve().parents[2]
TIMING = {"epoch_seconds"}


def tiny(**overrides) -> RunConfig:
    """A copying run small enough for unit tests (seconds)."""
    base = {
        "seq_len": 4,
        "hidden_size": 16,
        "batch_size": 20,
        "batches_per_epoch": 15,
        "train_size": 400,
        "val_size": 100,
        "epochs": 3,
        "transfer_delays": (8,),
        "transfer_size": 50,
        "p_detach": 0.5,
        "device": "cpu",
    }
    return RunConfig.from_preset("copying", "smoke", **{**base, **overrides})


def _without_timing(history: list[list[dict]]) -> list[list[dict]]:
    return [[{k: v for k, v in r.items() if k not in TIMING} for r in h] for h in history]


def test_smoke_copying_run_learns_far_above_chance():
    """The smoke preset (T=5) must learn: chance on the 8 data symbols is 12.5%."""
    trainer = Trainer(RunConfig.from_preset("copying", "smoke", seeds=(0,), device="cpu"))
    trainer.run()
    best = trainer.finish()[0]["best_val_acc"]
    assert best >= 0.5, f"best validation accuracy {best:.3f} after the smoke preset"
    assert trainer.history[0][-1]["train_loss"] < trainer.history[0][0]["train_loss"]


def assert_resumes_bitwise(make, path: Path, epochs_first: int, *, finals: bool = True) -> None:
    """A trainer (``make()``) checkpointed after ``epochs_first`` epochs and resumed in a
    fresh one ends exactly where an uninterrupted one does: histories, weights (and final
    metrics)."""
    straight = make().run()
    first = make()
    for _ in range(epochs_first):
        first.train_epoch()
    first.save(path)
    del first
    resumed = make()
    resumed.load(path)
    assert resumed.epoch == epochs_first
    resumed.run()

    assert _without_timing(resumed.history) == _without_timing(straight.history)
    for a, b in zip(resumed.params, straight.params, strict=True):
        assert torch.equal(a, b)
    if finals:
        assert json.dumps(resumed.finish()) == json.dumps(straight.finish())  # NaN-aware


def test_resume_from_checkpoint_is_bitwise_identical(tmp_path):
    cfg = tiny(epochs=3, c_detach=0.2)
    assert_resumes_bitwise(lambda: Trainer(cfg), tmp_path / "ckpt.pt", 2)


def test_checkpoint_rejects_another_configuration(tmp_path):
    trainer = Trainer(tiny(epochs=1))
    trainer.save(tmp_path / "ckpt.pt")
    other = Trainer(tiny(epochs=1, lr=0.5))
    with pytest.raises(ConfigError, match="different configuration"):
        other.load(tmp_path / "ckpt.pt")


def test_members_equal_separate_runs():
    cfg = tiny(epochs=2, seeds=(3, 4, 5))
    group = Trainer(cfg).run()
    finals = group.finish()
    for k, seed in enumerate(cfg.seeds):
        alone = Trainer(cfg.replace(seeds=(seed,))).run()
        for rec_group, rec_alone in zip(group.history[k], alone.history[0], strict=True):
            for key in EPOCH_METRICS:
                if key not in TIMING:
                    assert rec_group[key] == pytest.approx(rec_alone[key], rel=1e-5, abs=1e-5)
        for p_group, p_alone in zip(group.params, alone.params, strict=True):
            assert (p_group[k] - p_alone[0]).abs().max() <= 1e-5
        assert finals[k]["transfer_acc_T8"] == pytest.approx(alone.finish()[0]["transfer_acc_T8"])


def test_arms_with_the_same_seed_share_weights_and_batches():
    vanilla, hdetach = Trainer(tiny(p_detach=0.0)), Trainer(tiny(p_detach=0.5))
    for a, b in zip(vanilla.params, hdetach.params, strict=True):
        assert torch.equal(a, b)
    assert all(
        torch.equal(a, b) for a, b in zip(vanilla._batches(), hdetach._batches(), strict=True)
    )
    other_seed = Trainer(tiny(p_detach=0.0, seeds=(1,)))
    assert not torch.equal(vanilla.params[0], other_seed.params[0])
    assert len({stream_seed(0, s) for s in ("init", "data", "masks")}) == 3


def test_divergence_is_recorded_not_raised():
    # Non-finite inputs turn the loss non-finite in the first epoch (the learning rates the
    # configuration accepts, <= 100, do not blow this tiny LSTM up: it saturates instead).
    cfg = tiny(clip=False, epochs=4, p_detach=0.0, seeds=(0, 1))
    trainer = Trainer(cfg)
    trainer.data.train.x[:] = float("inf")
    trainer.run()
    finals = trainer.finish()
    for k, final in enumerate(finals):
        assert final["diverged"] == 1.0
        assert final["diverged_epoch"] == trainer.history[k][-1]["epoch"]
        assert trainer.history[k][-1]["diverged"] is True
    # the run ends at the epoch its last member diverged, not at cfg.epochs
    assert trainer.epoch == max(f["diverged_epoch"] for f in finals) < cfg.epochs


def test_metrics_per_epoch_are_complete_and_sane():
    trainer = Trainer(tiny(epochs=2, p_detach=0.25, clip_norm=0.5))
    records = trainer.train_epoch()
    record = records[0]
    assert set(EPOCH_METRICS) <= set(record) and record["epoch"] == 1
    assert 0.0 <= record["val_acc"] <= 1.0
    assert 0.1 < record["detached_fraction"] < 0.4
    assert record["grad_norm_max"] >= record["grad_norm"] > 0
    # norms are measured before clipping: with clip 0.5 they still exceed 0.5 early on
    assert record["grad_norm_max"] > 0.5


def test_anneal_p_turns_h_detach_off_as_the_reference_code():
    trainer = Trainer(tiny(epochs=4, anneal_p=3))  # reference: off in 0-based epochs e > 1
    fractions = [trainer.train_epoch()[0]["detached_fraction"] for _ in range(4)]
    assert fractions[0] > 0 and fractions[1] > 0 and fractions[2] == 0 and fractions[3] == 0


def test_select_keeps_the_first_or_the_last_epoch_tying_the_best():
    # At lr 1e-9 no prediction changes: every epoch ties the first one's accuracy.
    runs = {s: Trainer(tiny(epochs=3, lr=1e-9, select=s)).run() for s in ("first", "last")}
    accs = [r["val_acc"] for r in runs["first"].history[0]]
    assert accs == [accs[0]] * 3
    assert runs["first"].finish()[0]["best_epoch"] == 1
    assert runs["last"].finish()[0]["best_epoch"] == 3  # the authors' copying script (>=)
    first, last = (runs[s].best_params[0] for s in ("first", "last"))
    assert not torch.equal(first, last)
    assert "select" in SETUP_KEYS  # the kept epoch changes final metrics: runs compare only alike
    with pytest.raises(ConfigError, match="select must be one of first, last, got 'best'"):
        tiny(select="best")


def test_mnist_run_reports_test_accuracy_at_best_epoch(tmp_path):
    write_mnist_raw(tmp_path, n_train=80, n_test=30)
    cfg = RunConfig.from_preset(
        "pmnist",
        "smoke",
        data_dir=str(tmp_path),
        train_size=40,
        val_size=20,
        test_size=30,
        batch_size=20,
        epochs=2,
        hidden_size=8,
        p_detach=0.25,
        device="cpu",
    )
    trainer = Trainer(cfg).run()
    final = trainer.finish()[0]
    assert 0.0 <= final["test_acc_at_best"] <= 1.0 and final["last_epoch"] == 2
    assert final["best_epoch"] in (1, 2)
    assert trainer.data.train.x.shape == (40, 49, 1)  # the smoke preset pools 4x4 pixels


def test_per_seed_permutation_members_equal_single_seed_runs(tmp_path):
    # The authors draw one pixel order per seed; two members trained together must each see
    # their own seed's order, exactly as two runs of one seed each.
    write_mnist_raw(tmp_path, n_train=80, n_test=20)
    cfg = RunConfig.from_preset(
        "pmnist", "smoke", data_dir=str(tmp_path), train_size=40, val_size=20, test_size=20,
        batch_size=20, epochs=2, hidden_size=8, p_detach=0.25, device="cpu",
        permutation="per_seed", seeds=(1, 2),
    )  # fmt: skip
    group = Trainer(cfg)
    alone = [Trainer(cfg.replace(seeds=(seed,))) for seed in cfg.seeds]
    batch = torch.stack([torch.arange(20), torch.arange(39, 19, -1)])  # (K, B) indices
    member_x = group.data.in_member_order(group.data.train.x[batch].permute(2, 0, 1, 3))
    for k, single in enumerate(alone):
        assert torch.equal(member_x[:, k], single.data.train.x[batch[k]].transpose(0, 1))
    group.run()
    finals = group.finish()
    for k, single in enumerate(alone):
        single.run()
        for rec_group, rec_alone in zip(group.history[k], single.history[0], strict=True):
            for key in EPOCH_METRICS:
                if key not in TIMING:
                    assert rec_group[key] == pytest.approx(rec_alone[key], rel=1e-5, abs=1e-5)
        test_acc = single.finish()[0]["test_acc_at_best"]
        assert finals[k]["test_acc_at_best"] == pytest.approx(test_acc, abs=1e-9)
    assert group.data.meta["permutation_seed"] == [1, 2]


# -- command line -------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainables.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_tasks_and_presets():
    result = _cli("--help")
    assert result.returncode == 0
    for word in ("copying", "seq_mnist", "pmnist", "paper", "smoke"):
        assert word in result.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--task", "copying", "--p-detach", "1.5"], "p_detach must be in [0, 1], got 1.5"),
        (["--task", "copying", "--lr", "0"], "lr must be > 0, got 0.0"),
        (["--task", "copying", "--lr", "-1"], "lr must be > 0, got -1.0"),
        (["--task", "sudoku"], "invalid choice: 'sudoku'"),
        (["--task", "copying", "--seeds", "1,x"], "--seeds must be comma-separated integers"),
        (["--task", "copying", "--epochs", "0"], "epochs must be an integer >= 1, got 0"),
        (["--task", "copying", "--select", "best"], "argument --select: invalid choice: 'best'"),
    ],
)
def test_bad_values_exit_2_with_one_line(args, needle):
    result = _cli(*args, "--preset", "smoke")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_missing_mnist_data_says_where_files_go(tmp_path):
    result = _cli("--task", "seq_mnist", "--preset", "smoke", "--data-dir", str(tmp_path / "mn"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(tmp_path / "mn") in result.stderr and "--download" in result.stderr


def test_cli_prints_one_line_per_epoch_and_writes_results(tmp_path):
    out = tmp_path / "run.json"
    args = ["--task", "copying", "--preset", "smoke", "--epochs", "2", "--seq-len", "3"]
    result = _cli(*args, "--train-size", "200", "--seed", "7", "--json", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 2 and "val_acc" in epoch_lines[0]
    payload = json.loads(out.read_text())
    assert payload["config"]["seeds"] == [7] and len(payload["history"][0]) == 2
    assert payload["streams"]["7"]["seed_init"] == stream_seed(7, "init")


@pytest.mark.slow
def test_killed_cli_run_resumes_to_the_uninterrupted_result(tmp_path):
    """kill -9 after an epoch checkpoint, then --resume: same metrics as a straight run."""
    common = ["--task", "copying", "--preset", "smoke", "--epochs", "4", "--seed", "2"]
    common += ["--seq-len", "4", "--train-size", "400", "--p-detach", "0.5", "--quiet"]
    straight = _cli(*common, "--json", str(tmp_path / "straight.json"))
    assert straight.returncode == 0, straight.stderr

    ckpt = tmp_path / "ckpt.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainables.train", *common, "--checkpoint", str(ckpt)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in proc.stdout:  # wait for the second epoch's line, then kill without warning
        lines.append(line)
        if line.startswith("epoch    2"):  # printed after that epoch's checkpoint is on disk
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    resumed = _cli(
        *common, "--checkpoint", str(ckpt), "--resume", "--json", str(tmp_path / "r.json")
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "starting at epoch 3/4" in resumed.stdout or "starting at epoch 4/4" in resumed.stdout

    a = json.loads((tmp_path / "straight.json").read_text())
    b = json.loads((tmp_path / "r.json").read_text())
    assert _without_timing(a["history"]) == _without_timing(b["history"])
    assert json.dumps(a["final"]) == json.dumps(b["final"])  # NaN-aware
    assert not math.isnan(a["final"][0]["best_val_acc"])
