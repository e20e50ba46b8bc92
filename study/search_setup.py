"""The search a study runs: the searcher stack built from the study's options, its Optuna
storage, how many trials run at once, and, on ``--resume``, the Optuna study Tune restored bound
to the storage the resuming command names.

The stack is ``ConcurrencyLimiter(PairedSeedSearcher(OptunaSearch))``: Optuna proposes
configurations (TPE over p, lr and clipping; a grid; or a fixed list such as the nightly's),
the paired-seed searcher runs each on the study's seeds beside its vanilla baseline, and the
limiter keeps Tune from asking for more trials than the cluster can run.
"""

from __future__ import annotations

from pathlib import Path

from study.options import StudyOptions
from study.preflight import StudyError

#: trials in flight on a cluster that may still be scaling up (its max_workers bounds it)
CLUSTER_MAX_CONCURRENT = 64


def max_concurrent(options: StudyOptions) -> int:
    """Trials Tune may run at once: ``--max-concurrent``, else what the local Ray's resources
    hold at the per-trial request, else (on a cluster) CLUSTER_MAX_CONCURRENT."""
    import ray

    if options.max_concurrent:
        return options.max_concurrent
    if options.address not in (None, "", "local"):
        # An autoscaling cluster may have no workers yet: pending trials are what makes the
        # autoscaler start them, so allow plenty (max_workers bounds the cluster anyway).
        return CLUSTER_MAX_CONCURRENT
    available = ray.cluster_resources()
    wanted = {"CPU": options.cpus_per_trial, "GPU": options.gpus_per_trial, **options.resources}
    slots = [int(available.get(name, 0) // amount) for name, amount in wanted.items() if amount]
    return max(1, min(slots))


def build_searcher(options: StudyOptions):
    """``ConcurrencyLimiter(PairedSeedSearcher(OptunaSearch))`` with a persisted Optuna study."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from ray.tune.search import ConcurrencyLimiter

    from study.optuna_search import RelocatableOptunaSearch as OptunaSearch
    from study.searcher import OBJECTIVE, PairedSeedSearcher, SequentialPlan

    storage = optuna_storage(options)
    clip = CategoricalDistribution(list(options.clip_values))
    points = None
    if options.search == "tpe":
        space = {
            "p_detach": CategoricalDistribution(list(options.p_values)),
            "lr": FloatDistribution(*options.lr_range, log=True),
            "clip": clip,
        }
        sampler = optuna.samplers.TPESampler(seed=options.sampler_seed)
        max_configs = options.trials
    elif options.search == "grid":
        grid = {
            "p_detach": list(options.p_values),
            "lr": list(options.lr_values),
            "clip": list(options.clip_values),
        }
        space = {k: CategoricalDistribution(v) for k, v in grid.items()}
        sampler = optuna.samplers.GridSampler(grid, seed=options.sampler_seed)
        size = len(grid["p_detach"]) * len(grid["lr"]) * len(grid["clip"])
        max_configs = min(options.trials, size)
    else:  # fixed configurations (e.g. the nightly batch)
        configs = [{"clip": True, **c} for c in options.configs or []]
        space = {
            "p_detach": CategoricalDistribution(sorted({c["p_detach"] for c in configs})),
            "lr": CategoricalDistribution(sorted({c["lr"] for c in configs})),
            "clip": CategoricalDistribution(sorted({c["clip"] for c in configs})),
        }
        sampler = optuna.samplers.TPESampler(seed=options.sampler_seed)
        points, max_configs = configs, len(configs)
    optuna_search = OptunaSearch(
        space=space,
        metric=OBJECTIVE,
        mode="max",
        sampler=sampler,
        study_name=f"{options.experiment_name}/{options.run_name}",
        storage=storage,
        points_to_evaluate=points,
    )
    plan = None
    if options.sequential:
        budget = options.budget_hours * 3600.0 if options.budget_hours else None
        plan = SequentialPlan(
            design=options.design(),
            seeds=tuple(options.seed_values),
            seeds_per_trial=options.seeds_per_trial,
            metric=options.decision_metric,
            budget_seconds=budget,
            gpus_per_trial=options.gpus_per_trial,
        )
    paired = PairedSeedSearcher(
        optuna_search,
        seed_blocks=options.seed_blocks,
        max_configs=max_configs,
        objective=options.objective,
        sequential=plan,
        key=options.experiment_dir,
        ledger=shape_ledger(options) if plan is not None else None,
    )
    return ConcurrencyLimiter(paired, max_concurrent=max_concurrent(options))


def shape_ledger(options: StudyOptions) -> str | None:
    """Where the searcher records each look's shape-gate pool (``PairedSeedSearcher``):
    beside the Optuna journal, so that it moves with it on a ``--resume`` from elsewhere;
    beside the Tune experiment when Optuna is in a database; None when that is remote."""
    path = options.optuna_storage_path
    if "://" not in path:
        return f"{path}.shape-gate.jsonl"
    local = options.experiment_dir
    return None if "://" in local else f"{local}/shape-gate.jsonl"


def optuna_storage(options: StudyOptions):
    """The Optuna storage the options name: an RDB URL, or a journal file."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage_path = options.optuna_storage_path
    if "://" in storage_path:
        return storage_path  # an RDB URL
    Path(storage_path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage_path))


def restored_search_alg(tuner):
    """The search algorithm of a restored Tuner: the object Tune runs and restores its state
    into (in place, through each wrapper's ``set_state``). Tuner.restore takes no tune config,
    and the restored one is only reachable through the Tuner's local implementation."""
    local = getattr(tuner, "_local_tuner", None)
    return local._tune_config.search_alg if local is not None else None


def _find(search_alg, kind):
    """The searcher of type ``kind`` in the wrapper chain (ConcurrencyLimiter ->
    PairedSeedSearcher -> OptunaSearch), or None."""
    searcher = search_alg
    while searcher is not None and not isinstance(searcher, kind):
        searcher = getattr(searcher, "searcher", None)
    return searcher


def paired_seed_searcher(search_alg):
    """The ``PairedSeedSearcher`` of a search algorithm built by :func:`build_searcher`: the
    study callback reads sequential outcomes from it (``MlflowStudyCallback.link``)."""
    from study.searcher import PairedSeedSearcher

    return _find(search_alg, PairedSeedSearcher)


def relocate_searcher(tuner, options: StudyOptions) -> None:
    """The Optuna study Tune restores with the experiment is read and written where this
    command says (``--optuna-storage``, or the journal beside the Tune experiment now)."""
    from study.optuna_search import RelocatableOptunaSearch

    searcher = _find(restored_search_alg(tuner), RelocatableOptunaSearch)
    if searcher is None:
        return  # saved by a version whose searcher keeps the path of its first run
    path = options.optuna_storage_path
    if "://" not in path and not Path(path).is_file():
        raise StudyError(
            f"--resume: no Optuna journal at {path}: move the study's journal there, or "
            "give --optuna-storage where it is"
        )
    try:
        searcher.relocate(optuna_storage(options))
    except KeyError:  # optuna: no study of that name in the storage
        raise StudyError(
            f"--resume: {path} holds no Optuna study {searcher._study_name!r}: give "
            "--optuna-storage where the study's journal (or database) is"
        ) from None
