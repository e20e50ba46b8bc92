"""The study service end to end: real local Ray, a real MLflow server, real kills.

Each study runs ``python study/run.py`` in a subprocess (its own embedded local Ray, never a
cluster that happens to run here) on the copying smoke preset shrunk to a few seconds per
trial, with the vanilla baseline paired to every configuration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from trainables.config import RunConfig
from trainables.train import Trainer

ROOT = Path(__file__).resolve().parents[2]
RUN = [sys.executable, str(ROOT / "study" / "run.py")]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}

# Two h-detach configurations sharing one (lr, clip): one vanilla baseline pairs with both.
FIXED = """\
search: fixed
configs:
  - {p_detach: 0.25, lr: 0.01, clip: true}
  - {p_detach: 0.5, lr: 0.01, clip: true}
"""
SMALL = ["--task", "copying", "--preset", "smoke", "--seeds", "2", "--cpus-per-trial", "1"]
SMALL += ["--max-concurrent", "2", "--set", "train_size=1000", "--set", "val_size=200"]
SMALL += ["--set", "transfer_size=100", "--verbose", "0"]


def _study_args(tmp_path: Path, *extra: str, epochs: int = 3, batches: int = 20) -> list[str]:
    config = tmp_path / "study.yaml"
    config.write_text(FIXED)
    return [
        *RUN,
        "--config",
        str(config),
        *SMALL,
        "--epochs",
        str(epochs),
        "--set",
        f"batches_per_epoch={batches}",
        "--storage-path",
        str(tmp_path / "runs"),
        *extra,
    ]


def _children(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.run_kind = 'child'", max_results=1000)


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _uninterrupted_val_acc(run) -> list[float]:
    """The same (configuration, seed) trained straight through in this process."""
    params = run.data.params
    cfg = RunConfig.from_preset(
        "copying",
        "smoke",
        epochs=int(params["epochs"]),
        batches_per_epoch=int(params["batches_per_epoch"]),
        train_size=int(params["train_size"]),
        val_size=int(params["val_size"]),
        transfer_size=int(params["transfer_size"]),
        p_detach=float(params["p_detach"]),
        lr=float(params["lr"]),
        clip=params["clip"] == "True",
        seeds=(int(params["seed"]),),
        device="cpu",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial (cpus_per_trial = 1)
    try:
        trainer = Trainer(cfg).run()
    finally:
        torch.set_num_threads(threads)
    return [r["val_acc"] for r in trainer.history[0]]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    """The study driver in its own session, so that it and its local Ray can be killed;
    its stderr goes to ``cwd/driver.log`` (a pipe nobody reads could block it)."""
    with open(cwd / "driver.log", "w") as log:
        return subprocess.Popen(
            args, cwd=cwd, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log
        )


def _kill_session(leader: int) -> None:
    """SIGKILL every process of the driver's session (driver, its local Ray, workers)."""
    for pid in _pids():
        try:
            if os.getsid(pid) == leader:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _workers(session: int) -> list[int]:
    return [p for p in _pids() if "ImplicitFunc" in _cmdline(p) and _sid(p) == session]


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _trial_of(worker: int) -> str | None:
    """The trial a worker runs: Tune runs it in the trial's working directory."""
    try:
        return Path(os.readlink(f"/proc/{worker}/cwd")).name
    except OSError:
        return None


def _runs_now(trial_dir: Path, pid: int, first_epoch: int = 1, last_epoch: int = 3) -> bool:
    """Whether ``pid`` runs the trial of ``trial_dir`` now, early enough to be interrupted:
    the trial's last result came from that process, is not its last (``done``), and is an
    epoch from ``first_epoch`` to ``last_epoch``. With ``reuse_actors`` a worker goes on to
    other trials, and the one its working directory names may have finished (a kill would
    then hit another trial)."""
    try:
        lines = (trial_dir / "result.json").read_text().strip().splitlines()
        last = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return False
    if not last or last.get("done"):
        return False
    return last.get("pid") == pid and first_epoch <= last.get("epoch", 0) <= last_epoch


def _running_trial(session: int, trials_dir: Path, first_epoch: int = 1) -> tuple[int, str] | None:
    """A worker of the driver's session and the trial it runs now, at ``first_epoch`` to
    its third epoch, with a checkpoint: read from the trial directories and ``/proc``
    without stopping anything, cheap enough to poll many times a second (an epoch of the
    smoke preset takes a fraction of a second)."""
    for pid in _workers(session):
        name = _trial_of(pid)
        if name is None or not _runs_now(trials_dir / name, pid, first_epoch):
            continue  # a reused worker's directory can name a trial it ran before
        if any((trials_dir / name).glob("checkpoint_*/trainer.pt")):
            return pid, name
    return None


def _trial_states(experiment_dir: Path) -> dict[str, dict]:
    """Tune's own record of each trial (from its latest experiment-state snapshot), by trial
    directory name: ``num_failures``, ``start_time``, ``last_result_time`` ..."""
    newest = max(experiment_dir.glob("experiment_state-*.json"))  # named by session start
    states = {}
    for trial_json, runtime_json in json.loads(newest.read_text())["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        states[trial["custom_dirname"] or trial["relative_logdir"]] = runtime
    return states


def _wait_for(
    predicate,
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    every: float = 0.5,
):
    """``predicate()``'s first truthy value, polled ``every`` seconds (a kill timed against
    a trial's epochs polls the trial directories every 20 ms: an epoch takes ~0.2 s here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"study exited ({proc.returncode}) before {what}")
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_study_logs_the_paired_run_tree_to_an_mlflow_server(tmp_path, mlflow_server):
    experiment = "tree"
    args = _study_args(tmp_path, "--tracking-uri", mlflow_server, "--experiment", experiment)
    result = subprocess.run(
        args, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs([exp.experiment_id], "tags.run_kind = 'parent'")
    children = _children(client, experiment)
    by_config = {p.data.tags["config_id"]: p for p in parents}
    assert sorted(p.data.tags["arm"] for p in parents) == ["h-detach", "h-detach", "vanilla"]
    assert len(children) == 6  # 3 configurations x 2 seeds
    vanilla = next(c for c, p in by_config.items() if p.data.tags["arm"] == "vanilla")
    for parent in parents:
        tags, params = parent.data.tags, parent.data.params
        assert {"task", "arm", "p_detach", "lr", "clip", "config_id"} <= set(tags)
        if tags["arm"] == "h-detach":
            assert tags["baseline_config_id"] == vanilla  # paired with the same (lr, clip)
        assert tags["seeds"] == "0,1" and params["lr"] == "0.01"
        assert _steps(client, parent.info.run_id, "val_acc_mean") == [1, 2, 3]
        assert parent.info.status == "FINISHED" and "objective" in parent.data.metrics

    seeds_per_config: dict[str, set[int]] = {}
    for child in children:
        tags, params, metrics = child.data.tags, child.data.params, child.data.metrics
        parent = by_config[tags["config_id"]]
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["arm"] == parent.data.tags["arm"] and tags["seed"] == params["seed"]
        assert {"seed_init", "seed_data", "seed_masks", "p_detach", "lr", "clip"} <= set(params)
        seeds_per_config.setdefault(tags["config_id"], set()).add(int(params["seed"]))
        for key in ("train_loss", "val_loss", "val_acc", "grad_norm", "detached_fraction"):
            assert _steps(client, child.info.run_id, key) == [1, 2, 3], key  # each epoch once
        for key in ("best_val_acc", "diverged", "last_epoch", "transfer_acc_T10"):
            assert key in metrics, key
        assert metrics["censored"] == 0.0 and child.info.status == "FINISHED"
        noise = [k for k in [*params, *metrics] if k.startswith(("config/", "time_"))]
        assert not noise
    assert all(seeds == {0, 1} for seeds in seeds_per_config.values())

    # the parent's aggregate is the mean of its children's curves
    parent = by_config[vanilla]
    kids = [c for c in children if c.data.tags["config_id"] == vanilla]
    finals = [
        [
            m.value
            for m in sorted(
                client.get_metric_history(k.info.run_id, "val_acc"), key=lambda m: m.step
            )
        ]
        for k in kids
    ]
    mean = sorted(
        client.get_metric_history(parent.info.run_id, "val_acc_mean"), key=lambda m: m.step
    )
    for epoch, metric in enumerate(mean):
        assert metric.value == pytest.approx(sum(f[epoch] for f in finals) / len(finals))


@pytest.mark.slow
def test_a_killed_trial_worker_resumes_from_its_checkpoint(tmp_path):
    experiment, db = "kill-worker", tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    args = _study_args(
        tmp_path, "--tracking-uri", uri, "--experiment", experiment, epochs=5, batches=50
    )
    trials_dir = tmp_path / "runs" / experiment / "main"
    proc = _start(args, tmp_path)
    client = MlflowClient(uri)
    try:
        # kill -9 the worker of a trial mid-training, past its second checkpoint
        running = _wait_for(
            lambda: _running_trial(proc.pid, trials_dir, first_epoch=2),
            600, "a trial at its second epoch", proc, every=0.02,
        )  # fmt: skip
        os.kill(running[0], signal.SIGKILL)
        proc.wait(timeout=900)
        assert proc.returncode == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        _kill_session(proc.pid)

    states = _trial_states(tmp_path / "runs" / experiment / "main")
    assert int(states[running[1]]["num_failures"]) == 1, "the killed trial did not fail once"
    children = _children(client, experiment)
    assert len(children) == 6
    for child in children:  # every epoch exactly once, curves as if never interrupted
        history = sorted(
            client.get_metric_history(child.info.run_id, "val_acc"), key=lambda m: m.step
        )
        assert [m.step for m in history] == [1, 2, 3, 4, 5]
        assert [m.value for m in history] == _uninterrupted_val_acc(child)


@pytest.mark.slow
def test_a_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    experiment, db = "kill-driver", tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    # Long enough trials (the C++ engine trains 50 smoke batches in about 0.2 s, so a trial
    # here takes about 8 s) that the kill, at most about 7 s after the first two trials end,
    # comes before the last two (which start when the next two end) have finished, even on a
    # CPU twice as fast.
    epochs = 10
    args = _study_args(
        tmp_path, "--tracking-uri", uri, "--experiment", experiment, epochs=epochs, batches=200
    )
    proc = _start(args, tmp_path)
    client = MlflowClient(uri)
    try:

        def two_finished():
            if not db.exists() or client.get_experiment_by_name(experiment) is None:
                return None
            done = [c for c in _children(client, experiment) if c.info.status == "FINISHED"]
            return done if len(done) >= 2 else None

        finished_before = {
            (c.data.tags["config_id"], int(c.data.tags["seed"]))
            for c in _wait_for(two_finished, 600, "two finished trials", proc)
        }
        # Tune snapshots its own state every 2 s here and copies it to storage every 2 s
        # (study/run.py, local storage); a trial that ended inside that window would be
        # resumed from its last snapshotted checkpoint instead (same numbers, no duplicates).
        time.sleep(5)
    finally:
        _kill_session(proc.pid)  # the driver and its whole local Ray, without warning
    proc.wait(timeout=60)
    killed_at = time.time()
    finished = [c for c in _children(client, experiment) if c.info.status == "FINISHED"]
    assert len(finished) < 6, "the study ended before it could be killed"

    resumed = subprocess.run(
        [*args, "--resume"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    children = _children(client, experiment)
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    assert len({(c.data.tags["config_id"], c.data.tags["seed"]) for c in children}) == 6
    for child in children:  # no epoch missing, none twice
        assert _steps(client, child.info.run_id, "val_acc") == list(range(1, epochs + 1))
    states = _trial_states(tmp_path / "runs" / experiment / "main")
    assert len(states) == 6
    for config, seed in finished_before:  # seeds_per_trial = 1: the block index is the seed
        (name,) = [n for n in states if n.startswith(f"{config}_b{seed}_")]
        assert float(states[name]["last_result_time"]) < killed_at, f"{name} was run again"
    parents = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id], "tags.run_kind = 'parent'"
    )
    assert len(parents) == 3 and all(p.info.status == "FINISHED" for p in parents)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--task", "copying", "--p-values", "1.5"], "p value must be in (0, 1], got 1.5"),
        (["--task", "copying", "--lr-range", "0,0.1"], "lr_range must be two learning rates > 0"),
        (["--task", "sudoku"], "invalid choice: 'sudoku'"),
        (["--task", "copying", "--seeds", "0"], "seeds must be an integer >= 1, got 0"),
        (["--task", "copying", "--set", "lr=-1"], "lr must be > 0, got -1"),
        (["--task", "copying", "--cpus-per-trial", "0"], "cpus_per_trial must be > 0"),
        (["--task", "copying", "--resume"], "--resume: no study to resume"),
        (["--task", "seq_mnist", "--data-dir", "nowhere"], "MNIST not found"),
        (["--task", "copying", "--tracking-uri", "file:./mlruns"], "file"),
        (["--task", "copying", "--tracking-uri", "sqlite:///no/such/dir/m.db"], "no/such/dir"),
        (["--task", "copying", "--backend", "triton"], "backend 'triton' runs on GPUs"),
        (["--task", "copying", "--backend", "persistent"], "backend 'persistent' runs on GPUs"),
        (
            ["--task", "copying", "--seeds", "auto", "--min-seeds", "9", "--max-seeds", "8"],
            "min_seeds (9) must be <= max_seeds (8)",
        ),
        (["--task", "copying", "--seeds", "auto", "--seed-block", "0"], "seed_block must be"),
        (["--task", "copying", "--seeds", "auto", "--budget-hours", "0"], "budget_hours must be"),
        (["--task", "copying", "--seeds", "auto", "--asha"], "cannot be combined with --asha"),
        (["--task", "copying", "--seeds", "some"], "must be a number of seeds or 'auto'"),
        (["--task", "copying", "--set", "backend=fast"], "backend must be one of auto, cpp"),
    ],
)
def test_bad_input_exits_2_and_creates_nothing(tmp_path, extra, needle):
    result = subprocess.run(
        [*RUN, *extra], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_bad_config_file_exits_2(tmp_path):
    (tmp_path / "bad.yaml").write_text("trials: [1, 2\n")
    (tmp_path / "unknown.yaml").write_text("task: copying\nepochz: 3\n")
    for name, needle in (
        ("bad.yaml", "not valid YAML"),
        ("unknown.yaml", "unknown option 'epochz'"),
    ):
        result = subprocess.run(
            [*RUN, "--config", name],
            cwd=tmp_path,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_unreachable_server_exits_2_before_anything_starts(tmp_path, mlflow_server, unused_port):
    start = time.monotonic()
    result = subprocess.run(
        [
            *RUN,
            "--task",
            "copying",
            "--tracking-uri",
            f"http://127.0.0.1:{unused_port}",
            "--experiment",
            "never",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and f"127.0.0.1:{unused_port}" in result.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "runs").exists()
    # and a rejected command against the real server leaves no experiment behind
    rejected = subprocess.run(
        [
            *RUN,
            "--task",
            "copying",
            "--tracking-uri",
            mlflow_server,
            "--experiment",
            "rejected",
            "--p-values",
            "2",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rejected.returncode == 2
    assert MlflowClient(mlflow_server).get_experiment_by_name("rejected") is None


@pytest.mark.slow
def test_asha_stops_trials_early_and_marks_them_censored(tmp_path):
    """--asha is for pure HPO: runs it stops keep their epochs and are marked censored."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The learning rate that learns comes first, so the hopeless ones fall below ASHA's cut.
    (tmp_path / "asha.yaml").write_text(
        "search: fixed\nconfigs:\n"
        "  - {p_detach: 0.25, lr: 0.01, clip: true}\n"
        "  - {p_detach: 0.5, lr: 0.01, clip: true}\n"
        "  - {p_detach: 0.25, lr: 0.0001, clip: true}\n"
        "  - {p_detach: 0.5, lr: 0.0001, clip: true}\n"
    )
    args = [
        *RUN, "--config", str(tmp_path / "asha.yaml"), "--task", "copying", "--preset", "smoke",
        "--seeds", "1", "--epochs", "6", "--asha", "--asha-grace", "2",
        "--set", "batches_per_epoch=100", "--set", "train_size=1000", "--set", "val_size=200",
        "--set", "transfer_size=100", "--max-concurrent", "2", "--verbose", "0",
        "--tracking-uri", uri, "--experiment", "asha", "--storage-path", str(tmp_path / "runs"),
    ]  # fmt: skip
    result = subprocess.run(
        args, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    children = _children(client, "asha")
    assert len(children) == 6  # 4 configurations + 2 baselines (one per lr), 1 seed each
    censored = [c for c in children if c.data.metrics["censored"] == 1.0]
    complete = [c for c in children if c.data.metrics["censored"] == 0.0]
    assert censored, "ASHA stopped no trial"
    for child in censored:  # stopped before the end; scored on the epochs it ran
        epochs = _steps(client, child.info.run_id, "val_acc")
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) < 6
        assert child.data.metrics["last_epoch"] == len(epochs)
        assert "best_val_acc" in child.data.metrics
    for child in complete:
        assert _steps(client, child.info.run_id, "val_acc") == [1, 2, 3, 4, 5, 6]
