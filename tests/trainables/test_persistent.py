"""The persistent GPU backend (``trainables/kernels/persistent_lstm.py``), its cost arithmetic
(``trainables/kernels/cost.py``) and the CPU side of ``benchmarks/gpu_check.py``.

Without a GPU the kernels run through Triton's interpreter (``conftest.py`` sets
``TRITON_INTERPRET=1``), on tiny shapes; the engine-wide tests of ``test_engine.py`` also run
this backend through the ``backend`` fixture. Here: what those do not reach (several batch
tiles and padded columns, the inference path's chunks, the precision option, the launch
heuristic) and the figures the GPU check derives from its timings.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import pytest
import torch

from trainables import kernels
from trainables.config import ConfigError, RunConfig
from trainables.contract import SETUP_KEYS
from trainables.engine import DetachMasks, HDetachLSTM
from trainables.kernels import cost
from trainables.oracle import GRADIENT_MODES, oracle_lstm

F64 = torch.float64
interpreted = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or (os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available()),
    reason="needs Triton (its interpreter on the CPU, or CUDA)",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _loss(y, h, c):
    w = torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype, device=y.device)
    return (y * w).sin().sum() + 0.3 * h.sum() + 0.7 * c.sum()


@interpreted
@pytest.mark.parametrize("mode", list(GRADIENT_MODES))
def test_members_over_several_batch_tiles_equal_the_oracle(mode):
    """K=2 members, 2 layers, B=18 (two tiles of 16 rows, the second mostly padding),
    H=5 (padded to 16 columns): outputs, final states and every parameter gradient equal
    Algorithm 1 run per member, in fp64, for every gradient mode."""
    T, B, I, H, K = 4, 18, 2, 5, 2
    torch.manual_seed(0)
    singles = [HDetachLSTM(I, H, 2, dtype=F64, **GRADIENT_MODES[mode]) for _ in range(K)]
    model = HDetachLSTM.from_members(singles).to(DEVICE)
    model.backend = "persistent"
    x = torch.randn(T, K, B, I, dtype=F64)
    masks = model.sample_masks(T, B, [torch.Generator().manual_seed(k) for k in range(K)])
    y, (h, c) = model(x.to(DEVICE), masks=masks)
    grads = torch.autograd.grad(_loss(y, h, c), list(model.parameters()))
    for k in range(K):
        sub = DetachMasks(
            h=None if masks.h is None else masks.h[k : k + 1],
            c=None if masks.c is None else masks.c[k : k + 1],
        )
        y_ref, (h_ref, c_ref) = oracle_lstm(singles[k], x[:, k], masks=sub)
        refs = torch.autograd.grad(_loss(y_ref, h_ref, c_ref), list(singles[k].parameters()))
        torch.testing.assert_close(y[:, k].cpu(), y_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(h[:, k].cpu(), h_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(c[:, k].cpu(), c_ref, rtol=0, atol=1e-12)
        for g, r in zip(grads, refs, strict=True):
            torch.testing.assert_close(g[k].cpu(), r, rtol=0, atol=1e-10)


@interpreted
def test_given_state_and_input_gradients_equal_the_torch_path():
    """With a given (h0, c0) and an input that needs its gradient, the persistent backend's
    dL/dx, dL/dh0 and dL/dc0 equal the PyTorch path's (fp64, per-sample masks)."""
    T, B, I, H = 5, 3, 3, 4
    torch.manual_seed(1)
    model = HDetachLSTM(I, H, dtype=F64, p_detach=0.5, per_sample=True, damp=0.2).to(DEVICE)
    masks = model.sample_masks(T, B, torch.Generator().manual_seed(2))
    x = torch.randn(T, B, I, dtype=F64, device=DEVICE, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=F64, device=DEVICE, requires_grad=True)
    c0 = torch.randn(1, B, H, dtype=F64, device=DEVICE, requires_grad=True)
    out = {}
    for backend in ("torch", "persistent"):
        model.backend = backend
        y, (h, c) = model(x, (h0, c0), masks=masks)
        out[backend] = torch.autograd.grad(_loss(y, h, c), [x, h0, c0])
    for ours, ref in zip(out["persistent"], out["torch"], strict=True):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


@interpreted
@pytest.mark.parametrize("output_steps", [None, 2, 5])
def test_inference_in_chunks_keeps_the_state_and_the_last_outputs(output_steps, monkeypatch):
    """Without gradients the input projection runs by chunks of steps (here 2 steps a
    chunk, T=7): the state carries across chunks and exactly the last outputs come back."""
    from trainables.kernels import persistent_lstm

    T, K, B, I, H = 7, 2, 3, 2, 4
    monkeypatch.setattr(persistent_lstm, "INFERENCE_CHUNK_ELEMENTS", 2 * K * B * 4 * H)
    torch.manual_seed(3)
    model = HDetachLSTM(I, H, 2, members=K, dtype=F64).to(DEVICE)
    x = torch.randn(T, K, B, I, dtype=F64, device=DEVICE)
    with torch.no_grad():
        model.backend = "torch"
        y_ref, (h_ref, c_ref) = model(x)
        model.backend = "persistent"
        y, (h, c) = model(x, output_steps=output_steps)
    torch.testing.assert_close(y, y_ref[-(output_steps or T) :], rtol=0, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, c_ref, rtol=0, atol=1e-12)


@interpreted
def test_tf32_is_opt_in_and_checked():
    """precision='tf32' runs only on the persistent backend with fp32 weights; anything else
    is a ValueError naming the value (not a silent fp32 run)."""
    x = torch.randn(3, 2, 1, device=DEVICE)
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, got 'bf16'"):
        HDetachLSTM(1, 4, precision="bf16")
    model = HDetachLSTM(1, 4, backend="torch", precision="tf32").to(DEVICE)
    with pytest.raises(ValueError, match="precision='tf32' needs backend='persistent'"):
        model(x)
    model.backend = "persistent"
    model(x)  # runs (on the CPU the interpreter computes the products in fp32)
    members = HDetachLSTM(1, 4, members=2, backend="persistent", precision="tf32")
    assert members.member(1).precision == "tf32"
    assert HDetachLSTM.from_members([members.member(0)]).precision == "tf32"
    wide = HDetachLSTM(1, 4, backend="persistent", precision="tf32", dtype=F64).to(DEVICE)
    with pytest.raises(ValueError, match="precision='tf32' needs float32 weights"):
        wide(x.double())


def test_precision_is_a_setup_key_and_validated_with_the_run_options():
    assert "precision" in SETUP_KEYS
    assert RunConfig.from_preset("copying", "smoke").precision == "fp32"
    with pytest.raises(ConfigError, match="precision needs backend 'persistent', got 'tf32'"):
        RunConfig.from_preset("copying", "smoke", precision="tf32")
    with pytest.raises(ConfigError, match="precision must be one of fp32, tf32, got 'fp16'"):
        RunConfig.from_preset("copying", "smoke", precision="fp16", backend="persistent")
    RunConfig.from_preset("copying", "smoke", precision="tf32", backend="persistent")


def test_auto_never_picks_persistent_and_warns_once_on_cuda_without_triton(monkeypatch):
    """On CUDA auto takes triton, never persistent; without Triton the PyTorch path with one
    RuntimeWarning for the whole process (issue 22's loose end), not silently."""
    monkeypatch.setitem(kernels._state, "triton", False)
    monkeypatch.setitem(kernels._state, "warned", set())
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match="Triton does not import here"):
        assert kernels.resolve("auto", cuda, torch.float32) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.resolve("auto", cuda, torch.float32) == "torch"
    monkeypatch.setitem(kernels._state, "triton", True)
    assert kernels.resolve("auto", cuda, torch.float32) == "triton"


def test_persistent_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(kernels.KernelUnavailable, match="the persistent backend needs CUDA"):
        kernels.resolve("persistent", torch.device("cpu"), torch.float32)


def test_batch_tile_fills_the_processors_then_reads_weights_fewest_times():
    from trainables.kernels.persistent_lstm import batch_tile

    assert batch_tile(64, 100, 132) == 32  # 256 programs of 32 rows: every SM busy
    assert batch_tile(16, 100, 132) == 16  # 112 programs: the smallest tile
    assert batch_tile(64, 100, None) == 16  # off a GPU: the smallest tl.dot tile
    assert batch_tile(1, 8, 132) == 16


# -- cost arithmetic and the GPU check's CPU side -------------------------------------------


def test_step_flops_and_the_issues_gpu_hours():
    """The figures of issue 24, from the H200 measurement of 2026-12-04: 4.75 GFLOP per
    copying step per seed; at 0.57 ms a seed-step C1 costs about 6 GPU-hours for 64 seeds,
    C2 2.7 times that; pixel MNIST at 2.72 ms about 5 GPU-hours."""
    assert cost.step_flops(120, 100, 1, 128) == pytest.approx(4.755e9, rel=1e-3)
    c1, c2, c5 = cost.PAPER_VERDICTS
    assert cost.verdict_gpu_hours(0.57e-3, 120, c1) == pytest.approx(6.08, abs=0.01)
    assert cost.verdict_gpu_hours(0.57e-3, 120, c2) / cost.verdict_gpu_hours(
        0.57e-3, 120, c1
    ) == pytest.approx(320 / 120)
    assert cost.verdict_gpu_hours(2.72e-3, 784, c5) == pytest.approx(4.84, abs=0.01)
    with pytest.raises(ValueError, match="positive step time"):
        cost.verdict_gpu_hours(0.0, 120, c1)


def test_chips_and_loop_bounds():
    assert cost.chip_for("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert cost.chip_for("NVIDIA H100 80GB HBM3").name == "H100"
    assert cost.chip_for("NVIDIA H200").name == "H200"
    assert cost.chip_for("NVIDIA A10G") is None
    chip = cost.CHIPS["H200"]
    b = cost.loop_bounds(120, 100, 1, 128, 64, 32, chip)
    # 64 seeds x 4.75 GFLOP at 66.9 TFLOP/s; 2 passes x 120 steps x 256 programs x 256 KB
    assert b["flop_s"] == pytest.approx(64 * 4.755e9 / 66.9e12, rel=1e-3)
    assert b["l2_bytes"] == 2 * 120 * 64 * 4 * 16 * 128 * 128
    assert b["bound_s"] == max(b["flop_s"], b["l2_s"])
    assert cost.loop_bounds(120, 100, 1, 128, 64, 32, chip, tf32=True)["flop_s"] < b["flop_s"]


def _rows(shapes):
    """Timed rows as run_bench writes them: today's engine 36.4 ms at K=64 (copying), the
    persistent backend 4x faster in fp32 and 10x in TF32, 1.2x slower per seed at K=16."""
    from benchmarks import gpu_check

    rows = []
    for shape in shapes:
        for (backend, graphs, precision), seconds in {
            ("triton", True, "fp32"): 36.4e-3,
            ("persistent", False, "fp32"): 9.1e-3,
            ("persistent", False, "tf32"): 3.64e-3,
        }.items():
            for K, scale in ((16, 1.2 / 4), (64, 1.0)):
                median = seconds * scale
                rows.append({
                    "shape": shape, "case": gpu_check.engine_label(backend, graphs, precision, K),
                    "seeds": K, "median_s": median, "seconds_per_seed": median / K,
                })  # fmt: skip
    rows.append({"shape": "copying", "case": "failed row", "seeds": 1, "error": "OOM"})
    return rows


def test_gpu_check_cost_summary_from_timed_rows():
    from benchmarks import gpu_check

    shapes = {"copying": gpu_check.SHAPES["copying"]}
    out = gpu_check.cost_summary(_rows(shapes), shapes, [16, 64], "NVIDIA H200", 132)
    today = out["rows"]["copying"]["engine triton + CUDA graphs K=64, p=0.25"]
    assert today["tflops"] == pytest.approx(64 * 4.755e9 / 36.4e-3 / 1e12, rel=1e-3)
    assert today["fp32_peak_fraction"] == pytest.approx(0.125, abs=0.001)  # the issue's 12%
    summary = out["persistent"]["copying"]
    assert summary["fp32_speedup_over_triton_graphs_K64"] == pytest.approx(4.0)
    assert summary["tf32_speedup_over_triton_graphs_K64"] == pytest.approx(10.0)
    assert summary["fp32_per_seed_K16_over_K64"] == pytest.approx(1.2)
    assert set(summary["bounds"]) == {"fp32 K=16", "fp32 K=64", "tf32 K=16", "tf32 K=64"}
    c1 = out["gpu_hours"]["C1"]["hours"]
    hours = 36.4e-3 / 64 * 600 * 1000 * 64 / 3600  # 600 epochs of 1,000 batches, 64 seeds
    assert c1["engine triton + CUDA graphs K=64, p=0.25"] == pytest.approx(hours)
    assert c1["engine persistent K=64, p=0.25"] == pytest.approx(hours / 4)
    assert "C5" not in out["gpu_hours"]  # no MNIST rows: not priced
    unknown = gpu_check.cost_summary(_rows(shapes), shapes, [16, 64], "Some GPU", None)
    assert unknown["chip"] is None and "bounds" not in unknown["persistent"]["copying"]
    label = gpu_check.engine_label("triton", True, "fp32", 64)
    assert "fp32_peak_fraction" not in unknown["rows"]["copying"][label]


def test_gpu_check_arguments(tmp_path, capsys):
    from benchmarks import gpu_check

    args = gpu_check.parse_args(["--members", "1,16", "--out", str(tmp_path / "g.json")])
    assert args.members == [1, 16] and not args.smoke
    for bad in ("1,x", "0,4", ""):
        with pytest.raises(SystemExit) as info:
            gpu_check.parse_args(["--members", bad])
        assert info.value.code == 2
        assert f"must be comma-separated integers >= 1, got {bad!r}" in capsys.readouterr().err
    if not torch.cuda.is_available():  # no CUDA and no --smoke: exit 2, nothing written
        assert gpu_check.main(["--out", str(tmp_path / "g.json")]) == 2
        assert not (tmp_path / "g.json").exists()


def test_gpu_check_cost_of_an_earlier_run(tmp_path, capsys):
    """--cost-of prices an earlier run's rows without a GPU; a file that is not a gpu_check
    JSON exits 2 naming it and writes nothing."""
    import json

    from benchmarks import gpu_check

    shapes = {"copying": gpu_check.SHAPES["copying"]}
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"machine": {"device": "NVIDIA H200"}, "rows": _rows(shapes)}))
    out = tmp_path / "cost.json"
    assert gpu_check.main(["--cost-of", str(earlier), "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["machine"]["measured"]["device"] == "NVIDIA H200"
    hours = payload["cost"]["gpu_hours"]["C1"]["hours"]["engine persistent K=64, p=0.25"]
    assert hours == pytest.approx(9.1e-3 / 64 * 600 * 1000 * 64 / 3600)
    assert "fp32 K=64" in payload["cost"]["persistent"]["copying"]["bounds"]  # H200: 132 SMs
    (tmp_path / "bad.json").write_text("{}")
    assert gpu_check.main(["--cost-of", str(tmp_path / "bad.json"), "--out", str(out) + "2"]) == 2
    assert "--cost-of" in capsys.readouterr().err and not Path(str(out) + "2").exists()
