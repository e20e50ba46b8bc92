"""GPU training check: the real trainer (``python -m trainables.train``) on CUDA, K seeds as
members, with the default backend (Triton + CUDA graphs), Triton without graphs, the PyTorch
path and the persistent backend in fp32 and TF32, in one process. Needs only PyTorch and
Triton (no Ray, no MLflow). Each variant's validation curve (mean over seeds, per epoch) is
kept, so TF32's curve can be read against fp32's on the same kernels.

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

VARIANTS = (  # name, backend, CUDA graphs, precision
    ("triton + CUDA graphs (default)", "triton", True, "fp32"),
    ("triton, no graphs", "triton", False, "fp32"),
    ("torch path", "torch", False, "fp32"),
    ("persistent fp32", "persistent", False, "fp32"),
    ("persistent tf32", "persistent", False, "tf32"),
)
METRICS = ("best_val_acc", "transfer_acc_T10", "transfer_acc_T20")


def run_variant(backend: str, graphs: bool, precision: str, args) -> dict:
    from trainables.kernels import triton_lstm

    os.environ["HDETACH_CUDA_GRAPHS"] = "1" if graphs else "0"
    seeds = ",".join(str(s) for s in range(args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        argv = ["--task", args.task, "--preset", "smoke", "--seeds", seeds, "--epochs",
                str(args.epochs), "--device", "cuda", "--backend", backend,
                "--precision", precision, "--json", str(out), "--quiet"]  # fmt: skip
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
    curves = [[r.get("val_acc") for r in seed] for seed in payload["history"]]
    return {
        "wall_s": wall,
        "epoch_seconds": epochs,
        "median_epoch_s_after_first": statistics.median(epochs[1:] or epochs),
        "graphs": {k: after[k] - before[k] for k in after},
        "final": payload["final"],
        "val_acc_mean_by_epoch": [
            statistics.fmean(c[e] for c in curves if c[e] is not None)
            if any(c[e] is not None for c in curves)
            else None
            for e in range(len(curves[0]))
        ],
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
    for name, backend, graphs, precision in VARIANTS:
        try:
            results[name] = run_variant(backend, graphs, precision, args)
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
    fp32, tf32 = results.get("persistent fp32", {}), results.get("persistent tf32", {})
    if "val_acc_mean_by_epoch" in fp32 and "val_acc_mean_by_epoch" in tf32:
        gaps = [
            abs(a - b)
            for a, b in zip(
                fp32["val_acc_mean_by_epoch"], tf32["val_acc_mean_by_epoch"], strict=True
            )
            if a is not None and b is not None
        ]
        results["tf32_vs_fp32_val_acc_max_gap"] = max(gaps, default=None)
        print(f"  TF32 against fp32 (persistent): mean validation accuracy by epoch "
              f"{tf32['val_acc_mean_by_epoch']} vs {fp32['val_acc_mean_by_epoch']}")  # fmt: skip
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, **results},
                                   indent=1, default=str))  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
