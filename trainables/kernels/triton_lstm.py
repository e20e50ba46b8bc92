"""The GPU backend: Triton kernels for one step's fused pointwise work, cuBLAS for the GEMMs,
and the per-layer time loop captured as a CUDA graph.

Per step, one batched GEMM (``torch.baddbmm``/``torch.bmm``, cuBLAS) for the recurrent product
of every member, then ONE Triton launch for the step's pointwise work of every member and
sample: gates, cell and hidden state forward; gate gradients and the cell gradient
backward. Masks live on the device as per-(step, member, sample) factors (``scale * keep``),
so the loop has no host branch and the whole of it, for one layer, is captured as a CUDA graph
on its own buffers and replayed while the allocator hands back the same ones (every step of a
training loop): one launch per layer and pass instead of 2T. Blocked steps are
multiplied by zero here rather than skipped (on a GPU the branch costs more than the
product).

Layout is step-major, ``(T, K, B, .)``, so that each step's rows are one contiguous block.
Correctness of the kernels is tested on the CPU with ``TRITON_INTERPRET=1`` (Triton's
interpreter runs them on CPU tensors; no graph is captured there).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK = 256


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _forward_step(g_ptr, c_prev_ptr, c_ptr, tc_ptr, h_ptr, n, H, BLOCK: tl.constexpr):
    """Rows r of one step: pre-activations g (R, 4H) become [i, f, g, o] in place; writes
    c_t = f c_{t-1} + i g, tanh(c_t) and h_t = o tanh(c_t) (R, H each)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    r = offs // H
    base = r * 4 * H + offs % H
    i = _sigmoid(tl.load(g_ptr + base, mask=live))
    f = _sigmoid(tl.load(g_ptr + base + H, mask=live))
    u = 2.0 * _sigmoid(2.0 * tl.load(g_ptr + base + 2 * H, mask=live)) - 1.0
    o = _sigmoid(tl.load(g_ptr + base + 3 * H, mask=live))
    c = f * tl.load(c_prev_ptr + offs, mask=live) + i * u
    tc = 2.0 * _sigmoid(2.0 * c) - 1.0
    tl.store(g_ptr + base, i, mask=live)
    tl.store(g_ptr + base + H, f, mask=live)
    tl.store(g_ptr + base + 2 * H, u, mask=live)
    tl.store(g_ptr + base + 3 * H, o, mask=live)
    tl.store(c_ptr + offs, c, mask=live)
    tl.store(tc_ptr + offs, tc, mask=live)
    tl.store(h_ptr + offs, o * tc, mask=live)


@triton.jit
def _backward_step(
    dy_ptr, rec_ptr, rs_ptr, g_ptr, tc_ptr, c_prev_ptr, dc_ptr, ck_ptr, dg_ptr, n, H,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Rows r of one step: dh = dy + rs[r] * rec (the recurrent gradient of step t+1, already
    scaled by 1 - damp and the h-keep factor); writes the gate gradients dg (R, 4H) and turns
    dc into dL/dc_{t-1} times the c-keep factor ck[r]."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    r = offs // H
    base = r * 4 * H + offs % H
    dh = tl.load(dy_ptr + offs, mask=live) + tl.load(rs_ptr + r, mask=live) * tl.load(
        rec_ptr + offs, mask=live
    )
    i = tl.load(g_ptr + base, mask=live)
    f = tl.load(g_ptr + base + H, mask=live)
    u = tl.load(g_ptr + base + 2 * H, mask=live)
    o = tl.load(g_ptr + base + 3 * H, mask=live)
    t = tl.load(tc_ptr + offs, mask=live)
    dc = tl.load(dc_ptr + offs, mask=live) + dh * o * (1.0 - t * t)
    tl.store(dg_ptr + base + 3 * H, dh * t * (o - o * o), mask=live)
    tl.store(dg_ptr + base, dc * u * (i - i * i), mask=live)
    tl.store(dg_ptr + base + H, dc * tl.load(c_prev_ptr + offs, mask=live) * (f - f * f), mask=live)
    tl.store(dg_ptr + base + 2 * H, dc * i * (1.0 - u * u), mask=live)
    tl.store(dc_ptr + offs, dc * f * tl.load(ck_ptr + r, mask=live), mask=live)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def forward_step(g, c_prev, c, tc, h) -> None:
    """One step's pointwise forward (all tensors contiguous, ``g (R, 4H)``, others ``(R, H)``)."""
    n = c.numel()
    _forward_step[_grid(n)](g, c_prev, c, tc, h, n, c.shape[-1], BLOCK=BLOCK)


def backward_step(dy, rec, rs, g, tc, c_prev, dc, ck, dg) -> None:
    """One step's pointwise backward (``rs``, ``ck``: per-row factors ``(R,)``)."""
    n = dc.numel()
    _backward_step[_grid(n)](dy, rec, rs, g, tc, c_prev, dc, ck, dg, n, dc.shape[-1], BLOCK=BLOCK)


def input_projection(x, w_ih, bias):
    """Every step's input projection x W_ih^T + b, ``(T, K, B, 4H)`` from ``x (T, K, B, I)``."""
    T, K, B, n_in = x.shape
    G = w_ih.shape[1]
    b = torch.zeros(K, G, dtype=x.dtype, device=x.device) if bias is None else bias
    if n_in == 1:  # an outer product: the degenerate GEMM is slower
        return (x * w_ih.view(1, K, 1, G) + b.view(1, K, 1, G)).contiguous()
    out = torch.matmul(x, w_ih.transpose(1, 2).unsqueeze(0))
    return (out + b.view(1, K, 1, G)).contiguous()


def _factors(keep, scale, T, K, B, like) -> torch.Tensor:
    """Per-(step, member, sample) factors ``(T, K, B)``: ``scale * keep`` (keep (K, T) or
    (K, T, B), or None for all kept)."""
    if keep is None:
        return torch.full((T, K, B), scale, dtype=like.dtype, device=like.device)
    k = keep.to(like.dtype)
    k = k.permute(1, 0).unsqueeze(-1).expand(T, K, B) if k.dim() == 2 else k.permute(1, 0, 2)
    return (scale * k).contiguous()


def _forward_loop(gates, h0, c0, w_hh_t, cells, tanh_c, y) -> None:
    """The forward time loop on step-major buffers (capturable: no host decisions)."""
    h, c = h0, c0
    for t in range(gates.shape[0]):
        gates[t].baddbmm_(h, w_hh_t)
        R = gates.shape[1] * gates.shape[2]
        forward_step(gates[t].view(R, -1), c.reshape(R, -1), cells[t].view(R, -1),
                     tanh_c[t].view(R, -1), y[t].view(R, -1))  # fmt: skip
        h, c = y[t], cells[t]


def _backward_loop(dy, dh_last, dc, gates, cells, tanh_c, c0, w_hh, h_rs, c_keep, dgates, rec):
    """The backward time loop (capturable). ``dc`` enters as dL/dc_T and leaves as dL/dc_0;
    ``rec`` leaves as dG_0 W_hh (scaled by ``h_rs[0]`` for dL/dh_0 by the caller)."""
    T, K, B, H = dy.shape
    R = K * B
    rec.zero_()
    zero_rs = torch.zeros(R, dtype=dy.dtype, device=dy.device)
    for t in range(T - 1, -1, -1):
        dyt = dy[t] + dh_last if t == T - 1 else dy[t]
        c_prev = cells[t - 1] if t > 0 else c0
        rs = h_rs[t + 1].reshape(R) if t < T - 1 else zero_rs
        backward_step(dyt.reshape(R, H), rec.view(R, H), rs, gates[t].view(R, -1),
                      tanh_c[t].view(R, H), c_prev.reshape(R, H), dc.view(R, H),
                      c_keep[t].reshape(R), dgates[t].view(R, -1))  # fmt: skip
        torch.bmm(dgates[t], w_hh, out=rec)


class _TritonLayer(torch.autograd.Function):
    """One layer on the GPU backend, step-major like the module's input and the C++ backend:
    ``x (T, K, B, I)`` in, the last ``keep`` steps of ``y (T, K, B, H)`` out."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias, h_keep, c_keep, h_scale, keep):
        xs = x
        T, K, B, _ = xs.shape
        H = w_hh.shape[2]
        gates = input_projection(xs, w_ih, bias)
        cells = x.new_empty(T, K, B, H)
        tanh_c, y = torch.empty_like(cells), torch.empty_like(cells)
        _run(_forward_loop, (gates, h0.contiguous(), c0.contiguous(), w_hh.transpose(1, 2),
             cells, tanh_c, y), reads=4, writes=(0, 4, 5, 6))  # fmt: skip
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, gates, cells, tanh_c, y, h_keep, c_keep)
        ctx.has_bias, ctx.h_scale = bias is not None, h_scale
        ctx.mark_non_differentiable(*(m for m in (h_keep, c_keep) if m is not None))
        return y[-keep:], y[-1].clone(), cells[-1].clone()

    @staticmethod
    def backward(ctx, dy, dh_last, dc_last):
        x, h0, c0, w_ih, w_hh, gates, cells, tanh_c, y, h_keep, c_keep = ctx.saved_tensors
        T, K, B, H = y.shape
        dys = y.new_zeros(T, K, B, H)
        dys[T - dy.shape[0] :] = dy  # the outputs not kept had no gradient
        h_rs = _factors(h_keep, ctx.h_scale, T, K, B, y)
        c_fs = _factors(c_keep, 1.0, T, K, B, y)
        dc = dc_last.clone(memory_format=torch.contiguous_format)
        dgates = torch.empty_like(gates)
        rec = y.new_empty(K, B, H)
        _run(_backward_loop, (dys, dh_last.contiguous(), dc, gates, cells, tanh_c, c0.contiguous(),
             w_hh.contiguous(), h_rs, c_fs, dgates, rec), reads=10, writes=(2, 10, 11))  # fmt: skip
        dh0 = rec * h_rs[0].unsqueeze(-1)
        h_prev = torch.cat([h0.unsqueeze(0), y[:-1]])  # (T, K, B, H)
        dw_hh = torch.einsum("tkbg,tkbh->kgh", dgates, h_prev)
        dw_ih = torch.einsum("tkbg,tkbi->kgi", dgates, x)
        db = dgates.sum((0, 2)) if ctx.has_bias else None
        dx = torch.matmul(dgates, w_ih.unsqueeze(0)) if ctx.needs_input_grad[0] else None
        return dx, dh0, dc, dw_ih, dw_hh, db, None, None, None, None


# -- CUDA graphs ---------------------------------------------------------------------------

#: Graphs kept per loop and shape (most recently used last), each with the addresses of the
#: large arguments it was captured on. A training loop allocates its large buffers in the same
#: order every step, so PyTorch's caching allocator hands back the same addresses and one graph
#: replays every step; evaluation or a second model in between can alternate between a few.
MAX_GRAPHS_PER_SHAPE = 4
#: Arguments up to this size (the caching allocator's small-block limit, where addresses move
#: with every other small tensor) are copied in and out of the graph's own buffers instead.
SMALL_BYTES = 1 << 20
_GRAPHS: dict[tuple, list[tuple[tuple[int, ...], torch.cuda.CUDAGraph, dict]]] = {}
_STATS = {"eager": 0, "captures": 0, "replays": 0}
_capture_streams: dict[torch.device, torch.cuda.Stream] = {}


def graph_stats() -> dict[str, int]:
    """How the CUDA time loops ran in this process: ``eager`` (the first run of a shape, which
    compiles the kernels), ``captures`` and ``replays``."""
    return dict(_STATS)


def _graphs_on(tensor: torch.Tensor) -> bool:
    return (
        tensor.is_cuda
        and os.environ.get("TRITON_INTERPRET") != "1"
        and os.environ.get("HDETACH_CUDA_GRAPHS", "1") != "0"
    )


def _run(loop, args: tuple[torch.Tensor, ...], reads: int, writes: tuple[int, ...]) -> None:
    """Run a time loop over ``args`` (it reads the first ``reads`` and writes those at
    ``writes`` in full); on CUDA as a CUDA graph.

    Large arguments (the per-step activations) are captured in place, not copied: copies would
    double the activations' memory and cost a pass each way. A graph is replayed only where
    every large argument has the address, shape, strides and dtype it was captured with, so it
    touches exactly this call's memory. Small arguments (states, weights, per-step factors) go
    through the graph's own buffers. The first run of a shape is eager (Triton compiles, cuBLAS
    picks its kernels); a call on other addresses captures anew.
    """
    if not _graphs_on(args[0]):
        loop(*args)
        return
    key = (loop.__name__, args[0].device, tuple((a.shape, a.stride(), a.dtype) for a in args))
    small = [i for i, a in enumerate(args) if a.numel() * a.element_size() <= SMALL_BYTES]
    where = tuple(a.data_ptr() for i, a in enumerate(args) if i not in small)
    graphs = _GRAPHS.get(key)
    if graphs is None:
        _GRAPHS[key] = []
        loop(*args)
        _STATS["eager"] += 1
        return
    for i, entry in enumerate(graphs):
        if entry[0] == where:
            graphs.append(graphs.pop(i))
            _replay(entry, args, reads, writes)
            _STATS["replays"] += 1
            return
    own = {i: args[i].clone() for i in small}
    graph = _capture(loop, [own.get(i, a) for i, a in enumerate(args)])
    graphs.append((where, graph, own))
    if len(graphs) > MAX_GRAPHS_PER_SHAPE:
        del graphs[0]
    _replay(graphs[-1], args, reads, writes)
    _STATS["captures"] += 1


def _replay(entry, args, reads: int, writes: tuple[int, ...]) -> None:
    _, graph, own = entry
    for i, buffer in own.items():
        if i < reads:
            buffer.copy_(args[i])
    graph.replay()
    for i in writes:
        if i in own:
            args[i].copy_(own[i])


def _capture(loop, args) -> torch.cuda.CUDAGraph:
    """Capture ``loop(*args)`` on a side stream. Unlike ``torch.cuda.graph`` this does not
    empty the allocator's cache first, which would move the next step's buffers to other
    addresses and make every later call capture again."""
    device = args[0].device
    stream = _capture_streams.setdefault(device, torch.cuda.Stream(device))
    stream.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        graph.capture_begin()
        try:
            loop(*args)
        finally:
            graph.capture_end()
    torch.cuda.current_stream(device).wait_stream(stream)
    return graph


def layer(x, h0, c0, w_ih, w_hh, bias, h_keep, c_keep, h_scale, grad_on, keep_steps=None):
    """One layer on the GPU backend (the engine's entry point): ``x (T, K, B, I)``, states
    ``(K, B, H)``; returns the last ``keep_steps`` steps of ``y (T, K, B, H)``, ``h_T`` and
    ``c_T``. Without gradients per-step buffers stand in for the whole-sequence ones
    (transfer copying evaluates at T = 5000)."""
    keep = keep_steps or x.shape[0]
    if grad_on:
        return _TritonLayer.apply(x, h0, c0, w_ih, w_hh, bias, h_keep, c_keep, h_scale, keep)
    return _inference(x, h0, c0, w_ih, w_hh, bias, keep)


@torch.no_grad()
def _inference(x, h0, c0, w_ih, w_hh, bias, keep_steps):
    T, K, B, _ = x.shape
    H = w_hh.shape[2]
    w_hh_t = w_hh.transpose(1, 2)
    y = x.new_empty(T if keep_steps is None else keep_steps, K, B, H)
    h, c = h0.contiguous(), c0.clone(memory_format=torch.contiguous_format)
    tc, c_new = torch.empty_like(c), torch.empty_like(c)
    first = T - y.shape[0]
    R = K * B
    for t in range(T):
        g = input_projection(x[t].unsqueeze(0), w_ih, bias)[0].baddbmm_(h, w_hh_t)
        h_new = y[t - first] if t >= first else torch.empty_like(h)
        forward_step(g.view(R, -1), c.view(R, H), c_new.view(R, H), tc.view(R, H), h_new.view(R, H))
        h = h_new
        c, c_new = c_new, c
    return y, h.clone(), c.clone()
