"""What an LSTM training step costs on a GPU, and what a paper-scale verdict costs from it.

Pure arithmetic, no device needed: the FLOPs of one training step, the FP32/TF32 peaks and
L2 bandwidth of the GPUs the project runs on, the bounds of the persistent backend's time
loop (``persistent_lstm.py``), and the GPU-hours of the paper's verdicts (C1, C2, C5) from a
measured step time. ``benchmarks/gpu_check.py`` writes these beside its measurements; the
planner (``study/plan.py``) can price a study with ``verdict_gpu_hours`` from the same
figures. The hours go through ``trainables.contract.study_hours``, the one definition of a
paired study's compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainables.contract import study_hours

__all__ = [
    "CHIPS",
    "PAPER_VERDICTS",
    "Chip",
    "Verdict",
    "chip_for",
    "loop_bounds",
    "step_flops",
    "verdict_gpu_hours",
]


@dataclass(frozen=True)
class Chip:
    """A GPU's dense peaks (FLOP/s, without sparsity), L2 read bandwidth (bytes/s) and
    streaming multiprocessors."""

    name: str
    fp32_flops: float
    tf32_flops: float
    l2_bytes_per_s: float
    processors: int


#: NVIDIA's datasheet peaks for the SXM parts (the H200 is the H100's GH100 chip with more
#: and faster HBM: the same compute and L2). NVIDIA publishes no L2 bandwidth: 5.5 TB/s is a
#: microbenchmark-level estimate, used only for the loop's bound and recorded with it.
CHIPS = {
    "H200": Chip("H200", 66.9e12, 494.7e12, 5.5e12, 132),
    "H100 PCIe": Chip("H100 PCIe", 51.2e12, 378.0e12, 5.5e12, 114),
    "H100": Chip("H100", 66.9e12, 494.7e12, 5.5e12, 132),
}


def chip_for(device_name: str) -> Chip | None:
    """The entry of ``CHIPS`` whose name ``device_name`` contains (most specific first), or
    None for a GPU not listed (the check then reports no peak fractions)."""
    for key in sorted(CHIPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return CHIPS[key]
    return None


def step_flops(steps: int, batch: int, n_in: int, hidden: int) -> float:
    """FLOPs of one training step (forward and backward) of one seed's LSTM layer: three
    GEMM passes (gates forward; ``dG W`` and ``dG^T [x, h]`` backward), each
    ``2 B 4H (I + H)`` per time step. Pointwise work (about 1%) is not counted. Copying
    (T+20 = 120 steps, B=100, I=1, H=128): 4.75 GFLOP."""
    return 3 * 2 * batch * 4 * hidden * (n_in + hidden) * steps


def loop_bounds(
    steps: int,
    batch: int,
    n_in: int,
    hidden: int,
    members: int,
    tile: int,
    chip: Chip,
    tf32: bool = False,
) -> dict[str, float]:
    """Lower bounds, in seconds, on one training step of ``members`` seeds on the persistent
    backend: ``flop_s`` (every FLOP at the chip's FP32, or TF32, peak) and ``l2_s`` (each
    program reads its member's ``W_hh``, ``16 H^2`` bytes, from L2 once a step forward and
    once backward; ``ceil(batch / tile)`` programs per member); ``bound_s`` is the larger."""
    flops = members * step_flops(steps, batch, n_in, hidden)
    flop_s = flops / (chip.tf32_flops if tf32 else chip.fp32_flops)
    l2_bytes = 2 * steps * members * math.ceil(batch / tile) * 16 * hidden * hidden
    l2_s = l2_bytes / chip.l2_bytes_per_s
    return {"flop_s": flop_s, "l2_s": l2_s, "bound_s": max(flop_s, l2_s), "l2_bytes": l2_bytes}


@dataclass(frozen=True)
class Verdict:
    """A paper-scale comparison (``../shared/PAPER_SETUPS.md``): ``shape`` names the measured
    shape whose step time it scales (by time steps), ``steps`` its time steps."""

    claim: str
    shape: str
    steps: int
    epochs: int
    batches_per_epoch: int
    arms: int = 2
    seeds_per_arm: int = 32


PAPER_VERDICTS = (
    Verdict("C1", "copying", steps=100 + 20, epochs=600, batches_per_epoch=1000),
    Verdict("C2", "copying", steps=300 + 20, epochs=600, batches_per_epoch=1000),
    Verdict("C5", "mnist", steps=784, epochs=200, batches_per_epoch=50_000 // 100),
)


def verdict_gpu_hours(seconds_per_seed_step: float, measured_steps: int, verdict: Verdict) -> float:
    """GPU-hours of ``verdict`` (both arms, training only: evaluation not counted) from one
    measured training step's seconds per seed on a shape of ``measured_steps`` time steps,
    scaled linearly to the verdict's (each step's work is the same)."""
    if seconds_per_seed_step <= 0 or measured_steps < 1:
        raise ValueError(
            f"need a positive step time and step count, got {seconds_per_seed_step}, "
            f"{measured_steps}"
        )
    per_step = seconds_per_seed_step * verdict.steps / measured_steps
    per_seed = per_step * verdict.batches_per_epoch * verdict.epochs
    return study_hours(verdict.seeds_per_arm, per_seed, arms=verdict.arms)
