"""The engine's portable PyTorch path: one LSTM layer over a whole sequence for K seed members,
as a custom autograd function (any device, any float dtype).

``HDetachLSTM`` (``trainables/engine.py``) runs it where no compiled backend does, and for
inference. No per-step autograd graph: ``LSTMLayer`` runs one layer's forward loop over time
and, in backward, the BPTT recursion written out. All per-step work that does not depend on
the recursion (input projections, gate derivatives, weight gradients) is done for all steps at
once in large ops. A blocked step skips its ``W_hh^T dgates`` product, which is where h-detach
saves computation (claim C9).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["LSTMLayer", "lstm_cell", "lstm_layer_inference"]


def doubled_g(w_ih: Tensor, w_hh: Tensor, bias: Tensor | None):
    """The weights with the g-gate rows doubled (exact in floating point), so that one sigmoid
    over all four gates gives ``sigmoid(2a)`` for g, from which ``tanh(a) = 2 sigmoid(2a) - 1``.
    Returns ``w_ih2 (K, 4H, I)``, ``w_hh2 (K, 4H, H)``, ``b2 (K, 4H, 1)`` or ``None``."""
    H = w_hh.shape[2]
    double_g = w_hh.new_ones(4 * H, 1)
    double_g[2 * H : 3 * H] = 2.0
    b2 = None if bias is None else bias.unsqueeze(-1) * double_g
    return w_ih * double_g, w_hh * double_g, b2


def lstm_cell(gates, c_prev, c_out, tc_out, h_out, one):
    """One step after the gate pre-activations: ``gates`` = (i, f, g, o) views of sigmoids of
    the (g-doubled) pre-activations, turned in place into the gates; writes ``c_t``,
    ``tanh(c_t)`` and ``h_t`` into the given buffers (``c_out`` may be ``c_prev``)."""
    i, f, g, o = gates
    g.add_(g).sub_(one)  # tanh(a) = 2 sigmoid(2a) - 1
    c = torch.mul(f, c_prev, out=c_out).addcmul_(i, g)
    tc = torch.add(c, c, out=tc_out).sigmoid_()
    tc.add_(tc).sub_(one)
    return c, torch.mul(o, tc, out=h_out)


class LSTMLayer(torch.autograd.Function):
    """One LSTM layer over a whole sequence, for K members at once.

    Works feature-major ("transposed"): a step's state is ``(H, B)`` and its gates ``(4H, B)``
    (``gates_t = W_ih x_t + W_hh h_{t-1} + b``), so that every gate is one contiguous block
    and the elementwise work runs on contiguous memory.

    Inputs: ``xT (K, T, I, B)``, ``h0, c0 (K, H, B)``, ``w_ih (K, 4H, I)``, ``w_hh (K, 4H, H)``,
    ``bias (K, 4H)`` (``b_ih + b_hh``, or ``None``); ``h_keep``/``c_keep``: ``None`` or float 0/1
    tensors ``(K, T)`` or ``(K, T, B)``; ``h_skip``: a list of booleans, set when a step's block
    applies to every member and sample so its ``W_hh^T dgates`` product can be skipped outright;
    ``h_scale`` multiplies the recurrent h-gradient at every step (``1 - damp``).
    Returns ``yT (K, T, H, B)``, ``h_T``, ``c_T``.

    Speed notes (CPU, measured in ``benchmarks/engine.py``): large tensors are written through
    ``out=`` into buffers allocated once per call; ``tanh`` is computed as
    ``2 * sigmoid(2a) - 1`` (one sigmoid serves all four gates; doubling is exact in floating
    point), several times cheaper than ``tanh`` here; weight gradients accumulate step by step
    so no ``(T, 4H, B)`` gradient buffer is ever stored.
    """

    @staticmethod
    def forward(ctx, xT, h0, c0, w_ih, w_hh, bias, h_keep, c_keep, h_skip, h_scale):
        K, T, n_in, B = xT.shape
        H = w_hh.shape[2]
        one = xT.new_ones(())  # 0-dim operands: cheaper per call than Python scalars
        w_ih2, w_hh2, b2 = doubled_g(w_ih, w_hh, bias)
        gates = xT.new_empty(K, T, 4 * H, B)
        if n_in == 1:  # an outer product: the degenerate GEMM is far slower than this
            torch.mul(w_ih2.unsqueeze(1), xT, out=gates)
        else:
            torch.matmul(w_ih2.unsqueeze(1), xT, out=gates)
        if b2 is not None:
            gates.add_(b2.unsqueeze(1))
        cells, tanh_c, yT = (xT.new_empty(K, T, H, B) for _ in range(3))

        # Per-step views, made once in C++ rather than by slicing in the loop.
        g_all = gates.unbind(1)
        g_parts = list(zip(*(part.unbind(1) for part in gates.split(H, dim=2)), strict=True))
        c_s, tc_s, y_s = cells.unbind(1), tanh_c.unbind(1), yT.unbind(1)
        h, c = h0, c0
        for t in range(T):
            g_all[t].baddbmm_(w_hh2, h).sigmoid_()
            c, h = lstm_cell(g_parts[t], c, c_s[t], tc_s[t], y_s[t], one)
        ctx.save_for_backward(xT, h0, c0, w_ih, w_hh, gates, cells, tanh_c, yT, h_keep, c_keep)
        ctx.has_bias = bias is not None
        ctx.h_skip = h_skip
        ctx.h_scale = h_scale
        ctx.mark_non_differentiable(*(m for m in (h_keep, c_keep) if m is not None))
        return yT, h.clone(), c.clone()

    @staticmethod
    def backward(ctx, dyT, dh_last, dc_last):
        xT, h0, c0, w_ih, w_hh, gates, cells, tanh_c, yT, h_keep, c_keep = ctx.saved_tensors
        K, T, H, B = yT.shape
        n_in = xT.shape[2]
        d_h = dyT.clone(memory_format=torch.contiguous_format)  # dL/dh_t: loss, recurrence
        d_h[:, -1] += dh_last
        d_h0 = torch.zeros_like(h0)
        dc = dc_last.clone(memory_format=torch.contiguous_format)
        want_dx = ctx.needs_input_grad[0]
        d_xT = torch.empty_like(xT) if want_dx else None
        d_w_hh = torch.zeros_like(w_hh)
        # [x_t; 1] so that one GEMM per step gives dW_ih and db together.
        x1 = xT.new_ones(K, T, n_in + ctx.has_bias, B)
        x1[:, :, :n_in] = xT
        d_w_ihb = xT.new_zeros(K, 4 * H, n_in + ctx.has_bias)
        w_hh_t, w_ih_t = w_hh.transpose(1, 2), w_ih.transpose(1, 2)
        scale, skip = ctx.h_scale, ctx.h_skip
        keep = None if h_keep is None else h_keep.view(K, T, 1, -1).unbind(1)
        c_keep = None if c_keep is None else c_keep.view(K, T, 1, -1).unbind(1)

        # Per-step views (made once, in C++); the step's values are cache-hot in the loop.
        i_s, f_s, g_s, o_s = (part.unbind(1) for part in gates.split(H, dim=2))
        tc_s, x1_s = tanh_c.unbind(1), x1.unbind(1)
        h_prev_s = (h0,) + yT.unbind(1)[:-1]
        c_prev_s = (c0,) + cells.unbind(1)[:-1]
        dh_s = d_h.unbind(1) + (d_h0,)  # dh_s[t - 1] is d_h0 at t = 0
        dx_s = d_xT.unbind(1) if want_dx else None
        dg = xT.new_empty(K, 4 * H, B)  # one step's gate gradients, reused every step
        d_i, d_f, d_g, d_o = dg.split(H, dim=1)
        k_c = torch.empty_like(dc)
        for t in range(T - 1, -1, -1):
            dh, i, f, g, o, tc = dh_s[t], i_s[t], f_s[t], g_s[t], o_s[t], tc_s[t]
            # dL/dc_t += dL/dh_t * o_t * (1 - tanh(c_t)^2)
            torch.mul(tc, tc, out=k_c)
            dc.addcmul_(dh, torch.addcmul(o, o, k_c, value=-1, out=k_c))
            # gradients of the gate pre-activations (sigmoid' = s - s^2, tanh' = 1 - g^2)
            torch.addcmul(o, o, o, value=-1, out=d_o).mul_(tc).mul_(dh)
            torch.addcmul(i, i, i, value=-1, out=d_i).mul_(g).mul_(dc)
            torch.addcmul(f, f, f, value=-1, out=d_f).mul_(c_prev_s[t]).mul_(dc)
            torch.mul(g, g, out=d_g)
            torch.addcmul(i, i, d_g, value=-1, out=d_g).mul_(dc)
            dc.mul_(f)
            if c_keep is not None:
                dc.mul_(c_keep[t])
            d_w_hh.baddbmm_(dg, h_prev_s[t].transpose(1, 2))
            d_w_ihb.baddbmm_(dg, x1_s[t].transpose(1, 2))
            if want_dx:
                torch.bmm(w_ih_t, dg, out=dx_s[t])
            if skip is not None and skip[t]:
                continue  # h_{t-1} was blocked at step t: no W_hh^T dgates product at all
            if keep is None:
                dh_s[t - 1].baddbmm_(w_hh_t, dg, alpha=scale)
            else:
                dh_s[t - 1].addcmul_(torch.bmm(w_hh_t, dg), keep[t], value=scale)

        d_w_ih = d_w_ihb[..., :n_in]
        d_bias = d_w_ihb[..., -1] if ctx.has_bias else None
        return d_xT, d_h0, dc, d_w_ih, d_w_hh, d_bias, None, None, None, None


def lstm_layer_inference(xT, h0, c0, w_ih, w_hh, bias, keep_steps: int):
    """Forward only (no graph, nothing saved): the same arithmetic as ``LSTMLayer.forward``
    step by step (so the values agree bit for bit for inputs of size 1), with per-step
    buffers instead of whole-sequence ones; returns only the last ``keep_steps`` outputs."""
    K, T, n_in, B = xT.shape
    H = w_hh.shape[2]
    one = xT.new_ones(())
    w_ih2, w_hh2, b2 = doubled_g(w_ih, w_hh, bias)
    yT = xT.new_empty(K, keep_steps, H, B)
    y_s, first_kept = yT.unbind(1), T - keep_steps
    g = xT.new_empty(K, 4 * H, B)
    parts = g.split(H, dim=1)
    tc, h_buf = xT.new_empty(K, H, B), xT.new_empty(K, H, B)
    h, c = h0, c0.clone(memory_format=torch.contiguous_format)
    for t, x_t in enumerate(xT.unbind(1)):
        if n_in == 1:
            torch.mul(w_ih2, x_t, out=g)
        else:
            torch.bmm(w_ih2, x_t, out=g)
        if b2 is not None:
            g.add_(b2)
        g.baddbmm_(w_hh2, h).sigmoid_()
        c, h = lstm_cell(parts, c, c, tc, y_s[t - first_kept] if t >= first_kept else h_buf, one)
    return yT, h.clone(), c
