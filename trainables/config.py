"""Run configuration: one typed, validated description of a training run, and the presets.

``RunConfig`` is plain data, validated once at the edge (``validate``); inner code trusts it.
Each field declares its option once (type, default, bounds, help, the tasks that read it):
the checks and the flags of ``python -m trainables.train`` are generated from it
(``trainables.declare``), and a task refuses an option it does not read. Presets per task:

* ``paper`` - the paper's setup exactly (../shared/PAPER_SETUPS.md): copying T=100, 128
  units, Adam 1e-3, batch 100, 1,000 minibatches per epoch drawn with replacement from 100,000
  sequences, 5,000 validation sequences, 600 epochs, clip 1.0; pixel and permuted MNIST 100
  units, Adam 1e-3, batch 100, 200 epochs, clip 1.0, 50,000 / 10,000 / 10,000.
* ``reduced`` - between the two: sized so that one claim can be decided on one 2-core
  machine in about an hour (about ten seeds per arm), judged at *reduced scale* by the
  report. Copying T=20 with 128 units, 40 epochs x 250 batches; MNIST 4x4-pooled pixels (49
  steps) with 64 units, 20 epochs on 10,000 images.
* ``smoke`` - the same task shrunk to about a minute on a 2-core CPU, still learning
  something measurable (used by tests and the demo study).

``anneal_p`` (the authors' ``--anneal-p``: h-detach switched off near the end) defaults to 0
(off) in every preset: the paper does not mention it and a study of h-detach should measure
h-detach itself. The authors' copying script defaults to 40; their MNIST script defaulted to 0
in an early version and uses 40 in the current one, so set ``anneal_p=40`` to reproduce their
current scripts. It follows the reference code exactly: p is 0 in 0-based epochs
``e > epochs - anneal_p`` (i.e. the last ``anneal_p - 1`` epochs).

``select`` picks the best-validation epoch whose weights give the final metrics: ``first``
(default, the authors' MNIST script: a later epoch must beat the best) or ``last`` (the authors'
copying script: a later epoch that ties the best replaces it). Ties are common at the accuracy
ceiling, so the two can report different test and transfer accuracies (docs/fidelity.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass

from trainables.contract import (
    BACKENDS,
    CPU_KERNELS,
    CPU_KERNELS_ENV,
    PIXEL_POOLS,
    PRECISIONS,
    TASK_SETUP_KEYS,
    TASKS,
    arm_of,
)
from trainables.declare import check, option, unknown_key

PRESETS = ("paper", "reduced", "smoke")
DECODERS = ("show_and_tell", "soft_attention")
OPTIMIZERS = ("adam", "sgd", "momentum", "rmsprop")
#: Which epoch among those tying the best validation score is kept (module docstring).
SELECT_MODES = ("first", "last")


class ConfigError(ValueError):
    """A configuration value the user can fix; the message names the value."""


class OneLineParser(argparse.ArgumentParser):
    """argparse for every command of the project: a bad value is one line on stderr and
    exit code 2 (argparse alone prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


#: Upper bounds, checked with the lower ones before anything starts: far beyond any real run,
#: and small enough that sizes derived from them (tensors, seed lists, int64 step counts)
#: neither overflow nor exhaust memory before the run could fail on its own.
MAX_LR = 100.0
MAX_SEED = 2**31 - 1
MAX_SIZE = 100_000_000  # examples in a split
MAX_WIDTH = 65_536  # units of a layer or an embedding
MAX_BATCH = 1_048_576

_MNIST = ("seq_mnist", "pmnist")
_NOT_CAPTIONING = tuple(t for t in TASKS if t != "captioning")


def _size(default, help=None, *, cap=MAX_SIZE, **spec):
    return option(default, ge=1, cap=cap, help=help, **spec)


@dataclass(frozen=True)
class RunConfig:
    """One training run; each field declares its option once (``trainables.declare``)."""

    task: str = option(
        "copying",
        choices=TASKS,
        message=f"unknown task {{value!r}} (choose from {', '.join(TASKS)})",
        flag=None,
    )
    preset: str = option("paper", choices=PRESETS, flag=None)
    # model and gradient mode
    hidden_size: int = _size(128, cap=MAX_WIDTH)
    num_layers: int = _size(1, cap=64, tasks=_NOT_CAPTIONING)
    p_detach: float = option(0.0, ge=0, le=1, help="h-detach probability (0 = vanilla)")
    c_detach: float = option(0.0, ge=0, le=1, help="c-detach probability (ablation)")
    damp: float = option(0.0, ge=0, le=1, help="deterministic damping (expected h-detach)")
    mask_scope: str = option(
        "shared",
        choices=("shared", "per_layer"),
        rule="must be 'shared' or 'per_layer'",
        tasks=_NOT_CAPTIONING,
        help="one h-detach mask for all layers, or one per layer",
    )
    per_sample_masks: bool = option(False, help="draw the h-detach mask per sample")
    anneal_p: int = option(0, ge=0, cap=MAX_SIZE, help="reference code's --anneal-p (0 = off)")
    select: str = option(
        "first",
        choices=SELECT_MODES,
        help="best epoch among ties in validation score: first (default) or last (the "
        "authors' copying script)",
    )
    # optimisation
    optimizer: str = option("adam", choices=OPTIMIZERS)
    lr: float = option(1e-3, gt=0, cap=MAX_LR)
    momentum: float = option(0.9, ge=0, lt=1, help="optimizer 'momentum' only")
    clip: bool = option(True, flag=None)  # --no-clip (trainables.train)
    clip_norm: float = option(1.0, gt=0, help="gradient-norm clipping value")
    batch_size: int = _size(100, cap=MAX_BATCH)
    epochs: int = _size(600, cap=100_000)
    # draws with replacement; None: one shuffled pass
    batches_per_epoch: int | None = _size(1000, cap=10_000_000)
    # data
    seq_len: int = _size(100, "copying delay T", cap=1_000_000, tasks=_NOT_CAPTIONING)
    train_size: int = _size(100_000)
    val_size: int = _size(5_000)
    one_hot: bool = option(False, help="copying: one-hot token input", tasks=("copying",))
    data_seed: int = option(0, ge=0, cap=MAX_SEED, tasks=("copying",), help="copying data")
    permutation_seed: int = option(0, ge=0, cap=MAX_SEED, tasks=("pmnist",))
    permutation: str = option(
        "fixed",
        choices=("fixed", "per_seed"),
        rule="must be 'fixed' or 'per_seed'",
        tasks=("pmnist",),
    )
    data_dir: str = option(
        "data",
        help="MNIST root (torchvision layout) or an IDX-pair folder; captioning: the split "
        "file + features; language_model: the corpus files",
    )
    download: bool = option(False, help="download MNIST if missing")
    # required for a plain IDX-pair directory (mnist5k)
    shuffle_seed: int | None = option(
        None, ge=0, cap=MAX_SEED, tasks=_MNIST, help="shuffle of an IDX-pair folder (mnist5k)"
    )
    # MNIST: a prefix of the test set (smoke runs)
    test_size: int | None = _size(None, tasks=(*_MNIST, "captioning"))
    # MNIST: average k x k pixel blocks first (smoke only; paper: 1)
    pixel_pool: int = option(
        1,
        choices=PIXEL_POOLS,
        tasks=_MNIST,
        rule=f"must divide 28 ({', '.join(map(str, PIXEL_POOLS))})",
    )
    # language model (task "language_model"): corpus, tokens, embedding, regularisation
    # language model: "ptb", "wikitext-2", "pydoc" or a UTF-8 text file; captioning: the
    # dataset's name ("coco", "digit_scenes", ...), checked against the split file's
    corpus: str = option(
        "pydoc",
        rule="must name a corpus or a text file",
        tasks=TASK_SETUP_KEYS["corpus"],
        help="language_model: ptb, wikitext-2, pydoc or a text file; captioning: the dataset",
    )
    level: str = option(
        "char",
        choices=("word", "char"),
        rule="must be 'word' or 'char'",
        tasks=TASK_SETUP_KEYS["level"],
        help="language_model tokens",
    )
    embedding_size: int = _size(
        128, "language_model / captioning", cap=MAX_WIDTH, tasks=TASK_SETUP_KEYS["embedding_size"]
    )
    dropout: float = option(
        0.0, ge=0, lt=1, help="language_model dropout", tasks=TASK_SETUP_KEYS["dropout"]
    )
    tie_weights: bool = option(False, help="language_model", tasks=TASK_SETUP_KEYS["tie_weights"])
    # vocabulary: tokens seen at least this often in training
    min_count: int = _size(
        1,
        "vocabulary: words seen fewer times -> <unk>",
        cap=1_000_000_000,
        tasks=TASK_SETUP_KEYS["min_count"],
    )
    # captioning (task "captioning"): decoder and decoding
    decoder: str = option(
        "show_and_tell",
        choices=DECODERS,
        help="captioning decoder",
        tasks=TASK_SETUP_KEYS["decoder"],
    )
    beam_size: int = _size(
        3, "captioning test decoding (1 = greedy)", cap=1024, tasks=TASK_SETUP_KEYS["beam_size"]
    )
    # tokens kept per training caption; decoding stops there too
    max_caption_len: int = _size(
        16, "captioning: words per caption", cap=10_000, tasks=TASK_SETUP_KEYS["max_caption_len"]
    )
    # evaluation
    threshold: float = option(0.99, ge=0, le=1, help="accuracy for epochs_to_threshold")
    transfer_delays: tuple[int, ...] = option(
        (200, 400, 500, 1000, 2000, 5000),
        ge=1,
        cap=1_000_000,
        item="transfer delay",
        tasks=("copying",),
        help="copying: delays T the best checkpoint is tested at",
    )
    transfer_size: int = _size(5_000, tasks=("copying",))
    eval_batch_size: int = _size(1_000, cap=MAX_BATCH)
    # seeds (one per member) and execution
    seeds: tuple[int, ...] = option((0,), ge=0, cap=MAX_SEED, item="seed", flag=None)
    device: str = option("auto", rule="must be auto, cpu or cuda[:N]", help="auto, cpu or cuda[:N]")
    # which engine backend runs the LSTM (trainables/kernels): an execution choice like
    # `device`, not part of a configuration's identity (results agree up to rounding)
    backend: str = option("auto", choices=BACKENDS, help="engine backend (default auto: fastest)")
    # the recurrent products' precision (PRECISIONS): unlike the backend a setup key, since
    # TF32 rounds differently enough to change training (trainables/contract.py)
    precision: str = option(
        "fp32", choices=PRECISIONS, help="recurrent products: fp32 (default) or tf32"
    )

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["transfer_delays"] = list(self.transfer_delays)
        data["seeds"] = list(self.seeds)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        unknown = unknown_key(cls, data)
        if unknown is not None:
            raise ConfigError(f"unknown run option {unknown!r}")
        data = dict(data)
        for key in ("transfer_delays", "seeds"):
            if key in data and isinstance(data[key], list | tuple):
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def from_preset(cls, task: str, preset: str = "paper", **overrides) -> RunConfig:
        """The preset for ``task`` with ``overrides`` applied, validated."""
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
        values = {"task": task, "preset": preset, **_PRESETS[task][preset]}
        return cls.from_dict({**values, **overrides}).validate()

    @property
    def members(self) -> int:
        return len(self.seeds)

    @property
    def arm(self) -> str:
        """The comparison arm this configuration belongs to."""
        return arm_of(self.p_detach, self.c_detach, self.damp)

    def validate(self) -> RunConfig:
        """Every option within its declaration, then the rules between options."""
        check(self, ConfigError)

        def fail(name: str, value, why: str):
            raise ConfigError(f"{name} {why}, got {value!r}")

        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            fail("device", self.device, "must be auto, cpu or cuda[:N]")
        if self.precision != "fp32" and self.backend != "persistent":
            fail("precision", self.precision, "needs backend 'persistent'")
        cpu_kernels = os.environ.get(CPU_KERNELS_ENV)
        if cpu_kernels is not None and cpu_kernels not in CPU_KERNELS:
            fail(CPU_KERNELS_ENV, cpu_kernels, f"must be one of {', '.join(CPU_KERNELS)}")
        if not self.seeds:
            fail("seeds", self.seeds, "must name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            fail("seeds", self.seeds, "must be distinct")
        if not self.corpus:
            fail("corpus", self.corpus, "must name a corpus or a text file")
        if self.batch_size > self.train_size:
            fail("batch_size", self.batch_size, f"must be <= train_size ({self.train_size})")
        return self


_MNIST_PAPER = {
    "hidden_size": 100,
    "lr": 1e-3,
    "batch_size": 100,
    "epochs": 200,
    "batches_per_epoch": None,
    "train_size": 50_000,
    "val_size": 10_000,
    "clip": True,
    "clip_norm": 1.0,
    "seq_len": 784,
    "eval_batch_size": 1_000,
}
# Smoke: 4x4-averaged pixels (49 steps, still one pixel per step): pixel MNIST at 784 steps
# sits at chance for thousands of updates, far more than a minute of CPU.
_MNIST_SMOKE = {
    **_MNIST_PAPER,
    "hidden_size": 32,
    "lr": 1e-2,
    "batch_size": 50,
    "epochs": 10,
    "train_size": 1_000,
    "val_size": 500,
    "test_size": 500,
    "eval_batch_size": 500,
    "pixel_pool": 4,
    "seq_len": 49,
}

_MNIST_REDUCED = {
    **_MNIST_PAPER,
    "hidden_size": 64,
    "lr": 2e-3,
    "batch_size": 50,
    "epochs": 20,
    "train_size": 10_000,
    "val_size": 2_000,
    "test_size": 2_000,
    "eval_batch_size": 1_000,
    "pixel_pool": 4,
    "seq_len": 49,
}

_PRESETS: dict[str, dict[str, dict]] = {
    "copying": {
        "paper": {
            "hidden_size": 128,
            "lr": 1e-3,
            "batch_size": 100,
            "epochs": 600,
            "batches_per_epoch": 1000,
            "seq_len": 100,
            "train_size": 100_000,
            "val_size": 5_000,
            "clip": True,
            "clip_norm": 1.0,
            "threshold": 0.99,
            "transfer_delays": (200, 400, 500, 1000, 2000, 5000),
            "transfer_size": 5_000,
        },
        "reduced": {
            "hidden_size": 128,
            "lr": 1e-2,
            "batch_size": 50,
            "epochs": 40,
            "batches_per_epoch": 250,
            "seq_len": 20,
            "train_size": 10_000,
            "val_size": 1_000,
            "clip": True,
            "clip_norm": 1.0,
            "threshold": 0.99,
            "transfer_delays": (40, 80),
            "transfer_size": 1_000,
        },
        "smoke": {
            "hidden_size": 64,
            "lr": 1e-2,
            "batch_size": 50,
            "epochs": 12,
            "batches_per_epoch": 250,
            "seq_len": 5,
            "train_size": 3_000,
            "val_size": 500,
            "clip": True,
            "clip_norm": 1.0,
            "threshold": 0.9,
            "transfer_delays": (10, 20),
            "transfer_size": 500,
        },
    },
    "seq_mnist": {
        "paper": {**_MNIST_PAPER, "threshold": 0.97},
        "reduced": {**_MNIST_REDUCED, "threshold": 0.9},
        "smoke": _MNIST_SMOKE,
    },
    "pmnist": {
        "paper": {**_MNIST_PAPER, "threshold": 0.9},
        "reduced": {**_MNIST_REDUCED, "threshold": 0.8},
        "smoke": _MNIST_SMOKE,
    },
    # The paper gives no language-modelling setup ("tried, no benefit"). paper: the standard
    # small word-level PTB model (Zaremba et al. 2014: 2 x 200 units, SGD lr 1, BPTT 35,
    # batch 20, clip 5, 13 epochs); reduced and smoke: character level on the built-in pydoc
    # corpus (trainables/tasks/text.py), minutes on one CPU.
    "language_model": {
        "paper": {
            "corpus": "ptb", "level": "word", "hidden_size": 200, "embedding_size": 200,
            "num_layers": 2, "optimizer": "sgd", "lr": 1.0, "batch_size": 20, "seq_len": 35,
            "epochs": 13, "batches_per_epoch": None, "clip": True, "clip_norm": 5.0,
            "dropout": 0.0, "train_size": 1_000_000, "threshold": 1.0,
        },
        "reduced": {
            "corpus": "pydoc", "level": "char", "hidden_size": 256, "embedding_size": 64,
            "num_layers": 1, "optimizer": "adam", "lr": 2e-3, "batch_size": 32, "seq_len": 64,
            "epochs": 10, "batches_per_epoch": None, "clip": True, "clip_norm": 1.0,
            "dropout": 0.1, "train_size": 1_000_000, "threshold": 1.0,
        },
        "smoke": {
            "corpus": "pydoc", "level": "char", "hidden_size": 64, "embedding_size": 32,
            "num_layers": 1, "optimizer": "adam", "lr": 5e-3, "batch_size": 32, "seq_len": 50,
            "epochs": 5, "batches_per_epoch": 150, "clip": True, "clip_norm": 1.0,
            "dropout": 0.0, "train_size": 1_000_000, "threshold": 1.0,
        },
    },
    # Captioning: the paper's setup (Karpathy split, 80,000 / 5,000 / 5,000 images, 512 units,
    # Adam 1e-4, early stopping on validation CIDEr); reduced and smoke shrink the splits.
    "captioning": {
        "paper": {
            "corpus": "coco", "hidden_size": 512, "embedding_size": 512, "optimizer": "adam",
            "lr": 1e-4,
            "batch_size": 32, "epochs": 20, "batches_per_epoch": None, "clip": True,
            "clip_norm": 5.0, "train_size": 80_000, "val_size": 5_000, "test_size": 5_000,
            "min_count": 5, "beam_size": 3, "max_caption_len": 16, "threshold": 1.0,
            "eval_batch_size": 500,
        },
        "reduced": {
            "corpus": "coco", "hidden_size": 256, "embedding_size": 256, "optimizer": "adam",
            "lr": 4e-4,
            "batch_size": 32, "epochs": 10, "batches_per_epoch": None, "clip": True,
            "clip_norm": 5.0, "train_size": 10_000, "val_size": 1_000, "test_size": 1_000,
            "min_count": 5, "beam_size": 3, "max_caption_len": 16, "threshold": 1.0,
            "eval_batch_size": 500,
        },
        "smoke": {
            "corpus": "coco", "hidden_size": 64, "embedding_size": 64, "optimizer": "adam",
            "lr": 2e-3, "batch_size": 16, "epochs": 3, "batches_per_epoch": 20, "clip": True,
            "clip_norm": 5.0, "train_size": 200, "val_size": 50, "test_size": 50,
            "min_count": 1, "beam_size": 2, "max_caption_len": 12, "threshold": 1.0,
            "eval_batch_size": 100,
        },
    },
}  # fmt: skip


def preset_table() -> dict[str, dict[str, dict]]:
    """The presets (for ``--help`` and the docs)."""
    return {
        task: {name: dict(values) for name, values in p.items()} for task, p in _PRESETS.items()
    }


__all__ = [
    "ConfigError",
    "OPTIMIZERS",
    "OneLineParser",
    "PRESETS",
    "RunConfig",
    "SELECT_MODES",
    "TASKS",
    "preset_table",
]
