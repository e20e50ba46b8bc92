"""The persistent GPU backend: one Triton program per (seed member, batch tile) runs a layer's
whole time loop, forward and backward.

``triton_lstm.py`` launches, per step, a batched GEMM and a pointwise kernel (two more GEMMs
in backward), each reading every member's ``W_hh`` from memory again; at 64 copying members
that design sits at the floor of cuDNN's own per-step GEMMs (H200, 2026-12-04: 36.4 ms a
step, about 12% of the FP32 peak). Seed members are independent LSTMs, so no grid-wide
synchronisation is needed between steps: here a program keeps its rows' ``h`` and ``c`` in
registers for all T steps, reads its member's ``W_hh`` (4H x H, 256 KB at H=128, hot in L2:
64 members are 16 MB) once per step, and fuses the recurrent product with the gate work.

Forward, per step: ``a_q = gx_q[t] + h W_q^T`` for the four gates ``q`` (``gx``: every step's
input projection ``x W_ih^T + b``, one large GEMM before the loop, as in the other backends),
then the cell; the gate activations, ``c_t``, ``tanh(c_t)`` and ``h_t`` are stored for
backward. Backward, in reverse: the gate gradients from the stored activations, stored as
``dG (T, K, B, 4H)``, then ``dh_{t-1} = keep * scale * dG_t W_hh``. A step blocked for every
row of the program (h-detach keep factor 0) skips that product, as on the CPU (claim C9).
The weight gradients ``dW_hh = sum_t dG_t^T h_{t-1}``, ``dW_ih``, ``db`` and ``dx`` are large
GEMMs over all steps after the loop, not accumulated in the loop: a program's ``dW_hh`` would
need 4H x H fp32 accumulators (256 KB at H=128), far past a streaming multiprocessor's
registers, and a reduction over T*B rows is what a GEMM does at full speed anyway.

Precision: ``"fp32"`` runs the recurrent products as IEEE fp32 (``tl.dot(...,
input_precision="ieee")``), exact like the other backends up to rounding order; ``"tf32"``
(opt in) runs them on TF32 tensor cores with fp32 accumulation. Everything outside the loop
stays fp32. Triton's interpreter (``TRITON_INTERPRET=1``, how this file is tested on the CPU)
ignores ``input_precision``, so TF32's error is measured only on a GPU
(``benchmarks/gpu_check.py``).

Layout is step-major, ``(T, K, B, .)``, like the other compiled backends.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from trainables.kernels import check_precision
from trainables.kernels.triton_lstm import input_projection

__all__ = ["DOT_PRECISION", "batch_tile", "layer"]

#: ``tl.dot``'s ``input_precision`` for each of ``trainables.contract.PRECISIONS``.
DOT_PRECISION = {"fp32": "ieee", "tf32": "tf32"}
#: Inference runs the input projection over chunks of steps of at most this many elements
#: (transfer copying evaluates at T = 5000: all steps' gates at once would be hundreds of GB).
INFERENCE_CHUNK_ELEMENTS = 1 << 26


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _times_w_t(h, w_ptr, q, H, j, PRECISION: tl.constexpr):
    """``h (BB, HP) @ W_q^T``: gate q's recurrent product (``W_q`` = rows qH..qH+H of W_hh)."""
    live = (j[:, None] < H) & (j[None, :] < H)
    w_t = tl.load(w_ptr + (q * H + j[None, :]) * H + j[:, None], mask=live, other=0.0)
    return tl.dot(h, w_t, input_precision=PRECISION)


@triton.jit
def _times_w(d, w_ptr, q, H, j, PRECISION: tl.constexpr):
    """``d (BB, HP) @ W_q``: gate q's share of the recurrent gradient ``dG W_hh``."""
    live = (j[:, None] < H) & (j[None, :] < H)
    w = tl.load(w_ptr + (q * H + j[:, None]) * H + j[None, :], mask=live, other=0.0)
    return tl.dot(d, w, input_precision=PRECISION)


@triton.jit
def _tile(B, H, BB: tl.constexpr, HP: tl.constexpr):
    """This program's member ``k`` (int64: ``(T, K, B, .)`` offsets pass 2^31 at K=64 on pixel
    MNIST), batch rows ``b``, state columns ``j`` (padded to HP), which of ``(b, j)`` are
    real, and their offsets in a ``(K, B, H)`` state."""
    k = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1) * BB + tl.arange(0, BB)
    j = tl.arange(0, HP)
    live = (b[:, None] < B) & (j[None, :] < H)
    return k, b, j, live, (k * B + b[:, None]) * H + j[None, :]


@triton.jit
def _forward(
    gx_ptr, h0_ptr, c0_ptr, w_ptr, cells_ptr, tanh_ptr, y_ptr, h_out_ptr, c_out_ptr,
    T, K, B, H, first,
    SAVE: tl.constexpr, BB: tl.constexpr, HP: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Member ``program_id(0)``, batch rows of tile ``program_id(1)``, all T steps.

    ``gx (T, K, B, 4H)``: input projections; with ``SAVE`` turned in place into the gate
    activations ``[i, f, g, o]`` and ``cells``/``tanh`` filled ``(T, K, B, H)``. ``y`` gets
    ``h_t`` at index ``t - first`` for ``t >= first``; ``h_out``/``c_out`` the last state."""
    k, b, j, live, state = _tile(B, H, BB, HP)
    h = tl.load(h0_ptr + state, mask=live, other=0.0)
    c = tl.load(c0_ptr + state, mask=live, other=0.0)
    w = w_ptr + k * 4 * H * H
    for t in range(T):
        t64 = k * 0 + t  # int64, as k
        gate = ((t64 * K + k) * B + b[:, None]) * 4 * H + j[None, :]
        a_i = tl.load(gx_ptr + gate, mask=live, other=0.0)
        a_f = tl.load(gx_ptr + gate + H, mask=live, other=0.0)
        a_g = tl.load(gx_ptr + gate + 2 * H, mask=live, other=0.0)
        a_o = tl.load(gx_ptr + gate + 3 * H, mask=live, other=0.0)
        i = _sigmoid(a_i + _times_w_t(h, w, 0, H, j, PRECISION))
        f = _sigmoid(a_f + _times_w_t(h, w, 1, H, j, PRECISION))
        # tanh(a) = 2 sigmoid(2a) - 1, as the other backends compute it
        u = 2.0 * _sigmoid(2.0 * (a_g + _times_w_t(h, w, 2, H, j, PRECISION))) - 1.0
        o = _sigmoid(a_o + _times_w_t(h, w, 3, H, j, PRECISION))
        c = f * c + i * u
        tc = 2.0 * _sigmoid(2.0 * c) - 1.0
        h = o * tc
        step = t64 * K * B * H + state
        if SAVE:
            tl.store(gx_ptr + gate, i, mask=live)
            tl.store(gx_ptr + gate + H, f, mask=live)
            tl.store(gx_ptr + gate + 2 * H, u, mask=live)
            tl.store(gx_ptr + gate + 3 * H, o, mask=live)
            tl.store(cells_ptr + step, c, mask=live)
            tl.store(tanh_ptr + step, tc, mask=live)
        kept = tl.maximum(t64 - first, 0)
        tl.store(y_ptr + kept * K * B * H + state, h, mask=live & (t >= first))
    tl.store(h_out_ptr + state, h, mask=live)
    tl.store(c_out_ptr + state, c, mask=live)


@triton.jit
def _factor(ptr, k, t, b, T, B, MODE: tl.constexpr):
    """Per-row factor of step t: 1 (MODE 0), ``f[k, t]`` (MODE 1) or ``f[k, t, b]`` (MODE 2)."""
    if MODE == 0:
        return tl.full(b.shape, 1.0, tl.float32)
    elif MODE == 1:
        return tl.load(ptr + k * T + t + b * 0)
    else:
        return tl.load(ptr + (k * T + t) * B + b, mask=b < B, other=0.0)


@triton.jit
def _backward(
    dy_ptr, dh_last_ptr, dc_last_ptr, gates_ptr, cells_ptr, tanh_ptr, c0_ptr, w_ptr,
    h_keep_ptr, c_keep_ptr, dg_ptr, dh0_ptr, dc0_ptr,
    T, K, B, H, n_dy,
    H_MODE: tl.constexpr, C_MODE: tl.constexpr, BB: tl.constexpr, HP: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """BPTT for the rows of one (member, batch tile), t = T-1 .. 0.

    ``dy (n_dy, K, B, H)``: gradients of the last ``n_dy`` outputs (the others had none);
    ``h_keep``: the recurrent h-gradient's factors (``1 - damp`` times the keep factor),
    ``c_keep``: the cell path's keep factors, each laid out by its mode (see ``_factor``;
    fp64 factors stay fp64: a float argument would reach the kernel rounded to fp32); writes
    the gate gradients ``dg (T, K, B, 4H)``, ``dL/dh_0`` and ``dL/dc_0``."""
    k, b, j, live, state = _tile(B, H, BB, HP)
    w = w_ptr + k * 4 * H * H
    rec = tl.load(dh_last_ptr + state, mask=live, other=0.0)  # dL/dh_t through h_{t+1}
    dc = tl.load(dc_last_ptr + state, mask=live, other=0.0)
    first_dy = T - n_dy
    for s in range(T):
        t = T - 1 - s
        t64 = k * 0 + t
        step = t64 * K * B * H + state
        dy_t = tl.maximum(t64 - first_dy, 0)
        dh = rec + tl.load(
            dy_ptr + dy_t * K * B * H + state, mask=live & (t >= first_dy), other=0.0
        )
        gate = ((t64 * K + k) * B + b[:, None]) * 4 * H + j[None, :]
        i = tl.load(gates_ptr + gate, mask=live, other=0.0)
        f = tl.load(gates_ptr + gate + H, mask=live, other=0.0)
        u = tl.load(gates_ptr + gate + 2 * H, mask=live, other=0.0)
        o = tl.load(gates_ptr + gate + 3 * H, mask=live, other=0.0)
        tc = tl.load(tanh_ptr + step, mask=live, other=0.0)
        prev = tl.maximum(t64 - 1, 0) * K * B * H + state
        c_prev = tl.load(cells_ptr + prev, mask=live & (t > 0), other=0.0) + tl.load(
            c0_ptr + state, mask=live & (t == 0), other=0.0
        )
        dc = dc + dh * o * (1.0 - tc * tc)
        d_i = dc * u * (i - i * i)
        d_f = dc * c_prev * (f - f * f)
        d_g = dc * i * (1.0 - u * u)
        d_o = dh * tc * (o - o * o)
        tl.store(dg_ptr + gate, d_i, mask=live)
        tl.store(dg_ptr + gate + H, d_f, mask=live)
        tl.store(dg_ptr + gate + 2 * H, d_g, mask=live)
        tl.store(dg_ptr + gate + 3 * H, d_o, mask=live)
        dc = dc * f * _factor(c_keep_ptr, k, t, b, T, B, C_MODE)[:, None].to(dc.dtype)
        keep = _factor(h_keep_ptr, k, t, b, T, B, H_MODE).to(dc.dtype)
        if tl.max(tl.abs(keep), axis=0) != 0.0:
            rec = _times_w(d_i, w, 0, H, j, PRECISION)
            rec += _times_w(d_f, w, 1, H, j, PRECISION)
            rec += _times_w(d_g, w, 2, H, j, PRECISION)
            rec += _times_w(d_o, w, 3, H, j, PRECISION)
            rec = rec * keep[:, None]
        else:  # h_{t-1} blocked at step t for every row here: no dG_t W_hh product (C9)
            rec = tl.zeros((BB, HP), dtype=dc.dtype)
    tl.store(dh0_ptr + state, rec, mask=live)
    tl.store(dc0_ptr + state, dc, mask=live)


# -- launch --------------------------------------------------------------------------------


def batch_tile(members: int, batch: int, processors: int | None) -> int:
    """Batch rows per program: the largest of 32 and 16 that still gives every streaming
    multiprocessor (``processors``; None off a GPU) a program, else 16 (``tl.dot`` needs 16).

    Fewer, larger tiles read each member's ``W_hh`` fewer times per step (L2 traffic is
    ``members * ceil(batch / tile) * 16 H^2`` bytes a step); more, smaller ones keep every
    processor busy when there are few members. 64 rows and up would spill registers at
    H = 128 (h, c, four gate accumulators)."""
    if processors is None:
        return 16
    for tile in (32, 16):
        if members * math.ceil(batch / tile) >= processors:
            return tile
    return 16


def _launch_shape(x: torch.Tensor, K: int, B: int, H: int) -> tuple[tuple[int, int], dict]:
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else None
    tile = batch_tile(K, B, sms)
    hp = max(16, triton.next_power_of_2(H))
    meta = {"BB": tile, "HP": hp, "num_warps": 8 if hp >= 128 else 4}
    return (K, triton.cdiv(B, tile)), meta


def _dot_precision(precision: str, dtype: torch.dtype) -> str:
    check_precision(precision)
    if precision != "fp32" and dtype != torch.float32:
        raise ValueError(f"precision={precision!r} needs float32 weights, got {dtype}")
    return DOT_PRECISION[precision]


def _mode(keep: torch.Tensor | None) -> int:
    return 0 if keep is None else keep.dim() - 1  # (K, T) -> 1, (K, T, B) -> 2


def _h_factors(h_keep, scale: float, K: int, T: int, like: torch.Tensor) -> torch.Tensor:
    """``scale * keep`` of the recurrent h-gradient, ``(K, T)`` or ``(K, T, B)``."""
    if h_keep is None:
        return torch.full((K, T), scale, dtype=like.dtype, device=like.device)
    return (h_keep.to(like.dtype) * scale).contiguous()


class _PersistentLayer(torch.autograd.Function):
    """One layer, step-major: ``x (T, K, B, I)`` in, the last ``keep`` steps of
    ``y (T, K, B, H)`` out, with ``h_T`` and ``c_T``."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias, h_keep, c_keep, h_scale, keep, precision):
        T, K, B, _ = x.shape
        H = w_hh.shape[2]
        dot = _dot_precision(precision, w_hh.dtype)
        h0, c0, w = h0.contiguous(), c0.contiguous(), w_hh.contiguous()
        gates = input_projection(x, w_ih, bias)
        cells = x.new_empty(T, K, B, H)
        tanh_c, y = torch.empty_like(cells), torch.empty_like(cells)
        h_t, c_t = torch.empty_like(h0), torch.empty_like(c0)
        grid, meta = _launch_shape(x, K, B, H)
        _forward[grid](gates, h0, c0, w, cells, tanh_c, y, h_t, c_t, T, K, B, H, 0,
                       SAVE=True, PRECISION=dot, **meta)  # fmt: skip
        ctx.save_for_backward(x, h0, c0, w_ih, w, gates, cells, tanh_c, y, h_keep, c_keep)
        ctx.has_bias, ctx.h_scale, ctx.dot = bias is not None, float(h_scale), dot
        ctx.mark_non_differentiable(*(m for m in (h_keep, c_keep) if m is not None))
        return y[-keep:], h_t, c_t

    @staticmethod
    def backward(ctx, dy, dh_last, dc_last):
        x, h0, c0, w_ih, w_hh, gates, cells, tanh_c, y, h_keep, c_keep = ctx.saved_tensors
        T, K, B, H = y.shape
        dgates = torch.empty_like(gates)
        dh0, dc0 = torch.empty_like(h0), torch.empty_like(c0)
        grid, meta = _launch_shape(y, K, B, H)
        h_rs = _h_factors(h_keep, ctx.h_scale, K, T, y)
        _backward[grid](
            dy.contiguous(), dh_last.contiguous(), dc_last.contiguous(), gates, cells, tanh_c,
            c0, w_hh,
            h_rs, y if c_keep is None else c_keep.contiguous(),  # y: never read (mode 0)
            dgates, dh0, dc0, T, K, B, H, dy.shape[0],
            H_MODE=_mode(h_rs), C_MODE=_mode(c_keep), PRECISION=ctx.dot, **meta,
        )  # fmt: skip
        h_prev = torch.cat([h0.unsqueeze(0), y[:-1]])  # (T, K, B, H)
        dw_hh = torch.einsum("tkbg,tkbh->kgh", dgates, h_prev)
        dw_ih = torch.einsum("tkbg,tkbi->kgi", dgates, x)
        db = dgates.sum((0, 2)) if ctx.has_bias else None
        dx = torch.matmul(dgates, w_ih.unsqueeze(0)) if ctx.needs_input_grad[0] else None
        return dx, dh0, dc0, dw_ih, dw_hh, db, None, None, None, None, None


@torch.no_grad()
def _inference(x, h0, c0, w_ih, w_hh, bias, keep_steps, precision):
    """Forward only: the input projection by chunks of steps, the state carried between
    chunks; only the last ``keep_steps`` outputs are kept."""
    T, K, B, _ = x.shape
    H = w_hh.shape[2]
    dot = _dot_precision(precision, w_hh.dtype)
    y = x.new_empty(keep_steps, K, B, H)
    h, c = h0.contiguous(), c0.contiguous()
    w = w_hh.contiguous()
    grid, meta = _launch_shape(x, K, B, H)
    chunk = max(1, INFERENCE_CHUNK_ELEMENTS // (K * B * 4 * H))
    for start in range(0, T, chunk):
        gx = input_projection(x[start : start + chunk], w_ih, bias)
        h_next, c_next = torch.empty_like(h), torch.empty_like(c)
        first = T - keep_steps - start  # the chunk's first kept step (may be < 0)
        y_at = y[max(0, -first) :]
        _forward[grid](gx, h, c, w, gx, gx, y_at, h_next, c_next, gx.shape[0], K, B, H,
                       max(first, 0), SAVE=False, PRECISION=dot, **meta)  # fmt: skip
        h, c = h_next, c_next
    return y, h, c


def layer(
    x, h0, c0, w_ih, w_hh, bias, h_keep, c_keep, h_scale, grad_on, keep_steps=None,
    precision: str = "fp32",
):  # fmt: skip
    """One layer on the persistent backend (the engine's entry point), arguments as
    ``triton_lstm.layer``'s, plus ``precision`` (``"fp32"`` or ``"tf32"``)."""
    keep = keep_steps or x.shape[0]
    if grad_on:
        return _PersistentLayer.apply(
            x, h0, c0, w_ih, w_hh, bias, h_keep, c_keep, h_scale, keep, precision
        )
    return _inference(x, h0, c0, w_ih, w_hh, bias, keep, precision)
