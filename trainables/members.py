"""Seed members of the small modules around the LSTM: K independent copies in one module.

``MemberLinear`` (the heads), ``MemberEmbedding`` (the language model's and captioning's
token embeddings), and the two helpers that stack K single modules into one and take member
``k`` back out exactly (``HDetachLSTM`` uses them too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from trainables import kernels

__all__ = ["MemberEmbedding", "MemberLinear", "copy_member", "init_embedding", "stack_parameters"]


#: Widest head the C++ member-head kernels take: where they stopped beating the batched
#: matmuls on copying's rows when it was chosen (faster at 9 and 32 outputs, slower at 64).
HEAD_CPP_MAX_OUT = 32


class MemberLinear(nn.Module):
    """``nn.Linear`` for K seed members: member ``k`` maps with its own weight and bias.

    Input ``(..., K, B, in_features)`` (e.g. ``(T, K, B, H)``), output ``(..., K, B, out)``.
    ``from_members``/``member`` stack and split ``nn.Linear`` modules exactly.

    ``backend`` as ``HDetachLSTM``'s: on the CPU ``cpp`` (``auto``'s choice there) maps the
    rows in place with the C++ kernels, one pass each way, for heads of at most
    ``HEAD_CPP_MAX_OUT`` outputs (a task's classes); elsewhere, with ``torch``, and for wide
    heads (a vocabulary), batched matmuls. Those need the input copied member-major and run
    the weight gradient in the BLAS's slow skinny orientation (``benchmarks/engine.py``'s
    trainer-head rows time both). The two agree to rounding; each is bitwise reproducible, for
    any thread count.
    """

    def __init__(
        self,
        members: int,
        in_features: int,
        out_features: int,
        device=None,
        dtype=None,
        backend: str = "auto",
    ):
        super().__init__()
        if int(members) != members or members < 1:
            raise ValueError(f"members (K) must be an integer >= 1, got {members}")
        self.backend = kernels.check_backend(backend)
        factory = {"device": device, "dtype": dtype}
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(members, out_features, **factory))
        bound = 1.0 / math.sqrt(in_features)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3 or x.shape[-3] != self.members or x.shape[-1] != self.in_features:
            raise ValueError(
                f"input must have shape (..., {self.members}, B, {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        lead = x.shape[:-3]
        backend = kernels.resolve(self.backend, x.device, x.dtype)
        if backend == "cpp" and self.out_features <= HEAD_CPP_MAX_OUT:
            rows = x.reshape(-1, *x.shape[-3:])  # (L, K, B, in): a view of the layer's output
            out = MemberHeadFunction.apply(rows, self.weight, self.bias)
            return out.view(*lead, *out.shape[1:])
        xk = x.movedim(-3, 0).reshape(self.members, -1, self.in_features)
        out = torch.baddbmm(self.bias.unsqueeze(1), xk, self.weight.transpose(1, 2))
        return out.view(self.members, *lead, x.shape[-2], self.out_features).movedim(0, -3)

    @classmethod
    def from_members(cls, linears: Sequence[nn.Linear], backend: str = "auto") -> MemberLinear:
        ref = linears[0]
        stacked = cls(
            len(linears),
            ref.in_features,
            ref.out_features,
            ref.weight.device,
            ref.weight.dtype,
            backend=backend,
        )
        stack_parameters(stacked, linears)
        return stacked

    def member(self, k: int) -> nn.Linear:
        lin = nn.Linear(
            self.in_features, self.out_features, device=self.weight.device, dtype=self.weight.dtype
        )
        copy_member(lin, self, k)
        return lin


class MemberHeadFunction(torch.autograd.Function):
    """``MemberLinear`` on the CPU through the C++ kernels: x ``(L, K, B, in)`` in place."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.ops.hdetach.member_head_forward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[0]
        dx, dw, db = torch.ops.hdetach.member_head_backward(grad, x, weight, need_dx)
        return (dx if need_dx else None), dw, db


def stack_parameters(stacked: nn.Module, modules: Sequence[nn.Module]) -> None:
    """Copy same-named parameters of K single modules into ``stacked``'s ``(K, ...)`` ones."""
    with torch.no_grad():
        for name, param in stacked.named_parameters():
            param.copy_(torch.stack([m.get_parameter(name) for m in modules]))


def copy_member(single: nn.Module, stacked: nn.Module, k: int) -> None:
    """Copy member ``k`` of ``stacked``'s parameters into ``single``'s same-named ones."""
    with torch.no_grad():
        for name, param in single.named_parameters():
            param.copy_(stacked.get_parameter(name)[k])


class MemberEmbedding(nn.Module):
    """``nn.Embedding`` for K members: ids ``(..., K, B)`` -> ``(..., K, B, E)``."""

    def __init__(self, members: int, num: int, dim: int):
        super().__init__()
        self.members, self.num, self.dim = members, num, dim
        self.weight = nn.Parameter(torch.empty(members, num, dim).uniform_(-0.1, 0.1))

    def forward(self, ids: Tensor) -> Tensor:
        offset = torch.arange(self.members, device=ids.device).view(-1, 1) * self.num
        flat = self.weight.reshape(self.members * self.num, self.dim)
        return flat[ids + offset]

    @classmethod
    def from_members(cls, embeddings: Sequence[nn.Embedding]) -> MemberEmbedding:
        ref = embeddings[0]
        stacked = cls(len(embeddings), ref.num_embeddings, ref.embedding_dim).to(ref.weight)
        stack_parameters(stacked, embeddings)
        return stacked

    def member(self, k: int) -> nn.Embedding:
        single = nn.Embedding(self.num, self.dim).to(self.weight)
        copy_member(single, self, k)
        return single


def init_embedding(num: int, dim: int, gen: torch.Generator) -> nn.Embedding:
    """An embedding drawn from U(-0.1, 0.1) with the member's init stream."""
    emb = nn.Embedding(num, dim)
    with torch.no_grad():
        emb.weight.uniform_(-0.1, 0.1, generator=gen)
    return emb
