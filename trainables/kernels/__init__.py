"""The engine's compiled kernels, and which backend runs an LSTM layer.

Backends (``HDetachLSTM(..., backend=...)``):

* ``"torch"``: the portable PyTorch path of ``trainables/engine.py`` (any device).
* ``"cpp"``: the C++ extension (``lstm_ops.cpp`` registers the operators of
  ``lstm_forward.cpp``, ``lstm_backward.cpp`` and ``member_head.cpp``; CPU, fp32 and fp64):
  one fused pointwise pass and one small GEMM per step and work item, large GEMMs for
  everything else.
* ``"triton"``: Triton kernels for the fused pointwise steps on CUDA, cuBLAS for the GEMMs,
  the time loop captured as a CUDA graph (``triton_lstm.py``).
* ``"persistent"``: one Triton program per (seed member, batch tile) runs the whole time
  loop, forward and backward (``persistent_lstm.py``); opt in (``auto`` never picks it until
  it has measured faster on a GPU), and the only one with ``precision="tf32"``.
* ``"auto"`` (default): ``cpp`` on the CPU, ``triton`` on CUDA when Triton imports, else
  ``torch`` (with a warning, once, on CUDA without Triton).

The C++ extension is built with ``torch.utils.cpp_extension`` on first use (once per source)
into a cache keyed by the sources, the flags and the torch version
(``$HDETACH_KERNEL_CACHE``, default ``~/.cache/hdetach-study/kernels``), so every later process
loads it in well under a second; ``python -m trainables.kernels`` builds it ahead of time
(``make`` does at install). When it cannot be built (no compiler, no headers), ``auto`` says
so once, as a warning, and uses the PyTorch path; ``backend="cpp"`` raises.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import warnings
from pathlib import Path

import torch

from trainables.contract import BACKENDS, CPU_KERNELS, CPU_KERNELS_ENV, PRECISIONS

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "KernelUnavailable",
    "check_backend",
    "check_precision",
    "cpp_available",
    "load_bench",
    "load_cpp",
    "resolve",
]

_HERE = Path(__file__).parent
#: The layer's operator library (TORCH_LIBRARY hdetach), one source per operation and
#: direction, as haste splits its kernels: what every run loads.
SOURCES = tuple(
    _HERE / name
    for name in ("lstm_ops.cpp", "lstm_forward.cpp", "lstm_backward.cpp", "member_head.cpp")
)
#: Benchmark- and test-only operators (TORCH_LIBRARY hdetach_bench: the GEMM bound, the AVX2
#: tiles alone), a library of their own that no run loads (``load_bench``).
BENCH_SOURCES = (_HERE / "lstm_bench.cpp",)
#: Included by the sources (shared step kernels, operator declarations, the fp32 AVX2
#: kernels): part of the cache key.
HEADERS = tuple(_HERE / name for name in ("lstm_cpu_common.h", "lstm_ops.h", "lstm_avx2.h"))
#: No -march: the binary runs on any x86-64; the fp32 pointwise passes carry their own AVX2 /
#: AVX-512 clones. -fno-trapping-math lets the compiler vectorise the branch-free selects.
CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]

_lock = threading.Lock()
_state: dict[str, object] = {}


class KernelUnavailable(RuntimeError):
    """A backend that was asked for by name cannot run here (the message says why)."""


def cache_dir() -> Path:
    root = os.environ.get("HDETACH_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "hdetach-study" / "kernels"


def _build_name(prefix: str = "hdetach_lstm_cpu", sources: tuple[Path, ...] = SOURCES) -> str:
    digest = hashlib.sha256()
    for path in (*sources, *HEADERS):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(f"{torch.__version__} {sys.version_info[:2]}".encode())
    return f"{prefix}_{digest.hexdigest()[:12]}"


def load_cpp(*, verbose: bool = False) -> None:
    """Build (or find in the cache) and load the C++ extension; KernelUnavailable if not.
    ValueError for a bad HDETACH_CPU_KERNELS (applied once, on first load)."""
    with _lock:
        if isinstance(_state.get("cpp"), str):
            raise KernelUnavailable(_state["cpp"])
        if _state.get("cpp") is not True:
            _load_cpp(verbose)
        _apply_cpu_kernels()


def _load_cpp(verbose: bool) -> None:
    try:
        _load_library(_build_name(), SOURCES, verbose)
    except Exception as err:  # no compiler, no headers, a failed build: say why once
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _state["cpp"] = f"the C++ LSTM kernels could not be built or loaded: {first}"
        raise KernelUnavailable(_state["cpp"]) from None
    _state["cpp"] = True


def _load_library(name: str, sources: tuple[Path, ...], verbose: bool) -> None:
    """Load the operator library ``name`` from the cache, building it there first if absent."""
    folder = cache_dir() / name
    built = folder / f"{name}.so"
    if built.is_file():  # cached: load it without torch's build machinery
        torch.ops.load_library(str(built))
        return
    from torch.utils import cpp_extension

    folder.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name=name,
        sources=[str(path) for path in sources],
        extra_cflags=CFLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        is_python_module=False,
        verbose=verbose,
    )


def load_bench(*, verbose: bool = False) -> str:
    """Load the benchmark- and test-only operators (``torch.ops.hdetach_bench``: ``gemm_bound``,
    ``avx2_gemm`` where the CPU has AVX2) beside the layer's; returns the kernel set the layer
    runs now ("avx2" or "generic"), which ``gemm_bound`` takes so that a bound is measured
    with the layer's kernels. KernelUnavailable where they cannot be built."""
    load_cpp(verbose=verbose)
    with _lock:
        if _state.get("bench") is not True:
            try:
                _load_library(_build_name("hdetach_lstm_bench", BENCH_SOURCES), BENCH_SOURCES,
                              verbose)  # fmt: skip
            except Exception as err:
                what = f"the benchmark kernels could not be built: {err}"
                raise KernelUnavailable(what) from None
            _state["bench"] = True
    return torch.ops.hdetach.set_kernels("")


def _apply_cpu_kernels() -> None:
    """HDETACH_CPU_KERNELS (auto, avx2, generic) for this process, once, through the
    extension's own ``set_kernels`` (later ``set_kernels`` calls are the caller's). A bad value,
    or avx2 on a CPU without it, raises ValueError naming it, every time it is asked (the run
    configuration rejects bad values first, with exit code 2)."""
    if _state.get("cpu_kernels") is True:
        return
    if isinstance(_state.get("cpu_kernels"), str):
        raise ValueError(_state["cpu_kernels"])
    choice = os.environ.get(CPU_KERNELS_ENV, "auto")
    error = None
    if choice not in CPU_KERNELS:
        error = f"{CPU_KERNELS_ENV} must be one of {', '.join(CPU_KERNELS)}, got {choice!r}"
    else:
        try:
            torch.ops.hdetach.set_kernels(choice)
        except RuntimeError as err:
            error = f"{CPU_KERNELS_ENV}={choice}: {str(err).splitlines()[0]}"
    _state["cpu_kernels"] = error or True
    if error:
        raise ValueError(error)


def cpp_available() -> bool:
    """Whether the C++ backend runs here (building it on first call); never raises."""
    try:
        load_cpp()
    except KernelUnavailable:
        return False
    return True


def triton_available() -> bool:
    if "triton" not in _state:
        try:
            import triton  # noqa: F401

            _state["triton"] = torch.cuda.is_available()
        except ImportError:
            _state["triton"] = False
    return bool(_state["triton"])


def check_backend(backend: str) -> str:
    """``backend`` if it names one, else ValueError naming it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def check_precision(precision: str) -> str:
    """``precision`` if it names one, else ValueError naming it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs a layer: ``backend`` as asked, or ``auto``'s choice."""
    check_backend(backend)
    cpp_ok = device.type == "cpu" and dtype in (torch.float32, torch.float64)
    if backend == "cpp":
        if not cpp_ok:
            raise KernelUnavailable(f"the cpp backend runs fp32/fp64 on the CPU, not {device}")
        load_cpp()
        return "cpp"
    if backend in ("triton", "persistent"):
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise KernelUnavailable(
                f"the {backend} backend needs CUDA (or TRITON_INTERPRET=1 for tests), got {device}"
            )
        import triton  # noqa: F401  (raises ImportError where Triton is missing)

        return backend
    if backend == "torch":
        return "torch"
    if cpp_ok:
        if cpp_available():
            return "cpp"
        _warn_once(str(_state["cpp"]) + "; using the PyTorch path (backend='torch')")
    elif device.type == "cuda":
        if triton_available():
            return "triton"
        _warn_once(
            "Triton does not import here (pip install triton): CUDA layers run the PyTorch "
            "path (backend='torch'), up to 10x slower on an H200"
        )
    return "torch"


def _warn_once(message: str) -> None:
    """Warn once per process and message (one for the CPU fallback, one for CUDA's)."""
    warned = _state.setdefault("warned", set())
    if message not in warned:
        warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def main() -> int:
    """``python -m trainables.kernels``: build the C++ extension now (e.g. at install)."""
    try:
        load_cpp(verbose="-v" in sys.argv)
    except KernelUnavailable as err:
        print(f"trainables.kernels: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # a bad HDETACH_CPU_KERNELS
        print(f"trainables.kernels: {err}", file=sys.stderr)
        return 2
    blas = "BLAS" if torch.ops.hdetach.blas_linked() else "ATen GEMM fallback"
    print(f"trainables.kernels: C++ LSTM kernels ready in {cache_dir() / _build_name()} ({blas})")
    return 0
