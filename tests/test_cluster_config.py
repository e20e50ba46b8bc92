"""The cluster definitions, checked offline: Ray's own schema, and the security properties
the README's cluster section promises (token auth on every node, secrets outside git, no port
open to the world but SSH, MLflow on one address with basic auth, GPU workers from zero,
shared storage).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
AWS = "ray_cluster.yaml"
ONPREM = "ray_cluster.onprem.yaml"
WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", "*", ""}
WORLD = {"0.0.0.0/0", "::/0"}


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.fixture(params=[AWS, ONPREM])
def config(request: pytest.FixtureRequest) -> dict:
    return _load(request.param)


def _remote(path: str) -> str:
    """A node-side path as written in the YAML, with $HOME spelled as ~."""
    return re.sub(r"^(\$HOME|\$\{HOME\})/", "~/", path.strip("\"'"))


def _ray_start_commands(config: dict, kind: str) -> list[str]:
    commands = [c for c in config[f"{kind}_start_ray_commands"] if "ray start" in c]
    assert commands, f"no `ray start` in {kind}_start_ray_commands"
    return commands


def test_validates_against_rays_schema(config: dict) -> None:
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))


def test_validates_as_ray_up_prepares_it(config: dict) -> None:
    # What `ray up` does before launching anything: fill in the provider's defaults, then
    # validate. Private API, but the one the launcher uses.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("kind", ["head", "worker"])
def test_token_auth_is_exported_before_every_ray_start(config: dict, kind: str) -> None:
    mounted = {_remote(remote) for remote in config["file_mounts"]}
    for command in _ray_start_commands(config, kind):
        before_start = command.split("ray start")[0]
        assert re.search(r"\bRAY_AUTH_MODE=token\b", before_start), command
        token_path = re.search(r"\bRAY_AUTH_TOKEN_PATH=(\S+)", before_start)
        assert token_path, f"no RAY_AUTH_TOKEN_PATH before `ray start`: {command}"
        assert _remote(token_path.group(1)) in mounted, (
            f"token file {token_path.group(1)} does not come from file_mounts {sorted(mounted)}"
        )


def test_no_token_value_and_no_disabled_auth_in_the_config(config: dict) -> None:
    text = json.dumps(config)
    assert "RAY_AUTH_TOKEN=" not in text, "a token value in the YAML would be committed"
    assert "RAY_AUTH_MODE=disabled" not in text


def test_every_file_mount_comes_from_outside_git(config: dict) -> None:
    """Secrets are shipped with file_mounts; their local files must never be committable."""
    assert config["file_mounts"], "the token has to reach the nodes through file_mounts"
    for remote, local in config["file_mounts"].items():
        path = Path(os.path.expanduser(local))
        path = (path if path.is_absolute() else REPO / path).resolve()
        if not path.is_relative_to(REPO):
            continue
        relative = str(path.relative_to(REPO))
        tracked = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "--", relative],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert not tracked, f"file_mounts[{remote!r}] = {local!r} is tracked by git"
        ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", relative])
        assert ignored.returncode == 0, f"{local!r} is inside the repository and not ignored"


def test_dashboard_listens_on_the_heads_loopback_only(config: dict) -> None:
    for command in _ray_start_commands(config, "head"):
        host = re.search(r"--dashboard-host[= ](\S+)", command)
        assert host and host.group(1) in {"127.0.0.1", "localhost"}, command
    for kind in ("head", "worker"):
        for command in config[f"{kind}_start_ray_commands"]:
            assert "0.0.0.0" not in command, command


def test_aws_security_group_opens_only_ssh_to_the_world() -> None:
    config = _load(AWS)
    # Without SecurityGroupIds, Ray's launcher creates a group with SSH open to 0.0.0.0/0; with
    # a provider.security_group it creates one too (and adds that rule). Every node type must
    # name the one group that cluster/aws_security_group.sh makes.
    assert "security_group" not in config["provider"], config["provider"]
    groups = {
        name: tuple(node_type["node_config"].get("SecurityGroupIds") or ())
        for name, node_type in config["available_node_types"].items()
    }
    assert all(groups.values()), f"node types without SecurityGroupIds: {groups}"
    assert len(set(groups.values())) == 1, f"node types in different groups: {groups}"


def test_gpu_worker_types_autoscale_from_zero() -> None:
    config = _load(AWS)
    assert config["idle_timeout_minutes"] > 0
    workers = {
        name: node_type
        for name, node_type in config["available_node_types"].items()
        if name != config["head_node_type"]
    }
    assert workers
    for name, node_type in workers.items():
        assert node_type["resources"].get("GPU", 0) >= 1, name
        assert node_type["min_workers"] == 0, name
        assert node_type["max_workers"] >= 1, name
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0


def test_setup_pins_versions_the_project_supports(config: dict) -> None:
    """Every node installs exact versions, inside the ranges pyproject.toml declares."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    declared = {
        Requirement(line).name: Requirement(line).specifier
        for line in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    setup = " ".join(config["setup_commands"])
    for package in ("torch", "torchvision", "ray", "mlflow"):
        pinned = re.search(rf'"{package}(\[[a-z,]+\])?==([^"]+)"', setup)
        assert pinned, f"{package} is not pinned in setup_commands"
        assert pinned.group(2) in declared[package], (
            f"{package}=={pinned.group(2)} is outside pyproject's {declared[package]}"
        )
    assert "mlflow[auth]" in setup, "`--app-name basic-auth` needs mlflow[auth] (Flask-WTF)"
    assert "ray[default" in setup, "the dashboard and jobs API need ray[default]"
    checkout = re.search(r"checkout --quiet --detach (\S+)", setup)
    assert checkout and re.fullmatch(r"HDETACH_REF|[0-9a-f]{40}", checkout.group(1)), (
        "the project must be installed at a pinned commit"
    )


def test_mlflow_is_started_by_the_head_with_a_fixed_host(config: dict) -> None:
    starts = [c for c in config["head_start_ray_commands"] if "mlflow_server.sh start" in c]
    assert len(starts) == 1
    host = re.search(r"HDETACH_MLFLOW_HOST=(\S+)", starts[0])
    if config["provider"]["type"] == "local":
        # On your own machines `hostname -I` may list several networks: name the cluster's.
        assert host and host.group(1) == config["provider"]["head_ip"]
    elif host:
        assert host.group(1) not in WILDCARD_HOSTS


def test_mlflow_server_command_binds_one_host_with_basic_auth(tmp_path: Path) -> None:
    """Runs cluster/mlflow_server.sh with a stand-in interpreter that records the server's argv."""
    fake_python = tmp_path / "python"
    fake_python.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = "-m" ]; then printf "%s\\n" "$@" > "$RECORD/argv"; env > "$RECORD/env";'
        " exit 0; fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    fake_python.chmod(0o755)
    password_file = tmp_path / "password"
    password_file.write_text("correct-horse-battery-staple")
    home = tmp_path / "mlflow"
    env = {
        **os.environ,
        "RECORD": str(tmp_path),
        "HDETACH_PYTHON": str(fake_python),
        "HDETACH_MLFLOW_HOME": str(home),
        "HDETACH_MLFLOW_PASSWORD_FILE": str(password_file),
    }
    env.pop("HDETACH_MLFLOW_HOST", None)  # the default the AWS head uses: `hostname -I`
    subprocess.run(["bash", str(REPO / "cluster" / "mlflow_server.sh"), "run"], env=env, check=True)

    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:3] == ["-m", "mlflow", "server"]
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert argv[argv.index("--host") + 1] not in WILDCARD_HOSTS
    assert "--serve-artifacts" in argv
    assert "--disable-security-middleware" not in argv
    server_env = (tmp_path / "env").read_text()
    assert f"MLFLOW_AUTH_CONFIG_PATH={home}/basic_auth.ini" in server_env
    assert "MLFLOW_AUTH_ADMIN_PASSWORD=correct-horse-battery-staple" in server_env
    # The password is handed over in the environment only, never written next to the database.
    assert "correct-horse-battery-staple" not in (home / "basic_auth.ini").read_text()
    assert oct((home / "basic_auth.ini").stat().st_mode & 0o777) == "0o600"


def test_documented_runs_use_shared_storage() -> None:
    """Tune on several nodes needs storage every node sees; a local path silently splits it."""
    page = (REPO / "docs" / "cluster.md").read_text()
    start = page.index("## On AWS")
    docs = page[start : page.index("\n## Packing", start)]  # AWS and your own machines
    paths = re.findall(r"--storage-path[= ]+(\S+)", docs)
    assert paths, "the cluster page documents no run command"
    for path in paths:
        assert path.startswith(("s3://", "gs://", "/mnt/shared/")), path
    assert any(path.startswith("s3://") for path in paths)


def _run_security_group_script(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """Runs cluster/aws_security_group.sh against a stand-in `aws` that logs its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    fake_aws = bin_dir / "aws"
    fake_aws.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\t" "$@" >> {calls}; echo >> {calls}\n'
        'case "$2" in\n'
        "  describe-vpcs) echo vpc-0123 ;;\n"
        "  create-security-group) echo sg-0abc ;;\n"
        "esac\n"
    )
    fake_aws.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(REPO / "cluster" / "aws_security_group.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
    )
    logged = calls.read_text().splitlines() if calls.exists() else []
    return result.returncode, logged


def test_security_group_script_opens_ssh_to_one_cidr_and_the_rest_to_itself(
    tmp_path: Path,
) -> None:
    code, calls = _run_security_group_script(
        tmp_path, "--region", "us-west-2", "--cidr", "203.0.113.7/32"
    )
    assert code == 0
    ingress = [call.split("\t") for call in calls if "authorize-security-group-ingress" in call]
    assert len(ingress) == 2, calls
    self_rule, ssh_rule = ingress
    assert "IpProtocol=-1,UserIdGroupPairs=[{GroupId=sg-0abc}]" in self_rule
    assert ssh_rule[ssh_rule.index("--port") + 1] == "22"
    assert ssh_rule[ssh_rule.index("--cidr") + 1] == "203.0.113.7/32"
    assert not any(world in call for call in calls for world in WORLD)


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "10.0.0.0/8", "not-an-address"])
def test_security_group_script_refuses_wide_or_bad_cidrs(tmp_path: Path, cidr: str) -> None:
    code, calls = _run_security_group_script(tmp_path, "--region", "us-west-2", "--cidr", cidr)
    assert code != 0
    assert calls == [], "nothing may be created for a refused CIDR"
