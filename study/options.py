"""What a study is asked to do: ``StudyOptions``, read from the command line and/or a YAML file.

Everything is validated here, before Ray starts or MLflow is touched: a bad value raises
``OptionsError`` with a one-line message naming the value (the CLI turns it into exit code 2).
Options may come from a YAML file (``--config study.yaml``, keys = option names with ``_``);
the command line wins over the file, the file over the defaults. The nightly's batches are
checked by this same code (``hdetach.nightly`` imports it).

One file (over 400 lines) because it is the single validation layer of every study option
(command line, YAML and the nightly's per-batch overrides): splitting it would recreate the
three option systems it replaced.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainables.config import (
    BACKENDS,
    MAX_LR,
    MAX_SEED,
    PRESETS,
    ConfigError,
    OneLineParser,
    RunConfig,
)
from trainables.contract import (
    EPOCH_METRICS,
    FINAL_METRICS,
    SCORE_METRIC,
    TASK_EPOCH_METRICS,
    TASK_FINAL_METRICS,
    TASKS,
    transfer_delay,
)
from trainables.locking import BadName, check_name, inside

SEARCHES = ("tpe", "grid", "fixed")
OBJECTIVES = ("mean-se", "mean", "iqm", "worst")
ALPHA_SPENDING = ("pocock", "obrien-fleming")
CORRECTIONS = ("holm", "bh", "none")  # pairedstats.multiplicity.METHODS
#: What a sequential comparison can be decided on: a final metric of each seed (its best
#: checkpoint), or a per-epoch metric at the last epoch (direction: trainables.contract).
DECISION_METRICS = (
    *FINAL_METRICS,
    *EPOCH_METRICS,
    *TASK_EPOCH_METRICS,
    *(m for names in TASK_FINAL_METRICS.values() for m in names),
)
PAPER_P_VALUES = (0.1, 0.25, 0.4, 0.5)
PAPER_LR_VALUES = (1e-3, 5e-4, 1e-4)
#: Upper bounds of the study's own numbers (the run's are in trainables.config.MAX_INTS),
#: checked before anything is built from them: ``--seeds 1000000000`` must not allocate.
MAX_COUNTS = {
    "seeds": 100_000,
    "max_seeds": 100_000,
    "min_seeds": 100_000,
    "seed_block": 100_000,
    "trials": 100_000,
    "seeds_per_trial": 4096,
    "asha_grace": 100_000,
    "max_concurrent": 100_000,
    "max_failures": 1000,
    "verbose": 3,
    "seed_offset": MAX_SEED,
    "seed": MAX_SEED,
    "sampler_seed": 2**32 - 1,  # numpy's seed range
}
MAX_BUDGET_HOURS = 24 * 366.0
MAX_PER_TRIAL = 1024.0  # CPUs, GPUs or custom resources one trial asks for


class OptionsError(ValueError):
    """A study option the user can fix; the message names the value."""


@dataclass
class StudyOptions:
    """One study. ``seeds`` is a count S: every configuration runs on seeds
    ``seed_offset .. seed_offset + S - 1`` (or exactly ``seed_list``), in blocks of
    ``seeds_per_trial`` (K) seed members per Tune trial."""

    task: str = "copying"
    preset: str = "smoke"
    search: str = "tpe"
    trials: int = 4
    seeds: int | str = 3  # a count S, or "auto": sequential allocation (study/sequential.py)
    min_seeds: int = 8  # --seeds auto: paired seeds at the first look
    max_seeds: int = 32  # --seeds auto: never more
    seed_block: int = 4  # --seeds auto: seeds added per look
    alpha: float = 0.05  # error of a wrong "better"/"worse" (--seeds auto: over all looks)
    alpha_spending: str = "pocock"
    correction: str = "holm"  # across the configurations: holm, bh or none (summary, parents)
    confirm_seeds: int = 8  # fresh seeds for the selected configuration and vanilla; 0: off
    margin: float | None = None  # --seeds auto: stop as "equivalent" when surely within
    decision_metric: str = SCORE_METRIC
    budget_hours: float | None = None  # --seeds auto: sum of trial hours, then stop
    seed_offset: int = 0
    seed_list: list[int] | None = None
    seeds_per_trial: int = 1
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    resources: dict[str, float] = field(default_factory=dict)  # extra Ray resources per trial
    address: str | None = None
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None
    run_name: str = "main"
    storage_path: str = "runs"
    optuna_storage: str | None = None
    resume: bool = False
    data_dir: str = "data"
    download: bool = False
    p_values: list[float] = field(default_factory=lambda: list(PAPER_P_VALUES))
    lr_range: list[float] = field(default_factory=lambda: [1e-4, 1e-2])
    lr_values: list[float] = field(default_factory=lambda: list(PAPER_LR_VALUES))
    clip_values: list[bool] = field(default_factory=lambda: [True, False])
    configs: list[dict] | None = None  # search "fixed": [{"p_detach":, "lr":, "clip":}, ...]
    objective: str = "mean-se"
    asha: bool = False
    asha_grace: int = 2
    epochs: int | None = None
    set: dict[str, Any] = field(default_factory=dict)  # RunConfig overrides (e.g. seq_len)
    sampler_seed: int = 0
    max_failures: int = 2
    verbose: int = 1

    # -- derived --------------------------------------------------------------------------

    @property
    def experiment_name(self) -> str:
        """Default ``hdetach-<task>[-T<delay>]-<preset>``: one study per task setup, since
        configuration ids name (p, lr, clip) only."""
        if self.experiment:
            return self.experiment
        delay = (
            f"-T{self.set['seq_len']}" if self.task == "copying" and "seq_len" in self.set else ""
        )
        return f"hdetach-{self.task}{delay}-{self.preset}"

    @property
    def sequential(self) -> bool:
        return self.seeds == "auto"

    @property
    def seed_values(self) -> list[int]:
        """Every seed the study may use (with ``--seeds auto``, up to ``max_seeds``, in the
        order they are used)."""
        if self.seed_list is not None:
            return list(self.seed_list)
        count = self.max_seeds if self.sequential else self.seeds
        return list(range(self.seed_offset, self.seed_offset + count))

    def design(self):
        """The sequential design of ``--seeds auto``."""
        from study.sequential import SequentialDesign

        return SequentialDesign(
            min_seeds=self.min_seeds,
            seed_block=self.seed_block,
            max_seeds=self.max_seeds,
            alpha=self.alpha,
            spending=self.alpha_spending,
            margin=self.margin,
        )

    @property
    def seed_blocks(self) -> list[list[int]]:
        seeds, k = self.seed_values, self.seeds_per_trial
        return [seeds[i : i + k] for i in range(0, len(seeds), k)]

    @property
    def storage_dir(self) -> str:
        """Tune storage: a URI (s3://, gs://, ...) as given, or an absolute local path."""
        if "://" in self.storage_path:
            return self.storage_path
        return str(Path(self.storage_path).expanduser().resolve())

    @property
    def tune_root(self) -> str:
        """Tune's storage path for this study; each batch (run name) is one experiment in it."""
        return f"{self.storage_dir.rstrip('/')}/{self.experiment_name}"

    @property
    def experiment_dir(self) -> str:
        return f"{self.tune_root}/{self.run_name}"

    @property
    def optuna_storage_path(self) -> str:
        """Where the Optuna study lives: an RDB URL, or a journal file next to the Tune
        experiment (a local file even when Tune storage is remote)."""
        if self.optuna_storage:
            return self.optuna_storage
        base = self.storage_dir if "://" not in self.storage_dir else str(Path("runs").resolve())
        return str(inside(base, self.experiment_name, f"{self.run_name}.optuna.journal"))

    def run_config(self) -> RunConfig:
        """The task preset with the study's overrides (p, lr, clip, seeds are set per trial)."""
        overrides = dict(self.set)
        if self.epochs is not None:
            overrides["epochs"] = self.epochs
        overrides.setdefault("data_dir", self.data_dir)
        overrides.setdefault("download", self.download)
        return RunConfig.from_preset(self.task, self.preset, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # -- validation -----------------------------------------------------------------------

    def validate(self) -> StudyOptions:
        def fail(name: str, value, why: str):
            raise OptionsError(f"{name} {why}, got {value!r}")

        if self.task not in TASKS:
            raise OptionsError(f"unknown task {self.task!r} (choose from {', '.join(TASKS)})")
        if self.preset not in PRESETS:
            fail("preset", self.preset, f"must be one of {', '.join(PRESETS)}")
        if self.search not in SEARCHES:
            fail("search", self.search, f"must be one of {', '.join(SEARCHES)}")
        if self.objective not in OBJECTIVES:
            fail("objective", self.objective, f"must be one of {', '.join(OBJECTIVES)}")
        if self.sequential:
            self._validate_sequential()
        else:
            _int("seeds", self.seeds, 1)
        for name in ("trials", "seeds_per_trial", "asha_grace"):
            _int(name, getattr(self, name), 1)
        for name in ("seed_offset", "sampler_seed", "max_failures", "verbose"):
            _int(name, getattr(self, name), 0)
        if self.max_failures < 2:
            fail("max_failures", self.max_failures, "must be >= 2 (results are never lost)")
        if self.seed_list is not None:
            if not self.seed_list or len(set(self.seed_list)) != len(self.seed_list):
                fail("seed_list", self.seed_list, "must list distinct seeds")
            if len(self.seed_list) > MAX_COUNTS["seeds"]:
                limit = MAX_COUNTS["seeds"]
                fail("seed_list", len(self.seed_list), f"must list <= {limit:,} seeds")
            for s in self.seed_list:
                _int("seed", s, 0)
        if not _number(self.cpus_per_trial) or self.cpus_per_trial <= 0:
            fail("cpus_per_trial", self.cpus_per_trial, "must be > 0")
        if self.cpus_per_trial > MAX_PER_TRIAL:
            fail("cpus_per_trial", self.cpus_per_trial, f"must be <= {MAX_PER_TRIAL:g}")
        if not _number(self.gpus_per_trial) or not 0 <= self.gpus_per_trial <= MAX_PER_TRIAL:
            fail("gpus_per_trial", self.gpus_per_trial, f"must be in [0, {MAX_PER_TRIAL:g}]")
        if self.max_concurrent is not None:
            _int("max_concurrent", self.max_concurrent, 1)
        for name, amount in self.resources.items():
            if not isinstance(name, str) or not name or name.upper() in ("CPU", "GPU"):
                fail(
                    "resource name", name, "must be a custom resource (use --cpus/--gpus-per-trial)"
                )
            if not _number(amount) or not 0 < amount <= MAX_PER_TRIAL:
                fail(f"resource {name}", amount, f"must be in (0, {MAX_PER_TRIAL:g}]")
        for p in self.p_values:
            if not _number(p) or not 0 < p <= 1:
                fail("p value", p, "must be in (0, 1]")
        if not self.p_values:
            fail("p_values", self.p_values, "must not be empty")
        if len(self.lr_range) != 2 or not all(_number(v) and v > 0 for v in self.lr_range):
            fail("lr_range", self.lr_range, "must be two learning rates > 0")
        if self.lr_range[0] >= self.lr_range[1]:
            fail("lr_range", self.lr_range, "must be increasing")
        if self.lr_range[1] > MAX_LR:
            fail("lr_range", self.lr_range, f"must stay <= {MAX_LR:g}")
        for lr in self.lr_values:
            if not _number(lr) or lr <= 0:
                fail("lr", lr, "must be > 0")
            if lr > MAX_LR:
                fail("lr", lr, f"must be <= {MAX_LR:g}")
        if not self.clip_values or any(not isinstance(c, bool) for c in self.clip_values):
            fail("clip_values", self.clip_values, "must be a list of true/false")
        if self.search == "fixed":
            if not self.configs:
                raise OptionsError("search 'fixed' needs configs: [{p_detach, lr, clip}, ...]")
            for c in self.configs:
                _check_fixed_config(c)
        elif self.configs:
            fail("configs", "...", "are only used with search 'fixed'")
        if self.address is not None and not isinstance(self.address, str):
            fail("address", self.address, "must be 'auto', host:port or ray://host:port")
        try:
            check_name("run_name", self.run_name)
            check_name("experiment", self.experiment_name)
        except BadName as err:
            raise OptionsError(str(err)) from None
        if self.epochs is not None:
            _int("epochs", self.epochs, 1)
        if self.gpus_per_trial and self.cpus_per_trial < 1:
            fail("cpus_per_trial", self.cpus_per_trial, "must be >= 1 for GPU trials")
        c = self.confirm_seeds
        if isinstance(c, bool) or not isinstance(c, int) or c < 0 or c == 1:
            fail("confirm_seeds", c, "must be 0 (off) or an integer >= 2")
        if self.correction not in CORRECTIONS:
            fail("correction", self.correction, f"must be one of {', '.join(CORRECTIONS)}")
        try:
            base = self.run_config()
            for seeds in self.seed_blocks:
                base.replace(seeds=tuple(seeds)).validate()
            for p in self.p_values:
                base.replace(p_detach=p).validate()
        except ConfigError as err:
            raise OptionsError(str(err)) from None
        return self

    def _validate_sequential(self) -> None:
        def fail(name: str, value, why: str):
            raise OptionsError(f"{name} {why}, got {value!r}")

        _int("min_seeds", self.min_seeds, 2)
        _int("seed_block", self.seed_block, 1)
        _int("max_seeds", self.max_seeds, 2)
        if self.min_seeds > self.max_seeds:
            raise OptionsError(
                f"min_seeds ({self.min_seeds}) must be <= max_seeds ({self.max_seeds})"
            )
        if not _number(self.alpha) or not 0 < self.alpha < 1:
            fail("alpha", self.alpha, "must be in (0, 1)")
        if self.alpha_spending not in ALPHA_SPENDING:
            fail(
                "alpha_spending", self.alpha_spending, f"must be one of {', '.join(ALPHA_SPENDING)}"
            )
        if self.margin is not None and (not _number(self.margin) or self.margin <= 0):
            fail("margin", self.margin, "must be > 0")
        if self.budget_hours is not None and (
            not _number(self.budget_hours) or not 0 < self.budget_hours <= MAX_BUDGET_HOURS
        ):
            fail("budget_hours", self.budget_hours, f"must be in (0, {MAX_BUDGET_HOURS:g}]")
        if self.decision_metric not in DECISION_METRICS and (
            transfer_delay(str(self.decision_metric)) is None
        ):
            fail(
                "decision_metric",
                self.decision_metric,
                "must be a final or per-epoch metric (e.g. best_val_acc, test_acc_at_best)",
            )
        if self.asha:
            raise OptionsError(
                "--seeds auto cannot be combined with --asha (stopped trials would decide)"
            )
        if self.seed_list is not None and len(self.seed_list) < self.max_seeds:
            fail("seed_list", self.seed_list, f"must list max_seeds ({self.max_seeds}) seeds")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionsError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if name in MAX_COUNTS and value > MAX_COUNTS[name]:
        raise OptionsError(f"{name} must be <= {MAX_COUNTS[name]:,}, got {value!r}")


def _check_fixed_config(config) -> None:
    if not isinstance(config, dict) or set(config) - {"p_detach", "lr", "clip"}:
        raise OptionsError(f"a fixed config has keys p_detach, lr, clip, got {config!r}")
    p, lr, clip = config.get("p_detach"), config.get("lr"), config.get("clip", True)
    if not _number(p) or not 0 <= p <= 1:
        raise OptionsError(f"p_detach must be in [0, 1], got {p!r}")
    if not _number(lr) or lr <= 0:
        raise OptionsError(f"lr must be > 0, got {lr!r}")
    if lr > MAX_LR:
        raise OptionsError(f"lr must be <= {MAX_LR:g}, got {lr!r}")
    if not isinstance(clip, bool):
        raise OptionsError(f"clip must be true or false, got {clip!r}")


# -- command line and YAML ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python study/run.py",
        description="Run an h-detach robustness study: Optuna (through Ray Tune) searches "
        "p_detach, lr and clipping; every configuration runs on the same seeds next to its "
        "vanilla (p=0) baseline; everything is logged to MLflow.",
    )
    p.add_argument("--config", type=Path, help="YAML file of options (command line wins)")
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--preset", choices=PRESETS)
    p.add_argument("--search", choices=SEARCHES)
    p.add_argument("--trials", type=int, help="configurations to evaluate")
    p.add_argument(
        "--seeds", type=_seeds_arg, help="seeds per configuration (S), or 'auto': sequential"
    )
    p.add_argument("--min-seeds", type=int, help="--seeds auto: paired seeds at the first look")
    p.add_argument("--max-seeds", type=int, help="--seeds auto: at most this many seeds")
    p.add_argument("--seed-block", type=int, help="--seeds auto: seeds added after each look")
    p.add_argument(
        "--alpha", type=float, help="error of a wrong better/worse (--seeds auto: over all looks)"
    )
    p.add_argument("--alpha-spending", choices=ALPHA_SPENDING, help="--seeds auto: when to spend")
    p.add_argument(
        "--confirm-seeds",
        type=int,
        help="after a search of several configurations, run the selected one and vanilla on "
        "this many fresh seeds and rest the verdict on them (default 8; 0: off, the verdict "
        "is labelled selection-biased)",
    )
    p.add_argument(
        "--correction",
        choices=CORRECTIONS,
        help="better/worse than vanilla across the configurations: holm (family-wise error, "
        "default), bh (false discovery rate) or none",
    )
    p.add_argument("--margin", type=float, help="--seeds auto: stop as equivalent within this")
    p.add_argument(
        "--decision-metric",
        help="--seeds auto: final metric compared (best_val_score: the task's selection value)",
    )
    p.add_argument("--budget-hours", type=float, help="--seeds auto: trial hours, then stop")
    p.add_argument("--seed-offset", type=int, help="first seed (fresh seeds: raise it)")
    p.add_argument("--seeds-per-trial", type=int, help="seed members per trial process (K)")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=float, help="fractions allowed, e.g. 0.25")
    p.add_argument(
        "--max-concurrent",
        type=int,
        help="trials at once (default: what local Ray holds; 64 on a cluster, for the autoscaler)",
    )
    p.add_argument(
        "--resource",
        action="append",
        metavar="NAME=AMOUNT",
        help="a custom Ray resource each trial requests (e.g. a node type), repeatable",
    )
    p.add_argument("--address", help="Ray address: default embedded local Ray; 'auto' = cluster")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment / study name")
    p.add_argument("--run-name", help="name of this batch of trials inside the study")
    p.add_argument("--storage-path", help="Tune storage (shared storage on clusters)")
    p.add_argument("--optuna-storage", help="Optuna RDB URL or journal file")
    p.add_argument("--resume", action="store_true", default=None, help="continue a killed study")
    p.add_argument(
        "--data-dir",
        help="MNIST root (torchvision layout), captioning split file + features, or the "
        "language model's corpus files",
    )
    p.add_argument("--download", action="store_true", default=None, help="download MNIST")
    p.add_argument("--p-values", help="comma-separated h-detach probabilities to search")
    p.add_argument("--lr-range", help="tpe: low,high learning rate (log-uniform)")
    p.add_argument("--lr-values", help="grid: comma-separated learning rates")
    p.add_argument("--clip-values", help="comma-separated true/false")
    p.add_argument("--objective", choices=OBJECTIVES, help="seed-robust value given to Optuna")
    p.add_argument("--asha", action="store_true", default=None, help="early stopping (HPO)")
    p.add_argument("--asha-grace", type=int, help="epochs before ASHA may stop a trial")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument(
        "--backend", choices=BACKENDS, help="engine backend of every trial (default auto)"
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="run option override, repeatable"
    )
    p.add_argument("--verbose", type=int, help="0 quiet, 1 progress table, 2 + trial output")
    return p


def _seeds_arg(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number of seeds or 'auto', got {text!r}"
        ) from None


def _floats(name: str, text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OptionsError(f"--{name} must be comma-separated numbers, got {text!r}") from None


def _bools(text: str) -> list[bool]:
    values = {"true": True, "false": False, "on": True, "off": False, "1": True, "0": False}
    out = []
    for part in text.split(","):
        if part.strip().lower() not in values:
            raise OptionsError(f"--clip-values must be true/false, got {part.strip()!r}")
        out.append(values[part.strip().lower()])
    return out


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise OptionsError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(text)
    return out


def _parse_resources(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, amount = item.partition("=")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            raise OptionsError(f"--resource expects NAME=AMOUNT, got {item!r}") from None
    return out


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise OptionsError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise OptionsError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionsError(f"config file {path} must hold a mapping of options")
    known = {f.name for f in dataclasses.fields(StudyOptions)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise OptionsError(f"unknown option {unknown[0]!r} in {path}")
    return data


def options_from_args(argv: list[str] | None = None) -> StudyOptions:
    """Parse the command line (and its ``--config`` file) into validated options."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    cli = {
        k: v
        for k, v in vars(args).items()
        if v is not None and k not in ("config", "p_values", "lr_range", "lr_values")
        and k not in ("clip_values", "set", "resource", "backend")
    }  # fmt: skip
    if args.p_values is not None:
        cli["p_values"] = _floats("p-values", args.p_values)
    if args.lr_range is not None:
        cli["lr_range"] = _floats("lr-range", args.lr_range)
    if args.lr_values is not None:
        cli["lr_values"] = _floats("lr-values", args.lr_values)
    if args.clip_values is not None:
        cli["clip_values"] = _bools(args.clip_values)
    if args.resource:
        cli["resources"] = _parse_resources(args.resource)
    if args.set or args.backend:
        cli["set"] = {**values.get("set", {}), **_parse_set(args.set or [])}
        if args.backend:
            cli["set"]["backend"] = args.backend
    values.update(cli)
    return options_from_mapping(values)


def options_from_mapping(values: Mapping[str, Any]) -> StudyOptions:
    """Validated options from option names and values (a YAML file merged with the command
    line, or a nightly batch): the one place study options are checked."""
    known = {f.name for f in dataclasses.fields(StudyOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OptionsError(f"unknown option {unknown[0]!r}")
    values = dict(values)
    if "tracking_uri" not in values and os.environ.get("MLFLOW_TRACKING_URI"):
        values["tracking_uri"] = os.environ["MLFLOW_TRACKING_URI"]  # MLflow's own variable
    if "task" not in values:
        raise OptionsError(f"--task is required ({', '.join(TASKS)})")
    try:
        options = StudyOptions(**values)
    except TypeError as err:  # a YAML value of the wrong kind
        raise OptionsError(f"bad option: {err}") from None
    return options.validate()
