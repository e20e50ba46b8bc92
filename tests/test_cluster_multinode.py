"""The study on a real multi-node Ray cluster on this machine: a head without CPUs and two
1-CPU worker nodes, each a separate `ray start` with token authentication and its own custom
resource, sharing one local directory as Tune's storage; the study driver joins with
`--address` and the token. Checks that trials spread over both worker nodes, that MLflow gets
the whole run tree, and that the trials of a worker node killed mid-study (SIGKILL to all its
processes) resume from their checkpoints on the other node with the same numbers.

The test starts its own cluster and kills it, by session and temp dir, whatever happens;
never `ray stop`, which would stop every Ray instance on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.cluster_utils import (
    FAST_HEALTH_CHECKS,
    LIST_NODES,
    LocalRayCluster,
    RayNode,
    kill_session,
    local_ray_cluster,
)
from tests.study.test_study import (
    FIXED,
    _children,
    _steps,
    _trial_states,
    _uninterrupted_val_acc,
)

ROOT = Path(__file__).resolve().parents[1]
WORKERS = {
    "node_a": {"node_a": 1, "hdetach_worker": 1},
    "node_b": {"node_b": 1, "hdetach_worker": 1},
}
EPOCH_KEYS = ("train_loss", "val_loss", "val_acc", "grad_norm", "detached_fraction")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def cluster() -> Iterator[LocalRayCluster]:
    with local_ray_cluster(WORKERS, head_env=FAST_HEALTH_CHECKS) as ray_cluster:
        yield ray_cluster


def _start_study(
    cluster: LocalRayCluster, tmp_path: Path, uri: str, experiment: str, epochs: int, batches: int
) -> subprocess.Popen:
    """`python study/run.py ... --address <head>` as a driver with the token, in its own
    session; 3 configurations (2 h-detach + their vanilla baseline) x 2 seeds = 6 trials, each
    asking for 1 CPU and the `hdetach_worker` resource, at most 2 at a time."""
    config = tmp_path / "study.yaml"
    config.write_text(FIXED)
    args = [
        sys.executable, str(ROOT / "study" / "run.py"), "--config", str(config),
        "--task", "copying", "--preset", "smoke", "--seeds", "2", "--cpus-per-trial", "1",
        "--resource", "hdetach_worker=1", "--max-concurrent", "2", "--epochs", str(epochs),
        "--set", f"batches_per_epoch={batches}", "--set", "train_size=1000",
        "--set", "val_size=200", "--set", "transfer_size=100",
        "--storage-path", str(tmp_path / "shared"), "--tracking-uri", uri,
        "--experiment", experiment, "--verbose", "0", "--address", cluster.address,
    ]  # fmt: skip
    env = {**cluster.client_env("driver"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(tmp_path / "driver.log", "wb") as log:
        return subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _wait(proc: subprocess.Popen, tmp_path: Path, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the study did not finish in {timeout} s:\n{_tail(tmp_path)}")
    assert proc.returncode == 0, _tail(tmp_path)


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "driver.log").read_text(errors="replace")[-4000:]


def _result_rows(trial_dir: Path) -> list[dict]:
    """Tune's result.json of a trial (one line per reported epoch, as the driver saw it)."""
    rows = []
    for line in (trial_dir / "result.json").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return rows


def _check_run_tree(client: MlflowClient, experiment: str, epochs: int) -> list:
    """3 finished parents, 6 finished children (one per configuration and seed), each epoch
    of each child in MLflow exactly once; returns the children."""
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs([exp.experiment_id], "tags.run_kind = 'parent'")
    assert sorted(p.data.tags["arm"] for p in parents) == ["h-detach", "h-detach", "vanilla"]
    every_epoch = list(range(1, epochs + 1))
    for parent in parents:
        assert parent.info.status == "FINISHED" and "objective" in parent.data.metrics
        assert _steps(client, parent.info.run_id, "val_acc_mean") == every_epoch
    by_id = {p.info.run_id: p for p in parents}
    children = _children(client, experiment)
    assert len(children) == 6
    assert len({(c.data.tags["config_id"], c.data.tags["seed"]) for c in children}) == 6
    for child in children:
        tags = child.data.tags
        assert child.info.status == "FINISHED"
        parent = by_id[tags["mlflow.parentRunId"]]
        assert parent.data.tags["config_id"] == tags["config_id"]
        for key in EPOCH_KEYS:
            assert _steps(client, child.info.run_id, key) == every_epoch, key
        assert child.data.metrics["censored"] == 0.0
    return children


def _trial_on_its_way(
    cluster: LocalRayCluster,
    workers: dict[str, str],
    client: MlflowClient,
    experiment: str,
    epochs: int,
) -> tuple[RayNode, str, int] | None:
    """(node, trial, epoch) of a trial that has reported epoch 2..epochs-2 and still runs on
    `node`, while both worker nodes run a trial and MLflow has some child at epoch >= 2."""
    if not all(node.worker_pids() for node in cluster.workers.values()):
        return None
    names = {node_id: name for name, node_id in workers.items()}
    # The driver's own copy of each trial's result.json (the shared one lags by seconds).
    for trial_dir in cluster.head.temp_dir.glob("session_*/artifacts/*/main/driver_artifacts/*"):
        rows = _result_rows(trial_dir) if (trial_dir / "result.json").exists() else []
        if not rows or not 2 <= rows[-1]["epoch"] <= epochs - 2:
            continue
        node = cluster.workers[names[rows[-1]["node_id"]]]
        if rows[-1]["pid"] not in node.worker_pids():
            continue
        exp = client.get_experiment_by_name(experiment)
        if exp is None or not any(
            c.data.metrics.get("epoch", 0) >= 2 for c in _children(client, experiment)
        ):
            continue
        return node, trial_dir.name, rows[-1]["epoch"]
    return None


def test_the_study_spreads_over_both_worker_nodes_and_a_killed_node_s_trials_resume(
    cluster: LocalRayCluster, tmp_path: Path, mlflow_server: str
) -> None:
    """One study (one cluster start, one driver: CI's time counts) against an `mlflow server`:
    its trials run on both worker nodes and never on the head; one worker node is killed
    mid-study and its trial resumes from its checkpoint on the other with the same numbers;
    MLflow holds the whole run tree, each epoch once; the cluster refuses a driver without
    the token."""
    epochs, experiment = 5, "node-failure"
    workers = cluster.worker_node_ids()
    head_id = next(n["id"] for n in cluster.list_nodes() if n["id"] not in workers.values())
    proc = _start_study(cluster, tmp_path, mlflow_server, experiment, epochs=epochs, batches=100)
    client = MlflowClient(mlflow_server)
    try:
        deadline = time.monotonic() + 240
        found = None
        while found is None:
            if proc.poll() is not None:
                pytest.fail(f"the study ended before a node could be killed:\n{_tail(tmp_path)}")
            if time.monotonic() > deadline:
                pytest.fail(f"no trial at epoch 2 on a busy cluster:\n{_tail(tmp_path)}")
            found = _trial_on_its_way(cluster, workers, client, experiment, epochs)
            time.sleep(0.2)
        victim, victim_trial, epoch_at_kill = found
        victim.kill()  # the node's `ray start`, raylet, agents and trial worker, all at once
        survivor = next(n for n in cluster.workers.values() if n is not victim)
        _wait(proc, tmp_path, timeout=300)
    finally:
        kill_session(proc)

    experiment_dir = tmp_path / "shared" / experiment / "main"
    states = _trial_states(experiment_dir)
    assert len(states) == 6
    failed_over = {name for name, state in states.items() if int(state["num_failures"]) >= 1}
    assert victim_trial in failed_over, (victim_trial, states)
    # The victim's trial went on from a checkpoint, on the surviving node: a restored trial
    # (iterations_since_restore starts again at 1) whose first epoch there is not epoch 1.
    # Normally it is the epoch after the last one reported before the kill; it is that last
    # epoch itself when the kill fell between Tune's logging of that epoch and its save of
    # the epoch's checkpoint (a separate call to the trial's worker, milliseconds later).
    rows = _result_rows(experiment_dir / victim_trial)
    on_survivor = [r for r in rows if r["node_id"] == workers[survivor.name]]
    assert on_survivor and on_survivor[0]["iterations_since_restore"] == 1, rows
    resumed_at = on_survivor[0]["epoch"]
    assert resumed_at >= epoch_at_kill >= 2, (resumed_at, epoch_at_kill)
    assert [r["epoch"] for r in on_survivor] == list(range(resumed_at, epochs + 1))
    dead = [n for n in cluster.list_nodes() if n["id"] == workers[victim.name]]
    assert dead and not dead[0]["alive"], dead  # and Ray knows that node is gone

    children = _check_run_tree(client, experiment, epochs)
    for child in children:
        trial = next(n for n in states if n.endswith("_" + child.data.tags["tune_trial_id"]))
        if trial in failed_over:
            assert child.data.tags["node_id"] == workers[survivor.name], trial
        # The same numbers as one uninterrupted run of the configuration and seed.
        history = sorted(
            client.get_metric_history(child.info.run_id, "val_acc"), key=lambda m: m.step
        )
        assert [m.value for m in history] == _uninterrupted_val_acc(child), trial

    # Every trial ran on a worker node (the head has no CPUs), and both worker nodes ran
    # trials (two at a time need two nodes of 1 CPU each): Tune's rows name the node of each
    # reported epoch, the victim's before the kill included.
    ran_on = {r["node_id"] for name in states for r in _result_rows(experiment_dir / name)}
    assert ran_on == set(workers.values()) and head_id not in ran_on, (ran_on, workers)
    # Tune's state and checkpoints, written from both nodes, are in the shared directory.
    for name in states:
        assert list((experiment_dir / name).glob("checkpoint_*")), f"no checkpoint in {name}"
    # ... and the cluster itself still refuses a driver without the token.
    refused = cluster.run_client(LIST_NODES, token=False)
    assert refused.returncode != 0 and "NODES" not in refused.stdout
    assert "Authentication token is missing or incorrect" in refused.stderr, refused.stderr
