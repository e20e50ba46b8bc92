"""GPU check: the engine's CUDA backends checked against the authors' loop, then timed
against it and cuDNN's ``torch.nn.LSTM``, on one NVIDIA GPU with only PyTorch and Triton.

Correctness (fp64, on the GPU): two layers, K=3 seed members, every gradient mode, the
``torch``, ``triton`` (with and without CUDA graphs, the graphs replayed) and ``persistent``
backends against Algorithm 1 (``trainables/oracle.py``) run per member, to 1e-10; fp32
against cuDNN at p=0 to 1e-4; the persistent backend's fp32 and TF32 outputs and gradients
against the fp64 oracle, relative to their largest value (fp32 to 1e-4, TF32 to 1e-2).
Speed (median of interleaved repeats after warm-up, synchronised): the authors' loop at
K=1, cuDNN ``nn.LSTM`` (one seed a call; and 64 seeds as one batch with shared weights, an
optimistic floor no per-seed model reaches), and the engine's backends (persistent in fp32
and TF32 too) at K = 1, 16, 64 seed members, per seed, on both paper shapes. Every timed row
gets its TFLOP/s and fraction of the chip's FP32 peak (``trainables/kernels/cost.py``); the
summary adds the persistent loop's FLOP and L2 bounds, its targets (issue 24) and the
GPU-hours of the paper-scale verdicts C1, C2 and C5 at 32 seeds per arm from the measured
step times. Every case that fails is recorded with its error and the rest go on; a time
budget keeps the whole under 8 minutes.

    python benchmarks/gpu_check.py --out gpu_check.json      (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --smoke                    (CPU + Triton interpreter, tiny)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

_SMOKE = "--smoke" in sys.argv
if _SMOKE:  # before Triton is imported: its kernels then run on CPU tensors
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainables.engine import DetachMasks, HDetachLSTM  # noqa: E402
from trainables.kernels import cost, persistent_lstm  # noqa: E402
from trainables.members import MemberLinear  # noqa: E402
from trainables.oracle import GRADIENT_MODES as MODES  # noqa: E402
from trainables.oracle import oracle_lstm  # noqa: E402

F64 = torch.float64
SHAPES = {  # name: T, B, I, H, classes, loss at every step
    "copying": (120, 100, 1, 128, 9, True),
    "mnist": (784, 100, 1, 100, 10, False),
}
SMOKE_SHAPES = {"copying": (12, 4, 1, 8, 9, True), "mnist": (20, 4, 1, 6, 10, False)}
#: Largest relative error of outputs and gradients against the fp64 oracle (check_precision):
#: fp32 as the other backends; TF32 rounds each product's inputs to 11 significant bits
#: (unit roundoff 2^-11 = 4.9e-4), which a 40-step recursion may grow some tenfold.
PRECISION_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2}
#: The engine rows: backend, CUDA graphs, precision.
ENGINES = (
    ("torch", False, "fp32"),
    ("triton", False, "fp32"),
    ("triton", True, "fp32"),
    ("persistent", False, "fp32"),
    ("persistent", False, "tf32"),
)


def _graphs(on: bool) -> None:
    os.environ["HDETACH_CUDA_GRAPHS"] = "1" if on else "0"


@contextlib.contextmanager
def _exact_cudnn():
    """cuDNN in plain fp32: by default it may run an fp32 LSTM in TF32 on Ampere and later
    (about 1e-3 relative error), which no exactness check can be held to."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- correctness ---------------------------------------------------------------------------


def _loss(y, h, c):
    w = torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype, device=y.device)
    return (y * w).sin().sum() + 0.3 * h.sum() + 0.7 * c.sum()


def check_oracle(device, backend: str, graphs: bool, mode: str) -> float:
    """Max deviation of outputs and parameter gradients from the oracle (fp64)."""
    _graphs(graphs)
    T, B, I, H, K = 9, 3, 2, 5, 3
    torch.manual_seed(0)
    singles = [HDetachLSTM(I, H, 2, dtype=F64, **MODES[mode]) for _ in range(K)]
    model = HDetachLSTM.from_members(singles).to(device)
    model.backend = backend
    x = torch.randn(T, K, B, I, dtype=F64)
    masks = model.sample_masks(T, B, [torch.Generator().manual_seed(k) for k in range(K)])
    other = model.sample_masks(T, B, [torch.Generator().manual_seed(K + k) for k in range(K)])
    # Call 1 runs eagerly, 2 captures, 3 and 4 replay: on other inputs and masks than the call
    # before, so a replay that read stale memory would show. Without graphs one call does.
    calls = ((0.5 - x, other), (x, masks)) * 2 if graphs else ((x, masks),)
    for xi, mi in calls:
        y, (h, c) = model(xi.to(device), masks=mi)
        grads = torch.autograd.grad(_loss(y, h, c), list(model.parameters()))
    worst = 0.0
    for k in range(K):
        sub = DetachMasks(
            h=None if masks.h is None else masks.h[k : k + 1],
            c=None if masks.c is None else masks.c[k : k + 1],
        )
        y_ref, (h_ref, c_ref) = oracle_lstm(singles[k], x[:, k], masks=sub)
        ref = torch.autograd.grad(_loss(y_ref, h_ref, c_ref), list(singles[k].parameters()))
        worst = max(worst, (y[:, k].cpu() - y_ref).abs().max().item())
        for g, r in zip(grads, ref, strict=True):
            worst = max(worst, (g[k].cpu() - r).abs().max().item())
    return worst


def check_precision(device, precision: str, shape=(40, 20, 3, 48)) -> float:
    """The persistent backend at ``precision`` (fp32 weights) against the fp64 oracle: the
    largest deviation of outputs and parameter gradients, relative to the largest reference
    value of each, on a training-sized step (``shape`` T, B, I, H; by default two batch tiles
    and padded columns)."""
    T, B, I, H = shape
    torch.manual_seed(0)
    single = HDetachLSTM(I, H, dtype=F64, p_detach=0.25)
    model = HDetachLSTM(I, H, p_detach=0.25, backend="persistent", precision=precision)
    model.load_state_dict({k: v.float() for k, v in single.state_dict().items()})
    model.to(device)
    x = torch.randn(T, B, I, dtype=F64)
    masks = single.sample_masks(T, B, torch.Generator().manual_seed(0))
    y, (h, c) = model(x.float().to(device), masks=masks)
    grads = torch.autograd.grad(_loss(y.double(), h.double(), c.double()), list(model.parameters()))
    y_ref, (h_ref, c_ref) = oracle_lstm(single, x, masks=masks)
    refs = torch.autograd.grad(_loss(y_ref, h_ref, c_ref), list(single.parameters()))
    worst = ((y.cpu().double() - y_ref).abs().max() / y_ref.abs().max()).item()
    for g, r in zip(grads, refs, strict=True):
        worst = max(worst, ((g.cpu().double() - r).abs().max() / r.abs().max()).item())
    return worst


def check_cudnn(device, backend: str) -> float:
    """fp32 at p=0 against ``torch.nn.LSTM`` (cuDNN on a GPU, TF32 off), outputs and gradients."""
    with _exact_cudnn():
        return _check_cudnn(device, backend)


def _check_cudnn(device, backend: str) -> float:
    _graphs(True)
    torch.manual_seed(0)
    ref = nn.LSTM(3, 16, num_layers=2).to(device)
    ours = HDetachLSTM(3, 16, num_layers=2, backend=backend).to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(30, 4, 3, device=device, requires_grad=True)
    y_ref, y = ref(x)[0], ours(x)[0]
    worst = (y - y_ref).abs().max().item()
    g_ref = torch.autograd.grad(y_ref.sum(), [x, *ref.parameters()])
    g = torch.autograd.grad(y.sum(), [x, *ours.parameters()])
    for a, b in zip(g, g_ref, strict=True):
        worst = max(worst, (a - b).abs().max().item() / max(1.0, b.abs().max().item()))
    return worst


def check_graph_training(device) -> float:
    """Five fp64 training steps with graphs against the same steps without: the largest
    difference of the losses and final weights (0 expected); fails if no graph was replayed."""
    from trainables.kernels import triton_lstm

    results = []
    for graphs in (False, True):
        _graphs(graphs)
        torch.manual_seed(0)
        model = HDetachLSTM(2, 8, 2, p_detach=0.5, members=2, dtype=F64, backend="triton")
        model.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(0)
        before = triton_lstm.graph_stats()["replays"]
        losses = []
        for _ in range(5):
            x = torch.randn(15, 2, 4, 2, dtype=F64, generator=gen).to(device)
            loss = model(x, generator=[gen, gen])[0].square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        replays = triton_lstm.graph_stats()["replays"] - before
        if graphs:  # 2 layers x (forward, backward) = 4 loops a step
            print(f"  graphs in 5 training steps: {replays} loops replayed of 20")
        if graphs and replays < 12:  # step 1 eager, step 2 captures, 3 to 5 replay
            raise AssertionError(f"CUDA graphs replayed {replays} of 20 loops in 5 steps")
        results.append(torch.cat([torch.stack(losses), *(p.flatten() for p in model.parameters())]))
    return (results[0] - results[1]).abs().max().item()


def run_checks(device) -> list[dict]:
    rows = []
    variants = [("torch", False), ("triton", False), ("triton", True), ("persistent", False)]
    for backend, graphs in variants:
        for mode in MODES:
            label = f"oracle fp64 {backend}{' graphs' if graphs else ''} {mode}"

            def fn(b=backend, g=graphs, m=mode) -> float:
                return check_oracle(device, b, g, m)

            rows.append(_check(label, 1e-10, fn))
    if device.type == "cuda":
        rows.append(_check("graphs replayed in training = eager", 1e-12,
                           lambda: check_graph_training(device)))  # fmt: skip
    for backend in ("torch", "triton", "persistent"):
        rows.append(_check(f"nn.LSTM fp32 p=0 {backend}", 1e-4,
                           lambda b=backend: check_cudnn(device, b)))  # fmt: skip
    shape = (40, 20, 3, 48) if device.type == "cuda" else (6, 18, 2, 5)  # interpreted: tiny
    for precision, tolerance in PRECISION_TOLERANCE.items():
        rows.append(_check(f"persistent {precision} vs fp64 oracle (relative)", tolerance,
                           lambda p=precision: check_precision(device, p, shape)))  # fmt: skip
    return rows


def _check(name: str, tolerance: float, fn: Callable[[], float]) -> dict:
    try:
        err = fn()
        row = {"check": name, "max_error": err, "tolerance": tolerance, "ok": err <= tolerance}
    except Exception as exc:  # recorded, and the others still run
        row = {"check": name, "ok": False, "error": _short(exc)}
    print(
        ("PASS " if row["ok"] else "FAIL ") + name + f"  {row.get('max_error', row.get('error'))}"
    )
    return row


def _short(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1][:300]


def _graph_stats() -> dict[str, int]:
    if "trainables.kernels.triton_lstm" not in sys.modules:
        return {}
    return sys.modules["trainables.kernels.triton_lstm"].graph_stats()


# -- speed ---------------------------------------------------------------------------------


def bench_cases(name: str, shape, members: list[int], device) -> list[tuple[str, int, Callable]]:
    T, B, I, H, classes, every = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(T, B, I, generator=gen).to(device)
    target = torch.randint(0, classes, (T, B) if every else (B,), generator=gen).to(device)
    mask_gen = torch.Generator().manual_seed(1)

    def loss(out, head, tgt):
        logits = head(out if every else out[-1])
        return F.cross_entropy(logits.reshape(-1, classes), tgt.reshape(-1))

    cases: list[tuple[str, int, Callable]] = []
    oracle_model = HDetachLSTM(I, H, p_detach=0.25).to(device)
    head = nn.Linear(H, classes).to(device)

    def oracle_step():
        masks = oracle_model.sample_masks(T, B, mask_gen)
        loss(oracle_lstm(oracle_model, x, masks=masks)[0], head, target).backward()

    cases.append(("authors' loop (oracle) K=1, p=0.25", 1, oracle_step))
    cudnn = nn.LSTM(I, H).to(device)
    cases.append(("cuDNN nn.LSTM K=1 (vanilla)", 1,
                  lambda: loss(cudnn(x)[0], head, target).backward()))  # fmt: skip

    def cudnn_exact():
        with _exact_cudnn():
            loss(cudnn(x)[0], head, target).backward()

    cases.append(("cuDNN nn.LSTM K=1 (vanilla, TF32 off)", 1, cudnn_exact))
    wide = max(members)
    xw = x.repeat(1, wide, 1)
    tw = target.repeat(*([1] * (target.dim() - 1)), wide)
    cases.append((f"cuDNN nn.LSTM {wide} seeds as one batch (shared weights)", wide,
                  lambda: loss(cudnn(xw)[0], head, tw).backward()))  # fmt: skip

    for backend, graphs, precision in ENGINES:
        for K in members:
            model = HDetachLSTM(
                I, H, p_detach=0.25, members=K, backend=backend, precision=precision
            ).to(device)
            heads = MemberLinear(K, H, classes).to(device)
            xk = x.unsqueeze(1).expand(T, K, B, I).contiguous()
            tk = target.unsqueeze(-2).expand(*target.shape[:-1], K, B).contiguous()
            gens = [torch.Generator().manual_seed(k) for k in range(K)]

            def step(model=model, heads=heads, xk=xk, tk=tk, gens=gens, graphs=graphs):
                _graphs(graphs)
                loss(model(xk, generator=gens)[0], heads, tk).backward()

            cases.append((engine_label(backend, graphs, precision, K), K, step))
    return cases


def engine_label(backend: str, graphs: bool, precision: str, members: int) -> str:
    extra = (" + CUDA graphs" if graphs else "") + ("" if precision == "fp32" else f" {precision}")
    return f"engine {backend}{extra} K={members}, p=0.25"


def run_bench(shapes, members, repeats, device, deadline) -> list[dict]:
    rows = []
    for name, shape in shapes.items():
        cases = bench_cases(name, shape, members, device)
        times: dict[str, list[float]] = {label: [] for label, _, _ in cases}
        errors: dict[str, str] = {}

        replays: dict[str, list[int]] = {label: [0, 0] for label, _, _ in cases}

        def timed(label, fn, times=times, errors=errors, replays=replays):
            if label in errors:
                return
            try:
                stats = _graph_stats()
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[label].append(time.perf_counter() - start)
                after = _graph_stats()
                replays[label][0] += after.get("captures", 0) - stats.get("captures", 0)
                replays[label][1] += after.get("replays", 0) - stats.get("replays", 0)
            except Exception as exc:
                errors[label] = _short(exc)
                if device.type == "cuda":  # e.g. out of memory: free the cache for the rest
                    torch.cuda.empty_cache()

        for label, _, fn in cases:  # warm-up twice: compilation, graph capture, cuBLAS
            timed(label, fn)
            timed(label, fn)
            times[label].clear()
            replays[label] = [0, 0]
        for _ in range(repeats):
            if time.monotonic() > deadline:
                break
            for label, _, fn in cases:
                timed(label, fn)
        for label, seeds, _ in cases:
            t = times[label]
            row = {"shape": name, "case": label, "seeds": seeds, "repeats": len(t)}
            if t:
                row["median_s"] = statistics.median(t)
                row["seconds_per_seed"] = row["median_s"] / seeds
            if label in errors:
                row["error"] = errors[label]
            elif not t:  # the checks or earlier rows used the budget before any repeat
                row["error"] = "not timed: time budget reached"
            if "graphs" in label:  # of the timed calls' loops: captured anew, replayed
                row["graph_captures"], row["graph_replays"] = replays[label]
            rows.append(row)
            shown = f"{row['median_s']:9.5f} {row['seconds_per_seed']:9.5f}" if t else "   failed"
            print(f"  {name:<8} {label:<52} {shown}  {row.get('error', '')}")
        if time.monotonic() > deadline:
            print("time budget reached: later shapes skipped")
            break
    return rows


def summarise(rows: list[dict], members: list[int]) -> dict:
    out = {}
    K = max(members)
    for shape in {r["shape"] for r in rows}:
        by = {r["case"]: r for r in rows if r["shape"] == shape and "median_s" in r}
        oracle = by.get("authors' loop (oracle) K=1, p=0.25")
        cudnn = by.get("cuDNN nn.LSTM K=1 (vanilla)")
        exact = by.get("cuDNN nn.LSTM K=1 (vanilla, TF32 off)")
        engines = [r for c, r in by.items() if c.startswith("engine") and f"K={K}," in c]
        if not (oracle and cudnn and engines):
            continue
        best = min(engines, key=lambda r: r["seconds_per_seed"])
        out[shape] = {
            "best_engine_at_K": best["case"],
            "oracle_K1_over_engine_per_seed": oracle["median_s"] / best["seconds_per_seed"],
            "target_oracle_ratio": ">= 20",
            "cudnn_per_seed_over_engine_per_seed": cudnn["median_s"] / best["seconds_per_seed"],
            "target_cudnn_ratio": ">= 1 (no slower than cuDNN per seed)",
        }
        if exact:
            out[shape]["cudnn_tf32_off_per_seed_over_engine_per_seed"] = (
                exact["median_s"] / best["seconds_per_seed"]
            )
    return out


#: Engine rows whose K-member step times price the paper's verdicts: today's default on CUDA
#: and the persistent backend at each precision.
PRICED = (("triton", True, "fp32"), ("persistent", False, "fp32"), ("persistent", False, "tf32"))


def cost_summary(
    rows: list[dict], shapes: dict, members: list[int], device_name: str, processors: int | None
) -> dict:
    """What the timed rows mean against the chip (``trainables/kernels/cost.py``): per row
    TFLOP/s and fraction of the FP32 peak; per shape the persistent loop's FLOP and L2 bounds
    at each K, its speed-ups over today's engine (triton + CUDA graphs) at the largest K and
    the issue's targets; the GPU-hours of C1, C2 and C5 from each priced engine's step time
    per seed at the largest K. No peaks or bounds for a GPU not in ``cost.CHIPS``."""
    chip = cost.chip_for(device_name)
    processors = processors or (chip.processors if chip else None)
    K = max(members)
    out: dict = {"chip": None if chip is None else vars(chip), "rows": {}, "persistent": {}}
    per_seed: dict[tuple[str, str], float] = {}
    for row in rows:
        if "median_s" not in row or row["shape"] not in shapes:
            continue
        T, B, I, H, _, _ = shapes[row["shape"]]
        flops = row["seeds"] * cost.step_flops(T, B, I, H)
        entry = {"tflops": flops / row["median_s"] / 1e12}
        if chip is not None:
            entry["fp32_peak_fraction"] = flops / row["median_s"] / chip.fp32_flops
        out["rows"].setdefault(row["shape"], {})[row["case"]] = entry
        per_seed[row["shape"], row["case"]] = row["seconds_per_seed"]
    for shape, (T, B, I, H, _, _) in shapes.items():

        def seed_s(backend, graphs, precision, k, shape=shape):
            return per_seed.get((shape, engine_label(backend, graphs, precision, k)))

        summary: dict = {}
        if chip is not None:
            summary["bounds"] = {
                f"{precision} K={k}": cost.loop_bounds(
                    T,
                    B,
                    I,
                    H,
                    k,
                    persistent_lstm.batch_tile(k, B, processors),
                    chip,
                    tf32=precision == "tf32",
                )  # fmt: skip
                for k in members
                for precision in ("fp32", "tf32")
            }
        today = seed_s("triton", True, "fp32", K)
        fp32, tf32 = seed_s("persistent", False, "fp32", K), seed_s("persistent", False, "tf32", K)
        if today and fp32:
            summary[f"fp32_speedup_over_triton_graphs_K{K}"] = today / fp32
            summary["target_fp32_speedup"] = ">= 4"
        if today and tf32:
            summary[f"tf32_speedup_over_triton_graphs_K{K}"] = today / tf32
            summary["target_tf32_speedup"] = ">= 10"
        small = seed_s("persistent", False, "fp32", 16)
        if small and fp32 and K != 16:
            summary[f"fp32_per_seed_K16_over_K{K}"] = small / fp32
            summary["target_K16_ratio"] = "<= 1.5"
        out["persistent"][shape] = summary
    out["gpu_hours"] = {}
    for verdict in cost.PAPER_VERDICTS:
        if verdict.shape not in shapes:
            continue
        steps = shapes[verdict.shape][0]
        hours = {}
        for backend, graphs, precision in PRICED:
            label = engine_label(backend, graphs, precision, K)
            seconds = per_seed.get((verdict.shape, label))
            if seconds:
                hours[label] = cost.verdict_gpu_hours(seconds, steps, verdict)
        out["gpu_hours"][verdict.claim] = {
            "seeds_per_arm": verdict.seeds_per_arm, "arms": verdict.arms,
            "epochs": verdict.epochs, "batches_per_epoch": verdict.batches_per_epoch,
            "time_steps": verdict.steps, "hours": hours,
        }  # fmt: skip
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a bad ``--members`` exits 2 naming it (argparse's error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--members", type=_members, default=[1, 16, 64], help="e.g. 1,16,64")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run")
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny")
    parser.add_argument(
        "--cost-of",
        type=Path,
        help="no run: the cost summary of an earlier gpu_check JSON (its rows and device)",
    )
    return parser.parse_args(argv)


def cost_of(source: Path, out: Path, argv: list[str]) -> int:
    """``--cost-of``: ``cost_summary`` of an earlier run's rows, written with this command's
    provenance and the measured run's machine; exit 2 naming a file that is not one."""
    try:
        earlier = json.loads(source.read_text())
        rows, device = earlier["rows"], earlier["machine"]["device"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"gpu_check: --cost-of {source}: not a gpu_check JSON ({err})", file=sys.stderr)
        return 2
    members = sorted({r["seeds"] for r in rows if r["case"].startswith("engine")}) or [1]
    costs = cost_summary(rows, SHAPES, members, device, earlier["machine"].get("multiprocessors"))
    payload = {
        "machine": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": f"none (arithmetic on the rows measured on {device})",
            "command": "python benchmarks/gpu_check.py " + " ".join(argv),
            "measured": {"file": str(source), **earlier["machine"]},
        },
        "cost": costs,
    }
    out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {out}")
    return 0


def _members(text: str) -> list[int]:
    try:
        members = [int(k) for k in text.split(",")]
    except ValueError:
        members = []
    if not members or min(members) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers >= 1, got {text!r}")
    return members


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cost_of is not None:
        return cost_of(args.cost_of, args.out, argv if argv is not None else sys.argv[1:])
    start = time.monotonic()
    members = args.members
    if args.smoke:
        device, shapes, members, repeats = torch.device("cpu"), SMOKE_SHAPES, [1, 2], 1
    elif not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here (use --smoke for a CPU dry run)")
        return 2
    else:
        device, shapes, repeats = torch.device("cuda"), SHAPES, args.repeats
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    machine = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "cudnn_allow_tf32_default": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "command": "python benchmarks/gpu_check.py " + " ".join(argv or sys.argv[1:]),
    }
    print(json.dumps(machine))
    checks = run_checks(device)
    print(f"checks: {sum(c['ok'] for c in checks)}/{len(checks)} pass "
          f"({time.monotonic() - start:.0f} s)")  # fmt: skip
    rows = run_bench(shapes, members, repeats, device, start + args.budget)
    summary = summarise(rows, members)
    for shape, s in summary.items():
        print(f"{shape}: oracle(K=1) / best engine per seed at K={max(members)} = "
              f"{s['oracle_K1_over_engine_per_seed']:.1f}x (target >= 20); cuDNN per seed / "
              f"engine per seed = {s['cudnn_per_seed_over_engine_per_seed']:.2f} (target >= 1; "
              f"{s.get('cudnn_tf32_off_per_seed_over_engine_per_seed', float('nan')):.2f} against "
              f"cuDNN with TF32 off)  [{s['best_engine_at_K']}]")  # fmt: skip
    processors = (
        torch.cuda.get_device_properties(device).multi_processor_count
        if device.type == "cuda"
        else None
    )
    costs = cost_summary(rows, shapes, members, machine["device"] or "", processors)
    for shape, s in costs["persistent"].items():
        shown = {k: round(v, 2) for k, v in s.items() if isinstance(v, float)}
        print(f"{shape}: persistent {shown}")
    for claim, c in costs["gpu_hours"].items():
        print(f"{claim} GPU-hours ({c['seeds_per_arm']} seeds x {c['arms']} arms): "
              + ", ".join(f"{label}: {h:.2f}" for label, h in c["hours"].items()))  # fmt: skip
    if device.type == "cuda":
        machine["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        machine["multiprocessors"] = processors
    payload = {"machine": machine, "checks": checks, "rows": rows, "summary": summary,
               "cost": costs, "seconds": time.monotonic() - start}  # fmt: skip
    args.out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {args.out} ({payload['seconds']:.0f} s)")
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
