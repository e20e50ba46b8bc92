"""Real Ray nodes on this machine for the cluster tests, shared by
tests/test_cluster_security.py (one token-authenticated head on 127.0.0.1) and
tests/test_cluster_multinode.py (a head and worker nodes, each its own `ray start`).

Every node runs in its own session (`start_new_session=True`) under its own temp dir, with
free ports, so that its processes (raylet, agents, the workers the raylet starts) can be found
by session id and SIGKILLed. Nothing here ever calls `ray stop`, which would stop every Ray
instance on the machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line contains `marker` (a temp dir only this test uses)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def session_pids(leader: int) -> list[int]:
    """Live processes of the session that `leader` (started with start_new_session) leads;
    zombies, already dead and waiting for their parent to reap them, do not count."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) != leader:
                    continue
                state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                continue
            if state not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def sigkill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL every process of `process`'s session (it was started with start_new_session):
    itself, unless it has exited already, and whatever it left running."""
    if process.poll() is None:
        sigkill([process.pid])
    sigkill(session_pids(process.pid))
    process.wait(timeout=30)


def kill_group_and_stragglers(process: subprocess.Popen, marker: str) -> None:
    """SIGKILL `process`'s group and whatever else mentions `marker`; fail if any survive."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)
    sigkill(pids_mentioning(marker))
    deadline = time.monotonic() + 10
    while pids_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    leaked = pids_mentioning(marker)
    assert not leaked, f"processes left behind: {leaked}"


def clean_env(home: Path) -> dict[str, str]:
    """This environment without any Ray setting, and a HOME without ~/.ray/auth_token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        RAY_USAGE_STATS_ENABLED="0",
        # Keep every Ray address on the loopback (on Linux Ray replaces 127.0.0.1 by the
        # machine's outward address unless told that this is a one-machine cluster).
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    return env


def has_ray_dashboard() -> bool:
    try:
        import ray.dashboard.optional_deps  # noqa: F401  (what `ray start` itself checks)
    except ImportError:
        return False
    return True


# --- A multi-node cluster on one machine ----------------------------------------------------

# The nodes' address: a loopback address, but not 127.0.0.1. On Linux a joining `ray start
# --address ...` replaces 127.0.0.1 and localhost, in --address and --node-ip-address alike,
# by the machine's outward address (192.0.2.2 here), where a head on 127.0.0.1 is not found;
# with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which stops that, it refuses to join at all
# ("Multi-node Ray clusters are not supported"). Other 127.x.y.z addresses are left alone.
# The price: Ray's gRPC servers listen on 127.0.0.1 only for node address 127.0.0.1, so here
# the GCS, raylets and agents listen on all interfaces, as on a real cluster; token
# authentication is what guards them (checked by the multi-node test).
HOST = "127.0.0.2"

# Prints the cluster's nodes as one JSON line; run with or without the token.
LIST_NODES = """
import json, sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
nodes = [{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()]
print("NODES " + json.dumps(nodes))
"""

# The GCS notices a dead node by its health checks: by default after 5 failed checks 3 s
# apart. Ray reads its settings from RAY_<name> variables in the GCS's environment (Ray 2.60:
# src/ray/common/ray_config_def.h); with these a SIGKILLed node counts as dead after ~3 s.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen  # `ray start --block`, leader of the node's session
    temp_dir: Path

    @property
    def log(self) -> str:
        return (self.temp_dir.parent / f"{self.name}.log").read_text(errors="replace")

    def pids(self) -> list[int]:
        """This node's live processes: its session (`ray start`, raylet, agents, the workers
        that run tasks and trials) and anything else naming its temp dir."""
        found = set(session_pids(self.process.pid)) | set(pids_mentioning(f"{self.temp_dir}/"))
        return sorted(found)

    def worker_pids(self, name: str = "ImplicitFunc") -> list[int]:
        """Pids of this node's Ray workers whose process title contains `name` (a trial's
        worker is `ray::ImplicitFunc.train`)."""
        return [p for p in self.pids() if cmdline(p).startswith("ray::") and name in cmdline(p)]

    def kill(self) -> list[int]:
        """SIGKILL every process of this node at once, as if its machine died."""
        pids = self.pids()
        sigkill(pids)
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            sigkill(self.pids())
            time.sleep(0.1)
        assert not self.pids(), f"node {self.name} survived SIGKILL: {self.pids()}"
        return pids


@dataclass
class LocalRayCluster:
    """A token-authenticated Ray cluster of separate `ray start` processes on HOST."""

    root: Path
    token_path: Path
    address: str = ""
    head: RayNode | None = None
    workers: dict[str, RayNode] = field(default_factory=dict)

    @property
    def nodes(self) -> list[RayNode]:
        return [n for n in [self.head, *self.workers.values()] if n is not None]

    def client_env(self, name: str = "client", token: bool = True) -> dict[str, str]:
        """The environment of a driver on this machine: the token (unless `token=False`),
        nothing else of Ray's, its own HOME."""
        env = clean_env(self.root / f"home-{name}")
        if token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        return env

    def _launch(self, name: str, args: list[str], env: dict[str, str]) -> RayNode:
        temp_dir = self.root / name
        node_manager, object_manager, agent, agent_grpc, runtime_env, metrics = free_ports(6)
        command = [
            *RAY, "start", "--block", "--node-ip-address", HOST, *args,
            "--temp-dir", str(temp_dir), "--disable-usage-stats", "--num-gpus", "0",
            "--object-store-memory", str(80 * 2**20), "--include-log-monitor", "false",
            "--node-manager-port", str(node_manager),
            "--object-manager-port", str(object_manager),
            "--min-worker-port", "0", "--max-worker-port", "0",  # random free ports
            "--dashboard-agent-listen-port", str(agent),
            "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(runtime_env),
            "--metrics-export-port", str(metrics),
        ]  # fmt: skip
        # Every node: token authentication, and the switch of clean_env left at Ray's default
        # (a joining node refuses to start with it off; see HOST).
        env = {k: v for k, v in env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        node = RayNode(name, process, temp_dir)
        if name == "head":
            self.head = node
        else:
            self.workers[name] = node
        return node

    @staticmethod
    def _wait_started(*nodes: RayNode) -> None:
        deadline = time.monotonic() + 120
        for node in nodes:
            log_path = node.temp_dir.parent / f"{node.name}.log"
            while b"Ray runtime started" not in log_path.read_bytes():
                if node.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start ({node.name}) did not come up:\n{node.log}")
                time.sleep(0.25)

    def start_head(self, extra_env: dict[str, str] | None = None) -> RayNode:
        """The head: GCS and a raylet without CPUs, so that no trial is placed on it."""
        gcs, dashboard, client, autoscaler_metrics, dashboard_metrics = free_ports(5)
        args = ["--head", "--port", str(gcs), "--num-cpus", "0", "--include-dashboard", "false"]
        # Even without its web UI the head runs a dashboard process, by default on port 8265.
        args += ["--dashboard-host", HOST, "--dashboard-port", str(dashboard)]
        if importlib.util.find_spec("grpc") is not None:
            # With ray[client] installed the head also serves Ray Client (default port 10001).
            args += ["--ray-client-server-port", str(client)]
        env = clean_env(self.root / "home-head")
        # The autoscaler's and the dashboard's metrics ports are fixed (44217, 44227) unless
        # set here: a second Ray head on the machine would find them taken.
        env.update(
            AUTOSCALER_METRIC_PORT=str(autoscaler_metrics),
            DASHBOARD_METRIC_PORT=str(dashboard_metrics),
            **(extra_env or {}),
        )
        node = self._launch("head", args, env)
        self._wait_started(node)
        self.address = f"{HOST}:{gcs}"
        return node

    def add_workers(self, workers: dict[str, dict[str, float]], num_cpus: int = 1) -> None:
        """Start one worker node per entry (name -> custom resources), all at once."""
        nodes = []
        for name, resources in workers.items():
            args = ["--address", self.address, "--num-cpus", str(num_cpus)]
            args += ["--resources", json.dumps(resources)]
            nodes.append(self._launch(name, args, clean_env(self.root / f"home-{name}")))
        self._wait_started(*nodes)

    def run_client(self, code: str, token: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `python -c code <address>` as a driver on this machine."""
        env = self.client_env("client", token=token)
        # A refused driver retries the GCS once a second, 20 times by default.
        env["RAY_NUM_REDIS_GET_RETRIES"] = "3"
        return subprocess.run(
            [sys.executable, "-c", code, self.address],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def list_nodes(self) -> list[dict]:
        """`ray.nodes()` as a token-authenticated driver sees it: id, alive, resources."""
        result = self.run_client(LIST_NODES)
        lines = [line for line in result.stdout.splitlines() if line.startswith("NODES ")]
        assert result.returncode == 0 and lines, result.stderr[-3000:]
        return json.loads(lines[-1].removeprefix("NODES "))

    def worker_node_ids(self) -> dict[str, str]:
        """Ray node id of each live worker node, by name (a worker node is told apart by its
        custom resource of the same name)."""
        return {
            name: node["id"]
            for node in self.list_nodes()
            for name in self.workers
            if node["alive"] and name in node["resources"]
        }

    def shutdown(self) -> None:
        """SIGKILL every node at once, then anything else that mentions the cluster's root;
        fail if any process survives."""

        def left() -> list[int]:
            mentioning = pids_mentioning(f"{self.root}/")
            return sorted({p for n in self.nodes for p in n.pids()} | set(mentioning))

        sigkill(left())
        for node in self.nodes:
            node.process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while left() and time.monotonic() < deadline:
            sigkill(left())
            time.sleep(0.1)
        assert not left(), f"processes left behind: {left()}"


@contextmanager
def local_ray_cluster(
    workers: dict[str, dict[str, float]], head_env: dict[str, str] | None = None
) -> Iterator[LocalRayCluster]:
    """A head (no CPUs) and one 1-CPU worker node per entry of `workers` (name -> custom
    resources; include the name itself, so that each node can be told apart), all with
    token authentication. Torn down by SIGKILL whatever happens, never by `ray stop`."""
    # A short path: Ray's Unix sockets live under it and must stay under ~100 characters.
    root = Path(tempfile.mkdtemp(prefix="hd-ray-", dir="/tmp"))
    token_path = root / "ray_auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    cluster = LocalRayCluster(root=root, token_path=token_path)
    try:
        cluster.start_head(head_env)
        cluster.add_workers(workers)
        deadline = time.monotonic() + 60
        while len(cluster.worker_node_ids()) < len(workers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker nodes did not join: {cluster.list_nodes()}")
            time.sleep(1)
        yield cluster
    finally:
        try:
            cluster.shutdown()
        finally:
            shutil.rmtree(root, ignore_errors=True)
