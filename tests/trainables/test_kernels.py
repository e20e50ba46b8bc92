"""The compiled backends are found, cached and chosen as documented: ``auto`` picks the C++
kernels on the CPU, says so once when they cannot be built, and a built extension is reused
from its cache without a compiler."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trainables import kernels
from trainables.config import ConfigError, RunConfig
from trainables.engine import HDetachLSTM
from trainables.train import Trainer

ROOT = Path(__file__).resolve().parents[2]
HAVE_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler on this machine")
def test_the_cpp_kernels_build_where_a_compiler_exists():
    """Where a compiler exists the extension must build: otherwise every cpp test would
    quietly disappear and `auto` would fall back (with a warning) in every run."""
    assert kernels.cpp_available(), kernels._state.get("cpp")
    assert kernels.resolve("auto", torch.device("cpu"), torch.float32) == "cpp"
    assert kernels.resolve("auto", torch.device("cpu"), torch.float64) == "cpp"
    # half precision has no C++ kernel: the portable path
    assert kernels.resolve("auto", torch.device("cpu"), torch.bfloat16) == "torch"


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler on this machine")
def test_the_trainer_uses_the_fastest_backend_by_default():
    cfg = RunConfig.from_preset("copying", "smoke", device="cpu", epochs=1)
    assert cfg.backend == "auto"
    trainer = Trainer(cfg)
    # Where the C++ kernels build (asserted above), the trainer's layers and head run them.
    assert kernels.resolve(trainer.lstm.backend, torch.device("cpu"), torch.float32) == "cpp"
    chosen = Trainer(cfg.replace(backend="torch"))
    assert chosen.lstm.backend == "torch"


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


PROBE = """
    import warnings, torch
    from trainables import kernels
    from trainables.engine import HDetachLSTM
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lstm = HDetachLSTM(1, 4, p_detach=0.5)
        for _ in range(3):
            lstm(torch.randn(5, 2, 1))[0].sum().backward()
    print("CHOSEN", kernels.resolve("auto", torch.device("cpu"), torch.float32))
    print("WARNINGS", len(caught))
    for w in caught:
        print("WARNING", w.message)
    try:
        kernels.resolve("cpp", torch.device("cpu"), torch.float32)
        print("CPP OK")
    except kernels.KernelUnavailable as err:
        print("CPP UNAVAILABLE", err)
"""


def test_without_a_compiler_auto_says_so_once_and_uses_the_pytorch_path(tmp_path):
    result = _python(PROBE, {"HDETACH_KERNEL_CACHE": str(tmp_path), "CXX": "/bin/false"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "CHOSEN torch" in out
    assert "WARNINGS 1" in out  # three forward passes, one warning
    assert "could not be built or loaded" in out and "using the PyTorch path" in out
    assert "CPP UNAVAILABLE the C++ LSTM kernels could not be built or loaded" in out


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler on this machine")
def test_a_built_extension_is_reused_from_the_cache_without_a_compiler(tmp_path):
    """`python -m trainables.kernels` builds into the cache; later processes load it even
    where no compiler is on the PATH (the machine a cluster's workers run on)."""
    env = {"HDETACH_KERNEL_CACHE": str(tmp_path)}
    build = subprocess.run(
        [sys.executable, "-m", "trainables.kernels"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert "C++ LSTM kernels ready" in build.stdout
    assert len(list(tmp_path.glob("hdetach_lstm_cpu_*/*.so"))) == 1
    result = _python(PROBE, {**env, "CXX": "/bin/false"})
    assert result.returncode == 0, result.stderr
    assert "CHOSEN cpp" in result.stdout and "WARNINGS 0" in result.stdout
    assert "CPP OK" in result.stdout


def test_engine_rejects_an_unknown_backend_naming_it():
    with pytest.raises(ValueError, match="backend must be one of auto, cpp, torch, triton"):
        HDetachLSTM(1, 4, backend="fast")
    with pytest.raises(ValueError, match="backend must be one of auto, cpp, torch, triton"):
        RunConfig.from_preset("copying", "smoke", backend="fast")


def test_the_gpu_check_script_runs_its_checks_and_benchmark(tmp_path):
    """`benchmarks/gpu_check.py --smoke`: the GPU script's own code on CPU tensors (Triton
    interpreted, tiny shapes), so that a lent GPU's minutes are not spent on its bugs."""
    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert len(payload["checks"]) == 33 and all(c["ok"] for c in payload["checks"])
    cases = {(r["shape"], r["case"]) for r in payload["rows"] if "median_s" in r}
    for shape in ("copying", "mnist"):
        assert (shape, "engine triton + CUDA graphs K=2, p=0.25") in cases
        assert (shape, "engine persistent tf32 K=2, p=0.25") in cases
        assert (shape, "authors' loop (oracle) K=1, p=0.25") in cases
    assert set(payload["summary"]) == {"copying", "mnist"}
    assert set(payload["cost"]["persistent"]) == {"copying", "mnist"}


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


needs_cpp = pytest.mark.skipif(
    not kernels.cpp_available(), reason="the C++ kernels do not run here"
)


@needs_cpp
def test_auto_picks_the_avx2_kernels_exactly_where_the_cpu_lacks_avx512():
    """The documented rule: AVX2 + FMA without AVX-512 -> the own kernels; otherwise the BLAS
    and the compiler-vectorised passes. HDETACH_CPU_KERNELS overrides it for a process."""
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to check the rule against")
    expected = "avx2" if {"avx2", "fma"} <= flags and "avx512f" not in flags else "generic"
    assert torch.ops.hdetach.set_kernels("") == expected
    probe = "from trainables import kernels; import torch; kernels.load_cpp(); "
    probe += "print('KERNELS', torch.ops.hdetach.set_kernels(''))"
    result = _python(probe, {"HDETACH_CPU_KERNELS": "generic"})
    assert result.returncode == 0, result.stderr
    assert "KERNELS generic" in result.stdout
    with pytest.raises(RuntimeError, match="set_kernels takes auto, avx2, generic"):
        torch.ops.hdetach.set_kernels("fast")
    assert torch.ops.hdetach.set_kernels("") == expected


@needs_cpp
@pytest.mark.parametrize("kind", ["packed", "packed+", "tn", "project"])
def test_the_avx2_gemm_tiles_equal_a_float64_product(kind):
    """Every row and column remainder of the 6x16 and 12x8 tiles (m, n = 1..17, 25, 50, 100,
    128; k short and long), against the product in float64."""
    kernels.load_bench()  # the test-only operators live in a library of their own
    if not hasattr(torch.ops.hdetach_bench, "avx2_gemm"):
        pytest.skip("the avx2 tiles are built only for x86-64 with GCC")
    try:
        torch.ops.hdetach_bench.avx2_gemm(
            torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 1), "tn", True
        )
    except RuntimeError as err:  # a CPU without AVX2 and FMA
        pytest.skip(str(err))
    gen = torch.Generator().manual_seed(0)
    sizes = [*range(1, 18), 25, 50, 100, 128]
    for m in sizes:
        for n in sizes:
            k = 1 + (m * 7 + n * 3) % 130  # 1..130, varied over the pairs
            a = torch.randn(m, k, generator=gen)
            b = torch.randn(k, n, generator=gen)
            c = torch.randn(m, n + 1 if kind == "project" else n, generator=gen)
            exact = a.double() @ b.double()
            if kind == "packed":
                out = torch.ops.hdetach_bench.avx2_gemm(a, b, c, "packed", False)
            elif kind == "packed+":
                out = torch.ops.hdetach_bench.avx2_gemm(a, b, c, "packed", True)
                exact += c.double()
            elif kind == "tn":
                out = torch.ops.hdetach_bench.avx2_gemm(a.t().contiguous(), b, c, "tn", True)
                exact += c.double()
            else:
                if m < 2:
                    continue
                out = torch.ops.hdetach_bench.avx2_gemm(a, b, c, "project", False)
                exact += c[:, :1].double() * c[0, 1:].double() + c[1, 1:].double()
            assert out.shape == exact.shape
            assert (out.double() - exact).abs().max() <= 1e-5 * k**0.5, (m, n, k)


def test_a_bad_cpu_kernel_choice_exits_2_naming_it(tmp_path, monkeypatch):
    """HDETACH_CPU_KERNELS is user input like any option: a typo is an error, not a silent auto."""
    result = subprocess.run(
        [sys.executable, "-m", "trainables.train", "--task", "copying", "--preset", "smoke",
         "--epochs", "1", "--checkpoint", str(tmp_path / "run.pt")],
        cwd=ROOT, env={**os.environ, "HDETACH_CPU_KERNELS": "fast"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("HDETACH_CPU_KERNELS must be one of auto, avx2, generic, got 'fast'")
    )
    assert not (tmp_path / "run.pt").exists()
    monkeypatch.setenv("HDETACH_CPU_KERNELS", "AVX2")
    with pytest.raises(ConfigError, match="HDETACH_CPU_KERNELS must be one of .*, got 'AVX2'"):
        RunConfig.from_preset("copying", "smoke")
