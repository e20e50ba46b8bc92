"""The h-detach LSTM engine: a drop-in ``torch.nn.LSTM`` whose gradients follow the paper.

Two goals, as in PyTorch's ``benchmarks/fastrnns/custom_lstms.py``: easy to read and extend,
and fast enough that studies with many seeds are affordable. The slow, obviously-correct
path (the paper's Algorithm 1, a per-step cell with ``.detach()``) lives beside this file in
``trainables/oracle.py``; the tests hold this fast path against it.

Gradient modes (forward values are never changed, only gradients):

* ``p_detach``: h-detach. Before step ``t`` the previous hidden state enters the step through
  stop-gradient with probability ``p`` (one draw per step shared by the minibatch, as in the
  authors' code, or one per sample with ``per_sample=True``).
* ``c_detach``: the paper's ablation; the cell path ``c_{t-1} -> c_t`` is blocked instead.
* ``damp``: deterministic; the gradient through the recurrent h-path is multiplied by
  ``1 - damp`` at every step. By Corollary 1 this is the exact expectation of h-detach with
  ``p_detach = damp``.

Stacked layers draw one mask per step shared by all layers (``mask_scope="shared"``) or one
per layer (``"per_layer"``). Masks come from a ``torch.Generator`` the caller passes (kept
apart from the RNGs of initialisation and data) or are passed in explicitly.

Seed members: with ``members=K`` the module holds K independent LSTMs (parameters carry a
leading ``K`` dimension) that run together with batched matmuls on inputs ``(T, K, B, I)``.
Member ``k`` computes exactly what the same LSTM computes alone; one process then trains many
seeds at once.

The fast path builds no per-step autograd graph: ``LSTMLayer`` (``torch_lstm.py``) is a
custom autograd function that runs one layer's forward loop over time and, in backward, the
BPTT recursion written out; the compiled backends do the same in C++ or Triton. A blocked step
skips its ``W_hh^T dgates`` product, which is where h-detach saves computation (claim C9).
Parameters use ``torch.nn.LSTM``'s names, shapes and gate layout ``[i, f, g, o]`` so weights
copy both ways with ``load_state_dict``.

This file holds the module, its masks and the backend dispatch; the portable PyTorch path is
``trainables/torch_lstm.py``, the compiled kernels live in ``trainables/kernels``, and the
member heads and embeddings in ``trainables/members.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainables import kernels
from trainables.members import copy_member, stack_parameters
from trainables.torch_lstm import LSTMLayer, lstm_layer_inference

__all__ = ["DetachMasks", "HDetachLSTM"]

MASK_SCOPES = ("shared", "per_layer")


@dataclass(frozen=True)
class DetachMasks:
    """Which recurrent connections are blocked, per member, layer and step.

    ``h`` and ``c`` are boolean tensors of shape ``(K, L, T)`` (one draw per step, shared by
    the minibatch) or ``(K, L, T, B)`` (per sample); ``True`` at ``[k, l, t]`` means that in
    member ``k``, layer ``l``, the state ``h_{t-1}`` (resp. ``c_{t-1}``) enters step ``t``
    through stop-gradient. ``K = 1`` for a module without members. ``None``: nothing blocked.
    """

    h: Tensor | None = None
    c: Tensor | None = None

    def detached_fraction(self) -> Tensor:
        """Fraction of (layer, step[, sample]) h-connections blocked, per member: shape (K,)."""
        if self.h is None:
            raise ValueError("no h-detach masks: nothing was blocked")
        return self.h.flatten(1).double().mean(1)


def _check_probability(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


class _CppLayer(torch.autograd.Function):
    """One layer through the C++ kernels (``trainables/kernels/lstm_*.cpp``), step-major like
    the module's input: ``x (T, K, B, I)``, ``h0, c0 (K, B, H)``, keep factors ``(K, T)`` or
    ``(K, T, B)`` of x's dtype (or None); returns the last ``keep`` steps of ``y (T, K, B, H)``
    (their gradients are all backward needs), ``h_T`` and ``c_T``."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias, h_keep, c_keep, h_scale, keep):
        y, h_t, c_t, gates, cells, tanh_c = torch.ops.hdetach.lstm_forward(
            x, h0, c0, w_ih, w_hh, bias, True, x.shape[0]
        )
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, gates, cells, tanh_c, y, h_keep, c_keep)
        ctx.has_bias = bias is not None
        ctx.h_scale = h_scale
        ctx.mark_non_differentiable(*(m for m in (h_keep, c_keep) if m is not None))
        return y[-keep:], h_t, c_t

    @staticmethod
    def backward(ctx, dy, dh_last, dc_last):
        x, h0, c0, w_ih, w_hh, gates, cells, tanh_c, y, h_keep, c_keep = ctx.saved_tensors
        dx, dh0, dc0, dw_ih, dw_hh, db = torch.ops.hdetach.lstm_backward(
            dy, dh_last, dc_last, x, h0, c0, w_ih, w_hh, gates, cells, tanh_c, y,
            h_keep, c_keep, ctx.h_scale, ctx.needs_input_grad[0], ctx.has_bias,
        )  # fmt: skip
        return dx, dh0, dc0, dw_ih, dw_hh, db, None, None, None, None


class HDetachLSTM(nn.Module):
    """``torch.nn.LSTM`` with h-detach, c-detach and damped gradients, and seed members.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first: as ``torch.nn.LSTM``.
        p_detach: probability of blocking ``h_{t-1}`` before each step (0 = vanilla LSTM).
        c_detach: probability of blocking ``c_{t-1}`` before each step (ablation).
        damp: deterministic factor; the recurrent h-gradient is scaled by ``1 - damp``.
        mask_scope: ``"shared"`` (one draw per step for all layers) or ``"per_layer"``.
        per_sample: one draw per step and sample instead of one per step for the batch.
        members: ``None`` for one LSTM with ``torch.nn.LSTM`` shapes, or ``K >= 1`` for K
            independent members (parameters ``(K, ...)``, inputs ``(T, K, B, I)``).
        backend: ``"auto"`` (the fastest that runs here), ``"cpp"``, ``"torch"``,
            ``"triton"`` or ``"persistent"`` (see ``trainables/kernels``); every backend
            computes the same values up to rounding.
        precision: ``"fp32"`` (default) or ``"tf32"``: the persistent backend's recurrent
            products on TF32 tensor cores (opt in; other backends take only ``"fp32"``).

    ``forward(x, state=None, *, generator=None, masks=None)`` returns
    ``(output, (h_n, c_n))`` like ``torch.nn.LSTM``: ``output (T, B, H)`` (``(T, K, B, H)``
    with members), ``h_n, c_n (L, B, H)`` (``(L, K, B, H)``). ``output_steps=n`` returns only
    the last ``n`` steps of ``output`` (without gradients nothing else is kept in memory, which
    is what evaluation on long sequences needs). Masks are drawn from
    ``generator`` (one ``torch.Generator``, or one per member) when gradients can flow and a
    stochastic mode is on; pass ``masks`` (see ``DetachMasks``) to fix them.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        *,
        p_detach: float = 0.0,
        c_detach: float = 0.0,
        damp: float = 0.0,
        mask_scope: str = "shared",
        per_sample: bool = False,
        members: int | None = None,
        backend: str = "auto",
        precision: str = "fp32",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if members is not None and (int(members) != members or members < 1):
            raise ValueError(f"members (K) must be an integer >= 1, got {members}")
        if mask_scope not in MASK_SCOPES:
            raise ValueError(f"mask_scope must be one of {MASK_SCOPES}, got {mask_scope!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bias, batch_first
        self.p_detach = _check_probability("p_detach", p_detach)
        self.c_detach = _check_probability("c_detach", c_detach)
        self.damp = _check_probability("damp", damp)
        self.mask_scope, self.per_sample, self.members = mask_scope, per_sample, members
        self.backend = kernels.check_backend(backend)
        self.precision = kernels.check_precision(precision)
        lead = () if members is None else (members,)
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size
            shapes = {
                "weight_ih": (4 * hidden_size, in_size),
                "weight_hh": (4 * hidden_size, hidden_size),
            }
            if bias:
                shapes |= {"bias_ih": (4 * hidden_size,), "bias_hh": (4 * hidden_size,)}
            for name, shape in shapes.items():
                param = nn.Parameter(torch.empty(*lead, *shape, **factory))
                self.register_parameter(f"{name}_l{layer}", param)
        self.reset_parameters()

    @property
    def num_members(self) -> int:
        return 1 if self.members is None else self.members

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``torch.nn.LSTM``'s init: every parameter uniform(-1/sqrt(H), 1/sqrt(H)).

        Same order of draws as ``torch.nn.LSTM`` (``weight_ih``, ``weight_hh``, ``bias_ih``,
        ``bias_hh`` per layer), so a module initialised from a seeded generator matches
        ``nn.LSTM`` initialised from that seed. The authors' cell draws in another order
        (``i2h.weight``, ``i2h.bias``, ``h2h.weight``, ``h2h.bias``) and lays its gates out
        ``[i, f, o, g]``, so one seed does not give their initial weights;
        ``trainables/authors.py`` converts weights between the two layouts.
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for param in self.parameters():
                param.uniform_(-bound, bound, generator=generator)

    def layer_parameters(self, layer: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        get = lambda name: getattr(self, f"{name}_l{layer}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"]
        for name in ("p_detach", "c_detach", "damp"):
            if getattr(self, name):
                parts.append(f"{name}={getattr(self, name)}")
        if self.num_layers > 1 and self.p_detach:
            parts.append(f"mask_scope={self.mask_scope!r}")
        if self.per_sample:
            parts.append("per_sample=True")
        if self.members is not None:
            parts.append(f"members={self.members}")
        return ", ".join(parts)

    # -- seed members ---------------------------------------------------------------------

    def _config(self) -> dict:
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bias": self.bias,
            "batch_first": self.batch_first,
            "p_detach": self.p_detach,
            "c_detach": self.c_detach,
            "damp": self.damp,
            "mask_scope": self.mask_scope,
            "per_sample": self.per_sample,
            "backend": self.backend,
            "precision": self.precision,
        }

    @classmethod
    def from_members(cls, modules: Sequence[HDetachLSTM]) -> HDetachLSTM:
        """Stack K single LSTMs (same configuration) into one module with K members."""
        if not modules:
            raise ValueError("from_members needs at least one module, got 0")
        config = modules[0]._config()
        for m in modules:
            if m.members is not None or m._config() != config:
                raise ValueError("from_members needs single LSTMs with identical configuration")
        ref = next(modules[0].parameters())
        stacked = cls(**config, members=len(modules), device=ref.device, dtype=ref.dtype)
        stack_parameters(stacked, modules)
        return stacked

    def member(self, k: int) -> HDetachLSTM:
        """A standalone copy of member ``k`` (``torch.nn.LSTM``-shaped parameters)."""
        if self.members is None or not 0 <= k < self.members:
            raise ValueError(f"member index must be in [0, {self.num_members}), got {k}")
        ref = next(self.parameters())
        single = type(self)(**self._config(), device=ref.device, dtype=ref.dtype)
        copy_member(single, self, k)
        return single

    # -- masks ----------------------------------------------------------------------------

    def sample_masks(
        self,
        seq_len: int,
        batch_size: int,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> DetachMasks:
        """Draw h- and c-masks for one forward pass (on the CPU, so any device agrees).

        Member ``k`` draws from ``generator[k]`` (or all from one generator, in member order)
        exactly what a single LSTM would draw, so member runs match single runs.
        """
        K = self.num_members
        gens = list(generator) if isinstance(generator, Sequence) else [generator] * K
        if len(gens) != K:
            raise ValueError(f"need one generator per member ({K}), got {len(gens)}")
        layers = self.num_layers if self.mask_scope == "per_layer" else 1
        shape = (layers, seq_len) + ((batch_size,) if self.per_sample else ())

        def draw(p: float) -> Tensor | None:
            if p == 0.0:
                return None
            per_member = [torch.rand(shape, generator=g) < p for g in gens]
            return torch.stack(per_member).expand(K, self.num_layers, *shape[1:])

        return DetachMasks(h=draw(self.p_detach), c=draw(self.c_detach))

    def _check_mask(self, name: str, mask: Tensor | None, T: int, B: int) -> Tensor | None:
        if mask is None:
            return None
        K, L = self.num_members, self.num_layers
        if mask.dim() == 1:
            mask = mask.view(1, 1, -1)
        ok = (
            mask.dim() in (3, 4)
            and tuple(mask.shape[1:3]) in ((L, T), (1, T))
            and mask.shape[0] in (1, K)
            and (mask.dim() == 3 or mask.shape[3] in (1, B))
        )
        if not ok:
            raise ValueError(
                f"masks.{name} must have shape (K, L, T) or (K, L, T, B) = "
                f"({K}, {L}, {T}[, {B}]), got {tuple(mask.shape)}"
            )
        return mask.bool().expand(K, L, *mask.shape[2:])

    # -- forward --------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        state: tuple[Tensor, Tensor] | None = None,
        *,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        masks: DetachMasks | None = None,
        output_steps: int | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        K, L, H = self.num_members, self.num_layers, self.hidden_size
        if output_steps is not None and output_steps < 1:
            raise ValueError(f"output_steps must be >= 1, got {output_steps}")
        want = 3 if self.members is None else 4
        if x.dim() != want or x.shape[-1] != self.input_size:
            layout = {3: "T, B", 4: "T, K, B"}[want]
            layout = ", ".join(reversed(layout.split(", "))) if self.batch_first else layout
            raise ValueError(
                f"input must have shape ({layout}, {self.input_size}), got {tuple(x.shape)}"
            )
        if self.batch_first:
            x = x.transpose(0, 1) if want == 3 else x.permute(2, 1, 0, 3)
        # -> (K, T, B, I): members first inside the engine.
        xk = x.unsqueeze(0) if self.members is None else x.permute(1, 0, 2, 3)
        _, T, B, _ = xk.shape
        if K != xk.shape[0]:
            raise ValueError(f"input has {xk.shape[0]} members, module has {K}")

        if state is None:
            zeros = xk.new_zeros(L, K, B, H)
            h0, c0 = zeros, zeros
        else:
            h0, c0 = state
            expect = (L, B, H) if self.members is None else (L, K, B, H)
            for name, s in (("h0", h0), ("c0", c0)):
                if tuple(s.shape) != expect:
                    raise ValueError(f"{name} must have shape {expect}, got {tuple(s.shape)}")
            if self.members is None:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)

        grad_on = torch.is_grad_enabled() and (
            xk.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if masks is None and grad_on and (self.p_detach or self.c_detach):
            masks = self.sample_masks(T, B, generator)
        h_mask = self._check_mask("h", masks.h, T, B) if masks is not None else None
        c_mask = self._check_mask("c", masks.c, T, B) if masks is not None else None

        backend = kernels.resolve(self.backend, xk.device, xk.dtype)
        if self.precision != "fp32" and backend != "persistent":
            raise ValueError(
                f"precision={self.precision!r} needs backend='persistent', got {backend!r}"
            )
        if backend != "torch":
            steps = x.unsqueeze(1) if self.members is None else x  # (T, K, B, I), no copy
            return self._forward_kernels(
                backend, steps, h0, c0, h_mask, c_mask, grad_on, output_steps
            )
        layer_in = xk.transpose(2, 3)  # (K, T, I, B): the engine works feature-major
        h_n, c_n = [], []
        for layer in range(L):
            w_ih, w_hh, bias = self._member_weights(layer)
            h0_l, c0_l = h0[layer].transpose(1, 2), c0[layer].transpose(1, 2)
            if grad_on:
                h_keep, h_skip = self._keep(h_mask, layer, xk, skippable=True)
                c_keep, _ = self._keep(c_mask, layer, xk, skippable=False)
                layer_in, h_last, c_last = LSTMLayer.apply(
                    layer_in, h0_l, c0_l, w_ih, w_hh, bias,
                    h_keep, c_keep, h_skip, 1.0 - self.damp,
                )  # fmt: skip
            else:  # evaluation: no graph, per-step buffers, only the outputs asked for
                keep = T if layer < L - 1 or output_steps is None else min(output_steps, T)
                layer_in, h_last, c_last = lstm_layer_inference(
                    layer_in, h0_l, c0_l, w_ih, w_hh, bias, keep
                )
            h_n.append(h_last.transpose(1, 2))
            c_n.append(c_last.transpose(1, 2))
        if output_steps is not None:
            layer_in = layer_in[:, -output_steps:]

        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        # (K, T, H, B) -> the caller's layout, contiguous as torch.nn.LSTM's output is.
        if self.members is None:
            h_n, c_n = h_n[:, 0], c_n[:, 0]
            out = layer_in.squeeze(0)  # a view (see _forward_kernels)
            out = out.permute(2, 0, 1) if self.batch_first else out.transpose(1, 2)
        else:
            out = layer_in.permute(3, 0, 1, 2) if self.batch_first else layer_in.permute(1, 0, 3, 2)
        return out.contiguous(), (h_n, c_n)

    def _member_weights(self, layer: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """``w_ih (K, 4H, I)``, ``w_hh (K, 4H, H)`` and the summed bias ``(K, 4H)`` (or None)
        of one layer, with a member axis also for a member-less module."""
        w_ih, w_hh, b_ih, b_hh = self.layer_parameters(layer)
        if self.members is None:
            w_ih, w_hh = w_ih.unsqueeze(0), w_hh.unsqueeze(0)
            b_ih = None if b_ih is None else b_ih.unsqueeze(0)
            b_hh = None if b_hh is None else b_hh.unsqueeze(0)
        return w_ih, w_hh, None if b_ih is None else b_ih + b_hh

    def _forward_kernels(self, backend, xs, h0, c0, h_mask, c_mask, grad_on, output_steps):
        """The layers through a compiled backend, step-major ``(T, K, B, .)`` throughout: the
        input as the module takes it, the output as it gives it back."""
        L = self.num_layers
        T = xs.shape[0]
        layer_in = xs.contiguous()
        h_n, c_n = [], []
        for layer in range(L):
            w_ih, w_hh, bias = self._member_weights(layer)
            h0_l, c0_l = h0[layer], c0[layer]
            h_keep = _keep_factors(h_mask, layer, layer_in)
            c_keep = _keep_factors(c_mask, layer, layer_in)
            # The last layer keeps only the outputs asked for (and, training, their gradients).
            keep = T if layer < L - 1 or output_steps is None else min(output_steps, T)
            if backend == "triton":
                from trainables.kernels import triton_lstm

                layer_in, h_last, c_last = triton_lstm.layer(
                    layer_in, h0_l, c0_l, w_ih, w_hh, bias, h_keep, c_keep, 1.0 - self.damp,
                    grad_on, keep,
                )  # fmt: skip
            elif backend == "persistent":
                from trainables.kernels import persistent_lstm

                layer_in, h_last, c_last = persistent_lstm.layer(
                    layer_in, h0_l, c0_l, w_ih, w_hh, bias, h_keep, c_keep, 1.0 - self.damp,
                    grad_on, keep, self.precision,
                )  # fmt: skip
            elif grad_on:
                layer_in, h_last, c_last = _CppLayer.apply(
                    layer_in, h0_l, c0_l, w_ih, w_hh, bias, h_keep, c_keep, 1.0 - self.damp, keep
                )
            else:  # evaluation: per-step buffers, only the outputs asked for
                layer_in, h_last, c_last = torch.ops.hdetach.lstm_forward(
                    layer_in, h0_l, c0_l, w_ih, w_hh, bias, False, keep
                )[:3]
            h_n.append(h_last)
            c_n.append(c_last)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if self.members is None:
            h_n, c_n = h_n[:, 0], c_n[:, 0]
            # squeeze, not [:, 0]: the gradient of a view is a view, where indexing's backward
            # would zero-fill a (T, 1, B, H) buffer and copy the output's gradient into it.
            out = layer_in.squeeze(1)
            out = out.transpose(0, 1) if self.batch_first else out
        else:
            out = layer_in.permute(2, 1, 0, 3) if self.batch_first else layer_in
        return out.contiguous(), (h_n, c_n)

    @staticmethod
    def _keep(mask: Tensor | None, layer: int, like: Tensor, skippable: bool):
        """Float keep-factors (K, T[, B]) for one layer, and the steps to skip outright."""
        if mask is None:
            return None, None
        m = mask[:, layer]
        if not bool(m.any()):
            return None, None
        if skippable and m.shape[0] == 1 and m.dim() == 2:
            return None, m[0].tolist()  # one member, one draw per step: skip blocked steps
        keep = (~m).to(device=like.device, dtype=like.dtype)
        return keep, None


def _keep_factors(mask: Tensor | None, layer: int, like: Tensor) -> Tensor | None:
    """Keep factors (1 kept, 0 blocked) of one layer for the compiled backends: ``(K, T)`` or
    ``(K, T, B)`` in the input's dtype and device, or None when nothing is blocked."""
    if mask is None:
        return None
    m = mask[:, layer]
    if not bool(m.any()):
        return None
    return (~m).to(device=like.device, dtype=like.dtype).contiguous()
