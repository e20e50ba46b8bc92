"""The nightly schedule: systemd units, crontab line and the example YAML parse, validate and
point at commands and files that exist in the repository."""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from hdetach import nightly

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PLACEHOLDER = "/opt/hdetach-study"
SERVICE = DEPLOY / "hdetach-nightly.service"
TIMER = DEPLOY / "hdetach-nightly.timer"
CRONTAB = DEPLOY / "crontab"
EXAMPLE = REPO / "hdetach" / "nightly.yaml"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}} (keys may repeat, as in systemd)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}:{number}: key outside a section"
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), (
            f"{path.name}:{number}: not 'Key=value': {raw!r}"
        )
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def repo_path(path: str) -> Path:
    """A path of a unit or crontab command, placeholder replaced by the repository."""
    return (
        REPO / Path(path).relative_to(PLACEHOLDER)
        if path.startswith(PLACEHOLDER)
        else (REPO / path)
    )


def check_nightly_command(words: list[str]) -> None:
    """`<venv>/bin/hdetach-study nightly --config hdetach/nightly.yaml`, the entry point
    declared by the project, with a config file that exists."""
    assert words[0].endswith("/.venv/bin/hdetach-study") or words[0] == ".venv/bin/hdetach-study"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^hdetach-study = "hdetach.cli:main"$', pyproject, re.MULTILINE)
    assert words[1] == "nightly"
    config = words[words.index("--config") + 1]
    assert repo_path(config).is_file(), config
    nightly.load_config(repo_path(config))


def test_service_unit() -> None:
    unit = parse_unit(SERVICE)
    assert set(unit) == {"Unit", "Service"}
    service = unit["Service"]
    assert service["Type"] == ["oneshot"]
    (workdir,) = service["WorkingDirectory"]
    assert workdir == PLACEHOLDER
    (exec_start,) = service["ExecStart"]
    words = shlex.split(exec_start)
    assert words[0] == f"{PLACEHOLDER}/.venv/bin/hdetach-study"
    check_nightly_command(words)
    assert unit["Unit"]["Description"]


def test_timer_unit_matches_service_and_crontab() -> None:
    unit = parse_unit(TIMER)
    timer = unit["Timer"]
    assert timer["Persistent"] == ["true"]
    assert timer["Unit"] == [SERVICE.name]
    assert unit["Install"]["WantedBy"] == ["timers.target"]
    (calendar,) = timer["OnCalendar"]
    match = re.fullmatch(r"\*-\*-\* (\d\d):(\d\d):00", calendar)
    assert match, f"OnCalendar should be a daily time, got {calendar!r}"
    minute, hour = cron_entry()[0][:2]
    assert (int(hour), int(minute)) == (int(match[1]), int(match[2]))
    if shutil.which("systemd-analyze"):
        result = subprocess.run(
            ["systemd-analyze", "calendar", calendar], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr


def cron_entry() -> tuple[list[str], str]:
    lines = [
        line
        for line in CRONTAB.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 5)
    assert len(fields) == 6, lines[0]
    return fields[:5], fields[5]


_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def valid_cron_field(text: str, low: int, high: int) -> bool:
    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            return False
        if base == "*":
            continue
        first, _, last = base.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            return False
        a, b = int(first), int(last or first)
        if not (low <= a <= b <= high):
            return False
    return True


def test_crontab_line() -> None:
    times, command = cron_entry()
    for text, (low, high) in zip(times, _CRON_RANGES, strict=True):
        assert valid_cron_field(text, low, high), (text, low, high)
    assert not valid_cron_field("61", 0, 59) and not valid_cron_field("*/0", 0, 59)
    # cd <checkout> && ... && [flock ... ] .venv/bin/hdetach-study nightly --config ...
    steps = [shlex.split(step) for step in command.split("&&")]
    assert steps[0][0] == "cd" and steps[0][1] == PLACEHOLDER
    run = steps[-1]
    start = next(i for i, w in enumerate(run) if w.endswith(".venv/bin/hdetach-study"))
    if start:
        assert run[0] == "flock", run
    words = [w for w in run[start:] if w not in (">>", "2>&1")]
    check_nightly_command(words[: words.index("--config") + 2])


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (the unit files were parsed above)")
    # Point the placeholder at this checkout and the venv at this interpreter, so verify
    # can check that ExecStart is executable.
    for path in (SERVICE, TIMER):
        text = path.read_text(encoding="utf-8")
        entry = Path(sys.executable).with_name("hdetach-study")
        text = text.replace(f"{PLACEHOLDER}/.venv/bin/hdetach-study", str(entry))
        (tmp_path / path.name).write_text(text.replace(PLACEHOLDER, str(REPO)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", SERVICE.name, TIMER.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    noise = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "hdetach-nightly" in line or "Unknown" in line or "Failed to parse" in line
    ]
    assert noise == []


def test_example_config_validates() -> None:
    config = nightly.load_config(EXAMPLE)
    assert config.batches and all(b.seeds >= 1 for b in config.batches)
    assert {b.task for b in config.batches} <= {"copying", "seq_mnist", "pmnist"}
    for batch in config.batches:
        if batch.options["search"] == "fixed":
            configs = batch.options["configs"]
            assert configs and all(set(c) == {"p_detach", "lr", "clip"} for c in configs)
            # Every h-detach configuration has its paired vanilla baseline in the batch.
            baselines = {(c["lr"], c["clip"]) for c in configs if c["p_detach"] == 0}
            assert all((c["lr"], c["clip"]) in baselines for c in configs)


def fixed(config: str) -> str:
    return f"experiment: x\nbatches: [{{task: copying, configs: [{config}]}}]\n"


BAD = [
    ("batches: []\n", "batches: must be a non-empty list"),
    ("experiment: x\nbatches: [{task: cifar}]\n", "batches[0]: unknown task 'cifar'"),
    (
        fixed("{p_detach: 1.5, lr: 0.1, clip: true}"),
        "batches[0]: p_detach must be in [0, 1], got 1.5",
    ),
    (fixed("{p_detach: 0, lr: 0, clip: true}"), "batches[0]: lr must be > 0, got 0"),
    (fixed("{p_detach: 0, lr: 0.1, clip: 1}"), "batches[0]: clip must be true or false, got 1"),
    (fixed("{p_detach: 0, lr: 0.1, colour: red}"), "batches[0]: a fixed config has keys"),
    ("experiment: x\nbatches: [{task: copying}]\n", "batches[0]: search 'fixed' needs configs"),
    (
        "experiment: x\nseeds: 0\nbatches: [{task: copying, search: tpe}]\n",
        "batches[0]: seeds must be an integer >= 1, got 0",
    ),
    ("experiment: x\nbatch: []\n", "batches: must be a non-empty list"),
    (
        "experiment: x\nbatchez: 1\nbatches: [{task: copying, search: tpe}]\n",
        "unknown option 'batchez'",
    ),
    ("batches: [{task: copying, search: tpe}]\n", "batches[0].experiment: must be non-empty"),
    ("experiment: [unclosed\n", "is not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_config_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, message: str
) -> None:
    path = tmp_path / "nightly.yaml"
    path.write_text(text)
    assert nightly.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_dry_run_plans_fresh_seeds_without_creating_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    db = tmp_path / "mlflow.db"
    path = tmp_path / "nightly.yaml"
    path.write_text(
        f"tracking_uri: sqlite:///{db}\nexperiment: night-x\nreports_dir: {tmp_path / 'r'}\n"
        "seeds: 4\nbatches:\n  - task: copying\n    preset: smoke\n    configs:\n"
        "      - {p_detach: 0.0, lr: 0.01, clip: true}\n"
        "      - {p_detach: 0.25, lr: 0.01, clip: true}\n"
    )
    assert nightly.main(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "seeds 0..3" in out and "2 fixed configs" in out
    assert not db.exists()


def test_batch_options_fit_the_study_api() -> None:
    run = pytest.importorskip("study.run", reason="study.run (the study driver) is not there yet")
    fields = {f.name for f in dataclasses.fields(run.StudyOptions)}
    config = nightly.load_config(EXAMPLE)
    for batch in config.batches:
        options = nightly.batch_options(batch, 7, "nightly-test")
        assert set(options) <= fields, sorted(set(options) - fields)
        assert options["seed_offset"] == 7 and options["resume"] is False
        study_options = run.StudyOptions(**options).validate()  # the study's own checks
        assert study_options.seed_values == list(range(7, 7 + batch.seeds))


@pytest.mark.slow
def test_next_seed_continues_after_the_largest_used_seed(mlflow_server: str) -> None:
    from study.tracking import StudyTracker

    name = f"nightly-{uuid.uuid4().hex[:8]}"
    assert nightly.next_seed(mlflow_server, name) == 0  # a new study
    tracker = StudyTracker(mlflow_server, name)
    tracker.start()
    tracker.parent_run("cfg", {}, {})
    for seed in (0, 1, 4):
        tracker.child_run("cfg", seed, {"seed": seed}, {})
    assert nightly.next_seed(mlflow_server, name) == 5


def test_cluster_head_installs_the_nightly_timer(tmp_path: Path) -> None:
    """`ray up` runs cluster/install_nightly.sh on the head: it renders the units for that
    head (its checkout, venv, user, credentials read at run time) and a nightly config that
    points at the cluster; both cluster files call it."""
    for name in ("ray_cluster.yaml", "ray_cluster.onprem.yaml"):
        head = yaml.safe_load((REPO / name).read_text())["head_setup_commands"]
        assert any("cluster/install_nightly.sh" in c for c in head), name
    home = tmp_path / "home"
    (home / "mlflow").mkdir(parents=True)
    (home / "hdetach-study").symlink_to(REPO)
    units = tmp_path / "units"
    units.mkdir()
    env = {**os.environ, "HOME": str(home), "HDETACH_UNIT_DIR": str(units)}
    script = REPO / "cluster" / "install_nightly.sh"
    bad = subprocess.run(["bash", str(script), "relative/runs"], env=env, capture_output=True)
    assert bad.returncode == 2 and b"shared storage" in bad.stderr
    done = subprocess.run(["bash", str(script), "s3://bucket/hd"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr

    config = nightly.load_config(home / "hdetach-nightly.yaml")
    for batch in config.batches:
        options = batch.options
        assert options["address"] == "auto" and options["storage_path"] == "s3://bucket/hd"
        assert options["gpus_per_trial"] == 0.25 and options["max_concurrent"] is None
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.optionxform = str
    service.read(units / "hdetach-nightly.service")
    assert service["Service"]["WorkingDirectory"] == str(home / "hdetach-study")
    start = service["Service"]["ExecStart"]
    assert "hdetach-study nightly --config " + str(home / "hdetach-nightly.yaml") in start
    for needle in ("MLFLOW_TRACKING_URI", "mlflow_admin_password", "RAY_AUTH_MODE=token"):
        assert needle in start
    assert "User" in service["Service"]
    assert (units / "hdetach-nightly.timer").read_text() == TIMER.read_text()
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", "hdetach-nightly.service"],
            cwd=units,
            capture_output=True,
            text=True,
        )
        errors = [line for line in verify.stderr.splitlines() if "hdetach-nightly" in line]
        assert not [e for e in errors if "Failed to parse" in e or "Unknown" in e], errors
