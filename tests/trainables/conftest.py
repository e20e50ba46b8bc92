"""Engine backends under test: every backend that runs on CPU tensors here.

Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter
(``TRITON_INTERPRET=1``, set before ``trainables.kernels.triton_lstm`` is first imported),
which checks their arithmetic on small shapes, not their speed. With a GPU they are tested
on CUDA instead (the CUDA tests of ``test_engine.py``, run by ``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from trainables import kernels  # noqa: E402


def backends_here() -> list[str]:
    out = ["torch"]
    if kernels.cpp_available():
        out.append("cpp")
    if importlib.util.find_spec("triton") is not None and os.environ.get("TRITON_INTERPRET") == "1":
        out.append("triton")
    return out


BACKENDS_HERE = backends_here()


@pytest.fixture(params=BACKENDS_HERE)
def backend(request) -> str:
    """Each engine test runs once per backend available here."""
    return request.param
