"""Run configuration: one typed, validated description of a training run, and the presets.

``RunConfig`` is plain data, validated once at the edge (``validate``); inner code trusts it.
Presets per task:

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
import math
import os
from dataclasses import dataclass

from trainables.contract import (
    BACKENDS,
    CPU_KERNELS,
    CPU_KERNELS_ENV,
    PIXEL_POOLS,
    PRECISIONS,
    TASKS,
    arm_of,
)

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


@dataclass(frozen=True)
class RunConfig:
    task: str = "copying"
    preset: str = "paper"
    # model and gradient mode
    hidden_size: int = 128
    num_layers: int = 1
    p_detach: float = 0.0
    c_detach: float = 0.0
    damp: float = 0.0
    mask_scope: str = "shared"
    per_sample_masks: bool = False
    anneal_p: int = 0
    select: str = "first"  # best epoch among ties: "first" or "last" (authors' copying)
    # optimisation
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    clip: bool = True
    clip_norm: float = 1.0
    batch_size: int = 100
    epochs: int = 600
    batches_per_epoch: int | None = 1000  # draws with replacement; None: one shuffled pass
    # data
    seq_len: int = 100  # copying delay T (sequences are T + 20 long)
    train_size: int = 100_000
    val_size: int = 5_000
    one_hot: bool = False
    data_seed: int = 0
    permutation_seed: int = 0
    permutation: str = "fixed"
    data_dir: str = "data"
    download: bool = False
    shuffle_seed: int | None = None  # required for a plain IDX-pair directory (mnist5k)
    test_size: int | None = None  # MNIST: a prefix of the test set (smoke runs)
    pixel_pool: int = 1  # MNIST: average k x k pixel blocks first (smoke only; paper: 1)
    # language model (task "language_model"): corpus, tokens, embedding, regularisation
    # language model: "ptb", "wikitext-2", "pydoc" or a UTF-8 text file; captioning: the
    # dataset's name ("coco", "digit_scenes", ...), checked against the split file's
    corpus: str = "pydoc"
    level: str = "char"  # "word" or "char"
    embedding_size: int = 128
    dropout: float = 0.0
    tie_weights: bool = False
    min_count: int = 1  # vocabulary: tokens seen at least this often in training
    # captioning (task "captioning"): decoder and decoding
    decoder: str = "show_and_tell"  # or "soft_attention"
    beam_size: int = 3
    max_caption_len: int = 16  # tokens kept per training caption; decoding stops there too
    # evaluation
    threshold: float = 0.99
    transfer_delays: tuple[int, ...] = (200, 400, 500, 1000, 2000, 5000)
    transfer_size: int = 5_000
    eval_batch_size: int = 1_000
    # seeds (one per member) and execution
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    # which engine backend runs the LSTM (trainables/kernels): an execution choice like
    # `device`, not part of a configuration's identity (results agree up to rounding)
    backend: str = "auto"
    # the recurrent products' precision (PRECISIONS): unlike the backend a setup key, since
    # TF32 rounds differently enough to change training (trainables/contract.py)
    precision: str = "fp32"

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["transfer_delays"] = list(self.transfer_delays)
        data["seeds"] = list(self.seeds)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown run option {unknown[0]!r}")
        data = dict(data)
        for key in ("transfer_delays", "seeds"):
            if key in data:
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
        def fail(name: str, value, why: str):
            raise ConfigError(f"{name} {why}, got {value!r}")

        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r} (choose from {', '.join(TASKS)})")
        if self.preset not in PRESETS:
            fail("preset", self.preset, f"must be one of {', '.join(PRESETS)}")
        for name in ("p_detach", "c_detach", "damp", "threshold"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                fail(name, value, "must be in [0, 1]")
        if not _positive(self.lr):
            fail("lr", self.lr, "must be > 0")
        if self.lr > MAX_LR:
            fail("lr", self.lr, f"must be <= {MAX_LR:g}")
        if not _positive(self.clip_norm):
            fail("clip_norm", self.clip_norm, "must be > 0")
        if not isinstance(self.momentum, int | float) or not 0.0 <= self.momentum < 1.0:
            fail("momentum", self.momentum, "must be in [0, 1)")
        for name in ("hidden_size", "num_layers", "batch_size", "epochs", "seq_len"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("train_size", "val_size", "transfer_size", "eval_batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("anneal_p", self.anneal_p, minimum=0)
        if self.batches_per_epoch is not None:
            _check_int("batches_per_epoch", self.batches_per_epoch, minimum=1)
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", self.optimizer, f"must be one of {', '.join(OPTIMIZERS)}")
        if self.mask_scope not in ("shared", "per_layer"):
            fail("mask_scope", self.mask_scope, "must be 'shared' or 'per_layer'")
        if self.select not in SELECT_MODES:
            fail("select", self.select, f"must be one of {', '.join(SELECT_MODES)}")
        if self.permutation not in ("fixed", "per_seed"):
            fail("permutation", self.permutation, "must be 'fixed' or 'per_seed'")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            fail("device", self.device, "must be auto, cpu or cuda[:N]")
        if self.backend not in BACKENDS:
            fail("backend", self.backend, f"must be one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            fail("precision", self.precision, f"must be one of {', '.join(PRECISIONS)}")
        if self.precision != "fp32" and self.backend != "persistent":
            fail("precision", self.precision, "needs backend 'persistent'")
        cpu_kernels = os.environ.get(CPU_KERNELS_ENV)
        if cpu_kernels is not None and cpu_kernels not in CPU_KERNELS:
            fail(CPU_KERNELS_ENV, cpu_kernels, f"must be one of {', '.join(CPU_KERNELS)}")
        if not self.seeds:
            fail("seeds", self.seeds, "must name at least one seed")
        for seed in self.seeds:
            _check_int("seed", seed, minimum=0)
        if len(set(self.seeds)) != len(self.seeds):
            fail("seeds", self.seeds, "must be distinct")
        if self.shuffle_seed is not None:
            _check_int("shuffle_seed", self.shuffle_seed, minimum=0)
        if self.test_size is not None:
            _check_int("test_size", self.test_size, minimum=1)
        if self.pixel_pool not in PIXEL_POOLS:
            fail(
                "pixel_pool",
                self.pixel_pool,
                f"must divide 28 ({', '.join(map(str, PIXEL_POOLS))})",
            )
        for delay in self.transfer_delays:
            _check_int("transfer delay", delay, minimum=1)
        if self.level not in ("word", "char"):
            fail("level", self.level, "must be 'word' or 'char'")
        if self.decoder not in DECODERS:
            fail("decoder", self.decoder, f"must be one of {', '.join(DECODERS)}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            fail("dropout", self.dropout, "must be in [0, 1)")
        for name in ("embedding_size", "min_count", "beam_size", "max_caption_len"):
            _check_int(name, getattr(self, name), minimum=1)
        if not isinstance(self.corpus, str) or not self.corpus:
            fail("corpus", self.corpus, "must name a corpus or a text file")
        if self.batch_size > self.train_size:
            fail("batch_size", self.batch_size, f"must be <= train_size ({self.train_size})")
        return self


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


#: Upper bounds, checked with the lower ones before anything starts: far beyond any real run,
#: and small enough that sizes derived from them (tensors, seed lists, int64 step counts)
#: neither overflow nor exhaust memory before the run could fail on its own.
MAX_LR = 100.0
MAX_SEED = 2**31 - 1
MAX_INTS = {
    "epochs": 100_000,
    "batches_per_epoch": 10_000_000,
    "hidden_size": 65_536,
    "num_layers": 64,
    "batch_size": 1_048_576,
    "seq_len": 1_000_000,
    "train_size": 100_000_000,
    "val_size": 100_000_000,
    "transfer_size": 100_000_000,
    "test_size": 100_000_000,
    "eval_batch_size": 1_048_576,
    "anneal_p": 100_000_000,
    "seed": MAX_SEED,
    "shuffle_seed": MAX_SEED,
    "transfer delay": 1_000_000,
    "embedding_size": 65_536,
    "min_count": 1_000_000_000,
    "beam_size": 1024,
    "max_caption_len": 10_000,
}


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if name in MAX_INTS and value > MAX_INTS[name]:
        raise ConfigError(f"{name} must be <= {MAX_INTS[name]:,}, got {value!r}")


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
