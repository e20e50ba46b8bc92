"""Engine backends under test: every backend that runs on CPU tensors here.

Without a GPU the Triton kernels (the ``triton`` and ``persistent`` backends) run on CPU
tensors through Triton's interpreter (``TRITON_INTERPRET=1``, set before
``trainables.kernels.triton_lstm`` is first imported), which checks their arithmetic on small
shapes, not their speed. With a GPU they are tested on CUDA instead (the CUDA tests of
``test_engine.py`` and ``test_persistent.py``, run by ``benchmarks/gpu_check.sh``).

The C++ backend has two sets of CPU kernels (``set_kernels``: ``generic`` and, on x86-64 with
AVX2 and FMA, ``avx2``); each runs here under its own id (``cpp-generic``, ``cpp-avx2``),
whichever ``auto`` would pick on this CPU, so that both are held to every engine test.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from trainables import kernels  # noqa: E402


def cpu_kernels_here() -> list[str]:
    """The C++ backend's kernel sets that run on this CPU."""
    if not kernels.cpp_available():
        return []
    chosen = torch.ops.hdetach.set_kernels("")
    try:
        out = ["generic", *(["avx2"] if torch.ops.hdetach.set_kernels("avx2") == "avx2" else [])]
    except RuntimeError:  # no AVX2/FMA here
        out = ["generic"]
    torch.ops.hdetach.set_kernels("auto")
    assert torch.ops.hdetach.set_kernels("") == chosen
    return out


def backends_here() -> list[str]:
    out = ["torch", *(f"cpp-{kind}" for kind in cpu_kernels_here())]
    if importlib.util.find_spec("triton") is not None and os.environ.get("TRITON_INTERPRET") == "1":
        out += ["triton", "persistent"]
    return out


BACKENDS_HERE = backends_here()


@pytest.fixture(params=BACKENDS_HERE)
def backend(request) -> str:
    """Each engine test runs once per backend available here (the C++ one once per kernel
    set: the fixture selects it for the test and restores the previous choice after)."""
    name, _, cpu_kernels = request.param.partition("-")
    if not cpu_kernels:
        yield name
        return
    previous = torch.ops.hdetach.set_kernels("")
    torch.ops.hdetach.set_kernels(cpu_kernels)
    try:
        yield name
    finally:
        torch.ops.hdetach.set_kernels(previous)
