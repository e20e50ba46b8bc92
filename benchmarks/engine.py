"""Engine benchmark: the h-detach engine's backends against the authors' loop, ``torch.nn.LSTM``
and the GEMM-only bound of the engine's own loop.

All contenders run in one process, interleaved (repeat r times every contender once), after
a warm-up; the figure is the median. One training step = forward, loss, backward (the
"backward only" rows time the step's backward pass alone, head and loss included; the "layer
backward only" rows the LSTM layer's own backward from a fixed dL/dy, which is what h-detach
shortens: claim C9's figure; the "trainer-head" rows the step's backward with the trainer's
head, ``MemberLinear``, instead of ``nn.Linear``). Shapes are the paper's: copying (T=120,
B=100, I=1, H=128, loss at every step) and pixel MNIST (T=784, B=100, I=1, H=100, loss at
the last step). The "GEMM-only bound" row runs exactly the GEMMs of the C++ backend's step
(same shapes, same split over threads, blocked steps skipped at p=0.25) plus the same head
and loss, and nothing else: no backend that makes those products can be faster.

Denormal floats: gradients decaying over hundreds of steps become denormal, which x86 cores
process 10-100x slower. The C++ backend flushes them in its own threads; the other contenders
run as a user runs them (the process default) unless ``--flush-denormals`` sets
``torch.set_flush_denormal(True)`` for everyone.

The JSON rows also carry each case's median count of minor page faults per run: a case whose
buffers the allocator could not reuse (memory faulted in afresh) shows there, not as noise.

    python benchmarks/engine.py [--shape copying|mnist] [--repeats 7] [--flush-denormals]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from benchmarks.tally import cpu_name  # noqa: E402
from trainables import kernels  # noqa: E402
from trainables.engine import HDetachLSTM  # noqa: E402
from trainables.members import MemberLinear  # noqa: E402
from trainables.oracle import oracle_lstm  # noqa: E402
from trainables.runtime import keep_freed_memory  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    T: int
    B: int
    I: int
    H: int
    classes: int
    loss_every_step: bool


SHAPES = {
    "copying": Shape("copying", T=120, B=100, I=1, H=128, classes=9, loss_every_step=True),
    "mnist": Shape("mnist", T=784, B=100, I=1, H=100, classes=10, loss_every_step=False),
}


def _loss(out: torch.Tensor, head: nn.Module, target: torch.Tensor, every: bool) -> torch.Tensor:
    logits = head(out if every else out[-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


class Case:
    """One contender: ``step()`` runs forward+loss(+backward); seconds are per seed."""

    def __init__(self, label: str, group: str, run: Callable[[], float], seeds: int = 1):
        self.label, self.group, self.run, self.seeds = label, group, run, seeds
        self.times: list[float] = []
        self.faults: list[int] = []  # minor page faults of the process during each run


def build_cases(shape: Shape, members: list[int]) -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape.T, shape.B, shape.I, generator=gen)
    tshape = (shape.T, shape.B) if shape.loss_every_step else (shape.B,)
    target = torch.randint(0, shape.classes, tshape, generator=gen)
    head = nn.Linear(shape.H, shape.classes)
    mask_gen = torch.Generator().manual_seed(1)

    def timed(forward: Callable[[], torch.Tensor], backward_only: bool = False) -> float:
        start = time.perf_counter()
        loss = forward()
        if backward_only:
            start = time.perf_counter()
        loss.backward()
        return time.perf_counter() - start

    def engine(**kw) -> HDetachLSTM:
        return HDetachLSTM(shape.I, shape.H, **kw)

    cases: list[Case] = []
    oracle_model = engine(p_detach=0.25)

    def oracle_step() -> torch.Tensor:
        masks = oracle_model.sample_masks(shape.T, shape.B, mask_gen)
        out, _ = oracle_lstm(oracle_model, x, masks=masks)
        return _loss(out, head, target, shape.loss_every_step)

    cases.append(Case("authors' loop (oracle), p=0.25", "a", lambda: timed(oracle_step)))

    ref = nn.LSTM(shape.I, shape.H)
    cases.append(
        Case(
            "torch.nn.LSTM (vanilla only)",
            "b",
            lambda: timed(lambda: _loss(ref(x)[0], head, target, shape.loss_every_step)),
        )
    )

    def engine_case(label: str, group: str, backward_only: bool = False, **kw) -> Case:
        model = engine(**kw)

        def step() -> torch.Tensor:
            return _loss(model(x, generator=mask_gen)[0], head, target, shape.loss_every_step)

        return Case(label, group, lambda: timed(step, backward_only))

    # dL/dy as the head hands it to the layer (every step for copying, the last for MNIST),
    # fixed: the "layer backward" rows time the LSTM's own backward, without the head's.
    dy = torch.randn(shape.T, shape.B, shape.H, generator=gen)
    if not shape.loss_every_step:
        dy[:-1] = 0

    def layer_backward_case(label: str, **kw) -> Case:
        model = engine(**kw)

        def step() -> float:
            out = model(x, generator=mask_gen)[0]
            start = time.perf_counter()
            out.backward(dy)
            return time.perf_counter() - start

        return Case(label, "e", step)

    def trainer_head_case(label: str, backend: str, **kw) -> Case:
        """The step's backward with the head the trainer uses (``MemberLinear``, one member)."""
        model = engine(backend=backend, **kw)
        member_head = MemberLinear(1, shape.H, shape.classes, backend=backend)

        def step() -> torch.Tensor:
            out = model(x, generator=mask_gen)[0].unsqueeze(-3)  # (T, K=1, B, H)
            return _loss(out, member_head, target, shape.loss_every_step)

        return Case(label, "e", lambda: timed(step, True))

    backends = ["torch", *(b for b in ("cpp", "triton") if _runs(b, shape))]
    for backend in backends:
        for p in (0.0, 0.25, 0.5):
            cases.append(engine_case(f"{backend} p_detach={p}", "c", p_detach=p, backend=backend))
        cases.append(engine_case(f"{backend} c_detach=0.25", "c", c_detach=0.25, backend=backend))
        cases.append(engine_case(f"{backend} damp=0.25", "c", damp=0.25, backend=backend))

    if "cpp" in backends:
        bound = _bound_step(shape, x, head, target, mask_gen)
        cases.append(Case("GEMM-only bound (cpp loop), p=0.25", "b", bound))
        if torch.ops.hdetach.set_kernels("") == "avx2":  # the same layer, generic kernels
            generic = engine_case("cpp generic kernels, p=0.25", "c", p_detach=0.25, backend="cpp")
            cases.append(Case(generic.label, generic.group, _generic(generic.run)))
            generic_bound = _generic(_bound_step(shape, x, head, target, mask_gen))
            cases.append(Case("GEMM-only bound, generic (BLAS), p=0.25", "b", generic_bound))

    fastest = backends[-1]
    for K in members:
        model = engine(p_detach=0.25, members=K, backend=fastest)
        heads = MemberLinear(K, shape.H, shape.classes)
        xk = x.unsqueeze(1).expand(shape.T, K, shape.B, shape.I).contiguous()
        tk = target.unsqueeze(-2).expand(*target.shape[:-1], K, shape.B).contiguous()
        gens = [torch.Generator().manual_seed(k) for k in range(K)]

        def member_step(model=model, heads=heads, xk=xk, tk=tk, gens=gens) -> torch.Tensor:
            out = model(xk, generator=gens)[0]
            return _loss(out, heads, tk, shape.loss_every_step)

        label = f"{fastest} K={K} members, p=0.25"
        cases.append(Case(label, "d", lambda f=member_step: timed(f), K))

    for backend in backends:
        for p in (0.0, 0.5, 1.0):
            label = f"{backend} backward only, p_detach={p}"
            cases.append(engine_case(label, "e", True, p_detach=p, backend=backend))
            label = f"{backend} layer backward only, p_detach={p}"
            cases.append(layer_backward_case(label, p_detach=p, backend=backend))
            label = f"{backend} trainer-head backward only, p_detach={p}"
            cases.append(trainer_head_case(label, backend, p_detach=p))
    return cases


def _runs(backend: str, shape: Shape) -> bool:
    try:
        HDetachLSTM(shape.I, 4, backend=backend)(torch.zeros(2, 1, shape.I))
    except (RuntimeError, ImportError):
        return False
    return True


def _generic(run: Callable[[], float]) -> Callable[[], float]:
    """``run`` with the C++ backend's generic kernels (the BLAS for the per-step products,
    compiler-vectorised pointwise passes) instead of its AVX2 ones."""

    def step() -> float:
        previous = torch.ops.hdetach.set_kernels("")
        torch.ops.hdetach.set_kernels("generic")
        try:
            return run()
        finally:
            torch.ops.hdetach.set_kernels(previous)

    return step


def _bound_step(shape: Shape, x, head, target, mask_gen) -> Callable[[], float]:
    """The GEMMs of the C++ backend's training step at p=0.25, plus the same head and loss."""
    model = HDetachLSTM(shape.I, shape.H, p_detach=0.25, backend="cpp")
    w_ih = model.weight_ih_l0.detach().unsqueeze(0)
    w_hh = model.weight_hh_l0.detach().unsqueeze(0)
    xk = x.unsqueeze(1).contiguous()  # (T, K=1, B, I), as the layer takes it
    out = torch.zeros(shape.T, shape.B, shape.H, requires_grad=True)
    cpu_kernels = kernels.load_bench()  # the bound runs the kernels the layer runs

    def step() -> float:
        keep = (~model.sample_masks(shape.T, shape.B, mask_gen).h[:, 0]).float()
        start = time.perf_counter()
        torch.ops.hdetach_bench.gemm_bound(xk, w_ih, w_hh, keep, cpu_kernels)
        _loss(out, head, target, shape.loss_every_step).backward()
        return time.perf_counter() - start

    return step


def run(shape: Shape, repeats: int, members: list[int]) -> list[dict]:
    cases = build_cases(shape, members)
    for case in cases:  # warm-up (allocator, caches, lazy init)
        case.run()
    for _ in range(repeats):
        for case in cases:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            case.times.append(case.run())
            case.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
    return [
        {
            "shape": shape.name,
            "group": c.group,
            "case": c.label,
            "median_s": statistics.median(c.times),
            "seconds_per_seed": statistics.median(c.times) / c.seeds,
            "min_s": min(c.times),
            "repeats": len(c.times),
            "page_faults": statistics.median(c.faults),
        }
        for c in cases
    ]


def summarise(rows: list[dict]) -> list[str]:
    """The issue's targets, as ratios measured side by side."""
    by = {r["case"]: r for r in rows}
    backends = [b for b in ("triton", "cpp", "torch") if f"{b} p_detach=0.25" in by]
    best = backends[0]
    lines = []
    oracle = by["authors' loop (oracle), p=0.25"]["median_s"]
    lstm = by["torch.nn.LSTM (vanilla only)"]["median_s"]
    for backend in backends:
        eng = by[f"{backend} p_detach=0.25"]["median_s"]
        lines.append(f"oracle / {backend}(p=0.25){'':<13}= {oracle / eng:5.2f}x  (target >= 3)")
        lines.append(f"nn.LSTM / {backend}(p=0.25){'':<12}= {lstm / eng:5.2f}x  (target >= 1.5)")
    bound = by.get("GEMM-only bound (cpp loop), p=0.25")
    if bound is not None:
        eng = by["cpp p_detach=0.25"]["median_s"]
        lines.append(f"cpp(p=0.25) / GEMM-only bound{'':<6}= {eng / bound['median_s']:5.2f}   "
                     "(target <= 1.3)")  # fmt: skip
    for backend in backends:
        for kind, note in (
            ("layer ", "  (target <= 0.85)"),
            ("", "  (with nn.Linear head + loss)"),
            ("trainer-head ", "  (with the trainer's MemberLinear head + loss)"),
        ):
            b0, b5, b1 = (by[f"{backend} {kind}backward only, p_detach={p}"]["median_s"]
                          for p in (0.0, 0.5, 1.0))  # fmt: skip
            name = f"{backend} {kind or 'step '}backward"
            lines.append(f"{name + ' p=0.5 / p=0':<42}= {b5 / b0:5.2f} {note}")
            lines.append(f"{name + ' p=1 / p=0':<42}= {b1 / b0:5.2f}")
    members = sorted(
        (r for r in rows if r["group"] == "d"), key=lambda r: int(r["case"].split("K=")[1][:2])
    )
    if len(members) > 1:
        base = members[0]["seconds_per_seed"]
        for r in members[1:]:
            k = r["case"].split("K=")[1].split()[0]
            lines.append(
                f"{best} K={k:<3} per seed / K=1{'':<12}= {r['seconds_per_seed'] / base:5.2f}   "
                "(target <= 1.0 at K=16)"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats (>= 1)")
    parser.add_argument("--members", default="1,4,16", help="K values, comma-separated")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument(
        "--flush-denormals", action="store_true",
        help="torch.set_flush_denormal(True) for every contender (default: as a user runs them)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    try:
        members = [int(k) for k in args.members.split(",")]
        if any(k < 1 for k in members):
            raise ValueError
    except ValueError:
        parser.error(f"--members must be positive integers, got {args.members!r}")

    allocator = keep_freed_memory()
    torch.manual_seed(0)
    if args.flush_denormals:
        torch.set_flush_denormal(True)
    machine = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "allocator_policy": "keep freed memory" if allocator else "system default",
        "denormals": "flushed for all" if args.flush_denormals else "process default",
        "command": "python benchmarks/engine.py " + " ".join(argv or sys.argv[1:]),
    }
    print(", ".join(f"{k}: {v}" for k, v in machine.items()))
    shapes = list(SHAPES.values()) if args.shape == "all" else [SHAPES[args.shape]]
    rows: list[dict] = []
    summary: dict[str, list[str]] = {}
    for shape in shapes:
        shape_rows = run(shape, args.repeats, members)
        rows += shape_rows
        print(f"\n{shape.name}: T={shape.T} B={shape.B} I={shape.I} H={shape.H}, fp32, "
              f"median of {args.repeats} interleaved repeats")  # fmt: skip
        print(f"  {'case':<46} {'s/step':>8} {'s/seed':>8}")
        for r in shape_rows:
            print(f"  {r['case']:<46} {r['median_s']:8.4f} {r['seconds_per_seed']:8.4f}")
        summary[shape.name] = summarise(shape_rows)
        for line in summary[shape.name]:
            print("  " + line)
    if args.json:
        payload = {"machine": machine, "rows": rows, "summary": summary}
        # Claim C9's figure, in the form `hdetach-study report --benchmarks` reads: the LSTM
        # layer's backward time at p=0.5 over p=0 (pixel MNIST, the paper's long sequences,
        # when it was measured; the fastest backend).
        by = {(r["shape"], r["case"]): r["median_s"] for r in rows}
        for name, backend in (
            (n, b) for n in ("mnist", "copying") for b in ("triton", "cpp", "torch")
        ):
            if (name, f"{backend} layer backward only, p_detach=0.0") in by:
                payload["backward_time_ratio"] = (
                    by[(name, f"{backend} layer backward only, p_detach=0.5")]
                    / by[(name, f"{backend} layer backward only, p_detach=0.0")]
                )
                break
        args.json.write_text(json.dumps(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
