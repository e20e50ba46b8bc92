"""GPU training check: the real trainer (``python -m trainables.train``) on CUDA, K seeds as
members, with the default backend (Triton + CUDA graphs), Triton without graphs, and the
PyTorch path, in one process. Needs only PyTorch and Triton (no Ray, no MLflow).

Reports, per variant: seconds per epoch (the trainer's own ``epoch_seconds``), how the layer's
time loops ran (CUDA graphs captured / replayed: a training loop should replay nearly every
step), and how far each seed's final metrics are from the graphs-on run's (the same kernels
replayed: expected 0; the PyTorch path rounds differently, and training amplifies that).

    python benchmarks/gpu_train_check.py --out gpu_train_check.json [--seeds 16] [--epochs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainables import train  # noqa: E402

VARIANTS = (  # name, backend, CUDA graphs
    ("triton + CUDA graphs (default)", "triton", True),
    ("triton, no graphs", "triton", False),
    ("torch path", "torch", False),
)
METRICS = ("best_val_acc", "transfer_acc_T10", "transfer_acc_T20")


def run_variant(backend: str, graphs: bool, args) -> dict:
    from trainables.kernels import triton_lstm

    os.environ["HDETACH_CUDA_GRAPHS"] = "1" if graphs else "0"
    seeds = ",".join(str(s) for s in range(args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        argv = ["--task", args.task, "--preset", "smoke", "--seeds", seeds, "--epochs",
                str(args.epochs), "--device", "cuda", "--backend", backend, "--json", str(out),
                "--quiet"]  # fmt: skip
        before = triton_lstm.graph_stats()
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = train.main(argv)
        wall = time.perf_counter() - start
        after = triton_lstm.graph_stats()
        if code != 0:
            raise RuntimeError(f"trainables.train exited {code}")
        payload = json.loads(out.read_text())
    epochs = [r["epoch_seconds"] for r in payload["history"][0]]
    return {
        "wall_s": wall,
        "epoch_seconds": epochs,
        "median_epoch_s_after_first": statistics.median(epochs[1:] or epochs),
        "graphs": {k: after[k] - before[k] for k in after},
        "final": payload["final"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_train_check.json"))
    parser.add_argument("--task", default="copying")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_train_check: CUDA is not available here")
        return 2
    results = {}
    for name, backend, graphs in VARIANTS:
        try:
            results[name] = run_variant(backend, graphs, args)
        except Exception as exc:  # recorded; the other variants still run
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    base = results[VARIANTS[0][0]]
    ok = "error" not in base
    print(f"{args.task}, smoke preset, {args.seeds} seeds as members, {args.epochs} epochs, "
          f"{torch.cuda.get_device_name(0)}")  # fmt: skip
    for name, r in results.items():
        if "error" in r:
            print(f"  {name:<32} failed: {r['error']}")
            ok = False
            continue
        diff = max(
            abs(a[m] - b[m])
            for a, b in zip(r["final"], base.get("final", r["final"]), strict=True)
            for m in METRICS
            if m in a
        )
        r["max_metric_difference_from_default"] = diff
        print(f"  {name:<32} {r['median_epoch_s_after_first']:7.2f} s/epoch  graphs "
              f"{r['graphs']}  max |metric - default| = {diff:.4f}")  # fmt: skip
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, **results},
                                   indent=1, default=str))  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
