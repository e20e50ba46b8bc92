"""Process-level settings that make CPU training fast here: the allocator policy.

PyTorch's CPU allocator hands large tensors straight back to the operating system when they
are freed (glibc ``mmap``/``munmap``), so every training step faults in hundreds of MB of
fresh pages. On virtual machines that return freed memory to the host (free page reporting,
as on the machines this project is developed on) a first touch costs several times a plain
write, and the engine's per-step work is dominated by it. ``keep_freed_memory`` tells glibc to
serve large allocations from its heap and keep freed memory, so steady-state steps reuse warm
pages. It is called by the project's entry points (trainer, Tune trainable, benchmarks);
set ``HDETACH_MALLOC=system`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Keep freed memory in the process (glibc only). Returns whether the policy is on."""
    if os.environ.get("HDETACH_MALLOC", "").lower() == "system":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
