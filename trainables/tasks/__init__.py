"""The paper's classification task data, by name: ``load_task("copying" | "seq_mnist" |
"pmnist", ...)`` (the text tasks' data: ``text.py``, ``captions.py``).

Each task module builds a ``TaskData`` (``base.py``): whole splits as tensors plus how the
trainer scores them. Nothing here trains or knows about models.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from trainables.contract import CLASSIFICATION_TASKS as TASKS

from .base import DataNotFoundError, Split, TaskData
from .copying import generate_copying, load_copying, transfer_sets
from .mnist import load_mnist

__all__ = [
    "TASKS",
    "DataNotFoundError",
    "Split",
    "TaskData",
    "generate_copying",
    "load_copying",
    "load_mnist",
    "load_task",
    "transfer_sets",
]


def load_task(name: str, **options: object) -> TaskData:
    """Build task ``name`` with ``options`` (the keyword arguments of ``load_copying`` or of
    ``load_mnist`` without ``name``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (choose from {', '.join(TASKS)})")
    loader: Callable[..., TaskData] = load_copying if name == "copying" else load_mnist
    params = {k: p for k, p in inspect.signature(loader).parameters.items() if k != "name"}
    # Python's TypeError would name the loader function, not the task the user configured.
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for task {name!r} (accepted: {', '.join(params)})"
        )
    missing = [k for k, p in params.items() if p.default is p.empty and k not in options]
    if missing:
        raise ValueError(f"task {name!r} needs option {missing[0]!r}, got none")
    if name == "copying":
        return load_copying(**options)
    return load_mnist(name, **options)
