"""The slow, obviously-correct h-detach: the paper's Algorithm 1 exactly as written.

A per-step Python loop over a hand-written LSTM cell, with ``h = h.detach()`` before the
steps whose mask says so, and autograd doing the rest, which is the authors' approach. It is
kept as the reference that the fast engine (``trainables/engine.py``) is held against; it is
also the "authors' loop" row of ``benchmarks/engine.py``. It reads the parameters of a
single (member-less) ``HDetachLSTM`` so both compute with the same weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainables.engine import DetachMasks, HDetachLSTM

__all__ = ["GRADIENT_MODES", "lstm_cell", "oracle_lstm"]

#: Every gradient mode the engine has, as ``HDetachLSTM`` keyword arguments: what the tests
#: and the GPU check hold each backend to, against this oracle.
GRADIENT_MODES = {
    "vanilla p=0": {},
    "h-detach p=0.5": {"p_detach": 0.5},
    "h-detach p=1": {"p_detach": 1.0},
    "h-detach per-sample": {"p_detach": 0.5, "per_sample": True},
    "c-detach p=0.5": {"c_detach": 0.5},
    "damp 0.3": {"damp": 0.3},
    "all together": {"p_detach": 0.3, "c_detach": 0.3, "damp": 0.2},
}


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih, w_hh, b_ih, b_hh) -> tuple[Tensor, Tensor]:
    """One step, gate layout ``[i, f, g, o]`` (``torch.nn.LSTM``'s)."""
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih + b_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c + i * g
    h = o * c.tanh()
    return h, c


def _stop_gradient(state: Tensor, block: Tensor | bool) -> Tensor:
    """``stop_gradient(state)`` where ``block`` is set (a bool, or one flag per sample)."""
    if isinstance(block, bool):
        return state.detach() if block else state
    return state.detach().where(block.unsqueeze(-1), state)


def oracle_lstm(
    lstm: HDetachLSTM,
    x: Tensor,
    state: tuple[Tensor, Tensor] | None = None,
    masks: DetachMasks | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Algorithm 1 over ``lstm``'s parameters: ``x (T, B, I)`` -> ``(y, (h_n, c_n))``.

    ``masks`` as in ``DetachMasks`` with ``K = 1`` (fixed, so that results are comparable);
    ``lstm.damp`` scales the gradient through each ``h_{t-1}`` by ``1 - damp``.
    """
    if lstm.members is not None or lstm.batch_first:
        raise ValueError("the oracle takes a single, time-major LSTM")
    T, B, _ = x.shape
    L, H = lstm.num_layers, lstm.hidden_size
    h = [x.new_zeros(B, H) for _ in range(L)] if state is None else list(state[0].unbind(0))
    c = [x.new_zeros(B, H) for _ in range(L)] if state is None else list(state[1].unbind(0))

    def flag(mask: Tensor | None, layer: int, t: int):
        if mask is None:
            return False
        m = mask[0, layer if mask.shape[1] > 1 else 0, t]
        return bool(m) if m.dim() == 0 else m

    outputs = []
    for t in range(T):
        inp = x[t]
        for layer in range(L):
            h_prev = _stop_gradient(h[layer], flag(masks and masks.h, layer, t))
            if lstm.damp:
                detached = h_prev.detach()
                h_prev = detached + (1.0 - lstm.damp) * (h_prev - detached)
            c_prev = _stop_gradient(c[layer], flag(masks and masks.c, layer, t))
            h[layer], c[layer] = lstm_cell(inp, h_prev, c_prev, *lstm.layer_parameters(layer))
            inp = h[layer]
        outputs.append(inp)
    return torch.stack(outputs), (torch.stack(h), torch.stack(c))
