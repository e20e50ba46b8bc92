"""Weights in the authors' LSTM cell layout, to and from this engine's.

The authors' cell (``lstm_cell.py`` in bhargav104/h-detach) is two linear maps, ``i2h``
(input -> 4H) and ``h2h`` (hidden -> 4H), each with a bias, whose 4H pre-activations are laid
out ``[i, f, o, g]``: the first 3H go through a sigmoid, the last H through tanh. This engine
follows ``torch.nn.LSTM``: ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
``bias_hh_l0`` laid out ``[i, f, g, o]``. The maths is the same cell, so converting is a
renaming plus swapping the last two H-row blocks (a swap, hence its own inverse). Their
output layer ``fc1`` is a plain ``nn.Linear``, as ours before members are stacked, and needs
no conversion.

Use it to start both codes from the same weights (the authors' and this engine then compute
the same gradients: docs/fidelity.md) or to load a model they trained.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["AUTHORS_GATES", "GATES", "from_authors_cell", "to_authors_cell"]

#: Gate layout of the pre-activation rows: the authors' cell, and this engine's (nn.LSTM's).
AUTHORS_GATES = ("i", "f", "o", "g")
GATES = ("i", "f", "g", "o")

# Authors' names -> ours (single layer: their cell has one).
_NAMES = {
    "i2h.weight": "weight_ih_l0",
    "h2h.weight": "weight_hh_l0",
    "i2h.bias": "bias_ih_l0",
    "h2h.bias": "bias_hh_l0",
}


def _swap_last_gates(rows: Tensor, name: str) -> Tensor:
    """``rows (4H, ...)`` with the last two H-row blocks swapped ([.., o, g] <-> [.., g, o])."""
    if rows.shape[0] % 4:
        raise ValueError(f"{name} must have 4H rows, got shape {tuple(rows.shape)}")
    i, f, third, fourth = rows.chunk(4, dim=0)
    return torch.cat([i, f, fourth, third]).clone()


def _convert(state: Mapping[str, Tensor], names: dict[str, str]) -> dict[str, Tensor]:
    missing = sorted(set(names) - set(state))
    extra = sorted(set(state) - set(names))
    if missing or extra:
        raise ValueError(
            f"expected the parameters {', '.join(names)}, got {', '.join(state)} "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'})"
        )
    return {names[key]: _swap_last_gates(state[key], key) for key in names}


def from_authors_cell(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The authors' cell parameters (``i2h.weight``, ``i2h.bias``, ``h2h.weight``,
    ``h2h.bias``; their ``LSTM.state_dict()``) as this engine's layer 0, ready for
    ``HDetachLSTM(input_size, H).load_state_dict(...)``. New tensors; the input is untouched.
    """
    return _convert(state, _NAMES)


def to_authors_cell(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A one-layer ``HDetachLSTM`` state dict (without members) in the authors' layout: the
    inverse of ``from_authors_cell``."""
    return _convert(state, {ours: theirs for theirs, ours in _NAMES.items()})
