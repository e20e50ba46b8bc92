"""What a study is asked to do: ``StudyOptions``, read from the command line and/or a YAML file.

Everything is validated here, before Ray starts or MLflow is touched: a bad value raises
``OptionsError`` with a one-line message naming the value (the CLI turns it into exit code 2).
Options may come from a YAML file (``--config study.yaml``, keys = option names with ``_``);
the command line wins over the file, the file over the defaults. The nightly's batches are
checked by this same code (``hdetach.nightly`` imports it).

Each option is declared once, as a field of ``StudyOptions`` (``trainables.declare``): its
type, default, bounds and help; the checks, the YAML keys and the flags are generated from it.
What is left by hand are the rules between options (``validate``) and the flags that are not
one option (``--config``, ``--set``, ``--resource``, ``--backend``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
from trainables.declare import add_flags, check, is_list, option, split_list, unknown_key
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
#: Upper bounds of the study's own numbers (the run's are declared in trainables.config),
#: checked before anything is built from them: ``--seeds 1000000000`` must not allocate.
MAX_SEEDS = 100_000
MAX_BUDGET_HOURS = 24 * 366.0
MAX_PER_TRIAL = 1024.0  # CPUs, GPUs or custom resources one trial asks for


class OptionsError(ValueError):
    """A study option the user can fix; the message names the value."""


def _count(default, help=None, *, ge=1, cap=MAX_SEEDS, **spec):
    return option(default, ge=ge, cap=cap, help=help, **spec)


def _choice(default, choices, help=None):
    return option(default, choices=choices, help=help)


@dataclass
class StudyOptions:
    """One study. ``seeds`` is a count S: every configuration runs on seeds
    ``seed_offset .. seed_offset + S - 1`` (or exactly ``seed_list``), in blocks of
    ``seeds_per_trial`` (K) seed members per Tune trial. Each field declares its option once
    (``trainables.declare``): the checks, the YAML keys and the flags come from it."""

    task: str = option(
        "copying",
        choices=TASKS,
        message=f"unknown task {{value!r}} (choose from {', '.join(TASKS)})",
    )
    preset: str = _choice("smoke", PRESETS)
    search: str = _choice("tpe", SEARCHES)
    trials: int = _count(4, "configurations to evaluate")
    # a count S, or "auto": sequential allocation (study/sequential.py); flag: build_parser
    seeds: int | Literal["auto"] = _count(3, flag=None)
    min_seeds: int = _count(8, "--seeds auto: paired seeds at the first look", ge=2)
    max_seeds: int = _count(32, "--seeds auto: at most this many seeds", ge=2)
    seed_block: int = _count(4, "--seeds auto: seeds added after each look")
    alpha: float = option(
        0.05, gt=0, lt=1, help="error of a wrong better/worse (--seeds auto: over all looks)"
    )
    alpha_spending: str = _choice("pocock", ALPHA_SPENDING, "--seeds auto: when to spend")
    correction: str = _choice(
        "holm",
        CORRECTIONS,
        "better/worse than vanilla across the configurations: holm (family-wise error, "
        "default), bh (false discovery rate) or none",
    )
    confirm_seeds: int = option(
        8,
        ge=0,
        rule="must be 0 (off) or an integer >= 2",
        help="after a search of several configurations, run the selected one and vanilla on "
        "this many fresh seeds and rest the verdict on them (default 8; 0: off, the verdict "
        "is labelled selection-biased)",
    )
    margin: float | None = option(None, gt=0, help="--seeds auto: stop as equivalent within this")
    decision_metric: str = option(
        SCORE_METRIC,
        help="--seeds auto: final metric compared (best_val_score: the task's selection value)",
    )
    budget_hours: float | None = option(
        None, gt=0, le=MAX_BUDGET_HOURS, help="--seeds auto: trial hours, then stop"
    )
    seed_offset: int = _count(0, "first seed (fresh seeds: raise it)", ge=0, cap=MAX_SEED)
    seed_list: list[int] | None = option(None, ge=0, cap=MAX_SEED, item="seed", flag=None)
    seeds_per_trial: int = _count(1, "seed members per trial process (K)", cap=4096)
    cpus_per_trial: float = option(1.0, gt=0, cap=MAX_PER_TRIAL)
    gpus_per_trial: float = option(0.0, ge=0, le=MAX_PER_TRIAL, help="fractions allowed, e.g. 0.25")
    max_concurrent: int | None = _count(
        None, "trials at once (default: what local Ray holds; 64 on a cluster, for the autoscaler)"
    )
    # extra Ray resources per trial (flag --resource NAME=AMOUNT: build_parser)
    resources: dict[str, float] = option(
        factory=dict, rule="must map resource names to amounts", flag=None
    )
    address: str | None = option(
        None,
        rule="must be 'auto', host:port or ray://host:port",
        help="Ray address: default embedded local Ray; 'auto' = cluster",
    )
    tracking_uri: str = option(
        "sqlite:///mlflow.db", help="MLflow tracking URI (default sqlite:///mlflow.db)"
    )
    experiment: str | None = option(None, help="MLflow experiment / study name")
    run_name: str = option("main", help="name of this batch of trials inside the study")
    storage_path: str = option("runs", help="Tune storage (shared storage on clusters)")
    optuna_storage: str | None = option(None, help="Optuna RDB URL or journal file")
    resume: bool = option(False, help="continue a killed study")
    data_dir: str = option(
        "data",
        help="MNIST root (torchvision layout), captioning split file + features, or the "
        "language model's corpus files",
    )
    download: bool = option(False, help="download MNIST")
    p_values: list[float] = option(
        factory=lambda: list(PAPER_P_VALUES),
        gt=0,
        le=1,
        item="p value",
        help="comma-separated h-detach probabilities to search",
    )
    lr_range: list[float] = option(
        factory=lambda: [1e-4, 1e-2],
        rule="must be two learning rates > 0",
        help="tpe: low,high learning rate (log-uniform)",
    )
    lr_values: list[float] = option(
        factory=lambda: list(PAPER_LR_VALUES),
        gt=0,
        cap=MAX_LR,
        item="lr",
        help="grid: comma-separated learning rates",
    )
    clip_values: list[bool] = option(
        factory=lambda: [True, False],
        rule="must be a list of true/false",
        help="comma-separated true/false",
    )
    # search "fixed": [{"p_detach":, "lr":, "clip":}, ...]
    configs: list[dict] | None = option(None, flag=None)
    objective: str = _choice("mean-se", OBJECTIVES, "seed-robust value given to Optuna")
    asha: bool = option(False, help="early stopping (HPO)")
    asha_grace: int = _count(2, "epochs before ASHA may stop a trial")
    epochs: int | None = option(None, ge=1, help="override the preset's epochs")
    # RunConfig overrides (e.g. seq_len); flags --set KEY=VALUE and --backend: build_parser
    set: dict[str, Any] = option(factory=dict, flag=None)
    sampler_seed: int = option(0, ge=0, cap=2**32 - 1, flag=None)  # numpy's seed range
    max_failures: int = option(2, ge=0, cap=1000, flag=None)
    verbose: int = option(1, ge=0, cap=3, help="0 quiet, 1 progress table, 2 + trial output")

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
        """Every option within its declaration, then the rules between options."""
        check(self, OptionsError)

        def fail(name: str, value, why: str):
            raise OptionsError(f"{name} {why}, got {value!r}")

        if self.sequential:
            if self.min_seeds > self.max_seeds:
                raise OptionsError(
                    f"min_seeds ({self.min_seeds}) must be <= max_seeds ({self.max_seeds})"
                )
            if self.asha:
                raise OptionsError(
                    "--seeds auto cannot be combined with --asha (stopped trials would decide)"
                )
            if self.seed_list is not None and len(self.seed_list) < self.max_seeds:
                fail("seed_list", self.seed_list, f"must list max_seeds ({self.max_seeds}) seeds")
        if self.decision_metric not in DECISION_METRICS and (
            transfer_delay(str(self.decision_metric)) is None
        ):
            fail(
                "decision_metric",
                self.decision_metric,
                "must be a final or per-epoch metric (e.g. best_val_acc, test_acc_at_best)",
            )
        if self.max_failures < 2:
            fail("max_failures", self.max_failures, "must be >= 2 (results are never lost)")
        if self.seed_list is not None:
            if not self.seed_list or len(set(self.seed_list)) != len(self.seed_list):
                fail("seed_list", self.seed_list, "must list distinct seeds")
            if len(self.seed_list) > MAX_SEEDS:
                fail("seed_list", len(self.seed_list), f"must list <= {MAX_SEEDS:,} seeds")
        for name, amount in self.resources.items():
            if not name or name.upper() in ("CPU", "GPU"):
                fail(
                    "resource name", name, "must be a custom resource (use --cpus/--gpus-per-trial)"
                )
            if not 0 < amount <= MAX_PER_TRIAL:
                fail(f"resource {name}", amount, f"must be in (0, {MAX_PER_TRIAL:g}]")
        if not self.p_values:
            fail("p_values", self.p_values, "must not be empty")
        if len(self.lr_range) != 2 or not all(v > 0 for v in self.lr_range):
            fail("lr_range", self.lr_range, "must be two learning rates > 0")
        if self.lr_range[0] >= self.lr_range[1]:
            fail("lr_range", self.lr_range, "must be increasing")
        if self.lr_range[1] > MAX_LR:
            fail("lr_range", self.lr_range, f"must stay <= {MAX_LR:g}")
        if not self.clip_values:
            fail("clip_values", self.clip_values, "must be a list of true/false")
        if self.search == "fixed":
            if not self.configs:
                raise OptionsError("search 'fixed' needs configs: [{p_detach, lr, clip}, ...]")
            for c in self.configs:
                _check_fixed_config(c)
        elif self.configs:
            fail("configs", "...", "are only used with search 'fixed'")
        try:
            check_name("run_name", self.run_name)
            check_name("experiment", self.experiment_name)
        except BadName as err:
            raise OptionsError(str(err)) from None
        if self.gpus_per_trial and self.cpus_per_trial < 1:
            fail("cpus_per_trial", self.cpus_per_trial, "must be >= 1 for GPU trials")
        if self.confirm_seeds == 1:
            fail("confirm_seeds", self.confirm_seeds, "must be 0 (off) or an integer >= 2")
        try:
            base = self.run_config()
            # every seed at once: the blocks partition distinct seeds (checked above)
            base.replace(seeds=tuple(self.seed_values)).validate()
            for p in self.p_values:
                base.replace(p_detach=p).validate()
        except ConfigError as err:
            raise OptionsError(str(err)) from None
        return self


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
    p.add_argument(
        "--seeds", type=_seeds_arg, help="seeds per configuration (S), or 'auto': sequential"
    )
    add_flags(p, StudyOptions)  # every other option, as StudyOptions declares it
    p.add_argument(
        "--resource",
        action="append",
        metavar="NAME=AMOUNT",
        help="a custom Ray resource each trial requests (e.g. a node type), repeatable",
    )
    p.add_argument(
        "--backend", choices=BACKENDS, help="engine backend of every trial (default auto)"
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="run option override, repeatable"
    )
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
    unknown = unknown_key(StudyOptions, data)
    if unknown is not None:
        raise OptionsError(f"unknown option {unknown!r} in {path}")
    return data


def options_from_args(argv: list[str] | None = None) -> StudyOptions:
    """Parse the command line (and its ``--config`` file) into validated options."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    cli = {}
    for f in dataclasses.fields(StudyOptions):
        given = getattr(args, f.name, None)
        if given is None or f.name in ("resources", "set"):
            continue
        if isinstance(given, str) and is_list(StudyOptions, f.name):
            given = split_list(StudyOptions, f.name, given, OptionsError)
        cli[f.name] = given
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
    unknown = unknown_key(StudyOptions, values)
    if unknown is not None:
        raise OptionsError(f"unknown option {unknown!r}")
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
