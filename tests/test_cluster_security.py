"""The cluster's security measures against real servers on 127.0.0.1: a Ray head with token
authentication (Ray 2.60: RAY_AUTH_MODE=token, token file in RAY_AUTH_TOKEN_PATH) and the MLflow
server of cluster/mlflow_server.sh with basic auth; plus the secret and bind-address checks of
the cluster scripts.

Servers run in their own process groups and are killed by group, never with `ray stop`, which
would stop every Ray instance on the machine.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster_utils import clean_env as _clean_env
from tests.cluster_utils import free_ports as _free_ports
from tests.cluster_utils import has_ray_dashboard as _has_ray_dashboard
from tests.cluster_utils import kill_group_and_stragglers as _kill_group_and_stragglers
from tests.cluster_utils import pids_mentioning as _pids_mentioning

REPO = Path(__file__).resolve().parents[1]
MLFLOW_SCRIPT = REPO / "cluster" / "mlflow_server.sh"

# A driver that connects to the cluster at argv[1] and runs one task there.
RAY_CLIENT = """
import sys

import ray

ray.init(address=sys.argv[1], log_to_driver=False)


@ray.remote(num_cpus=1)
def add_one(x):
    return x + 1


print("result:", ray.get(add_one.remote(41)))
"""


def _http_status(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on `port`."""
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                addresses.append(address)
    return addresses


def _assert_not_wildcard(port: int) -> None:
    addresses = _listening_addresses(port)
    assert addresses, f"nothing listens on port {port}"
    assert all(address.strip("0") for address in addresses), (
        f"port {port} listens on a wildcard address: {addresses}"
    )


# --- Ray head with token authentication ---------------------------------------------------


@dataclass(frozen=True)
class RayHead:
    address: str
    dashboard_url: str | None
    token: str
    token_path: Path
    root: Path


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    # A short path: Ray's Unix sockets live under it and must stay under ~100 characters.
    root = Path(tempfile.mkdtemp(prefix="hd-ray-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_path = root / "ray_auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    gcs, dashboard, agent, agent_grpc, runtime_env, metrics, client = _free_ports(7)
    with_dashboard = _has_ray_dashboard()
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1", "--port", str(gcs),
        "--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(100 * 2**20),
        "--temp-dir", str(root / "t"), "--disable-usage-stats",
        "--include-log-monitor", "false",
        "--include-dashboard", str(with_dashboard).lower(),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(agent_grpc),
        "--runtime-env-agent-port", str(runtime_env),
        "--metrics-export-port", str(metrics),
    ]  # fmt: skip
    if importlib.util.find_spec("grpc") is not None:
        # With ray[client] installed, `ray start --head` always serves Ray Client, by default
        # on the fixed port 10001.
        command += ["--ray-client-server-port", str(client)]
    env = _clean_env(root / "home-head")
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    log_path = root / "head.log"
    with open(log_path, "wb") as log:
        head = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while b"Ray runtime started" not in log_path.read_bytes():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up:\n{log_path.read_text()}")
            time.sleep(0.25)
        yield RayHead(
            address=f"127.0.0.1:{gcs}",
            dashboard_url=f"http://127.0.0.1:{dashboard}" if with_dashboard else None,
            token=token,
            token_path=token_path,
            root=root,
        )
    finally:
        _kill_group_and_stragglers(head, str(root))
        shutil.rmtree(root, ignore_errors=True)


def _run_client(head: RayHead, **auth_env: str) -> subprocess.CompletedProcess[str]:
    env = _clean_env(head.root / "home-client")
    # A refused driver retries the GCS once a second, 20 times by default.
    env.update(RAY_NUM_REDIS_GET_RETRIES="3", **auth_env)
    return subprocess.run(
        [sys.executable, "-c", RAY_CLIENT, head.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.slow
def test_client_with_the_token_runs_a_task(ray_head: RayHead) -> None:
    result = _run_client(
        ray_head, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(ray_head.token_path)
    )
    assert result.returncode == 0, result.stderr
    assert "result: 42" in result.stdout


@pytest.mark.slow
def test_client_without_a_token_is_refused(ray_head: RayHead) -> None:
    result = _run_client(ray_head)
    assert result.returncode != 0
    assert "result:" not in result.stdout
    assert "AuthenticationError" in result.stderr
    assert "Authentication token is missing or incorrect" in result.stderr


@pytest.mark.slow
def test_client_with_a_wrong_token_is_refused(ray_head: RayHead) -> None:
    result = _run_client(ray_head, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    assert result.returncode != 0
    assert "result:" not in result.stdout
    assert "InvalidAuthToken" in result.stderr


@pytest.mark.slow
def test_gcs_and_dashboard_do_not_listen_on_a_wildcard(ray_head: RayHead) -> None:
    # On a one-machine cluster the GCS follows the node address; on the cluster it listens on
    # all interfaces, and the security group is what limits who reaches it.
    _assert_not_wildcard(int(ray_head.address.rsplit(":", 1)[1]))
    if ray_head.dashboard_url:
        _assert_not_wildcard(int(ray_head.dashboard_url.rsplit(":", 1)[1]))


@pytest.mark.slow
def test_jobs_api_needs_the_token(ray_head: RayHead) -> None:
    """The ShadowRay door: submitting a job is running code on the cluster."""
    if ray_head.dashboard_url is None:
        pytest.skip("the Ray dashboard needs ray[default], which this venv lacks")
    jobs = f"{ray_head.dashboard_url}/api/jobs/"
    submission = json.dumps({"entrypoint": "echo should-never-run"}).encode()
    json_headers = {"Content-Type": "application/json"}
    assert _http_status(jobs, json_headers, data=submission) == 401
    wrong = {**json_headers, "Authorization": f"Bearer {secrets.token_hex(32)}"}
    assert _http_status(jobs, wrong, data=submission) == 403
    assert _http_status(jobs, {"Authorization": f"Bearer {ray_head.token}"}) == 200


@pytest.mark.slow
def test_head_without_its_token_file_refuses_to_start(tmp_path: Path) -> None:
    """A missing file_mount must stop `ray start`, not start a cluster without auth."""
    root = Path(tempfile.mkdtemp(prefix="hd-ray-", dir="/tmp"))
    env = _clean_env(root / "home")
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(root / "missing"))
    (gcs,) = _free_ports(1)
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
        "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", "1",
        "--temp-dir", str(root / "t"), "--include-dashboard", "false", "--disable-usage-stats",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        _kill_group_and_stragglers(process, str(root))
        shutil.rmtree(root, ignore_errors=True)
    assert process.returncode != 0
    assert "RAY_AUTH_TOKEN_PATH is set but file cannot be opened or is empty" in output
    assert "Ray runtime started" not in output


# --- MLflow tracking server with basic auth ------------------------------------------------


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    port: int
    password: str


def _mlflow_env(root: Path, port: int, password_file: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HDETACH_MLFLOW_HOST": "127.0.0.1",
        "HDETACH_MLFLOW_PORT": str(port),
        "HDETACH_MLFLOW_HOME": str(root / "mlflow"),
        "HDETACH_MLFLOW_PASSWORD_FILE": str(password_file),
        "HDETACH_MLFLOW_WORKERS": "1",
        "HDETACH_PYTHON": sys.executable,
    }


@pytest.fixture(scope="module")
def mlflow_server() -> Iterator[MlflowServer]:
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.skip("`mlflow server --app-name basic-auth` needs mlflow[auth] (Flask-WTF)")
    root = Path(tempfile.mkdtemp(prefix="hd-mlflow-", dir="/tmp"))
    password = secrets.token_urlsafe(24)
    password_file = root / "mlflow_admin_password"
    password_file.write_text(password)
    (port,) = _free_ports(1)
    env = _mlflow_env(root, port, password_file)
    try:
        # `start` returns once the server answers and has refused an anonymous request.
        started = subprocess.run(
            ["bash", str(MLFLOW_SCRIPT), "start"],
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        yield MlflowServer(uri=f"http://127.0.0.1:{port}", port=port, password=password)
    finally:
        subprocess.run(["bash", str(MLFLOW_SCRIPT), "stop"], env=env, timeout=60)
        leaked = _pids_mentioning(str(root))
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        assert not leaked, f"`mlflow_server.sh stop` left processes behind: {leaked}"


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


@pytest.mark.slow
def test_mlflow_refuses_requests_without_the_password(mlflow_server: MlflowServer) -> None:
    assert _http_status(mlflow_server.uri + SEARCH) == 401
    assert _http_status(mlflow_server.uri + SEARCH, _basic("admin", "not-the-password")) == 401


@pytest.mark.slow
def test_mlflow_accepts_the_admin_and_binds_one_address(mlflow_server: MlflowServer) -> None:
    assert _http_status(mlflow_server.uri + SEARCH, _basic("admin", mlflow_server.password)) == 200
    _assert_not_wildcard(mlflow_server.port)


@pytest.mark.slow
def test_mlflow_refuses_foreign_host_headers(mlflow_server: MlflowServer) -> None:
    headers = {**_basic("admin", mlflow_server.password), "Host": "attacker.example"}
    assert _http_status(mlflow_server.uri + SEARCH, headers) == 403


@pytest.mark.slow
def test_mlflow_client_logs_with_the_environment_credentials(mlflow_server: MlflowServer) -> None:
    """What the study driver does: MLFLOW_TRACKING_USERNAME/PASSWORD, then a run."""
    code = (
        "import sys, mlflow\n"
        "client = mlflow.MlflowClient(tracking_uri=sys.argv[1])\n"
        "experiment = client.create_experiment('cluster-security')\n"
        "run = client.create_run(experiment)\n"
        "client.log_metric(run.info.run_id, 'val_acc', 0.5)\n"
        "print('logged', client.get_run(run.info.run_id).data.metrics['val_acc'])\n"
    )
    env = {
        **os.environ,
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": mlflow_server.password,
    }
    logged = subprocess.run(
        [sys.executable, "-c", code, mlflow_server.uri],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert logged.returncode == 0, logged.stderr
    assert "logged 0.5" in logged.stdout
    anonymous = {
        k: v
        for k, v in env.items()
        if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    }
    refused = subprocess.run(
        [sys.executable, "-c", code, mlflow_server.uri],
        env=anonymous,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert "logged" not in refused.stdout


# --- The cluster scripts' own refusals (no server started) ---------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "*"])
def test_mlflow_script_refuses_a_wildcard_host(tmp_path: Path, host: str) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("correct-horse-battery-staple")
    env = _mlflow_env(tmp_path, 5000, password_file) | {"HDETACH_MLFLOW_HOST": host}
    result = subprocess.run(
        ["bash", str(MLFLOW_SCRIPT), "start"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "refusing to bind" in result.stderr


def test_mlflow_script_refuses_a_missing_password(tmp_path: Path) -> None:
    env = _mlflow_env(tmp_path, 5000, tmp_path / "missing")
    result = subprocess.run(
        ["bash", str(MLFLOW_SCRIPT), "start"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "missing or empty" in result.stderr
    assert not (tmp_path / "mlflow" / "server.pid").exists()


def test_make_secrets_creates_private_files_once(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    script = str(REPO / "cluster" / "make_secrets.sh")
    subprocess.run(["bash", script, str(secrets_dir)], check=True, capture_output=True)
    token = (secrets_dir / "ray_auth_token").read_text()
    password = (secrets_dir / "mlflow_admin_password").read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 bits, hex
    assert len(password) >= 12  # MLflow refuses shorter admin passwords
    assert secrets_dir.stat().st_mode & 0o777 == 0o700
    for name in ("ray_auth_token", "mlflow_admin_password"):
        assert (secrets_dir / name).stat().st_mode & 0o777 == 0o600
    subprocess.run(["bash", script, str(secrets_dir)], check=True, capture_output=True)
    assert (secrets_dir / "ray_auth_token").read_text() == token, "a rerun must not rotate"


def test_make_secrets_refuses_an_unignored_directory_in_a_git_tree(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    result = subprocess.run(
        ["bash", str(REPO / "cluster" / "make_secrets.sh"), str(tmp_path / "secrets")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "not ignored by git" in result.stderr
    assert not (tmp_path / "secrets" / "ray_auth_token").exists()
